"""Pretraining loop: exact resume after SIGKILL, checkpoints, CLI checks."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as onp
import pytest

import bert_gluon as bg
from bert_gluon.checkpoint import Checkpointer
from bert_gluon.pretraining import pretrain
from bert_gluon.training import BatchStream, parse_contexts

TINY_RUN = dict(num_steps=8, batch_size=16, max_len=24, checkpoint_every=2,
                validate=False, progress=False)
RUN_SCRIPT = """
import sys, bert_gluon as bg
from bert_gluon.pretraining import pretrain
config = bg.get_config('d2l.pretrain', num_hiddens=16, ffn_num_hiddens=16,
                       num_heads=2, num_layers=1)
pretrain(config=config, out_dir=sys.argv[1], resume=sys.argv[2] == 'resume',
         **{tiny_run!r})
""".replace('{tiny_run!r}', repr(TINY_RUN))


def _run(out_dir, mode='fresh', **popen):
    return subprocess.Popen([sys.executable, '-c', RUN_SCRIPT, str(out_dir), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def _final_params(out_dir):
    return {k: v.asnumpy() for k, v in mx.npx.load(str(Path(out_dir) / 'pretrained.params')).items()}


@pytest.mark.slow
@pytest.mark.backend_dependent
def test_sigkill_then_resume_reaches_the_uninterrupted_parameters(tmp_path):
    straight = _run(tmp_path / 'straight')
    killed = _run(tmp_path / 'killed')
    pointer = tmp_path / 'killed' / 'checkpoints' / 'latest.json'
    deadline = time.time() + 120
    while not pointer.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, 'the run ended before it could be killed'
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed_at = json.loads(pointer.read_text())['step']
    assert killed_at < TINY_RUN['num_steps']
    assert not (tmp_path / 'killed' / 'pretrained.params').exists()
    resumed = _run(tmp_path / 'killed', 'resume')
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f'resumed at step {killed_at}' in out
    straight_out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, straight_out
    a, b = _final_params(tmp_path / 'straight'), _final_params(tmp_path / 'killed')
    assert a.keys() == b.keys()
    for name in a:
        onp.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)
    # ... and the losses it reports over all steps are the same trajectory
    ma = json.loads((tmp_path / 'straight' / 'metrics.json').read_text())
    mb = json.loads((tmp_path / 'killed' / 'metrics.json').read_text())
    assert abs(ma['mlm_loss'] - mb['mlm_loss']) < 1e-5


@pytest.mark.backend_dependent
def test_pretrain_writes_its_outputs_and_every_parameter_learns(tmp_path):
    config = bg.get_config('d2l.pretrain', num_hiddens=16, ffn_num_hiddens=16,
                           num_heads=2, num_layers=1)
    result = pretrain(config=config, out_dir=tmp_path, **dict(TINY_RUN, validate=True))
    for name in ('pretrained.params', 'vocab.json', 'config.json', 'metrics.json', 'loss.png'):
        assert (tmp_path / name).is_file(), name
    metrics = result['metrics']
    assert 0 <= metrics['valid_mlm_accuracy'] <= 1 and metrics['valid_pairs'] > 100
    assert len(result['history']['mlm']) == TINY_RUN['num_steps']
    # No unreachable parameters: every one moved from its initial value
    fresh = bg.HybridBERTModel(result['config'])
    mx.random.seed(0)
    fresh.initialize(mx.init.Xavier())
    fresh(mx.np.zeros((1, 4), dtype='int32'), mx.np.zeros((1, 4), dtype='int32'),
          None, mx.np.zeros((1, 1), dtype='int32'))
    trained = result['net']._collect_params_with_prefix()
    for name, p in fresh._collect_params_with_prefix().items():
        assert not onp.allclose(p.data().asnumpy(), trained[name].data().asnumpy()), name
    # The saved model reloads into the book's blocks
    book = bg.BERTModel.from_config(result['config'])
    book.load_parameters(str(tmp_path / 'pretrained.params'))


def _small_net():
    net = bg.HybridBERTModel(bg.get_config('d2l.pretrain', vocab_size=10, num_hiddens=8,
                                           ffn_num_hiddens=8, num_layers=1))
    net.initialize()
    return net


def test_corrupt_checkpoint_names_the_file_and_falls_back(tmp_path):
    net = _small_net()
    ck = Checkpointer(tmp_path)
    ck.save(2, net, None, {'stream': {}})
    older = net.encoder.token_embedding.weight.data().asnumpy()
    net.encoder.token_embedding.weight.set_data(net.encoder.token_embedding.weight.data() + 1)
    saved = ck.save(3, net, None, {'stream': {}})
    (saved / 'params.params').write_bytes(b'garbage')
    with pytest.warns(UserWarning, match=r'skipping checkpoint step-00000003: .*params.params'):
        state = ck.load(net, None)
    assert state['step'] == 2  # the intact one before it
    onp.testing.assert_array_equal(net.encoder.token_embedding.weight.data().asnumpy(), older)
    (tmp_path / 'step-00000002' / 'state.json').write_text('{"step"')
    with pytest.warns(UserWarning), pytest.raises(ValueError, match='no intact checkpoint'):
        ck.load(net, None)


def test_checkpoints_keep_the_newest_two(tmp_path):
    net = bg.HybridBERTModel(bg.get_config('d2l.pretrain', vocab_size=10, num_hiddens=8,
                                           ffn_num_hiddens=8, num_layers=1))
    net.initialize()
    ck = Checkpointer(tmp_path)
    for step in (1, 2, 3):
        ck.save(step, net, None, {})
    assert sorted(p.name for p in tmp_path.glob('step-*')) == ['step-00000002', 'step-00000003']
    assert ck.latest().name == 'step-00000003'


def test_batch_stream_state_round_trip():
    arrays = [onp.arange(10), onp.arange(10) * 2]
    a = BatchStream(arrays, 3, seed=1)
    seen = [a.next()[0].tolist() for _ in range(5)]  # crosses an epoch boundary
    b = BatchStream(arrays, 3, seed=1)
    for _ in range(2):
        b.next()
    c = BatchStream(arrays, 3, seed=1)
    c.load_state(b.state())
    assert [c.next()[0].tolist() for _ in range(3)] == seen[2:]
    assert sorted(sum(seen[:3], [])) == sorted(set(sum(seen[:3], [])))  # no repeats in an epoch
    with pytest.raises(ValueError, match='batch_size'):
        BatchStream(arrays, 11)


def test_contexts_parse_and_reject():
    assert parse_contexts('cpu:0,cpu:1') == [mx.cpu(0), mx.cpu(1)]
    assert parse_contexts(None) == [mx.cpu()]
    with pytest.raises(ValueError, match='ctx'):
        parse_contexts('tpu:0')


@pytest.mark.slow
@pytest.mark.parametrize('args, message', [
    (['--steps', '0'], 'argument --steps: expected a positive integer'),
    (['--batch-size', 'x'], 'argument --batch-size: expected a positive integer'),
    (['--lr', '-1'], 'argument --lr: expected a finite positive number'),
    (['--lr', 'inf'], 'argument --lr: expected a finite positive number'),
    (['--lr', 'nan'], 'argument --lr: expected a finite positive number'),
    (['--ctx', 'gpu:0'], 'sees 0 GPU(s) (a CPU build'),
    (['--ctx', 'cpu:0,cpu:0'], 'cpu(0) is listed twice'),
    (['--backend', 'cuda'], "argument --backend: invalid choice"),
    (['--ctx', 'gpu0'], '--ctx'),
    (['--config', 'nope'], 'argument --config: invalid choice'),
    (['--seed', '-1'], 'argument --seed: expected an integer in [0, 2**31)'),
])
@pytest.mark.backend_dependent
def test_cli_rejects_bad_arguments(args, message):
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'pretrain', *args],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert message in out.stderr


def test_pretrain_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='num_steps'):
        pretrain(num_steps=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match='lr'):
        pretrain(lr=0, out_dir=tmp_path)


def _tiny_pretrain(out_dir, **changes):
    config = bg.get_config('d2l.pretrain', num_hiddens=16, ffn_num_hiddens=16,
                           num_heads=2, num_layers=1)
    return pretrain(config=config, out_dir=out_dir, **dict(TINY_RUN, **changes))


@pytest.mark.backend_dependent
def test_resume_without_latest_json_continues_from_the_newest_checkpoint(tmp_path, capsys):
    _tiny_pretrain(tmp_path, num_steps=4)
    (tmp_path / 'checkpoints' / 'latest.json').unlink()
    capsys.readouterr()
    result = _tiny_pretrain(tmp_path, num_steps=6, resume=True)
    assert 'resumed at step 4' in capsys.readouterr().out
    assert len(result['history']['mlm']) == 6
    assert sorted(p.name for p in (tmp_path / 'checkpoints').glob('step-*')) == [
        'step-00000004', 'step-00000006']


@pytest.mark.slow
@pytest.mark.backend_dependent
@pytest.mark.parametrize('changes, name', [
    ({'lr': 0.02}, 'lr=0.02'), ({'batch_size': 8}, 'batch_size=8'),
    ({'max_len': 32}, 'max_len=32'), ({'seed': 1}, 'seed=1')])
def test_resume_refuses_arguments_that_change_the_trajectory(tmp_path, changes, name):
    _tiny_pretrain(tmp_path, num_steps=2)
    before = (tmp_path / 'config.json').read_text()
    with pytest.raises(ValueError, match=rf'resume with the arguments .*{name} \(the checkpoint has'):
        _tiny_pretrain(tmp_path, num_steps=4, resume=True, **changes)
    assert (tmp_path / 'config.json').read_text() == before  # nothing was changed


@pytest.mark.backend_dependent
def test_a_fresh_run_refuses_a_used_folder_unless_told(tmp_path):
    _tiny_pretrain(tmp_path, num_steps=2)
    with pytest.raises(ValueError, match=r'holds a previous run .*--resume.*--overwrite'):
        _tiny_pretrain(tmp_path, num_steps=2)
    assert (tmp_path / 'checkpoints' / 'step-00000002').is_dir()  # untouched
    (tmp_path / 'checkpoints' / 'step-00000009').mkdir()  # a stale checkpoint
    _tiny_pretrain(tmp_path, num_steps=2, overwrite=True)
    assert [p.name for p in (tmp_path / 'checkpoints').glob('step-*')] == ['step-00000002']


@pytest.mark.backend_dependent
def test_two_runs_cannot_share_a_folder(tmp_path):
    from bert_gluon.checkpoint import RunFolder
    with RunFolder(tmp_path, ()):
        with pytest.raises(ValueError, match=f'in use by another run \\(pid {os.getpid()}\\)'):
            _tiny_pretrain(tmp_path, num_steps=2)
    _tiny_pretrain(tmp_path, num_steps=2)  # released with the first run


def test_unusable_output_folders_are_refused_before_training(tmp_path):
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match='out_dir: .*file is a file'):
        _tiny_pretrain(tmp_path / 'file')
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'checkpoints').write_text('x')  # no checkpoint could be written
    with pytest.raises(ValueError, match='out_dir: .*checkpoints is a file'):
        _tiny_pretrain(tmp_path / 'run')


@pytest.mark.backend_dependent
def test_a_diverging_run_stops_with_an_error(tmp_path):
    with pytest.raises(ValueError, match=r'step \d+: the \w+ loss is nan: training diverged'):
        _tiny_pretrain(tmp_path, lr=1e30)
    assert not (tmp_path / 'pretrained.params').exists()
    with pytest.raises(ValueError, match='lr must be a finite number'):
        _tiny_pretrain(tmp_path / 'b', lr=float('inf'))


@pytest.mark.backend_dependent
def test_the_plan_that_ran_is_recorded_and_a_different_one_said_on_resume(tmp_path, monkeypatch):
    """metrics.json and every checkpoint's state record the execution plan
    the training graph ran (implementation, precision, provider); resuming
    where the products would run otherwise says so."""
    from bert_gluon import pretraining
    objectives = []
    original = pretraining.PretrainingObjective

    def recording(net):
        objectives.append(original(net))
        return objectives[-1]
    monkeypatch.setattr(pretraining, 'PretrainingObjective', recording)
    result = _tiny_pretrain(tmp_path, num_steps=2)
    ran = objectives[-1].plan  # the training graph's own plan
    assert ran.purpose == 'training'
    fields = ('implementation', 'precision', 'provider')
    recorded = [result['metrics']['plan']]
    recorded += [json.loads(p.read_text())['plan']
                 for p in (tmp_path / 'checkpoints').glob('step-*/state.json')]
    assert len(recorded) >= 2
    for plan in recorded:
        assert [plan[f] for f in fields] == [getattr(ran, f) for f in fields], plan
    verified = Checkpointer._verified_state

    def made_elsewhere(folder):  # as if another library had multiplied
        state = verified(folder)
        return dict(state, plan=dict(state['plan'], provider='another-library'))
    monkeypatch.setattr(Checkpointer, '_verified_state', staticmethod(made_elsewhere))
    with pytest.warns(UserWarning, match=r'resuming a run whose products ran as '
                                         r'.*another-library'):
        _tiny_pretrain(tmp_path, num_steps=3, resume=True)


@pytest.mark.backend_dependent
def test_a_state_lacking_fields_is_named_and_the_checkpoint_before_it_resumed(tmp_path):
    _tiny_pretrain(tmp_path, num_steps=4)
    state = tmp_path / 'checkpoints' / 'step-00000004' / 'state.json'
    values = json.loads(state.read_text())
    del values['history']
    state.write_text(json.dumps(values))
    with pytest.warns(UserWarning, match=r"skipping checkpoint step-00000004: .*state.json "
                                         r"lacks the fields \['history'\]"):
        result = _tiny_pretrain(tmp_path, num_steps=6, resume=True)
    assert len(result['history']['mlm']) == 6  # steps 1-2 from the checkpoint, 3-6 run again


def test_a_pretrained_folder_with_a_folder_for_a_file_is_named(tmp_path):
    from bert_gluon.pretrained import from_pretrained
    (tmp_path / 'model.safetensors').mkdir()
    with pytest.raises(ValueError, match='model.safetensors should be a file, not a folder'):
        from_pretrained(str(tmp_path))
