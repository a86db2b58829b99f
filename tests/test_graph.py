"""The training step as one CUDA graph (issue 11): bitwise equal to eager execution.

On a GPU (marked ``gpu``): whole runs with graph on and off -- through the last, smaller
batch of each epoch, a learning-rate change every epoch (lr_decay), evaluation in eval mode
and a resume -- give the same weights, optimizer state and figures bit for bit, and the
graph really replayed.  Everywhere the emulator runs: the replayable updates
(``sgd_update_indexed``, ``adam_update_indexed``: values read from a device table) equal the
plain update kernels bitwise, and on the CPU the graph option changes nothing.
"""
import numpy as np
import pytest

import gpucnn as nn
from gpucnn.data import load_dataset
from gpucnn.graph import GraphUnavailable, StepGraph
from gpucnn.models import lenet
from gpucnn.trainer import Trainer, make_optimizer

FIGURES = ("train_loss", "train_acc", "test_loss", "test_acc")


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", limit_train=200, limit_test=60)   # 7 batches of 32, last 8


def _trainer(data, device, opt, **kw):
    nn.manual_seed(0)
    model = lenet(data.input_shape, data.num_classes).to(device)
    return Trainer(model, make_optimizer(opt, model.parameters(), 0.05 if opt == "sgd" else 1e-3),
                   data.train, data.test, batch_size=32, seed=0, progress=False,
                   log=lambda *_: None, lr_decay=0.7, **kw)


def _same(a, b):
    for key in FIGURES:
        assert [h[key] for h in a.history] == [h[key] for h in b.history], key
    for k, v in a.model.state_dict().items():
        assert np.array_equal(v, b.model.state_dict()[k]), k
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(np.asarray(sa[k]), np.asarray(sb[k])), k


@pytest.mark.gpu
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_graph_replay_equals_eager_bitwise_on_the_gpu(data, opt):
    from gpucnn import backends
    backend, reason = backends._try_cuda()
    if backend is None:
        pytest.skip(reason)
    eager = _trainer(data, "cuda", opt, graph=False)
    eager.fit(3)
    graphed = _trainer(data, "cuda", opt, graph=True)
    assert isinstance(graphed.graph, StepGraph)
    graphed.fit(3)
    assert graphed.graph.failed is None, graphed.graph.failed
    assert graphed.graph.replays >= 3 * 5        # all full batches but the first one
    _same(eager, graphed)


@pytest.mark.gpu
def test_graph_resume_equals_the_uninterrupted_run(data, tmp_path):
    from gpucnn import backends
    if backends._try_cuda()[0] is None:
        pytest.skip("no CUDA backend")
    full = _trainer(data, "cuda", "adam", graph=True)
    full.fit(2)
    first = _trainer(data, "cuda", "adam", graph=True, run_dir=tmp_path)
    first.fit(1)
    resumed = _trainer(data, "cuda", "adam", graph=True, run_dir=tmp_path)
    resumed.restore(tmp_path / "checkpoint.npz")
    resumed.fit(2)
    _same(full, resumed)


def test_on_the_cpu_the_graph_option_changes_nothing(data):
    a = _trainer(data, "cpu", "sgd", graph=True)
    assert a.graph is None
    a.fit(1)
    b = _trainer(data, "cpu", "sgd", graph=False)
    b.fit(1)
    _same(a, b)


# ------------------------------------------------------------- the replayable updates
@pytest.fixture(scope="module")
def emulated():
    from tests.cuda_emu import emulator_unavailable_reason, make_emulated_backend
    reason = emulator_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return make_emulated_backend()


def _rand(seed, shape, dt, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dt)


@pytest.mark.emulated
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("momentum, wd, nesterov", [(0.0, 0.0, False), (0.9, 0.01, False),
                                                    (0.8, 0.0, True)])
def test_sgd_update_indexed_equals_sgd_update(emulated, dt, momentum, wd, nesterov):
    B = emulated
    p1, g, b1 = _rand(1, 1000, dt), _rand(2, 1000, dt), _rand(3, 1000, dt)
    p2, b2 = p1.copy(), b1.copy()
    B.sgd_update(p1, g, b1 if momentum else None, 0.037, momentum, wd, nesterov, False)
    B.sgd_update_indexed(p2, g, b2 if momentum else None, np.array([0.037], dt), momentum, wd,
                         nesterov)
    assert np.array_equal(p1, p2) and np.array_equal(b1, b2)


@pytest.mark.emulated
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_adam_update_indexed_reads_its_row_and_equals_adam_update(emulated, dt):
    B = emulated
    p1, g = _rand(4, 777, dt), _rand(5, 777, dt)
    m1, v1 = _rand(6, 777, dt, 0.1), np.abs(_rand(7, 777, dt, 0.1))
    p2, m2, v2 = p1.copy(), m1.copy(), v1.copy()
    table = np.array([B.adam_table_row(dt, s, 1e-3, 0.9, 0.999) for s in (5, 6, 7)], dt).reshape(-1)
    row = np.zeros(1, np.int64)
    B.advance_row(row, dt)
    assert row[0] == 1
    B.adam_update(p1, g, m1, v1, 6, 1e-3, 0.9, 0.999, 1e-8, 0.01)
    B.adam_update_indexed(p2, g, m2, v2, table, row, 0.9, 0.999, 1e-8, 0.01)
    assert np.array_equal(p1, p2) and np.array_equal(m1, m2) and np.array_equal(v1, v2)


def test_graph_option_is_checked(data):
    with pytest.raises(ValueError, match="graph"):
        _trainer(data, "cpu", "sgd", graph="sometimes")
    assert GraphUnavailable.__mro__[1] is RuntimeError


# ----------------------------------- the graph's bookkeeping, on a stand-in for CuPy
class _FakeStream:
    """CuPy's stream API on the CPU.  A "capture" runs the body (NumPy cannot record) and then
    puts the flat buffers and the row counter back, so that, as in a real capture, nothing
    has changed; the "graph" replays the body on the same static buffers."""

    def __init__(self, non_blocking=False):
        self.saved = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def record(self):
        return self

    def wait_event(self, event):
        pass

    def synchronize(self):
        pass

    def begin_capture(self):
        sg = _FakeCuda.current
        flat = sg.trainer.optimizer._flat
        self.saved = (flat.data.copy(), {k: v.copy() for k, v in flat.state.items()},
                      sg._row.copy())

    def end_capture(self):
        sg = _FakeCuda.current
        flat = sg.trainer.optimizer._flat
        data, state, row = self.saved
        flat.data[...] = data
        for k, v in state.items():
            flat.state[k][...] = v
        sg._row[...] = row
        return _FakeGraph(sg)


class _FakeGraph:
    def __init__(self, sg):
        self.sg = sg

    def launch(self, stream=None):
        loss, correct = self.sg._graph_body()
        self.sg.loss_static[...] = loss.array
        self.sg.correct_static = np.asarray(correct)


class _FakeCuda:
    current = None
    Graph = _FakeGraph
    Stream = _FakeStream

    class MemoryPool:
        malloc = None

    class runtime:
        @staticmethod
        def memGetInfo():
            return 1 << 40, 1 << 40

    @staticmethod
    def using_allocator(_):
        import contextlib
        return contextlib.nullcontext()

    @staticmethod
    def get_current_stream():
        return _FakeStream()


class _FakeCupy:
    """numpy, plus a ``cuda`` namespace: the trainer takes it for device memory."""
    cuda = _FakeCuda

    def __getattr__(self, name):
        return getattr(np, name)


def _fake_backend():
    from gpucnn.backends import numpy as npb
    from gpucnn.backends.cuda_backend import CudaBackend
    from gpucnn.backends.numpy import pointwise as pw

    class FakeGpu(npb.NumpyBackend):
        name = "cuda"
        xp = _FakeCupy()
        adam_table_row = staticmethod(CudaBackend.adam_table_row)

        @staticmethod
        def sgd_update_indexed(param, grad, buf, lr_table, momentum, wd, nesterov):
            pw.sgd_update(param, grad, buf, float(lr_table[0]), momentum, wd, nesterov, False)

        @staticmethod
        def adam_update_indexed(param, grad, m, v, table, row, b1, b2, eps, wd):
            t = param.dtype.type
            step_size, inv = table[2 * row[0]], table[2 * row[0] + 1]
            g = grad + t(wd) * param if wd else grad
            m *= t(b1)
            m += t(1 - b1) * g
            v *= t(b2)
            v += t(1 - b2) * (g * g)
            denom = np.sqrt(v)
            denom *= inv
            denom += t(eps)
            param -= step_size * (m / denom)

        @staticmethod
        def advance_row(row, dtype):
            row[0] += 1

    return FakeGpu()


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_graph_bookkeeping_replays_equal_eager_on_a_cpu_stand_in(data, opt, monkeypatch):
    """Tables, rows, the Adam step count, the lr change each epoch, the last smaller batch and
    eval: replaying through StepGraph gives the eager run bitwise (real capture: GPU test)."""
    from gpucnn import backends
    fake = _fake_backend()
    orig_init = StepGraph.__init__

    def init(self, trainer, xp):
        orig_init(self, trainer, xp)
        _FakeCuda.current = self
    monkeypatch.setattr(StepGraph, "__init__", init)
    with backends.override_backend(fake):
        eager = _trainer(data, "cpu", opt, graph=False)
        eager.fit(3)
        graphed = _trainer(data, "cpu", opt, graph=True)
        assert isinstance(graphed.graph, StepGraph) and graphed.read_every == 50
        graphed.fit(3)
    assert graphed.graph.failed is None, graphed.graph.failed
    assert graphed.graph.replays == 3 * 6 - 1       # every full batch but the very first
    _same(eager, graphed)


def test_layers_a_replay_would_get_wrong_keep_the_trainer_eager():
    from gpucnn.graph import graph_safe, unsafe_layers

    class Noisy(nn.Module):          # stands for Dropout: a host draw per step
        def forward(self, x):
            return x

        def backward(self, grad, input_grad=True):
            return grad
    assert graph_safe(nn.Sequential(nn.Linear(2, 3), nn.ReLU()))
    assert unsafe_layers(nn.Sequential(nn.Linear(2, 3), Noisy())) == {"Noisy"}
