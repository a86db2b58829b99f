"""The program the distributed tests start under ``mpiexec`` (and the one-process reference).

    mpiexec -n 3 python tests/distributed_worker.py equal OUT.npz
    mpiexec -n 2 python tests/distributed_worker.py raise|kill

``equal``: trains a tiny float64 CNN with plain SGD, SGD with momentum and Adam on 30
random images, global batch 7 (shares 3/2/2 and a last batch of 2: shares 1/1/0 on three
ranks), two epochs; rank 0 writes the weights and whether every rank ended bitwise equal.
``raise``/``kill``: rank 1 raises / is SIGKILLed at its third step while the others wait
in the gradient all-reduce.
"""
from __future__ import annotations

import os
import signal
import sys

import numpy as np

N_IMAGES, BATCH, EPOCHS, SEED = 30, 7, 2, 3
OPTIMIZERS = ("sgd", "momentum", "adam")


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_IMAGES, 2, 8, 8))
    y = rng.integers(0, 4, N_IMAGES)
    return x, y


def model_and_optimizer(name):
    import gpucnn as nn
    nn.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 4)).to(dtype=np.float64)
    if name == "sgd":
        opt = nn.SGD(model.parameters(), lr=0.1)
    elif name == "momentum":
        opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    else:
        opt = nn.Adam(model.parameters(), lr=0.01)
    return model, opt


def batchnorm_model():
    """With BatchNorm2d (running statistics: buffers), when gpucnn has it; else None."""
    import gpucnn as nn
    if not hasattr(nn, "BatchNorm2d"):
        return None
    nn.manual_seed(2)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).to(dtype=np.float64)


def state(model):
    """Parameters and buffers by name (numpy)."""
    from gpucnn import backends
    from gpucnn.distributed import _array, named_buffers
    out = {n: np.array(backends.asnumpy(p.data)) for n, p in model.named_parameters()}
    out.update({n: np.array(backends.asnumpy(_array(b))) for n, b in named_buffers(model)})
    return out


def reference_batchnorm(size):
    """What ``size`` ranks compute, simulated in one process: one replica per rank, each
    with its share's batch statistics and its own running statistics; the gradients
    weighted by share and summed; the running statistics averaged at each epoch's end."""
    import gpucnn as nn
    from gpucnn.distributed import ShardedBatchIterator, _array, _assign, named_buffers
    x, y = data()
    replicas = [batchnorm_model() for _ in range(size)]
    opts = [nn.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in replicas]
    its = [ShardedBatchIterator(x, y, BATCH, seed=SEED, rank=r, size=size) for r in range(size)]
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(EPOCHS):
        for shares in zip(*[it.epoch() for it in its]):
            grads = None
            for m, it, (xb, yb) in zip(replicas, its, shares):
                m.zero_grad()
                if not len(yb):
                    continue
                loss_fn(m(xb), yb)
                m.backward(loss_fn.backward(), input_grad=False)
                g = [p.grad * it.weight for p in m.parameters()]
                grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            for m, opt in zip(replicas, opts):
                for p, g in zip(m.parameters(), grads):
                    p.grad = g.copy()
                opt.step()
        for entries in zip(*[named_buffers(m) for m in replicas]):
            values = [np.array(_array(b)) for _, b in entries]
            mean = sum(values) / size if values[0].dtype.kind == "f" else values[0]
            for _, b in entries:
                _assign(b, np.array(mean))
    return replicas[0]


def train(model, opt, batches, step, on_step=None, end_of_epoch=None):
    """The loop, shared by the reference and the ranks: ``step()`` is the optimizer step."""
    import gpucnn as nn
    loss_fn = nn.CrossEntropyLoss()
    k = 0
    for _ in range(EPOCHS):
        for xb, yb in batches:
            if on_step is not None:
                on_step(k)
            opt.zero_grad()
            if len(yb):
                loss_fn(model(xb), yb)
                model.backward(loss_fn.backward(), input_grad=False)
            step()
            k += 1
        if end_of_epoch is not None:
            end_of_epoch()
    return model


def reference(name):
    """One process, the whole global batch at each step."""
    from gpucnn.data import BatchIterator
    x, y = data()
    model, opt = model_and_optimizer(name)
    return train(model, opt, BatchIterator(x, y, BATCH, seed=SEED), opt.step)


def main(argv):
    from gpucnn import distributed as dist
    mode = argv[1]
    comm = dist.create_communicator()
    x, y = data()
    if mode == "batchnorm":
        import gpucnn as nn
        model = batchnorm_model()
        opt = dist.create_multi_node_optimizer(nn.SGD(model.parameters(), lr=0.05, momentum=0.9), comm)
        comm.bcast_data(model)
        batches = dist.ShardedBatchIterator(x, y, BATCH, seed=SEED, comm=comm)
        train(model, opt, batches, lambda: opt.step(weight=batches.weight),
              end_of_epoch=lambda: comm.allreduce_persistent(model))
        st = state(model)
        same = all(all(np.array_equal(g[k], st[k]) for k in st) for g in comm.allgather_obj(st))
        if comm.rank == 0:
            np.savez(argv[2], same=np.array(same), **st)
        return 0
    if mode == "equal":
        out = {}
        same = True
        for name in OPTIMIZERS:
            model, opt = model_and_optimizer(name)
            if comm.rank:   # rank 0's initial weights must reach the others
                for p in model.parameters():
                    p.data += 1.0
            comm.bcast_data(model)
            opt = dist.create_multi_node_optimizer(opt, comm, bucket_bytes=8 * 100)  # > 1 bucket
            batches = dist.ShardedBatchIterator(x, y, BATCH, seed=SEED, comm=comm)
            train(model, opt, batches, lambda: opt.step(weight=batches.weight))
            weights = model.state_dict()
            gathered = comm.allgather_obj(weights)
            same &= all(np.array_equal(g[k], weights[k]) for g in gathered for k in weights)
            out.update({f"{name}/{k}": v for k, v in weights.items()})
            out[f"{name}/buckets"] = np.array(opt.bucket_count)
        res = dist.evaluate(model, (x, y), comm, batch_size=4)   # Adam's model; shares 10/10/10
        out["eval/confusion"], out["eval/loss"] = res.confusion, np.array(res.loss)
        if comm.rank == 0:
            np.savez(argv[2], same=np.array(same), size=np.array(comm.size), **out)
        return 0
    model, opt = model_and_optimizer("sgd")
    opt = dist.create_multi_node_optimizer(opt, comm)
    batches = dist.ShardedBatchIterator(x, y, BATCH, seed=SEED, comm=comm)

    def fault(k):
        if comm.rank == 1 and k == 2:
            if mode == "raise":
                raise RuntimeError("injected failure at step 3")
            os.kill(os.getpid(), signal.SIGKILL)

    train(model, opt, batches, lambda: opt.step(weight=batches.weight), on_step=fault)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
