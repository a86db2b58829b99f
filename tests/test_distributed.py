"""Data-parallel training (gpucnn.distributed): N processes under mpiexec compute the
one-process step; faults end the job.  The multi-process tests are marked ``distributed``
(``pytest -m distributed``) and skip, saying why, without mpi4py or mpiexec."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpucnn import distributed as dist
from gpucnn.data import BatchIterator
from tests import distributed_worker as worker

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"


def _mpiexec():
    """(path to mpiexec, None) or (None, why the multi-process tests cannot run)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, f"mpi4py is not installed ({dist.INSTALL_HINT})"
    here = Path(sys.executable).parent / "mpiexec"   # the mpich wheel puts it next to python
    path = str(here) if here.exists() else shutil.which("mpiexec")
    if path is None:
        return None, "no mpiexec on PATH or next to the Python executable (pip install mpich)"
    return path, None


def run_mpi(n, *args, timeout=60, env=None):
    """Run ``python args...`` on ``n`` ranks; returns (CompletedProcess, seconds)."""
    mpiexec, why = _mpiexec()
    if mpiexec is None:
        pytest.skip(why)
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "GPUCNN_DEVICE": "cpu",
               "GPUCNN_NUM_THREADS": "1", **(env or {})}
    environ.pop("GPUCNN_DEBUG", None)
    t0 = time.perf_counter()
    proc = subprocess.run([mpiexec, "-n", str(n), sys.executable, *map(str, args)], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


# --------------------------------------------------------------------------- without MPI

def test_shard_bounds_split_contiguously_first_ranks_one_more():
    for n in range(0, 12):
        for size in range(1, 5):
            bounds = [dist.shard_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [e - s for s, e in bounds]
            assert sizes == [len(a) for a in np.array_split(np.arange(n), size)]


@pytest.mark.parametrize("shuffle", [True, False])
def test_sharded_iterator_shares_concatenate_to_the_global_batches(shuffle):
    x = np.arange(30 * 2, dtype=np.float64).reshape(30, 2)
    y = np.arange(30)
    ref = BatchIterator(x, y, 7, seed=5, shuffle=shuffle)
    shards = [dist.ShardedBatchIterator(x, y, 7, seed=5, shuffle=shuffle, rank=r, size=3)
              for r in range(3)]
    for _ in range(2):  # two epochs: the generators stay in step
        gens = [s.epoch() for s in shards]
        for xb, yb in ref:
            parts = [next(g) for g in gens]
            assert np.array_equal(np.concatenate([p[1] for p in parts]), yb)
            assert np.array_equal(np.concatenate([p[0] for p in parts]), xb)
            assert sum(s.share[0] for s in shards) == len(yb)
            assert all(s.share[1] == len(yb) for s in shards)
            assert sum(s.weight for s in shards) == pytest.approx(1.0)
    assert shards[2].share == (0, 2) and shards[2].weight == 0.0  # last batch of 2 on 3 ranks
    assert ref.get_state() == shards[0].get_state()                # checkpoints interchangeable


def test_sharded_iterator_skip_resumes_mid_epoch():
    x, y = np.zeros((30, 1)), np.arange(30)
    a = dist.ShardedBatchIterator(x, y, 7, seed=1, rank=1, size=2)
    b = dist.ShardedBatchIterator(x, y, 7, seed=1, rank=1, size=2)
    full = [yb for _, yb in a.epoch()]
    assert [yb.tolist() for _, yb in b.epoch(skip=2)] == [f.tolist() for f in full[2:]]


def test_sharded_iterator_rejects_a_rank_outside_the_job():
    with pytest.raises(ValueError, match="rank 2 is not in"):
        dist.ShardedBatchIterator(np.zeros((3, 1)), np.zeros(3), 2, rank=2, size=2)


class _TwinComm:
    """Two ranks holding identical gradients, in one process: the all-reduce doubles."""
    size, rank = 2, 0

    def __init__(self):
        self.calls = []

    def allreduce_buffer(self, flat):
        self.calls.append((flat.dtype, flat.size))
        flat *= 2
        return flat


@pytest.mark.parametrize("bucket_bytes", [1, 8 * 40, 2**20])
def test_gradients_travel_in_flat_buckets_per_dtype_and_come_back_in_place(bucket_bytes):
    import gpucnn as nn
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (2, 2, 3), (7,)]
    params = [nn.Parameter(rng.standard_normal(s).astype(np.float64 if i % 2 else np.float32))
              for i, s in enumerate(shapes)]
    grads = [rng.standard_normal(s).astype(p.dtype) for s, p in zip(shapes, params)]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    params[3].grad = None                       # a parameter without gradient counts as zeros
    comm = _TwinComm()
    opt = dist.create_multi_node_optimizer(nn.SGD(params, lr=0.1), comm, bucket_bytes=bucket_bytes)
    opt.allreduce_grads(weight=0.5)             # 2 x 0.5 x g: the gradients come back unchanged
    for i, p in enumerate(params):
        want = grads[i] if i != 3 else np.zeros(shapes[3])
        assert p.grad.shape == shapes[i] and p.grad.dtype == p.dtype
        np.testing.assert_allclose(p.grad, want, rtol=1e-6)
    dtypes = {str(d) for d, _ in comm.calls}
    assert dtypes == {"float32", "float64"}     # one group per dtype, never mixed
    assert sum(n for _, n in comm.calls) == sum(int(np.prod(s)) for s in shapes)
    expected = {1: 4, 8 * 40: 2, 2**20: 2}[bucket_bytes]
    assert len(comm.calls) == expected == opt.bucket_count
    opt.lr = 0.5                                # the wrapper is the optimizer to its users
    assert opt.optimizer.lr == 0.5 and opt.state_dict()["type"] == "SGD"


def test_launched_size_reads_the_launchers_variables():
    assert dist.launched_size({}) == 1
    assert dist.launched_size({"PMI_SIZE": "4"}) == 4
    assert dist.launched_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert dist.launched_size({"PMI_SIZE": "garbage"}) == 1


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # import mpi4py now raises ImportError
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    with pytest.raises(dist.DistributedError, match=r"needs mpi4py.*gpucnn\[mpi\]"):
        dist.create_communicator()


def test_import_gpucnn_does_not_import_mpi():
    code = "import sys, gpucnn, gpucnn.distributed; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- under mpiexec

@pytest.fixture(scope="module")
def references():
    from gpucnn.train import evaluate
    refs = {}
    for name in worker.OPTIMIZERS:
        model = worker.reference(name)
        refs[name] = model.state_dict()
    refs["eval"] = evaluate(model, worker.data(), batch_size=4)
    return refs


@pytest.mark.distributed
@pytest.mark.parametrize("n", [2, 3])
def test_n_processes_compute_the_one_process_steps(n, tmp_path, references):
    out = tmp_path / "weights.npz"
    proc, _ = run_mpi(n, WORKER, "equal", out)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as f:
        assert int(f["size"]) == n
        assert bool(f["same"]), "the ranks ended with different weights"
        want = references["eval"]   # evaluation split across ranks, counts summed
        assert np.array_equal(f["eval/confusion"], want.confusion)
        assert float(f["eval/loss"]) == pytest.approx(want.loss, rel=1e-9)
        for name in worker.OPTIMIZERS:
            ref = references[name]
            assert int(f[f"{name}/buckets"]) > 1
            for key, want in ref.items():
                got = f[f"{name}/{key}"]
                err = np.abs(got - want).max() / np.abs(want).max()
                assert err < 1e-6, f"{name} {key}: relative difference {err:.2e} after 10 steps"


@pytest.mark.distributed
def test_batchnorm_running_statistics_are_averaged_across_ranks(tmp_path):
    """Batch statistics are per rank (not synchronised BatchNorm); the running statistics are
    averaged at each epoch's end.  The reference simulates the 3 ranks in one process."""
    if worker.batchnorm_model() is None:
        pytest.skip("gpucnn has no BatchNorm2d yet")
    out = tmp_path / "bn.npz"
    proc, _ = run_mpi(3, WORKER, "batchnorm", out)
    assert proc.returncode == 0, proc.stderr
    want = worker.state(worker.reference_batchnorm(3))
    assert any("running_mean" in k for k in want)
    with np.load(out) as f:
        assert bool(f["same"]), "the ranks ended with different weights or statistics"
        for key, w in want.items():
            err = np.abs(f[key] - w).max() / max(np.abs(w).max(), 1e-300)
            assert err < 1e-6, f"{key}: relative difference {err:.2e}"


@pytest.mark.distributed
def test_an_exception_on_one_rank_ends_every_rank_with_one_line():
    proc, seconds = run_mpi(3, WORKER, "raise", timeout=60)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gpucnn:")]
    assert lines == ["gpucnn: rank 1 of 3: RuntimeError: injected failure at step 3; ending all ranks"]
    assert seconds < 30


@pytest.mark.distributed
def test_a_killed_rank_ends_the_job():
    proc, seconds = run_mpi(2, WORKER, "kill", timeout=60)
    assert proc.returncode != 0
    assert "signal 9" in proc.stdout + proc.stderr or "Killed" in proc.stdout + proc.stderr
    assert seconds < 30


# --------------------------------------------------------------------------- gpucnn train under mpiexec

TRAIN = ["-m", "gpucnn", "train", "--data", "digits", "--model", "lenet", "--limit-train", "90",
         "--limit-test", "30", "--batch-size", "16", "--optimizer", "sgd", "--lr", "0.05",
         "--dtype", "float64", "--device", "cpu", "--no-progress"]


@pytest.fixture
def no_plots(monkeypatch):
    """In-process reference runs skip curves.png (matplotlib: seconds on a loaded machine)."""
    import gpucnn.trainer
    monkeypatch.setattr(gpucnn.trainer, "plot_history", lambda *args, **kwargs: None)


def _train_here(epochs, out, resume=None):
    from gpucnn.runs import run_training
    kw = {} if resume else {"data": "digits", "model": "lenet", "limit_train": 90, "limit_test": 30,
                            "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "dtype": "float64",
                            "device": "cpu"}
    return run_training(out=out, resume=resume, epochs=epochs, progress=False, log=None, **kw)


def _weights(checkpoint):
    from gpucnn.checkpoint import load_checkpoint
    ckpt = load_checkpoint(checkpoint)
    return ckpt.model_state, ckpt.state


def _assert_same_weights(got, want, what):
    for key, w in want.items():
        err = np.abs(got[key] - w).max() / np.abs(w).max()
        assert err < 1e-6, f"{what}: {key} differs by {err:.2e} (relative)"


@pytest.mark.distributed
def test_checkpoint_of_n_processes_resumes_on_m_at_the_same_global_step(tmp_path, no_plots):
    """90 images, batch 16: 6 steps an epoch, the last of 10 images (shares 5/5, 4/3/3)."""
    ref = _train_here(2, tmp_path / "ref")
    first, _ = run_mpi(2, *TRAIN, "--epochs", "1", "--out", tmp_path / "two")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("epoch 1/1") == 1, first.stdout          # rank 0 alone speaks
    assert "2 processes" in first.stdout
    second, _ = run_mpi(3, *TRAIN[:2], "train", "--resume", tmp_path / "two" / "checkpoint.npz",
                        "--epochs", "2", "--out", tmp_path / "three", "--no-progress")
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == \
        ["checkpoint.npz", "curves.png", "history.csv", "history.json"]
    want, _ = _weights(ref.checkpoint)
    got, state = _weights(tmp_path / "three" / "checkpoint.npz")
    assert state["global_step"] == 12 and state["epoch"] == 2
    _assert_same_weights(got, want, "2 processes, then 3")
    one = _train_here(2, tmp_path / "one", resume=tmp_path / "two" / "checkpoint.npz")
    _assert_same_weights(_weights(one.checkpoint)[0], want, "2 processes, then 1")
    assert one.history[0]["train_loss"] == pytest.approx(ref.history[0]["train_loss"], rel=1e-9)
    assert one.history[0]["test_acc"] == ref.history[0]["test_acc"]


@pytest.mark.distributed
def test_sigterm_on_mpiexec_saves_a_checkpoint_that_resumes_exactly(tmp_path, no_plots):
    import signal
    mpiexec, why = _mpiexec()
    if mpiexec is None:
        pytest.skip(why)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPUCNN_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}   # the epoch lines arrive as they are printed
    proc = subprocess.Popen([mpiexec, "-n", "2", sys.executable, *TRAIN, "--epochs", "500",
                             "--out", str(tmp_path / "run")], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in proc.stdout:           # wait until training runs
            if line.startswith("epoch"):
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    from gpucnn.cli import EXIT_TERMINATED
    assert proc.returncode == EXIT_TERMINATED, err
    assert "training interrupted (SIGTERM); checkpoint saved" in err, err
    assert err.count("checkpoint saved") == 1
    _, state = _weights(tmp_path / "run" / "checkpoint.npz")
    epochs = state["epoch"] + 1
    ref = _train_here(epochs, tmp_path / "ref")
    resumed = _train_here(epochs, tmp_path / "resumed", resume=tmp_path / "run" / "checkpoint.npz")
    _assert_same_weights(_weights(resumed.checkpoint)[0], _weights(ref.checkpoint)[0],
                         f"stopped at global step {state['global_step']}, resumed on 1 process")


@pytest.mark.distributed
def test_an_error_every_rank_meets_is_reported_once_by_rank_0(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "history.json").write_text("{}")
    proc, _ = run_mpi(2, *TRAIN, "--epochs", "1", "--out", tmp_path / "taken")
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gpucnn:")]
    assert len(lines) == 1 and "refusing to overwrite history.json" in lines[0], proc.stderr
    assert "MPI_Abort" not in proc.stderr          # every rank returned; nothing was killed


def test_train_under_mpiexec_without_mpi4py_says_what_to_install(monkeypatch, capsys):
    from gpucnn import cli
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    assert cli.main(["train", "--epochs", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "multi-process training needs mpi4py" in err and "pip install 'gpucnn[mpi]'" in err
    monkeypatch.setenv("PMI_RANK", "1")               # the other ranks stay quiet
    assert cli.main(["train", "--epochs", "1", "--no-progress"]) == 1
    assert capsys.readouterr().err == ""


@pytest.mark.distributed
def test_a_diverging_run_stops_every_rank_at_the_same_step(tmp_path):
    args = [a if a != "0.05" else "1e30" for a in TRAIN]
    proc, _ = run_mpi(2, *args, "--epochs", "2", "--out", tmp_path / "run")
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gpucnn:")]
    assert len(lines) == 1 and "the loss became nan at epoch 1" in lines[0], proc.stderr
    assert "MPI_Abort" not in proc.stderr


def test_info_says_whether_multi_process_training_can_run(capsys, monkeypatch):
    from gpucnn import cli
    print(cli._mpi_line())
    line = capsys.readouterr().out
    assert line.startswith("MPI: ")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert "pip install 'gpucnn[mpi]'" in cli._mpi_line()
