"""Data-parallel training written out: the pieces ``gpucnn train`` uses under mpiexec.

    mpiexec -n 2 python examples/distributed_digits.py [--epochs N] [--batch-size B]

(``pip install 'gpucnn[mpi]'`` brings mpi4py and mpiexec.)  Every process builds the
same model and rank 0's weights are broadcast; every process draws the same shuffle and
takes its contiguous share of each global batch; after backward the multi-node optimizer
averages the gradients (weighted by share) across processes before its step, so N
processes take exactly the steps one process takes.  Evaluation is split across the
processes and the counts summed.  Rank 0 prints.  ``mpiexec -n 4 gpucnn train ...``
does all this (and checkpoints) for you.
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    import gpucnn
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    import gpucnn

from gpucnn import distributed as dist
from gpucnn.data import load_dataset
from gpucnn.models import lenet


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="the global batch")
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()

    comm = dist.create_communicator()          # rank, size, local rank; abort on error
    data = load_dataset("digits")
    gpucnn.manual_seed(0)
    model = lenet(data.input_shape, data.num_classes).to(device="cpu")
    comm.bcast_data(model)                      # rank 0's weights everywhere
    opt = dist.create_multi_node_optimizer(gpucnn.Adam(model.parameters(), lr=args.lr), comm)
    batches = dist.ShardedBatchIterator(data.train.images, data.train.labels, args.batch_size,
                                        seed=0, comm=comm)
    loss_fn = gpucnn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        for x, y in batches:                    # this rank's share of the global batch
            opt.zero_grad()
            if len(y):
                loss_fn(model(x), y)
                model.backward(loss_fn.backward(), input_grad=False)
            opt.step(weight=batches.weight)     # all-reduce the gradients, then Adam
        comm.allreduce_persistent(model)        # buffers (BatchNorm statistics), if any
        res = dist.evaluate(model, data.test, comm)
        if comm.rank == 0:
            print(f"epoch {epoch + 1}: test accuracy {100 * res.accuracy:.2f}% "
                  f"({res.correct}/{res.total}) on {comm.size} processes")


if __name__ == "__main__":
    main()
