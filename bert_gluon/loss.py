"""The book's pretraining loss, split so that any number of devices gives the
gradient of one device on the whole batch.

The book ("Pretraining BERT", `_get_batch_loss_bert`) averages the weighted
MLM cross-entropy over each shard's real prediction slots and the NSP loss
over each shard, then adds the shards: with k devices that is k times the
one-device loss, with shards weighted unevenly. Here every shard returns sums
and the caller divides by the global counts, so the sum over shards is the
book's one-device loss exactly.
"""
from mxnet.gluon import nn

__all__ = ['PretrainingLoss']


class PretrainingLoss(nn.HybridBlock):
    """Sums of the book's two losses over one shard.

    forward(mlm_Y_hat (B, P, V), nsp_Y_hat (B, 2), mlm_Y (B, P),
            mlm_weights (B, P), nsp_y (B,)) -> (mlm_l_sum (), nsp_l_sum ()).
    Padded prediction slots have weight 0 and add nothing. The book's loss on
    a batch is mlm_l_sum / mlm_weights.sum() + nsp_l_sum / batch size.
    """
    def hybrid_forward(self, F, mlm_Y_hat, nsp_Y_hat, mlm_Y, mlm_weights,
                       nsp_y):
        # Cross-entropy as gluon's SoftmaxCrossEntropyLoss: -log_softmax[label]
        mlm_l = -F.npx.pick(F.npx.log_softmax(mlm_Y_hat), mlm_Y, axis=-1)
        nsp_l = -F.npx.pick(F.npx.log_softmax(nsp_Y_hat), nsp_y, axis=-1)
        return F.np.sum(mlm_l * mlm_weights), F.np.sum(nsp_l)
