"""Export: safetensors weights (PyTorch's state_dict keys) and ONNX graphs run by ONNX Runtime.

The files are read back by the real consumers: ONNX Runtime runs the exported graph and must
match gpucnn's forward to 1e-5 relative (float32); safetensors round trips are bitwise; the
PyTorch round trip runs where torch is importable (it is not a test dependency).
"""
import os
import sys

import numpy as np
import pytest

import gpucnn as nn
from gpucnn.cli import main
from gpucnn.export import CONVERTERS, DEFAULT_OPSET, ExportError, export_onnx, load_safetensors, \
    read_safetensors, save_safetensors
from gpucnn.models import MODELS, build_model

onnx = pytest.importorskip("onnx", reason="onnx is in the [test] extra: pip install '.[test]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the [test] extra: pip install '.[test]'")
pytest.importorskip("safetensors", reason="safetensors is in the [test] extra: pip install '.[test]'")

RTOL = 1e-5
SMALL = ["--limit-train", "128", "--limit-test", "64", "--device", "cpu", "--no-progress"]


def run_onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x})
    return out


def assert_matches(ours, theirs, rtol=RTOL):
    """Equal to ``rtol`` relative to the output's scale; returns the max relative error."""
    assert ours.shape == theirs.shape and theirs.dtype == np.float32
    scale = float(np.abs(ours).max()) or 1.0
    err = float(np.abs(ours.astype(np.float64) - theirs).max()) / scale
    assert err <= rtol, f"max |gpucnn - onnxruntime| / max |gpucnn| = {err:.3g} > {rtol:g}"
    return err


def every_layer_model():
    """Every layer type with awkward settings: strides, padding, no bias, nested Sequential,
    residual blocks with the identity, option-A and option-B shortcuts, batch norm with
    non-trivial running statistics; in eval mode."""
    nn.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.Sigmoid(),   # 8x6x7
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(8, affine=False), nn.ReLU(), nn.Dropout(0.3))),
        nn.Residual(nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU()),  # 12x3x4
                    nn.ShortcutA(8, 12)),
        nn.Residual(nn.Sequential(nn.Conv2d(12, 12, 1), nn.Tanh()),
                    nn.Sequential(nn.Conv2d(12, 12, 1, bias=False), nn.BatchNorm2d(12))),
        nn.Sequential(nn.Conv2d(12, 4, (3, 2), padding=(1, 0), bias=False), nn.Tanh()),  # 4x3x3
        nn.AvgPool2d(2, stride=1, padding=1),        # 4x4x4; padded zeros count in the mean
        nn.ReLU(), nn.Identity(),
        nn.AdaptiveAvgPool2d((2, None)),             # 4x2x4: an AveragePool
        nn.MaxPool2d(2),                             # 4x1x2
        nn.AdaptiveAvgPool2d(1),                     # 4x1x1: GlobalAveragePool
        nn.Flatten(),
        nn.Linear(4, 7, bias=False), nn.BatchNorm1d(7), nn.Tanh(), nn.Dropout(), nn.Linear(7, 4))
    rng = np.random.default_rng(7)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            c = m.num_features
            m.running_mean.data = rng.normal(0, 0.5, c).astype(np.float32)
            m.running_var.data = rng.uniform(0.5, 2.0, c).astype(np.float32)
            m.num_batches_tracked.data = np.array(12, dtype=np.int64)
            if m.affine:
                m.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
                m.bias.data = rng.normal(0, 0.3, c).astype(np.float32)
    return model.eval()


EVERY_SHAPE = (3, 11, 13)
MODEL_CASES = [(name, shape) for name in sorted(MODELS)
               for shape in ((1, 8, 8), (1, 28, 28), (3, 32, 32))]


# ============================================================================ ONNX

@pytest.mark.parametrize("name,shape", MODEL_CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in MODEL_CASES])
def test_onnx_matches_forward_for_every_builtin_model(name, shape, tmp_path):
    nn.manual_seed(0)
    model = build_model(name, shape, 10).eval()     # inference: BatchNorm's running statistics
    path = export_onnx(model, tmp_path / "m.onnx", shape)
    rng = np.random.default_rng(1)
    for batch in (1, 5):  # one file, two batch sizes: the batch axis is dynamic
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        assert_matches(model(x), run_onnx(path, x))


def test_onnx_matches_forward_for_every_layer_type(tmp_path):
    model = every_layer_model()
    used = {type(m) for m in model.modules()}
    assert used >= set(CONVERTERS), f"the every-layer model lacks {set(CONVERTERS) - used}"
    path = export_onnx(model, tmp_path / "all.onnx", EVERY_SHAPE)
    rng = np.random.default_rng(2)
    for batch in (1, 5):
        x = rng.standard_normal((batch, *EVERY_SHAPE)).astype(np.float32)
        assert_matches(model(x), run_onnx(path, x))


def test_onnx_graph_is_checked_dynamic_and_named_like_state_dict(tmp_path):
    model = every_layer_model()
    path = export_onnx(model, tmp_path / "all.onnx", EVERY_SHAPE, metadata={"k": "v"})
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", *EVERY_SHAPE]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 4]
    weights = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert {i.name for i in proto.graph.initializer if "/" not in i.name} == weights
    assert {p.key: p.value for p in proto.metadata_props} == {"k": "v"}
    ops = {n.op_type for n in proto.graph.node}
    assert ops == {"Conv", "Sigmoid", "MaxPool", "Tanh", "AveragePool", "Relu", "Flatten", "Gemm",
                   "BatchNormalization", "Add", "Slice", "Pad", "GlobalAveragePool"}
    avg = next(n for n in proto.graph.node if n.op_type == "AveragePool")
    assert onnx.helper.get_attribute_value(next(a for a in avg.attribute if a.name == "count_include_pad")) == 1


def test_onnx_opset_13_eval_semantics_and_model_left_unchanged(tmp_path):
    model = every_layer_model().train()      # exported in training mode: the graph is eval's
    before = {k: v.copy() for k, v in model.state_dict().items()}
    path = export_onnx(model, tmp_path / "m13.onnx", EVERY_SHAPE, opset=13)
    assert model.training is True
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    assert onnx.load(str(path)).opset_import[0].version == 13
    x = np.random.default_rng(4).standard_normal((3, *EVERY_SHAPE)).astype(np.float32)
    assert_matches(model.eval()(x), run_onnx(path, x))


def test_onnx_of_a_float64_model_is_float32(tmp_path):
    nn.manual_seed(0)
    model = build_model("lenet", (1, 8, 8), 10).to(dtype=np.float64)
    path = export_onnx(model, tmp_path / "m.onnx", (1, 8, 8))
    x = np.random.default_rng(5).standard_normal((4, 1, 8, 8))
    assert_matches(model(x), run_onnx(path, x.astype(np.float32)), rtol=1e-5)
    assert model.dtype == np.float64


class Mystery(nn.Module):
    def forward(self, x):
        return x


def test_onnx_unknown_layer_names_it_and_the_supported_ones(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 3), Mystery()))
    with pytest.raises(ExportError) as info:
        export_onnx(model, tmp_path / "m.onnx", (4,))
    msg = str(info.value)
    assert "\n" not in msg and "layer 1.1 (Mystery)" in msg
    assert "supported layers: " in msg and "Conv2d" in msg and "Linear" in msg
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("shape,opset,expected", [
    ((1, 28, 28), DEFAULT_OPSET, "layer 7 (Linear) expects 64 input features but gets 49"),
    ((2, 8, 8), DEFAULT_OPSET, "layer 0 (Conv2d) expects 1 input channels but gets 2"),
    ((1, 2, 2), DEFAULT_OPSET, "layer 5 (MaxPool2d): the padded input (1x1) is smaller than the kernel (2x2)"),
    ((1, 8), DEFAULT_OPSET, "layer 0 (Conv2d) needs a 4-D (N, C, H, W) input but gets shape (N, 1, 8)"),
    ((1, 0, 8), DEFAULT_OPSET, "input_shape must be the shape of one example"),
    ("abc", DEFAULT_OPSET, "input_shape must be the shape of one example"),
    ((1, 8, 8), 9, "opset must be an int from 13 to"),
    ((1, 8, 8), 999, "opset must be an int from 13 to"),
])
def test_onnx_bad_arguments_are_one_line(shape, opset, expected, tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(1, 1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4, 3))
    if shape == (1, 28, 28):
        model.layers[7] = nn.Linear(64, 3)
    with pytest.raises(ExportError) as info:
        export_onnx(model, tmp_path / "m.onnx", shape, opset=opset)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_block_errors_are_one_line(tmp_path):
    cases = [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)),
         "layer 1 (BatchNorm2d) has track_running_stats=False"),
        (nn.Residual(nn.Conv2d(1, 2, 3, padding=1)),
         "Residual: the main branch gives shape (N, 2, 6, 6) but the shortcut gives (N, 1, 6, 6)"),
        (nn.Sequential(nn.AdaptiveAvgPool2d(4)), "layer 0 (AdaptiveAvgPool2d): the input's 6x6 is not "
                                                 "a multiple of the output size 4x4"),
        (nn.Sequential(nn.ShortcutA(2, 4)), "layer 0 (ShortcutA) expects 2 input channels but gets 1"),
    ]
    for model, expected in cases:
        with pytest.raises(ExportError) as info:
            export_onnx(model, tmp_path / "m.onnx", (1, 6, 6))
        assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_identity_network(tmp_path):
    path = export_onnx(nn.Sequential(nn.Identity(), nn.Dropout()), tmp_path / "id.onnx", (2, 3))
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    assert np.array_equal(run_onnx(path, x), x)


# ===================================================================== safetensors

def test_safetensors_round_trip_is_bitwise(tmp_path):
    model = every_layer_model()
    path = save_safetensors(model, tmp_path / "w.safetensors", metadata={"note": "x"})
    tensors, meta = read_safetensors(path)
    assert meta == {"format": "pt", "note": "x"}
    state = model.state_dict()
    assert set(tensors) == set(state)
    other = every_layer_model()                   # same architecture, other weights
    for p in other.parameters():
        p.data = p.data + 1
    assert load_safetensors(other, path) is other
    for k, v in other.state_dict().items():
        assert v.dtype == state[k].dtype and v.shape == state[k].shape, k
        assert v.tobytes() == state[k].tobytes(), k


def test_safetensors_float64_round_trip_keeps_dtype(tmp_path):
    nn.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10).to(dtype=np.float64)
    save_safetensors(model, tmp_path / "w.safetensors")
    tensors, _ = read_safetensors(tmp_path / "w.safetensors")
    assert {v.dtype for v in tensors.values()} == {np.dtype(np.float64)}
    other = build_model("mlp", (1, 8, 8), 10).to(dtype=np.float64)
    load_safetensors(other, tmp_path / "w.safetensors")
    assert all(np.array_equal(other.state_dict()[k], v) for k, v in model.state_dict().items())


def _write(path, tensors):
    from safetensors.numpy import save_file
    save_file(tensors, str(path))
    return path


def test_safetensors_load_errors_name_the_file_and_keys(tmp_path):
    nn.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    state = model.state_dict()
    before = {k: v.copy() for k, v in state.items()}
    cases = [
        ({k: v for k, v in state.items() if k != "5.bias"}, ValueError, "missing ['5.bias'], unexpected none"),
        ({**state, "9.weight": np.zeros(2, np.float32)}, ValueError, "missing none, unexpected ['9.weight']"),
        ({**state, "1.weight": np.zeros((3, 64), np.float32)}, ValueError,
         "'1.weight' has shape (3, 64), expected (256, 64)"),
        ({**state, "1.bias": np.zeros(256, np.int32)}, TypeError, "'1.bias' has dtype int32"),
    ]
    for i, (tensors, exc_type, expected) in enumerate(cases):
        path = _write(tmp_path / f"bad{i}.safetensors", tensors)
        with pytest.raises(exc_type) as info:
            load_safetensors(model, path)
        msg = str(info.value)
        assert msg.startswith(f"cannot load {path}: ") and expected in msg and "\n" not in msg, msg
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())  # untouched

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ExportError, match=f"{junk} is not a readable safetensors file"):
        load_safetensors(model, junk)
    with pytest.raises(FileNotFoundError):
        load_safetensors(model, tmp_path / "nope.safetensors")


def test_safetensors_accepts_float16_as_pytorch_would(tmp_path):
    nn.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    half = {k: v.astype(np.float16) for k, v in model.state_dict().items()}
    load_safetensors(model, _write(tmp_path / "h.safetensors", half))
    for k, v in model.state_dict().items():
        assert v.dtype == np.float32 and np.array_equal(v, half[k].astype(np.float32))


def test_writes_are_atomic(tmp_path, monkeypatch):
    nn.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    st, ox = tmp_path / "w.safetensors", tmp_path / "m.onnx"
    st.write_bytes(b"old weights")
    ox.write_bytes(b"old graph")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space left"):
        save_safetensors(model, st)
    with pytest.raises(OSError, match="No space left"):
        export_onnx(model, ox, (1, 8, 8))
    assert st.read_bytes() == b"old weights" and ox.read_bytes() == b"old graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "w.safetensors"]  # no temp files


def test_missing_packages_say_what_to_install(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"export_onnx needs the 'onnx' package, which is not "
                                          r"installed: pip install \"gpucnn\[export\]\""):
        export_onnx(model, tmp_path / "m.onnx", (4,))
    with pytest.raises(ImportError, match=r"'safetensors' package.*pip install \"gpucnn\[export\]\""):
        save_safetensors(model, tmp_path / "w.safetensors")
    with pytest.raises(ImportError, match=r"'safetensors' package"):
        load_safetensors(model, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


# ============================================================ the command, end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "--out", str(out), "--epochs", "1", "--model", "lenet", *SMALL]) == 0
    return out


def test_cli_export_both_formats_predict_the_same_classes(trained, tmp_path, capsys):
    import json

    from gpucnn.data import load_digits, load_image, normalize
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(trained), "--format", "onnx"]) == 0
    assert main(["export", "--checkpoint", str(trained / "checkpoint.npz"), "--format", "safetensors",
                 "--out", str(tmp_path / "w.safetensors")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{trained / 'checkpoint.npz'} -> {trained / 'model.onnx'} (onnx, ")
    assert lines[1].startswith(f"{trained / 'checkpoint.npz'} -> {tmp_path / 'w.safetensors'} (safetensors, ")

    images, _ = load_digits()
    files = []
    for i in range(12):
        files.append(tmp_path / f"d{i}.npy")
        np.save(files[-1], (images[100 + 37 * i] / 16.0).astype(np.float32))
    assert main(["predict", "--checkpoint", str(trained), *map(str, files)]) == 0
    predicted = [line.split(": ", 1)[1].split(" ")[0] for line in capsys.readouterr().out.splitlines()]

    proto = onnx.load(str(trained / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    shape, classes = tuple(json.loads(meta["input_shape"])), json.loads(meta["classes"])
    x = normalize(np.stack([load_image(f, shape)[0] for f in files]),
                  json.loads(meta["mean"]), json.loads(meta["std"]))
    logits = run_onnx(trained / "model.onnx", x)
    assert [classes[i] for i in logits.argmax(1)] == predicted

    tensors, st_meta = read_safetensors(tmp_path / "w.safetensors")
    assert st_meta["format"] == "pt" and json.loads(st_meta["classes"]) == classes
    model = build_model(st_meta["gpucnn_model"], shape, len(classes))
    load_safetensors(model, tmp_path / "w.safetensors")
    assert [classes[i] for i in model(x).argmax(1)] == predicted
    assert_matches(model(x), logits)


def test_cli_export_refuses_to_overwrite_unless_forced(trained, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    rc = main(["export", "--checkpoint", str(trained), "--format", "onnx", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and err == (f"gpucnn: error: refusing to overwrite {out}: choose another --out "
                               f"or pass --force\n")
    assert out.read_bytes() == b"keep me"
    assert main(["export", "--checkpoint", str(trained), "--format", "onnx", "--out", str(out),
                 "--force", "--opset", "13"]) == 0
    assert onnx.load(str(out)).opset_import[0].version == 13


def test_cli_export_errors_are_one_line(trained, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope"
    assert main(["export", "--checkpoint", str(missing), "--format", "onnx"]) == 1
    assert capsys.readouterr().err == f"gpucnn: error: checkpoint {missing} does not exist\n"
    assert main(["export", "--checkpoint", str(trained), "--format", "onnx",
                 "--out", str(tmp_path / "no" / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "no") in err
    assert main(["export", "--checkpoint", str(trained), "--format", "onnx", "--out", str(tmp_path)]) == 1
    assert "is a folder; give a file name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["export", "--checkpoint", str(trained), "--format", "pickle"])
    assert info.value.code == 2 and "invalid choice: 'pickle'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", "--checkpoint", str(trained), "--format", "onnx",
                 "--out", str(tmp_path / "x.onnx")]) == 1
    assert capsys.readouterr().err == ("gpucnn: error: gpucnn export --format onnx needs the 'onnx' "
                                       "package, which is not installed: pip install \"gpucnn[export]\"\n")
    assert not (tmp_path / "x.onnx").exists()


# ============================================================ PyTorch, when present

def torch_twin(model):
    """The same architecture in torch.nn (for layers that share PyTorch's semantics)."""
    tnn = pytest.importorskip("torch.nn", reason="PyTorch is not installed (not a test dependency)")
    simple = {nn.ReLU: tnn.ReLU, nn.Sigmoid: tnn.Sigmoid, nn.Tanh: tnn.Tanh, nn.Flatten: tnn.Flatten}
    if isinstance(model, nn.Sequential):
        return tnn.Sequential(*[torch_twin(m) for m in model.layers])
    if type(model) in simple:
        return simple[type(model)]()
    if isinstance(model, nn.Conv2d):
        return tnn.Conv2d(model.in_channels, model.out_channels, model.kernel_size, model.stride,
                          model.padding, bias=model.bias is not None)
    if isinstance(model, nn.Linear):
        return tnn.Linear(model.in_features, model.out_features, bias=model.bias is not None)
    if isinstance(model, nn.MaxPool2d):
        return tnn.MaxPool2d(model.kernel_size, model.stride, model.padding)
    if isinstance(model, nn.AvgPool2d):
        return tnn.AvgPool2d(model.kernel_size, model.stride, model.padding)
    if isinstance(model, (nn.BatchNorm2d, nn.BatchNorm1d)):
        kind = tnn.BatchNorm2d if isinstance(model, nn.BatchNorm2d) else tnn.BatchNorm1d
        return kind(model.num_features, eps=model.eps, momentum=model.momentum, affine=model.affine,
                    track_running_stats=model.track_running_stats)
    if isinstance(model, nn.Dropout):
        return tnn.Dropout(model.p)
    if isinstance(model, nn.Identity):
        return tnn.Identity()
    if isinstance(model, nn.AdaptiveAvgPool2d):
        return tnn.AdaptiveAvgPool2d(model.output_size)
    if isinstance(model, nn.Residual):
        return _TorchResidual(torch_twin(model.main),
                              None if model.shortcut is None else torch_twin(model.shortcut))
    if isinstance(model, nn.ShortcutA):
        return _TorchShortcutA(model.stride, model.pad_before, model.out_channels - model.in_channels
                               - model.pad_before)
    raise AssertionError(f"no torch twin for {type(model).__name__}")


def _torch_classes():
    tnn = pytest.importorskip("torch.nn", reason="PyTorch is not installed (not a test dependency)")
    import torch.nn.functional as F

    class Residual(tnn.Module):
        def __init__(self, main, shortcut):
            super().__init__()
            self.main, self.shortcut = main, shortcut

        def forward(self, x):
            return self.main(x) + (x if self.shortcut is None else self.shortcut(x))

    class ShortcutA(tnn.Module):
        def __init__(self, stride, before, after):
            super().__init__()
            self.stride, self.before, self.after = stride, before, after

        def forward(self, x):
            return F.pad(x[:, :, ::self.stride[0], ::self.stride[1]],
                         (0, 0, 0, 0, self.before, self.after))

    return Residual, ShortcutA


def _TorchResidual(main, shortcut):
    return _torch_classes()[0](main, shortcut)


def _TorchShortcutA(stride, before, after):
    return _torch_classes()[1](stride, before, after)


@pytest.mark.parametrize("which", ["every-layer", "lenet"])
def test_pytorch_round_trip_both_ways(which, tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (not a test dependency)")
    from safetensors.torch import load_file, save_file
    if which == "lenet":
        nn.manual_seed(0)
        model, shape = build_model("lenet", (1, 28, 28), 10), (1, 28, 28)
    else:
        model, shape = every_layer_model(), EVERY_SHAPE
    twin = torch_twin(model).eval()
    x = np.random.default_rng(6).standard_normal((5, *shape)).astype(np.float32)

    save_safetensors(model, tmp_path / "ours.safetensors")              # gpucnn -> torch
    twin.load_state_dict(load_file(str(tmp_path / "ours.safetensors")), strict=True)
    with torch.no_grad():
        assert_matches(model(x), twin(torch.from_numpy(x)).numpy())

    torch.manual_seed(1)                                                # torch -> gpucnn
    fresh = torch_twin(model).eval()
    with torch.no_grad():                                               # non-trivial BN statistics
        for m in fresh.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked += 5
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.3)
    save_file(fresh.state_dict(), str(tmp_path / "torch.safetensors"))
    load_safetensors(model, tmp_path / "torch.safetensors")
    for k, v in fresh.state_dict().items():
        assert model.state_dict()[k].tobytes() == v.numpy().tobytes(), k
    with torch.no_grad():
        assert_matches(model(x), fresh(torch.from_numpy(x)).numpy())


def test_import_gpucnn_does_not_load_the_export_packages():
    import subprocess
    code = ("import sys, gpucnn; gpucnn.save_safetensors; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'safetensors') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
