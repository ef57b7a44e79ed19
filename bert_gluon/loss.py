"""The book's pretraining loss, split so that any number of devices gives the
gradient of one device on the whole batch.

The book ("Pretraining BERT", `_get_batch_loss_bert`) averages the weighted
MLM cross-entropy over each shard's real prediction slots and the NSP loss
over each shard, then adds the shards: with k devices that is k times the
one-device loss, with shards weighted unevenly. Here every shard returns sums
and the caller divides by the global counts, so the sum over shards is the
book's one-device loss exactly.
"""
from mxnet import autograd
from mxnet.gluon import nn

from .execution import Planned
from .inputs import (checked_scope, is_symbolic, prepare_encoder_inputs,
                     prepare_pred_positions, prepare_pretraining_targets)
from .layers import cross_entropy

__all__ = ['PretrainingLoss', 'PretrainingObjective']


class PretrainingLoss(Planned, nn.HybridBlock):
    """Sums of the book's two losses over one shard.

    forward(mlm_Y_hat (B, P, V), nsp_Y_hat (B, 2), mlm_Y (B, P),
            mlm_weights (B, P), nsp_y (B,)) -> (mlm_l_sum (), nsp_l_sum ()).
    Padded prediction slots have weight 0 and add nothing. The book's loss on
    a batch is mlm_l_sum / mlm_weights.sum() + nsp_l_sum / batch size.
    On the native backend the MLM part runs the fused kernel (same numbers,
    several times faster backward, padded slots skipped). Without parameters,
    'auto' resolves for where its inputs are.
    """
    def __init__(self, backend=None, **kwargs):
        super().__init__(**kwargs)
        self.set_execution(backend)

    def hybrid_forward(self, F, mlm_Y_hat, nsp_Y_hat, mlm_Y, mlm_weights,
                       nsp_y):
        if self.native:
            mlm_l = F.bert_softmax_ce(  # (B, P, V) logits, (B, P) labels
                mlm_Y_hat.as_nd_ndarray(), mlm_Y.as_nd_ndarray(),
                mlm_weights.as_nd_ndarray())[0].as_np_ndarray()
        else:
            mlm_l = cross_entropy(F, mlm_Y_hat, mlm_Y) * mlm_weights
        return F.np.sum(mlm_l), F.np.sum(cross_entropy(F, nsp_Y_hat, nsp_y))


class PretrainingObjective(Planned, nn.HybridBlock):
    """A `HybridBERTModel` and the book's pretraining loss as one graph: what a
    training step runs (the loss inside the hybridized graph).

    forward(tokens, segments, valid_lens, pred_positions, mlm_weights, mlm_Y,
            nsp_y) -> (mlm_l_sum (), nsp_l_sum ()), the sums PretrainingLoss
    returns for net(tokens, segments, valid_lens, pred_positions). Its
    model is `net.sibling('training')`: `net`'s own parameters, so saving
    `net` saves the trained model. Its graph is for training steps: dropout
    is always on in it (natively on the native backend); called outside
    autograd's train mode it runs `net` and PretrainingLoss instead, dropout
    off. Its plan follows `net`'s request.
    """
    def __init__(self, net, **kwargs):
        super().__init__(prefix=net.prefix + 'objective_', **kwargs)
        self.model = net.sibling('training')
        self._predict_loss = PretrainingLoss()
        self.set_execution(purpose='training', follows=net.execution)

    @property
    def net(self):
        """The model this objective trains (whose request its plan follows)."""
        return self.execution.follows.root

    def forward(self, tokens, segments, valid_lens, pred_positions, mlm_weights,
                mlm_Y, nsp_y):
        if is_symbolic(tokens):  # traced inside a parent graph
            return super().forward(tokens, segments, valid_lens, pred_positions,
                                   mlm_weights, mlm_Y, nsp_y)
        check, config = self.net.check_inputs, self.net.config
        tokens, segments, valid_lens = prepare_encoder_inputs(
            config, check, tokens, segments, valid_lens)
        pred_positions = prepare_pred_positions(pred_positions, tokens, check)
        mlm_weights, mlm_Y, nsp_y = prepare_pretraining_targets(
            config, check, pred_positions, mlm_weights, mlm_Y, nsp_y)
        with checked_scope():
            if not autograd.is_training():
                _, mlm_Y_hat, nsp_Y_hat = self.net(tokens, segments, valid_lens,
                                                   pred_positions)
                return self._predict_loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, mlm_weights,
                                          nsp_y)
            return super().forward(tokens, segments, valid_lens, pred_positions,
                                   mlm_weights, mlm_Y, nsp_y)

    def hybrid_forward(self, F, tokens, segments, valid_lens, pred_positions,
                       mlm_weights, mlm_Y, nsp_y):
        model = self.model
        encoded_X = model.encoder(tokens, segments, valid_lens)
        mlm_l = model.mlm.weighted_loss(F, encoded_X, pred_positions, mlm_Y, mlm_weights)
        nsp_l = cross_entropy(F, model.nsp(encoded_X), nsp_y)
        return F.np.sum(mlm_l), F.np.sum(nsp_l)
