"""No device sync per step (issue 11): losses as device Scalars, the trainer reading them at
a bounded interval, data gathered on the device -- and none of it changes a result.

On the CPU every path below must give bitwise the figures and weights of the plain
per-step path; a non-finite loss found late still stops training with the last good
checkpoint kept and names the step where it happened.
"""
import math

import numpy as np
import pytest

import gpucnn as nn
import gpucnn.losses as losses_module
from gpucnn.checkpoint import CHECKPOINT_NAME, load_checkpoint
from gpucnn.data import BatchIterator, load_dataset
from gpucnn.device_data import DeviceBatchIterator
from gpucnn.models import lenet
from gpucnn.scalar import Scalar, as_scalar
from gpucnn.trainer import Trainer, TrainingDiverged, make_optimizer

FIGURES = ("train_loss", "train_acc", "test_loss", "test_acc")


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", limit_train=200, limit_test=60)


def make_trainer(data, run_dir=None, opt="adam", lr=1e-3, **kw):
    nn.manual_seed(0)
    model = lenet(data.input_shape, data.num_classes)
    return Trainer(model, make_optimizer(opt, model.parameters(), lr), data.train, data.test,
                   batch_size=32, seed=0, run_dir=run_dir, progress=False,
                   log=lambda *_: None, **kw)


def assert_same_run(a, b):
    for key in FIGURES:
        assert [h[key] for h in a.history] == [h[key] for h in b.history], key
    for k, v in a.model.state_dict().items():
        assert np.array_equal(b.model.state_dict()[k], v), k


# ------------------------------------------------------------------------------- Scalar
def test_a_scalar_reads_as_the_float_it_holds():
    s = Scalar(np.array(2.5))
    assert float(s) == 2.5 and s.item() == 2.5 and type(s.item()) is float
    assert f"{s:.2f}" == "2.50" and str(s) == "2.5" and repr(s) == "2.5"
    assert s + 1 == 3.5 and 1 + s == 3.5 and s * 2 == 5.0 and 5 / s == 2.0 and s - 0.5 == 2.0
    assert s > 2 and s <= 2.5 and s == 2.5 and s != 3 and -s == -2.5 and abs(-s) == 2.5
    assert s == pytest.approx(2.5) and math.isfinite(s) and not math.isnan(s)
    assert math.isnan(Scalar(np.array(np.nan))) and not math.isfinite(Scalar(np.array(np.inf)))
    assert as_scalar(1.25) == 1.25 and as_scalar(s) is s
    assert (s == "2.5") is False   # not a number: not equal, as float says
    assert np.asarray([s, Scalar(np.array(1.0))]).tolist() == [2.5, 1.0]


def test_losses_return_scalars_with_the_float_of_before(data):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    loss = nn.CrossEntropyLoss()(logits, labels)
    assert isinstance(loss, Scalar) and loss.array.shape == () and loss.array.dtype == np.float64
    z = logits - logits.max(axis=1, keepdims=True)
    want = float(-(z[np.arange(5), labels] - np.log(np.exp(z).sum(axis=1))).mean())
    assert float(loss) == want                   # bitwise the float the loss returned before
    y, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    d = y - t
    assert float(nn.MSELoss()(y, t)) == float(np.vdot(d, d) / d.size)


# ---------------------------------------------------------------- reads at an interval
@pytest.fixture(scope="module")
def reference(data):
    t = make_trainer(data)
    t.fit(2)
    return t


@pytest.mark.parametrize("read_every", [2, 50])
def test_reading_every_n_steps_changes_nothing(data, reference, read_every):
    t = make_trainer(data, read_every=read_every, read_interval=1e9)
    t.fit(2)
    assert_same_run(reference, t)


def test_device_resident_data_gives_the_host_order_bitwise(data, reference):
    t = make_trainer(data, device_data=True, read_every=50, read_interval=1e9)
    assert isinstance(t.iterator, DeviceBatchIterator)
    t.fit(2)
    assert_same_run(reference, t)


def test_the_device_iterator_is_the_host_iterator_with_batches_gathered(data):
    B = nn.backends.cpu_backend()
    x, y = data.train.images, data.train.labels
    host = BatchIterator(x, y, 48, seed=3)
    dev = DeviceBatchIterator(x, y, 48, seed=3, backend=B)
    assert len(host) == len(dev)
    for _ in range(2):
        state = host.get_state()
        assert dev.get_state() == state
        for (hx, hy), (dx, dy) in zip(host, dev):
            assert np.array_equal(hx, dx) and np.array_equal(hy, dy)
    host.set_state(state)
    dev.set_state(state)
    for (hx, hy), (dx, dy) in zip(host.epoch(skip=2), dev.epoch(skip=2)):
        assert np.array_equal(hx, dx) and np.array_equal(hy, dy)


def test_resume_with_deferred_reads_equals_the_uninterrupted_run(data, reference, tmp_path):
    stopper = make_trainer(data, tmp_path, read_every=50, read_interval=1e9,
                           on_step=lambda tr, info: (_ for _ in ()).throw(KeyboardInterrupt)
                           if info["global_step"] == 9 else None)
    with pytest.raises(KeyboardInterrupt):
        stopper.fit(2)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt.state["global_step"] == 9
    resumed = make_trainer(data, tmp_path, read_every=50, read_interval=1e9)
    resumed.restore(tmp_path / CHECKPOINT_NAME)
    resumed.fit(2)
    assert_same_run(reference, resumed)


# ------------------------------------------------------------- a NaN found late
@pytest.fixture
def device_like_losses(monkeypatch):
    """Losses that do not look at their value (as on a GPU, where that would be a sync)."""
    monkeypatch.setattr(losses_module, "_finite_loss", lambda name, B, loss, output: Scalar(loss))


def _diverge(data, run_dir, read_every):
    t = make_trainer(data, run_dir, opt="sgd", lr=1e6, read_every=read_every, read_interval=1e9)
    with pytest.raises(TrainingDiverged) as info:
        t.fit(3)
    return t, info.value


def test_a_nan_found_at_the_next_read_names_its_step_and_keeps_the_good_checkpoint(
        data, tmp_path, device_like_losses):
    eager, e1 = _diverge(data, tmp_path / "eager", 1)
    late, e2 = _diverge(data, tmp_path / "late", 50)
    # the same step is named, although the late run took more steps before reading
    assert (e1.epoch, e1.step, e1.global_step) == (e2.epoch, e2.step, e2.global_step)
    assert late.global_step >= eager.global_step
    assert "the loss became nan" in str(e2) or "the loss became inf" in str(e2)
    if e2.checkpoint is not None:          # whatever is on disk resumes: it is finite
        ckpt = load_checkpoint(e2.checkpoint)
        assert ckpt.state["global_step"] < e2.global_step


def test_a_checkpoint_is_never_written_past_an_unread_nan(data, tmp_path, device_like_losses):
    t = make_trainer(data, tmp_path, read_every=50, read_interval=1e9)
    t.fit(1)
    good = load_checkpoint(tmp_path / CHECKPOINT_NAME).state["global_step"]
    t._pending.append((1, t.global_step + 1, Scalar(np.array(np.nan)), 0, 32))
    with pytest.raises(TrainingDiverged):
        t.save()
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME).state["global_step"] == good


def test_trainer_rejects_bad_options(data):
    with pytest.raises(ValueError, match="read_every"):
        make_trainer(data, read_every=0)
    with pytest.raises(ValueError, match="device_data"):
        make_trainer(data, device_data="yes")
    with pytest.raises(ValueError, match="graph"):
        make_trainer(data, graph="maybe")


# ------------------------------------------------------------------------- on a GPU
def _cuda():
    from gpucnn import backends
    backend, reason = backends._try_cuda()
    if backend is None:
        pytest.skip(reason)
    return backend


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["device", "prefetch"])
def test_gpu_iterators_give_the_host_batches(data, kind):
    from gpucnn.device_data import PrefetchBatchIterator
    B = _cuda()
    x, y = data.train.images, data.train.labels
    host = BatchIterator(x, y, 48, seed=3)
    cls = DeviceBatchIterator if kind == "device" else PrefetchBatchIterator
    dev = cls(x, y, 48, seed=3, backend=B)
    for _ in range(2):
        for (hx, hy), (dx, dy) in zip(host, dev):
            assert np.array_equal(hx, B.to_numpy(dx)) and np.array_equal(hy, B.to_numpy(dy))


@pytest.mark.gpu
def test_gpu_training_is_the_same_with_data_on_the_device_or_prefetched(data):
    _cuda()

    def run(**kw):
        nn.manual_seed(0)
        model = lenet(data.input_shape, data.num_classes).to("cuda")
        t = Trainer(model, make_optimizer("adam", model.parameters(), 1e-3), data.train, data.test,
                    batch_size=32, seed=0, progress=False, log=lambda *_: None, **kw)
        t.fit(2)
        return t
    plain = run(device_data=False, graph=False, read_every=1)
    for kw in ({"device_data": True, "graph": False}, {"device_data": "auto", "graph": False},
               {"device_data": True, "graph": True}):
        assert_same_run(plain, run(**kw))


@pytest.mark.gpu
def test_gpu_nan_is_found_at_the_next_read(data, tmp_path):
    _cuda()
    nn.manual_seed(0)
    model = lenet(data.input_shape, data.num_classes).to("cuda")
    t = Trainer(model, make_optimizer("sgd", model.parameters(), 1e6), data.train, data.test,
                batch_size=32, seed=0, run_dir=tmp_path, progress=False, log=lambda *_: None)
    assert t.read_every == 50
    with pytest.raises(TrainingDiverged):
        t.fit(5)


@pytest.mark.parametrize("where", ["cpu", pytest.param("emulated", marks=pytest.mark.emulated)])
def test_uint8_data_normalised_on_the_device_equals_data_normalize(where):
    from gpucnn import backends
    from gpucnn.data import normalize
    if where == "cpu":
        B = backends.cpu_backend()
    else:
        from tests.cuda_emu import emulator_unavailable_reason, make_emulated_backend
        if emulator_unavailable_reason():
            pytest.skip(emulator_unavailable_reason())
        B = backends.checked.checked(make_emulated_backend())
    raw = np.random.default_rng(4).integers(0, 256, size=(23, 3, 4, 5)).astype(np.uint8)
    labels = np.arange(23) % 10
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    host = BatchIterator(raw, labels, 8, seed=1)
    dev = DeviceBatchIterator(raw, labels, 8, seed=1, backend=B, normalize=(mean, std, 255.0))
    for (hx, hy), (dx, dy) in zip(host, dev):
        want = normalize(hx.astype(np.float32) * np.float32(1 / 255.0), mean, std)
        assert np.array_equal(np.asarray(dx), want) and np.array_equal(np.asarray(dy), hy)
