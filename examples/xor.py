"""The seed tutorial's example: a 2-4-1 sigmoid network learns XOR.

    python examples/xor.py [--epochs N] [--lr LR] [--seed S] [--out PATH]

Two inputs, four sigmoid hidden units, one sigmoid output; mean squared error;
plain full-batch gradient descent (SGD without momentum) on the four points.
It prints the final loss, the four predictions and the path of the loss-history
plot it saves (PNG, matplotlib's Agg backend, so no display is needed).

A note on the seed.  The tutorial's code applied the sigmoid derivative
σ'(z) = σ(z)(1 − σ(z)) to an output layer that had no sigmoid (a linear
output), so the δ it propagated was not the gradient of its loss; its network
did not learn XOR in its 8 epochs.  Here σ' is applied only where σ was
applied: each ``Sigmoid`` layer's backward multiplies δ by y(1 − y) of *its
own* output, and the ``Linear`` layers pass δ through unchanged in form
(δ_in = δ_out W).  With that, and enough epochs, the loss falls below 0.01.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

try:
    import gpucnn
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    import gpucnn

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
Y = np.array([[0], [1], [1], [0]], dtype=np.float32)


def train(epochs=3000, lr=2.0, seed=0):
    """Train the 2-4-1 network; return (net, loss history, final predictions)."""
    gpucnn.manual_seed(seed)
    net = gpucnn.Sequential(
        gpucnn.Linear(2, 4), gpucnn.Sigmoid(),
        gpucnn.Linear(4, 1), gpucnn.Sigmoid(),
    ).to(device="cpu")
    loss_fn = gpucnn.MSELoss()
    opt = gpucnn.SGD(net.parameters(), lr=lr)
    history = []
    for _ in range(epochs):
        out = net(X)                        # forward
        history.append(loss_fn(out, Y))     # E = mean((out - y)^2)
        opt.zero_grad()
        net.backward(loss_fn.backward())    # δ recursion, output to input
        opt.step()                          # W <- W - lr * dE/dW
    pred = gpucnn.asnumpy(net(X))
    history.append(loss_fn(pred, Y))        # the loss of the final weights
    return net, history, pred


def save_plot(history, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(np.arange(len(history)), history)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss")
    ax.set_title("2-4-1 sigmoid network on XOR")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return os.path.abspath(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description="2-4-1 sigmoid network on XOR (the seed tutorial's example)")
    ap.add_argument("--epochs", type=int, default=3000, help="full-batch gradient-descent steps")
    ap.add_argument("--lr", type=float, default=2.0, help="learning rate")
    ap.add_argument("--seed", type=int, default=0, help="initialisation seed")
    ap.add_argument("--out", default=os.path.join("runs", "xor_loss.png"), help="where to save the loss plot (PNG)")
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error(f"--epochs must be >= 1, got {args.epochs}")

    _, history, pred = train(args.epochs, args.lr, args.seed)
    correct = int(np.sum((pred > 0.5) == (Y > 0.5)))
    for x, p, y in zip(X, pred[:, 0], Y[:, 0]):
        print(f"  {int(x[0])} xor {int(x[1])} = {int(y)}   predicted {p:.3f}")
    print(f"final loss: {history[-1]:.6f} after {args.epochs} epochs; {correct}/4 correct")
    png = save_plot(history, args.out)
    print(f"loss history plot: {png}")
    return {"loss": history[-1], "correct": correct, "plot": png, "history": history}


if __name__ == "__main__":
    main()
