"""The one choice of implementation for a twin model, made explicitly.

  'native'  this package's CPU kernels (bert_gluon/kernels) where they apply,
            MXNet's operators elsewhere
  'mxnet'   MXNet's own operators only: what a GPU runs, and what export writes

A twin block takes `backend=` at construction: 'native', 'mxnet' or 'auto'
(None). 'auto' is 'native' when every parameter is float32 on a CPU and the
kernels build here, else 'mxnet'; the environment variable
BERT_GLUON_NATIVE=0 turns its default to 'mxnet' (how CI runs the whole
suite on the GPU's path). The request is resolved for where the parameters
live and their dtype, set on every block of the tree, and resolved again,
dropping cached graphs, whenever the request, the devices or the dtype
change; `net.backend` says what runs. 'native' where it cannot run is an
error, never a silent fallback.

Which graph a block is traced into is a second, narrower fact: `tracing('train')`
(a graph that only ever runs training steps: dropout always on, natively) or
`tracing('infer')` (a graph autograd never records: no dropout, fused encoder
blocks). It holds only while such a graph is traced; blocks read it with
`graph_kind()`. `run_graph` picks the graph of a call: dropout follows
`dropout_active()` (MXNet Dropout's own predicate, `autograd.is_training()`)
on both backends, hybridized or not.
"""
import contextlib
import contextvars
import os

import mxnet as mx
import numpy as onp
from mxnet import autograd
from mxnet.gluon import nn

from . import kernels
from .kernels import providers

__all__ = ['BACKENDS', 'BackendMixin', 'resolve_backend', 'products_for', 'set_backend',
           'tracing', 'graph_kind', 'scoped', 'dropout_active', 'InferenceGraph',
           'run_graph']

BACKENDS = ('auto', 'native', 'mxnet')


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


def resolve_backend(request, contexts, dtype='float32', precision='float32'):
    """'native' or 'mxnet' for parameters on `contexts` of `dtype`, whose
    products run in `precision` (a config's dtype). bf16 needs the native
    backend; whether it beats float32 there is `products_for`'s question."""
    name = _resolve(check_backend(request), contexts, dtype)
    if precision == 'bfloat16' and name != 'native':
        raise ValueError("dtype='bfloat16' cannot run here: it runs on the 'native' backend "
                         "(this package's CPU kernels), not on MXNet's operators (the "
                         f"parameters are on {list(contexts)}); use dtype='float32'")
    return name


def products_for(name, precision):
    """The native ops' `products` attribute (who multiplies, in what) for
    products of `precision` on backend `name`: the providers measured
    fastest on this CPU (kernels/providers.py); '' on MXNet's operators."""
    if name != 'native':
        return ''
    return providers.products(precision)


def _resolve(request, contexts, dtype):
    if request == 'mxnet':
        return 'mxnet'
    if request == 'auto' and os.environ.get('BERT_GLUON_NATIVE', '1') == '0':
        return 'mxnet'
    obstacle = _native_obstacle(contexts, onp.dtype(dtype).name)
    if obstacle is None:
        return 'native'
    if request == 'native':
        raise ValueError(f"backend='native' cannot run here: {obstacle}; use "
                         "backend='auto' or 'mxnet'")
    return 'mxnet'


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


def set_backend(block, name, key=None):
    """Set the resolved backend `name` on `block` and its descendants (with
    the request key it answers) and drop every cached graph of the tree."""
    products = products_for(name, key[3]) if key is not None else ''
    for blk in _blocks(block):
        if isinstance(blk, BackendMixin):
            blk.__dict__.update(_bg_backend=name, _bg_key=key, _bg_products=products)
            blk.__dict__.pop('_inference_graph', None)
            if key is not None:
                blk.__dict__.update(_bg_request=key[0], _bg_precision=key[3])
        if hasattr(blk, '_clear_cached_op'):
            blk._clear_cached_op()


class BackendMixin:
    """For the twin's HybridBlocks: the `backend` attribute and its
    resolution on eager calls (first in the bases: it wraps `forward`)."""
    _bg_request = 'auto'
    _bg_precision = 'float32'  # of the products: a config's dtype
    _bg_backend = None
    _bg_key = None
    _bg_products = ''

    def _init_backend(self, backend=None, source=None, precision=None):
        """Ask for `backend` (and products in `precision`) on this block and
        every block inside it; or, with `source` (a block inside it), follow
        whatever `source` asks."""
        if source is not None:
            self.__dict__['_bg_source'] = source  # not a child: no setattr
            backend, precision = source.backend_request, source._bg_precision
        request = check_backend(backend)
        for blk in _blocks(self):
            if isinstance(blk, BackendMixin):
                blk.__dict__['_bg_request'] = request
                if precision is not None:
                    blk.__dict__['_bg_precision'] = precision

    @property
    def backend_request(self):
        """What was asked for: 'auto', 'native' or 'mxnet' (a block built
        with `source` follows its source's request)."""
        source = self.__dict__.get('_bg_source')
        return self._bg_request if source is None else source.backend_request

    def __setattr__(self, name, value):
        if name == 'backend':  # the property; Block's setattr would read it first
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def backend(self):
        """'native' or 'mxnet': what this block runs (resolved now if its
        parameters exist; None before they are initialized)."""
        self._sync_backend()
        return self._bg_backend

    @backend.setter
    def backend(self, request):
        request = check_backend(request)
        for blk in _blocks(self):
            if isinstance(blk, BackendMixin):
                blk.__dict__.update(_bg_request=request, _bg_key=None)
        self._sync_backend()

    def _bg_anchor_param(self):
        anchor = self.__dict__.get('_bg_anchor')
        if anchor is None:
            params = list(self.collect_params().values())
            anchor = params[0] if params else False
            self.__dict__['_bg_anchor'] = anchor
        return anchor

    def _sync_backend(self, like=None):
        """Resolve the request for where the parameters are now (or, for a
        block without parameters, its input `like`)."""
        anchor = self._bg_anchor_param()
        if anchor:
            try:
                contexts = tuple(anchor.list_ctx())
            except RuntimeError:  # not initialized yet: MXNet will say so
                return
            dtype = onp.dtype(anchor.dtype).name
        elif like is not None:
            contexts, dtype = (like.ctx,), onp.dtype(like.dtype).name
        else:  # no parameters and no input yet: nothing to resolve for
            return
        key = (self.backend_request, contexts, dtype, self._bg_precision)
        if key != self._bg_key:
            set_backend(self, resolve_backend(*key), key)

    def forward(self, x, *args):
        if isinstance(x, mx.nd.NDArray):  # an eager call, not a trace
            self._sync_backend(x)
        return super().forward(x, *args)

    @property
    def native(self):
        return self._bg_backend == 'native'

    @property
    def products(self):
        """Who multiplies in this block's native ops, in what: '' (MKL's or
        OpenBLAS's float32), 'onednn' (its float32), 'mkl-bf16' or
        'onednn-bf16' (a config's dtype='bfloat16' where bf16 pays here)."""
        return self._bg_products

    @property
    def bf16(self):
        """Who multiplies this block's bf16 operands, 'onednn' or 'mkl', or ''
        (its products run in float32)."""
        products = self._bg_products
        return products[:-len('-bf16')] if products.endswith('-bf16') else ''


_graph_kind = contextvars.ContextVar('bert_gluon_graph_kind', default=None)


@contextlib.contextmanager
def scoped(variable, value):
    """`variable` (a ContextVar) holds `value` inside the block."""
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


@contextlib.contextmanager
def tracing(kind):
    """Trace the blocks called inside as part of a 'train' or 'infer' graph
    (None: an ordinary graph, dropout following autograd's mode)."""
    if kind not in (None, 'train', 'infer'):
        raise ValueError(f"kind must be None, 'train' or 'infer', got {kind!r}")
    with scoped(_graph_kind, kind):
        yield


def graph_kind():
    """The kind of graph being traced: None, 'train' or 'infer'."""
    return _graph_kind.get()


def dropout_active():
    """Whether a call applies dropout: MXNet's Dropout asks the same
    question (autograd's train mode, recorded or not)."""
    return autograd.is_training()


class InferenceGraph(nn.HybridBlock):
    """`block`'s forward traced for calls without dropout that autograd does
    not record: each encoder block one native op (which has no backward). It
    shares `block`'s parameters and hybridize flags; `block` keeps it outside
    its own tree, so the .params layout is unchanged."""
    def __init__(self, block):
        super().__init__(prefix=block.prefix + 'inference_')
        self.block = block

    def hybrid_forward(self, F, *args):
        with tracing('infer'):
            return self.block(*args)


def run_graph(block, *args):
    """Run a twin block (the encoder, the model, a classifier) on prepared
    inputs. Hybridized on the native backend, a call without dropout that
    autograd does not record runs the block's inference graph; every other
    call runs the block as it is, its dropout following `dropout_active()`."""
    block._sync_backend()
    if (not block._active or not block.native or dropout_active()
            or autograd.is_recording()):
        return nn.HybridBlock.forward(block, *args)
    graph = block.__dict__.get('_inference_graph')
    if graph is None:
        graph = InferenceGraph(block)
        object.__setattr__(block, '_inference_graph', graph)  # not a child block
    if (graph._active, graph._flags) != (True, block._flags):
        graph._active, graph._flags = True, list(block._flags)
        graph._clear_cached_op()
    return graph(*args)
