"""The book's pretraining loss, split so that any number of devices gives the
gradient of one device on the whole batch.

The book ("Pretraining BERT", `_get_batch_loss_bert`) averages the weighted
MLM cross-entropy over each shard's real prediction slots and the NSP loss
over each shard, then adds the shards: with k devices that is k times the
one-device loss, with shards weighted unevenly. Here every shard returns sums
and the caller divides by the global counts, so the sum over shards is the
book's one-device loss exactly.
"""
import mxnet as mx
from mxnet.gluon import nn

from . import kernels

__all__ = ['PretrainingLoss']


class PretrainingLoss(nn.HybridBlock):
    """Sums of the book's two losses over one shard.

    forward(mlm_Y_hat (B, P, V), nsp_Y_hat (B, 2), mlm_Y (B, P),
            mlm_weights (B, P), nsp_y (B,)) -> (mlm_l_sum (), nsp_l_sum ()).
    Padded prediction slots have weight 0 and add nothing. The book's loss on
    a batch is mlm_l_sum / mlm_weights.sum() + nsp_l_sum / batch size.
    On the CPU the MLM part runs the native fused kernel (same numbers,
    several times faster backward, padded slots skipped).
    """
    _on_cpu = True

    def forward(self, mlm_Y_hat, *args):
        if isinstance(mlm_Y_hat, mx.nd.NDArray):  # eager call: note the device
            self._on_cpu = mlm_Y_hat.ctx.device_type == 'cpu'
        return super().forward(mlm_Y_hat, *args)

    def hybrid_forward(self, F, mlm_Y_hat, nsp_Y_hat, mlm_Y, mlm_weights,
                       nsp_y):
        # Cross-entropy as gluon's SoftmaxCrossEntropyLoss: -log_softmax[label]
        if self._on_cpu and kernels.native_available():
            # (B, P, V) -> (B*P, V); labels and weights (B*P,)
            mlm_l = F.bert_softmax_ce(
                F.npx.reshape(mlm_Y_hat, (-5, -2)).as_nd_ndarray(),
                F.npx.reshape(mlm_Y, (-1,)).as_nd_ndarray(),
                F.npx.reshape(mlm_weights, (-1,)).as_nd_ndarray())[0].as_np_ndarray()
        else:
            mlm_l = -F.npx.pick(F.npx.log_softmax(mlm_Y_hat), mlm_Y, axis=-1) * mlm_weights
        nsp_l = -F.npx.pick(F.npx.log_softmax(nsp_Y_hat), nsp_y, axis=-1)
        return F.np.sum(mlm_l), F.np.sum(nsp_l)
