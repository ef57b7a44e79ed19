"""How a twin model runs, decided in one place: its execution plan.

An `ExecutionPlan` is a frozen value resolved once per model from what was
asked (`backend=`, the config's dtype), where the parameters live, their
dtype and this CPU:

  implementation  'native': this package's CPU kernels (bert_gluon/kernels)
                  where they apply, MXNet's operators elsewhere;
                  'mxnet': MXNet's own operators only (what a GPU runs, and
                  what export writes)
  precision       what the products run in: 'float32', 'bfloat16' or 'int8'
                  (int8: the encoder blocks' products of inference graphs;
                  a model of dtype 'int8' trains in float32)
  provider        who multiplies (kernels/providers.py), '' on 'mxnet'
  dense_provider  who multiplies outside the encoder blocks (the pooler,
                  the heads, training graphs' Dense layers) where that is
                  another precision: float32 beside int8 ('' otherwise)
  request_provider  who multiplies a single request's few rows (each
                  product shared out by columns, one thread each), where
                  the libraries rank otherwise
  purpose         'general': dropout follows autograd's train mode, as any
                  Gluon block; 'inference': no dropout, never recorded, each
                  encoder block one fused native op (`net.for_inference()`);
                  'training': every call a training step, dropout always on
                  (the pretraining objective's graph)
  why             why that provider (measured, forced, or not available)

`backend='auto'` (None) is 'native' when every parameter is float32 on a CPU
and the kernels build here, else 'mxnet'; BERT_GLUON_NATIVE=0 turns its
default to 'mxnet' (how CI runs the whole suite on the GPU's path).
'native' where it cannot run is an error, never a silent fallback.

A tree of twin blocks shares one `Execution`: its root makes it, every
block of the tree reads `self.plan` from it. The plan is made again,
dropping the traced graphs, when the request changes (`net.backend = ...`)
or the parameters move or change dtype (`reset_ctx`, `cast`, or found at
the next call). `repr(net)` shows it; `net.plan.to_dict()` is what
metrics.json, checkpoints, exported folders and endpoints record.
"""
import dataclasses
import os
import warnings

import mxnet as mx
import numpy as onp
from mxnet import autograd

from . import kernels
from .kernels import providers

__all__ = ['BACKENDS', 'PURPOSES', 'ExecutionPlan', 'Execution', 'Planned', 'make_plan',
           'check_backend', 'resolve_implementation']

BACKENDS = ('auto', 'native', 'mxnet')
_said_kernels_off = []
PURPOSES = ('general', 'inference', 'training')
PRECISIONS = ('float32', 'bfloat16', 'int8')


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How a model runs (module docstring); `products` is the native ops'
    attribute that names the provider and precision."""
    implementation: str
    precision: str
    provider: str
    purpose: str
    request: str
    contexts: tuple
    dtype: str
    why: str = ''
    request_provider: str = ''
    dense_provider: str = ''

    @property
    def native(self):
        return self.implementation == 'native'

    @property
    def products(self):
        """The native ops' `products` attribute: '' (BLAS float32),
        'onednn', 'mkl-bf16' or 'onednn-bf16'; '' on 'mxnet'."""
        if not self.native:
            return ''
        return kernels.products_attribute(self.precision, self.provider)

    @property
    def dense_products(self):
        """The `products` attribute of products outside the encoder blocks
        (bert_linear, bert_dense): float32 ones where those run int8."""
        if not self.native or not self.dense_provider:
            return self.products
        return kernels.products_attribute('float32', self.dense_provider)

    @property
    def request_products(self):
        """The `products` attribute of a single request's products."""
        if not self.native:
            return ''
        return kernels.products_attribute(self.precision,
                                          self.request_provider or self.provider)

    def to_dict(self):
        """JSON-ready: what metrics.json, checkpoints and endpoints record."""
        out = dataclasses.asdict(self)
        out['contexts'] = list(self.contexts)
        return out

    def describe(self):
        """One line: 'native, float32 by onednn (inference) on cpu(0)'."""
        by = f' by {self.provider}' if self.native else ''
        if self.native and self.request_provider not in ('', self.provider):
            by += f' ({self.request_provider} for single requests)'
        if self.native and self.dense_provider:
            by += f', float32 by {self.dense_provider} outside the encoder blocks'
        return (f'{self.implementation}, {self.precision}{by} ({self.purpose}) on '
                f'{", ".join(self.contexts)}')


def check_backend(backend):
    """The request `backend` (None is 'auto'), validated."""
    if backend is None:
        return 'auto'
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'native' or 'mxnet' (None is "
                         f"'auto'), got {backend!r}")
    return backend


def _native_obstacle(contexts, dtype):
    """Why the native kernels cannot run for these parameters, or None."""
    others = [str(c) for c in contexts if c.device_type != 'cpu']
    if others:  # checked first: no compilation for parameters on a GPU
        return f'the parameters live on {", ".join(others)}, not a CPU'
    if dtype != 'float32':
        return f'the parameters are {dtype}; the kernels take float32'
    return kernels.unavailable_reason()


def resolve_implementation(request, contexts, dtype='float32', precision='float32'):
    """'native' or 'mxnet' for parameters on `contexts` of `dtype`, whose
    products run in `precision` (a config's dtype). bf16 and int8 need
    'native'."""
    request = check_backend(request)
    if request == 'mxnet' or (request == 'auto'
                              and os.environ.get('BERT_GLUON_NATIVE', '1') == '0'):
        name = 'mxnet'
    else:
        obstacle = _native_obstacle(contexts, onp.dtype(dtype).name)
        if obstacle is not None and request == 'native':
            raise ValueError(f"backend='native' cannot run here: {obstacle}; use "
                             "backend='auto' or 'mxnet'")
        kernels_off = (obstacle is not None and onp.dtype(dtype).name == 'float32'
                       and all(c.device_type == 'cpu' for c in contexts))
        if kernels_off and not _said_kernels_off:
            _said_kernels_off.append(True)  # once per process
            warnings.warn(f'bert_gluon: the native CPU kernels are off ({obstacle}); models '
                          "run MXNet's slower operators", stacklevel=4)
        name = 'native' if obstacle is None else 'mxnet'
    if precision != 'float32' and name != 'native':
        raise ValueError(f"dtype='{precision}' cannot run here: it runs on the 'native' "
                         "backend (this package's CPU kernels), not on MXNet's operators (the "
                         f"parameters are on {list(contexts)}); use dtype='float32'")
    return name


def make_plan(request, contexts, dtype='float32', precision='float32', purpose='general'):
    """The ExecutionPlan for a model asking for `request` ('auto', 'native'
    or 'mxnet') and products in `precision`, whose parameters are `dtype` on
    `contexts`, for `purpose`."""
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if purpose not in PURPOSES:
        raise ValueError(f'purpose must be one of {PURPOSES}, got {purpose!r}')
    dtype = onp.dtype(dtype).name
    implementation = resolve_implementation(request, contexts, dtype, precision)
    provider, why, runs, for_requests, dense = '', "MXNet's operators", precision, '', ''
    if implementation == 'native':
        asked = precision
        if precision == 'int8' and purpose != 'inference':
            asked = 'float32'  # int8 products exist in the fused blocks only
        runs, provider, why = providers.plan_products(asked)
        if asked != precision:
            why = (f"dtype='int8' quantizes inference graphs (for_inference()) only; this "
                   f'{purpose} graph runs float32: {why}')
        for_requests = providers.request_choice(runs)['provider']
        if runs == 'int8':
            dense = providers.provider('float32')
    return ExecutionPlan(implementation, runs, provider, purpose, check_backend(request),
                         tuple(str(c) for c in contexts), dtype, why, for_requests, dense)


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


class Execution:
    """The plan one tree of twin blocks runs, held once for the tree.

    request, precision: what was asked; purpose: the tree's ('general',
    'inference', 'training'). `follows`: another tree's Execution whose
    request and precision this one takes (a sibling over the same
    parameters: the inference graph, the training objective).
    """
    def __init__(self, request=None, precision='float32', purpose='general', follows=None):
        if purpose not in PURPOSES:
            raise ValueError(f'purpose must be one of {PURPOSES}, got {purpose!r}')
        self._request, self._precision = check_backend(request), precision
        self.purpose, self.follows = purpose, follows
        self.plan = None
        self.root = None
        self.others = []  # blocks outside the root's tree that run this plan
        self.siblings = {}  # (prefix, purpose) -> a tree over the same parameters
        self._anchor = None  # a parameter of the tree: where they all live

    @property
    def request(self):
        return self.follows.request if self.follows else self._request

    @request.setter
    def request(self, value):
        if self.follows:
            self.follows.request = value
        else:
            self._request = check_backend(value)

    @property
    def precision(self):
        return self.follows.precision if self.follows else self._precision

    def _where(self, like):
        """(contexts, dtype) of the tree's parameters, or of input `like`
        for a tree without any; None before there is either."""
        if self._anchor is None:
            self._anchor = next(iter(self.root.collect_params().values()), False)
        anchor = self._anchor
        if anchor:
            try:
                return tuple(anchor.list_ctx()), onp.dtype(anchor.dtype).name
            except RuntimeError:  # not initialized yet: MXNet will say so
                return None
        if like is not None:
            return (like.ctx,), onp.dtype(like.dtype).name
        return None

    def sync(self, like=None):
        """The plan for where the parameters are now: kept while the
        request, the devices and the dtype are unchanged, else made anew
        (every traced graph of the tree dropped)."""
        where = self._where(like)
        if where is None:
            return self.plan
        contexts, dtype = where
        plan = self.plan
        if (plan is None or plan.request != self.request
                or plan.contexts != tuple(str(c) for c in contexts) or plan.dtype != dtype):
            self.replan(contexts, dtype)
        return self.plan

    def replan(self, contexts=None, dtype=None):
        """Make the plan anew (for `contexts` and `dtype`, or for where the
        parameters are) and drop the tree's traced graphs. Parameters where
        the request cannot run (float64 for 'native') leave no plan: the
        next call says why."""
        self.plan = None
        for root in [self.root] + self.others:
            for blk in _blocks(root):
                blk._clear_cached_op()
        explicit = contexts is not None  # a call's: its error is raised now
        if not explicit:
            where = self._where(None)
            if where is None:
                return None
            contexts, dtype = where
        try:
            self.plan = make_plan(self.request, contexts, dtype, self.precision, self.purpose)
        except ValueError:  # a move or cast: said at the next call
            if explicit:
                raise
        return self.plan


class Planned:
    """For the twin's HybridBlocks (first in the bases: it wraps `forward`):
    `plan`, `backend`, and the tree's one Execution. A block made inside
    another twin block reads its root's; on its own it is a root."""

    def set_execution(self, backend=None, precision='float32', purpose='general',
                      follows=None):
        """Make this block the root of its tree, asking for `backend` and
        products in `precision`, for `purpose` (or following the request of
        another tree's Execution): one Execution for every twin block inside."""
        execution = Execution(backend, precision, purpose, follows)
        execution.root = self
        self._adopt(execution)

    def _adopt(self, execution):
        for blk in _blocks(self):
            if isinstance(blk, Planned):
                blk._execution = execution

    @property
    def execution(self):
        ex = self.__dict__.get('_execution')
        if ex is None:  # a block built on its own: its own root
            self.set_execution()
            ex = self.__dict__['_execution']
        return ex

    @property
    def plan(self):
        """The ExecutionPlan this block runs (resolved now if its parameters
        exist; None before they are initialized)."""
        return self.execution.sync()

    @property
    def backend_request(self):
        """What was asked for: 'auto', 'native' or 'mxnet'."""
        return self.execution.request

    def __setattr__(self, name, value):
        if name == 'backend':  # the property; Block's setattr would read it first
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def backend(self):
        """'native' or 'mxnet': what this block runs (None before its
        parameters are initialized)."""
        plan = self.plan
        return plan.implementation if plan else None

    @backend.setter
    def backend(self, request):
        self.execution.request = request
        self.execution.sync()

    def forward(self, x, *args):
        if isinstance(x, mx.nd.NDArray):  # an eager call, not a trace
            self.execution.sync(x)
            if self.purpose == 'inference':  # its fused ops have no backward
                with autograd.pause(train_mode=False):
                    return super().forward(x, *args)
        return super().forward(x, *args)

    def sibling(self, purpose):
        """This model again over the same parameters (the same objects:
        whatever changes them changes both), its own tree and graphs, for
        `purpose`; it follows this model's backend request and precision.
        Made once per purpose."""
        siblings, key = self.execution.siblings, (self.prefix, purpose)
        if key not in siblings:
            if not hasattr(self, '_sibling_of'):
                raise ValueError(f'{type(self).__name__} has no sibling: build the model '
                                 '(HybridBERTModel, HybridBERTEncoder, BERTClassifier) instead')
            params = self.collect_params()
            # Gluon's shared lookup compares grad_req with what the blocks ask
            # for ('write'): frozen parameters ('null', no gradient) pass as asked
            frozen = [p for p in params.values() if p.grad_req == 'null']
            for param in frozen:
                param.grad_req = 'write'
            try:
                sibling = self._sibling_of(self.prefix, params)
            finally:
                for param in frozen:
                    param.grad_req = 'null'
            sibling.set_execution(purpose=purpose, follows=self.execution)
            siblings[key] = sibling
        return siblings[key]

    def for_inference(self, static_shape=False):
        """The block predictions run: this model over the same parameters,
        without dropout, never recorded by autograd, each encoder block one
        fused native op where the plan is native; hybridized (static_alloc;
        `static_shape` for a fixed batch shape). Made once and reused."""
        sibling = self.sibling('inference')
        if getattr(sibling, '_hybridized_as', None) != static_shape:
            sibling.hybridize(static_alloc=True, static_shape=static_shape)
            sibling._hybridized_as = static_shape
        return sibling

    def cast(self, dtype):
        super().cast(dtype)
        self.execution.replan()

    def reset_ctx(self, ctx):
        """Move every parameter to `ctx` (a Context or a list) and make
        the plan for there now."""
        self.collect_params().reset_ctx(ctx)
        self.execution.replan()

    def _running(self):
        """The plan a call or trace of this block runs (in a trace, the one
        its root's eager call made)."""
        plan = self.execution.plan
        return plan if plan is not None else self.execution.sync()

    @property
    def native(self):
        plan = self._running()
        return plan is not None and plan.native

    @property
    def purpose(self):
        return self.execution.purpose

    def dropout_off(self, F):
        """No dropout in this call: an inference tree, or an eager call
        outside autograd's train mode (a traced graph decides when it runs:
        MXNet's Dropout op asks then)."""
        return self.purpose == 'inference' or (F is mx.nd and not autograd.is_training())

    def __repr__(self):
        text = super().__repr__()
        ex = self.__dict__.get('_execution')
        if ex is not None and ex.root is self and ex.plan is not None:
            text += f'\n  plan: {ex.plan.describe()}'
        return text
