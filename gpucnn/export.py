"""Export to the ecosystem: weights as safetensors, whole networks as ONNX.

* :func:`save_safetensors` / :func:`load_safetensors` -- ``model.state_dict()`` to and
  from a ``.safetensors`` file (the ``safetensors`` package's NumPy API).  The keys
  and layouts are PyTorch's for the same architecture, so
  ``torch_model.load_state_dict(safetensors.torch.load_file(path))`` works, and a file
  written from a PyTorch ``state_dict`` loads here.
* :func:`export_onnx` -- the network as an ONNX graph built with ``onnx.helper``
  (no PyTorch involved), eval-mode semantics, the batch dimension dynamic.  Each
  layer type has one converter in :data:`CONVERTERS`; a new layer adds one entry.
* :func:`export_checkpoint` -- what ``gpucnn export`` runs on a ``gpucnn train`` run.

Both formats need the optional packages: ``pip install "gpucnn[export]"``.
Files are written atomically (temporary file, fsync, rename): a failure leaves
any previous file untouched and no partial file behind.

Opset: :data:`DEFAULT_OPSET` is 17, PyTorch's own default for ``torch.onnx.export``
through 2.x, loaded by ONNX Runtime since 1.14 (2023), TensorRT 8.6+ and
onnxruntime-web.  Every operator used here has had its present semantics since
opset 13 at the latest (Conv, MaxPool, AveragePool, Gemm, Flatten, ...), so any
opset from :data:`MIN_OPSET` up to what the installed ``onnx`` knows gives the same
graph; the IR version written is the lowest the opset allows, so older runtimes
read the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import backends
from .blocks import (AdaptiveAvgPool2d, BatchNorm1d, BatchNorm2d, Dropout, Identity, Residual,
                     ShortcutA)
from .layers import (AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Module, ReLU, Sequential,
                     Sigmoid, Tanh)

__all__ = ["save_safetensors", "load_safetensors", "read_safetensors", "export_onnx", "export_checkpoint",
           "ExportError", "CONVERTERS", "DEFAULT_OPSET", "MIN_OPSET", "FORMATS"]

DEFAULT_OPSET = 17
MIN_OPSET = 13
FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx"}
INSTALL_HINT = 'pip install "gpucnn[export]"'


class ExportError(ValueError):
    """A model, file or argument that cannot be exported or loaded; the message is one line."""


def _require(module, what):
    """Import ``module`` (e.g. "onnx") or raise ImportError saying what to install."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise ImportError(f"{what} needs the '{top}' package, which is not installed: "
                          f"{INSTALL_HINT}") from None


def _atomic_write_bytes(path, data):
    from .checkpoint import atomic_write
    return atomic_write(path, lambda f: f.write(data))


# ================================================================== safetensors

def save_safetensors(model, path, metadata=None):
    """Write ``model.state_dict()`` to ``path`` as safetensors; returns the path.

    Keys and layouts are PyTorch's (``0.weight`` of shape (out, in, kh, kw), ...),
    dtypes the model's own.  ``metadata`` (str -> str) goes into the header beside
    ``{"format": "pt"}``, the marker Hugging Face loaders expect.  Atomic: an existing
    file is replaced only once the new one is complete.
    """
    st = _require("safetensors.numpy", "save_safetensors")
    if not isinstance(model, Module):
        raise TypeError(f"save_safetensors: expected a gpucnn Module, got {type(model).__name__}")
    meta = {"format": "pt"}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"save_safetensors: metadata must map str to str, got {k!r}: {type(v).__name__}")
        meta[k] = v
    tensors = {k: np.require(v, requirements="C") for k, v in model.state_dict().items()}  # keeps 0-d
    if not tensors:
        raise ExportError(f"save_safetensors: {type(model).__name__} has no parameters to save")
    data = st.save(tensors, metadata=meta)
    return _atomic_write_bytes(path, data)


def read_safetensors(path):
    """``(tensors, metadata)`` of a safetensors file, as NumPy arrays; one-line errors."""
    _require("safetensors.numpy", "load_safetensors")
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file" if not path.exists() else "Not a file", str(path))
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError, or a dtype NumPy lacks (bfloat16)
        text = " ".join(str(exc).split())
        raise ExportError(f"{path} is not a readable safetensors file ({text})") from None
    return tensors, metadata


def load_safetensors(model, path):
    """Load a safetensors file (gpucnn's or PyTorch's ``state_dict``) into ``model``; returns it.

    The keys must match ``model.state_dict()`` exactly and each shape must agree;
    floating-point tensors are cast to the model's dtype (as PyTorch's
    ``load_state_dict`` does).  On any mismatch nothing is changed and the error
    names the file and the keys.
    """
    if not isinstance(model, Module):
        raise TypeError(f"load_safetensors: expected a gpucnn Module, got {type(model).__name__}")
    tensors, _ = read_safetensors(path)
    try:
        model.load_state_dict(tensors)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"cannot load {path}: {exc}") from None
    return model


# ========================================================================= ONNX

class _Graph:
    """The nodes and initializers being built, with unique names."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []
        self._names = set()

    def name(self, base):
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def constant(self, name, array, dtype=np.float32):
        """An initializer from ``array`` (weights go in as float32)."""
        name = self.name(name)
        a = np.require(backends.asnumpy(array), dtype=dtype, requirements="C")
        self.initializers.append(self.numpy_helper.from_array(a, name))
        return name

    def node(self, op, inputs, prefix, **attrs):
        """Add one node; return the name of its (single) output."""
        out = self.name(f"{prefix}/{op}_output" if prefix else f"/{op}_output")
        self.nodes.append(self.helper.make_node(op, list(inputs), [out],
                                                name=self.name(f"{prefix}/{op}"), **attrs))
        return out


# A converter: fn(graph, module, prefix, x, shape) -> (y, shape).  ``x`` names the input
# tensor, ``shape`` is its shape without the batch axis; ``prefix`` is the module's
# state_dict path ("3" in a Sequential, "" for the root), so initializers get the
# state_dict names ("3.weight").
CONVERTERS = {}


def converter(*types):
    """Register ``fn`` as the ONNX converter of the given layer types."""
    def register(fn):
        for t in types:
            CONVERTERS[t] = fn
        return fn
    return register


def _key(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _where(prefix, module):
    return f"layer {prefix} ({type(module).__name__})" if prefix else type(module).__name__


def _convert(g, module, prefix, x, shape):
    fn = CONVERTERS.get(type(module))
    if fn is None:
        supported = ", ".join(sorted(t.__name__ for t in CONVERTERS))
        raise ExportError(f"export_onnx: no ONNX converter for {_where(prefix, module)}; "
                          f"supported layers: {supported}")
    return fn(g, module, prefix, x, shape)


def _need_ndim(module, prefix, shape, ndim, what):
    if len(shape) != ndim:
        raise ExportError(f"export_onnx: {_where(prefix, module)} needs {what} input but gets shape "
                          f"(N, {', '.join(map(str, shape))})")


def _window_out(module, prefix, shape, kernel, stride, padding):
    from .backends.geometry import out_hw
    h, w = shape[1] + 2 * padding[0], shape[2] + 2 * padding[1]
    if h < kernel[0] or w < kernel[1]:
        raise ExportError(f"export_onnx: {_where(prefix, module)}: the padded input ({h}x{w}) is "
                          f"smaller than the kernel ({kernel[0]}x{kernel[1]})")
    return out_hw(shape[1:], kernel, stride, padding)


@converter(Sequential)
def _sequential(g, module, prefix, x, shape):
    for i, layer in enumerate(module.layers):
        x, shape = _convert(g, layer, _key(prefix, str(i)), x, shape)
    return x, shape


@converter(Conv2d)
def _conv2d(g, m, prefix, x, shape):
    _need_ndim(m, prefix, shape, 3, "a 4-D (N, C, H, W)")
    if shape[0] != m.in_channels:
        raise ExportError(f"export_onnx: {_where(prefix, m)} expects {m.in_channels} input channels "
                          f"but gets {shape[0]}")
    oh, ow = _window_out(m, prefix, shape, m.kernel_size, m.stride, m.padding)
    inputs = [x, g.constant(_key(prefix, "weight"), m.weight.data)]
    if m.bias is not None:
        inputs.append(g.constant(_key(prefix, "bias"), m.bias.data))
    (ph, pw) = m.padding
    y = g.node("Conv", inputs, prefix, kernel_shape=list(m.kernel_size), strides=list(m.stride),
               pads=[ph, pw, ph, pw], dilations=[1, 1], group=1)
    return y, (m.out_channels, oh, ow)


@converter(Linear)
def _linear(g, m, prefix, x, shape):
    _need_ndim(m, prefix, shape, 1, "a 2-D (N, features)")
    if shape[0] != m.in_features:
        raise ExportError(f"export_onnx: {_where(prefix, m)} expects {m.in_features} input features "
                          f"but gets {shape[0]}")
    inputs = [x, g.constant(_key(prefix, "weight"), m.weight.data)]
    if m.bias is not None:
        inputs.append(g.constant(_key(prefix, "bias"), m.bias.data))
    return g.node("Gemm", inputs, prefix, alpha=1.0, beta=1.0, transA=0, transB=1), (m.out_features,)


def _pool(op, **extra):
    def convert(g, m, prefix, x, shape):
        _need_ndim(m, prefix, shape, 3, "a 4-D (N, C, H, W)")
        oh, ow = _window_out(m, prefix, shape, m.kernel_size, m.stride, m.padding)
        (ph, pw) = m.padding
        y = g.node(op, [x], prefix, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                   pads=[ph, pw, ph, pw], ceil_mode=0, **extra)
        return y, (shape[0], oh, ow)
    return convert


# Max pooling pads with -inf in both; average pooling counts the padded zeros (PyTorch's default).
converter(MaxPool2d)(_pool("MaxPool"))
converter(AvgPool2d)(_pool("AveragePool", count_include_pad=1))


def _elementwise(op):
    def convert(g, m, prefix, x, shape):
        return g.node(op, [x], prefix), shape
    return convert


converter(Sigmoid)(_elementwise("Sigmoid"))
converter(ReLU)(_elementwise("Relu"))
converter(Tanh)(_elementwise("Tanh"))


@converter(Flatten)
def _flatten(g, m, prefix, x, shape):
    if not shape:
        raise ExportError(f"export_onnx: {_where(prefix, m)} needs an input with a batch axis and more")
    return g.node("Flatten", [x], prefix, axis=1), (int(np.prod(shape)),)


# ------------------------------------------------- batch norm, dropout, global pooling, residuals

@converter(BatchNorm2d, BatchNorm1d)
def _batchnorm(g, m, prefix, x, shape):
    if not m.track_running_stats:
        raise ExportError(f"export_onnx: {_where(prefix, m)} has track_running_stats=False, so even "
                          "in eval it normalises with each batch's statistics; ONNX export needs "
                          "running statistics")
    if not shape or shape[0] != m.num_features:
        raise ExportError(f"export_onnx: {_where(prefix, m)} expects {m.num_features} channels (axis 1) "
                          f"but gets shape (N, {', '.join(map(str, shape))})")
    c = m.num_features
    scale = m.weight.data if m.affine else np.ones(c, np.float32)
    shift = m.bias.data if m.affine else np.zeros(c, np.float32)
    inputs = [x, g.constant(_key(prefix, "weight") if m.affine else f"{prefix}/ones", scale),
              g.constant(_key(prefix, "bias") if m.affine else f"{prefix}/zeros", shift),
              g.constant(_key(prefix, "running_mean"), m.running_mean.data),
              g.constant(_key(prefix, "running_var"), m.running_var.data)]
    return g.node("BatchNormalization", inputs, prefix, epsilon=float(m.eps)), shape


@converter(Dropout, Identity)
def _identity(g, m, prefix, x, shape):
    return x, shape  # eval: dropout passes its input through; no node needed


@converter(AdaptiveAvgPool2d)
def _adaptive_avgpool(g, m, prefix, x, shape):
    _need_ndim(m, prefix, shape, 3, "a 4-D (N, C, H, W)")
    h, w = shape[1:]
    oh = h if m.output_size[0] is None else m.output_size[0]
    ow = w if m.output_size[1] is None else m.output_size[1]
    if (oh, ow) == (1, 1):
        return g.node("GlobalAveragePool", [x], prefix), (shape[0], 1, 1)
    if h % oh or w % ow:
        raise ExportError(f"export_onnx: {_where(prefix, m)}: the input's {h}x{w} is not a multiple "
                          f"of the output size {oh}x{ow}")
    k = [h // oh, w // ow]
    return g.node("AveragePool", [x], prefix, kernel_shape=k, strides=k, pads=[0, 0, 0, 0],
                  ceil_mode=0, count_include_pad=1), (shape[0], oh, ow)


@converter(Residual)
def _residual(g, m, prefix, x, shape):
    a, a_shape = _convert(g, m.main, _key(prefix, "main"), x, shape)
    if m.shortcut is None:
        s, s_shape = x, shape
    else:
        s, s_shape = _convert(g, m.shortcut, _key(prefix, "shortcut"), x, shape)
    if a_shape != s_shape:
        raise ExportError(f"export_onnx: {_where(prefix, m)}: the main branch gives shape (N, "
                          f"{', '.join(map(str, a_shape))}) but the shortcut gives (N, "
                          f"{', '.join(map(str, s_shape))})")
    return g.node("Add", [a, s], prefix), a_shape


@converter(ShortcutA)
def _shortcut_a(g, m, prefix, x, shape):
    """x[:, :, ::sh, ::sw] (Slice with steps), then zero channels before and after (Pad)."""
    _need_ndim(m, prefix, shape, 3, "a 4-D (N, C, H, W)")
    if shape[0] != m.in_channels:
        raise ExportError(f"export_onnx: {_where(prefix, m)} expects {m.in_channels} input channels "
                          f"but gets {shape[0]}")
    (sh, sw), where = m.stride, prefix + "/ShortcutA"
    if (sh, sw) != (1, 1):
        big = np.iinfo(np.int64).max
        x = g.node("Slice", [x, g.constant(f"{where}/starts", [0, 0], np.int64),
                             g.constant(f"{where}/ends", [big, big], np.int64),
                             g.constant(f"{where}/axes", [2, 3], np.int64),
                             g.constant(f"{where}/steps", [sh, sw], np.int64)], prefix)
    after = m.out_channels - m.in_channels - m.pad_before
    y = g.node("Pad", [x, g.constant(f"{where}/pads", [0, m.pad_before, 0, 0, 0, after, 0, 0],
                                     np.int64)], prefix, mode="constant")
    return y, (m.out_channels, -(-shape[1] // sh), -(-shape[2] // sw))


def _check_input_shape(input_shape):
    try:
        shape = tuple(int(s) for s in input_shape)
        ok = len(shape) >= 1 and all(s >= 1 for s in shape) and \
            all(not isinstance(s, bool) and float(s) == int(s) for s in input_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ExportError(f"export_onnx: input_shape must be the shape of one example without the "
                          f"batch axis, e.g. (1, 28, 28); got {input_shape!r}")
    return shape


def export_onnx(model, path, input_shape, opset=DEFAULT_OPSET, metadata=None):
    """Write ``model`` as an ONNX graph for inputs of shape (N, *input_shape); returns the path.

    ``input_shape`` is one example's shape without the batch axis, e.g. (1, 28, 28);
    the batch axis N is dynamic ("batch").  The graph has one float32 input "input"
    and one float32 output "output" (a float64 model's weights are written as float32).
    Eval-mode semantics whatever ``model.training`` is; the model is not changed.
    Initializers carry the ``state_dict`` names.  ``metadata`` (str -> str) goes
    into the model's ``metadata_props``.  The graph is checked with
    ``onnx.checker.check_model(full_check=True)`` before the file is written (atomically).
    """
    onnx = _require("onnx", "export_onnx")
    from onnx import TensorProto, helper, numpy_helper
    if not isinstance(model, Module):
        raise TypeError(f"export_onnx: expected a gpucnn Module, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or \
            not MIN_OPSET <= opset <= newest:
        raise ExportError(f"export_onnx: opset must be an int from {MIN_OPSET} to {newest} "
                          f"(onnx {onnx.__version__}), got {opset!r}")
    g = _Graph(helper, numpy_helper)
    x = g.name("input")
    y, out_shape = _convert(g, model, "", x, shape)
    if y == x:  # a network that is the identity: ONNX needs a node between input and output
        y = g.node("Identity", [x], "")
    output = g.name("output")
    for node in g.nodes:  # rename y to "output" where it is made and where it is read
        node.output[:] = [output if name == y else name for name in node.output]
        node.input[:] = [output if name == y else name for name in node.input]
    graph = helper.make_graph(
        g.nodes, f"gpucnn_{type(model).__name__}",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", *out_shape])],
        initializer=g.initializers)
    from . import __version__
    opsets = [helper.make_opsetid("", int(opset))]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="gpucnn",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"export_onnx: metadata must map str to str, got {k!r}: {type(v).__name__}")
        helper.set_model_props(proto, dict(metadata))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # a converter bug: say so rather than write a broken file
        raise ExportError(f"export_onnx: the graph fails onnx.checker ({' '.join(str(exc).split())})") from None
    return _atomic_write_bytes(path, proto.SerializeToString())


# =================================================================== the command

def export_checkpoint(checkpoint, fmt, out=None, *, overwrite=False, opset=DEFAULT_OPSET):
    """What ``gpucnn export`` does: a ``gpucnn train`` checkpoint to ``fmt`` ("safetensors" or "onnx").

    ``out`` defaults to ``model.safetensors`` / ``model.onnx`` beside the checkpoint.
    An existing ``out`` is refused unless ``overwrite``.  The file's metadata records
    the classes and the input normalisation (mean, std) the model was trained with.
    Returns ``(path, model, checkpoint)``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require("onnx", "gpucnn export --format onnx")
    else:
        _require("safetensors.numpy", "gpucnn export --format safetensors")
    from .checkpoint import load_checkpoint
    from .runs import load_model
    ckpt = load_checkpoint(checkpoint)
    out = Path(out) if out is not None else ckpt.path.parent / f"model{FORMATS[fmt]}"
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name such as {out / ('model' + FORMATS[fmt])}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite {out}: choose another --out or pass --force")
    if not out.parent.is_dir():
        raise FileNotFoundError(2, "No such folder for the output", str(out.parent))
    model, ckpt, cfg = load_model(ckpt, device="cpu")
    info = ckpt.state["dataset"]
    meta = {"gpucnn_model": str(cfg.model), "input_shape": json.dumps(list(info["input_shape"])),
            "classes": json.dumps([str(c) for c in info["classes"]]),
            "mean": json.dumps([float(v) for v in info.get("mean", [])]),
            "std": json.dumps([float(v) for v in info.get("std", [])]),
            "source_checkpoint": str(ckpt.path)}
    if fmt == "onnx":
        export_onnx(model.eval(), out, info["input_shape"], opset=opset, metadata=meta)
    else:
        save_safetensors(model, out, metadata=meta)
    return out, model, ckpt
