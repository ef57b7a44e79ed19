"""One worker of a distributed pretraining job, for test_distributed.py.

    python dist_worker.py OUT_DIR KVSTORE [resume] [kill-rank:step]

Trains the tiny config (no dropout: every shard then computes exactly its
rows of the one-process step) and saves this worker's parameters as
OUT_DIR/worker-<rank>.params. kill-rank:step: that rank SIGKILLs itself
when it reaches that step, as a crash would. BERT_GLUON_TEST_SLOW=1: train
until killed.
"""
import os
import signal
import sys
import time

import bert_gluon as bg
from bert_gluon import training
from bert_gluon.pretraining import pretrain

RUN = dict(num_steps=6, batch_size=16, max_len=24, checkpoint_every=2, validate=False,
           progress=False, seed=3)
CONFIG = bg.get_config('d2l.pretrain', num_hiddens=16, ffn_num_hiddens=16, num_heads=2,
                       num_layers=1, dropout=0.0)

if __name__ == '__main__':
    out_dir, kvstore = sys.argv[1], sys.argv[2]
    resume = 'resume' in sys.argv[3:]
    kill = [a for a in sys.argv[3:] if ':' in a]
    if kill:
        rank, step = map(int, kill[0].split(':'))
        original = training.TrainLoop._one_step

        def one_step(loop, batch):
            if loop.cluster.rank == rank and loop.step == step:
                # steps run asynchronously: wait for the chief's last checkpoint
                # to be whole, so that the crash lands after it, deterministically
                last = step - step % RUN['checkpoint_every']
                done = os.path.join(out_dir, 'checkpoints', f'step-{last:08d}')
                deadline = time.monotonic() + 60
                while last and not os.path.isdir(done) and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)
            return original(loop, batch)
        training.TrainLoop._one_step = one_step
    run = dict(RUN, num_steps=100000) if os.environ.get('BERT_GLUON_TEST_SLOW') else RUN
    result = pretrain(config=CONFIG, out_dir=out_dir, kvstore=kvstore, resume=resume, **run)
    from bert_gluon.distributed import connect
    cluster = connect(kvstore, [__import__('mxnet').cpu()])
    result['net'].save_parameters(os.path.join(out_dir, f'worker-{cluster.rank}.params'))
