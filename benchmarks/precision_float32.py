"""How far float32 lands from float64: gpucnn's NumPy backend against PyTorch's CPU build.

    python benchmarks/precision_float32.py                  # the shared CIFAR-10 copy
    python benchmarks/precision_float32.py --data-dir DIR   # another folder (or synthetic
                                                            # images when there is none)

Both frameworks run the same computation in float32 and in float64 from the same weights and
inputs; each float32 result is compared with its own framework's float64 result (relative
error, ``|a32 - a64| / |a64|`` in the 2-norm).  The parts:

1. every primitive ResNet-20 uses (each convolution shape, batch norm) on random data:
   output, input gradient and parameter gradients;
2. ResNet-20 at its initial weights on one augmented CIFAR-10 batch: every module's
   output in the forward, and the loss;
3. the same network's parameter gradients (all of them as one vector) on several batches.
   These are dominated by ReLU units whose input lies within float32 rounding of zero:
   one such unit that flips between float32 and float64 moves every gradient below it
   (the error then jumps to 1e-4..1e-2); the count differs from batch to batch and
   between frameworks by chance, so part 3 is a distribution, not a ranking;
4. (``--trajectory 0,40,...``) PyTorch trains the recipe; at the given steps its float32 state
   (weights, batch-norm buffers, momentum) is handed to gpucnn and both take the next step
   in float32, against PyTorch's float64 step from the same state: the loss, the gradients,
   the gradients' error along themselves (a systematic shrink or growth would show there)
   and the state after the update.

It answers whether a systematic accuracy difference between the frameworks could come from
float32 rounding (it reports; it asserts nothing).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import gpucnn  # noqa: E402
from gpucnn.blocks import BatchNorm2d  # noqa: E402
from gpucnn.data import BatchIterator  # noqa: E402
from gpucnn.layers import Conv2d  # noqa: E402
from gpucnn.losses import CrossEntropyLoss  # noqa: E402
from gpucnn.models import build_model  # noqa: E402
from accuracy_resnet20 import DEFAULT_DATA  # noqa: E402  (the shared CIFAR-10 copy)

DTYPES = (np.float32, np.float64)


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def as64(a):
    return np.array(a, dtype=np.float64)


# ------------------------------------------------------------------ part 1: primitives
def primitive_errors(torch, make_g, make_t, state, x, dy):
    """{framework: [output, input gradient, parameter gradients...]} errors vs float64."""
    out = {}
    for fw in ("gpucnn", "torch"):
        runs = {}
        for dt in DTYPES:
            if fw == "gpucnn":
                m = make_g()
                m.load_state_dict(state)
                m.to(device="cpu", dtype=dt)
                y = m(x.astype(dt))
                dx = m.backward(dy.astype(dt))
                grads = {n: as64(p.grad) for n, p in m.named_parameters()}
            else:
                td = torch.float64 if dt is np.float64 else torch.float32
                m = make_t().to(td)
                m.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
                xt = torch.from_numpy(x).to(td).requires_grad_()
                yt = m(xt)
                yt.backward(torch.from_numpy(dy).to(td))
                y, dx = yt.detach().numpy(), xt.grad.numpy()
                grads = {n: p.grad.double().numpy() for n, p in m.named_parameters()}
            runs[dt] = (as64(y), as64(dx), grads)
        a, b = runs[np.float32], runs[np.float64]
        out[fw] = [rel(a[0], b[0]), rel(a[1], b[1])] + [rel(a[2][n], b[2][n]) for n in sorted(b[2])]
    return out


def part1(torch, rng, batch):
    print("1. primitives on random data (N=%d): float32 error vs float64, gpucnn / torch" % batch)
    print(f"   {'primitive':26s} {'output':>17s} {'input grad':>17s} {'param grads':>34s}")
    rows = []
    for c_in, c_out, hw, stride in ((3, 16, 32, 1), (16, 16, 32, 1), (16, 32, 32, 2),
                                    (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)):
        gpucnn.manual_seed(1)
        state = {k: as64(v) for k, v in Conv2d(c_in, c_out, 3, stride=stride, padding=1,
                                                  bias=False).state_dict().items()}
        ho = (hw - 1) // stride + 1
        x = rng.standard_normal((batch, c_in, hw, hw))
        dy = rng.standard_normal((batch, c_out, ho, ho))
        e = primitive_errors(
            torch, lambda: Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            lambda: torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            state, x, dy)
        rows.append((f"conv {c_in}->{c_out} {hw}x{hw} s{stride}", e))
    for c, hw in ((16, 32), (32, 16), (64, 8)):
        state = {"weight": 1 + 0.1 * rng.standard_normal(c), "bias": 0.1 * rng.standard_normal(c),
                 "running_mean": np.zeros(c), "running_var": np.ones(c),
                 "num_batches_tracked": np.array(0)}
        x = 0.5 + rng.standard_normal((batch, c, hw, hw))      # a mean off zero, as after a conv
        dy = rng.standard_normal((batch, c, hw, hw))
        e = primitive_errors(torch, lambda: BatchNorm2d(c), lambda: torch.nn.BatchNorm2d(c),
                             state, x, dy)
        rows.append((f"batch norm {c} {hw}x{hw}", e))
    worse = total = 0
    for name, e in rows:
        g, t = e["gpucnn"], e["torch"]
        cells = [f"{a:.1e} / {b:.1e}" for a, b in zip(g, t)]
        print(f"   {name:26s} {cells[0]:>17s} {cells[1]:>17s}   {'   '.join(cells[2:])}")
        worse += sum(a > b for a, b in zip(g, t))
        total += len(g)
    print(f"   gpucnn's error the larger in {worse} of {total} figures")


# ------------------------------------------------------------------ parts 2 and 3: ResNet-20
def load_batches(args, count):
    from gpucnn.runs import TrainConfig, dataset_for, make_augment
    if os.path.exists(args.data_dir):
        cfg = TrainConfig(data="folder", data_dir=args.data_dir, model="resnet20",
                          limit_train=args.batch * count, limit_test=10).resolved()
        ds = dataset_for(cfg)
        images, labels, where = ds.train.images, ds.train.labels, "CIFAR-10 (shared copy)"
    else:
        rng = np.random.default_rng(0)
        images = rng.standard_normal((args.batch * count, 3, 32, 32)).astype(np.float32)
        labels = rng.integers(0, 10, len(images))
        where = "synthetic images (no data at --data-dir)"
    aug = make_augment((3, 32, 32), 0)
    it = BatchIterator(images, labels, args.batch, seed=0)
    return [(aug(np.ascontiguousarray(x)), y) for x, y in it.epoch()][:count], where


def gpucnn_model(state, dt):
    m = build_model("resnet20", (3, 32, 32), 10)
    m.load_state_dict(state)
    m.to(device="cpu", dtype=dt)
    return m


def gpucnn_loss_grads(m, x, y, dt):
    """Forward, loss and backward on x, y: (loss, every parameter's gradient in float64)."""
    loss_fn = CrossEntropyLoss()
    loss = loss_fn(m(x.astype(dt)), y)
    m.backward(loss_fn.backward(), input_grad=False)
    return float(loss), {n: as64(p.grad) for n, p in m.named_parameters()}


def torch_loss_grads(torch, m, x, y, td):
    loss = torch.nn.CrossEntropyLoss()(m(torch.from_numpy(x).to(td)), torch.from_numpy(y))
    loss.backward()
    return float(loss.detach()), {n: p.grad.double().numpy().copy() for n, p in m.named_parameters()}


def gpucnn_step(start, x, y, dt, record=None):
    m = gpucnn_model(start, dt)
    if record is not None:
        def watch(mod, name):
            forward = mod.forward

            def fw(inp, *a, **k):
                o = forward(inp, *a, **k)
                record[name] = np.array(o, dtype=np.float64)
                return o
            mod.forward = fw

        def walk(mod, prefix):
            for k, child in mod._children():
                watch(child, prefix + k)
                walk(child, prefix + k + ".")
        walk(m, "")
    return gpucnn_loss_grads(m, x, y, dt)


def torch_step(torch, start, x, y, dt, record=None):
    from torch_resnet import torch_model
    td = torch.float64 if dt is np.float64 else torch.float32
    m = torch_model("resnet20", start, in_channels=3, num_classes=10).to(td)
    if record is not None:
        for name, mod in m.named_modules():
            if name:
                mod.register_forward_hook(
                    lambda _m, _i, o, name=name: record.__setitem__(name, as64(o.detach().numpy())))
    return torch_loss_grads(torch, m, x, y, td)


def part2_3(torch, args):
    batches, where = load_batches(args, args.batches)
    gpucnn.manual_seed(0)
    start = build_model("resnet20", (3, 32, 32), 10).state_dict()
    print(f"\n2. ResNet-20 forward at its initial weights, one batch of {args.batch} from {where}:")
    rec = {fw: {dt: {} for dt in DTYPES} for fw in ("gpucnn", "torch")}
    losses = {}
    x, y = batches[0]
    for dt in DTYPES:
        losses["gpucnn", dt] = gpucnn_step(start, x, y, dt, rec["gpucnn"][dt])[0]
        losses["torch", dt] = torch_step(torch, start, x, y, dt, rec["torch"][dt])[0]
    # modules whose output means the same in both (gpucnn runs a ReLU inside the layer
    # before it, so a layer followed by a ReLU is compared at the ReLU's output)
    names = [n for n in rec["gpucnn"][np.float64] if n in rec["torch"][np.float64]
             and rec["gpucnn"][np.float64][n].shape == rec["torch"][np.float64][n].shape
             and rel(rec["gpucnn"][np.float64][n], rec["torch"][np.float64][n]) < 1e-9]
    worse = 0
    for n in names:
        g = rel(rec["gpucnn"][np.float32][n], rec["gpucnn"][np.float64][n])
        t = rel(rec["torch"][np.float32][n], rec["torch"][np.float64][n])
        worse += g > t
        if args.verbose:
            print(f"   {n:24s} {g:.2e} / {t:.2e}")
    last = names[-1]
    print(f"   {len(names)} module outputs compared (float64 outputs of the two frameworks "
          f"agree to 1e-9); gpucnn's float32 error the larger at {worse} of them")
    print(f"   logits ({last}): {rel(rec['gpucnn'][np.float32][last], rec['gpucnn'][np.float64][last]):.2e}"
          f" / {rel(rec['torch'][np.float32][last], rec['torch'][np.float64][last]):.2e}"
          f"   loss: {abs(losses['gpucnn', np.float32] - losses['gpucnn', np.float64]):.1e}"
          f" / {abs(losses['torch', np.float32] - losses['torch', np.float64]):.1e}")
    print(f"\n3. ResNet-20 parameter gradients (one vector), float32 vs float64, "
          f"{len(batches)} batches: gpucnn / torch")
    for i, (x, y) in enumerate(batches):
        flat = {}
        for fw in ("gpucnn", "torch"):
            for dt in DTYPES:
                g = (gpucnn_step(start, x, y, dt) if fw == "gpucnn"
                     else torch_step(torch, start, x, y, dt))[1]
                flat[fw, dt] = np.concatenate([g[n].ravel() for n in sorted(g)])
        print(f"   batch {i + 1}: {rel(flat['gpucnn', np.float32], flat['gpucnn', np.float64]):.2e}"
              f" / {rel(flat['torch', np.float32], flat['torch', np.float64]):.2e}")


# ------------------------------------------------------------------ part 4: along a trajectory
def _sgd(lr):
    return {"lr": lr, "momentum": 0.9, "weight_decay": 1e-4}


def gpucnn_update(state, buffers, lr, x, y, dt):
    """One SGD step of the recipe from a PyTorch state (weights, batch-norm buffers, momentum
    buffers): (loss, gradients, the state after the step)."""
    from gpucnn.optim import SGD
    m = gpucnn_model(state, dt)
    opt = SGD(m.parameters(), **_sgd(lr))
    names = [n for n, _ in m.named_parameters()]
    if buffers is not None:
        opt.load_state_dict({"type": "SGD", "defaults": opt.defaults, "state": {
            f"{i}.momentum_buffer": buffers[n] for i, n in enumerate(names)}})
    loss, grads = gpucnn_loss_grads(m, x, y, dt)
    opt.step()
    return loss, grads, {k: as64(v) for k, v in m.state_dict().items()}


def torch_update(torch, model, opt_state, lr, x, y, td):
    import copy
    m = copy.deepcopy(model).to(td)
    opt = torch.optim.SGD(m.parameters(), **_sgd(lr))
    if opt_state is not None:
        sd = copy.deepcopy(opt_state)
        sd["param_groups"][0]["lr"] = lr
        opt.load_state_dict(sd)
        for st in opt.state.values():
            st["momentum_buffer"] = st["momentum_buffer"].to(td)
    loss, grads = torch_loss_grads(torch, m, x, y, td)
    opt.step()
    return loss, grads, {k: v.detach().double().numpy().copy() for k, v in m.state_dict().items()}


def part4(torch, args, steps):
    """PyTorch trains the recipe (SGD 0.1, momentum 0.9, weight decay 1e-4, the rate /10 at
    steps 195 and 293 as in one epoch of CIFAR-10); at each of ``steps`` its float32 state is
    handed to gpucnn, and each framework takes the next step in float32, PyTorch also in
    float64 (the reference)."""
    from torch_resnet import torch_model
    batches, where = load_batches(args, max(steps) + 1)
    print(f"\n4. one step from PyTorch's float32 state along its run of the recipe ({where}): "
          "error vs the float64 step, gpucnn / torch")
    print(f"   {'step':>4} {'lr':>6} {'loss':>19} {'gradients':>19} {'bias along grad':>21} "
          f"{'state after':>19}")
    gpucnn.manual_seed(0)
    model = torch_model("resnet20", build_model("resnet20", (3, 32, 32), 10).state_dict(),
                        in_channels=3, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), **_sgd(0.1))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [195, 293], 0.1)
    names = [n for n, _ in model.named_parameters()]

    def flat(d, keys):
        return np.concatenate([d[k].ravel() for k in keys])

    def along(a, b):       # the error's component along the reference, relative
        return float(np.dot(a - b, b) / max(np.dot(b, b), 1e-300))
    for step, (x, y) in enumerate(batches):
        if step in steps:
            lr = opt.param_groups[0]["lr"]
            state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
            buffers = ({n: opt.state[p]["momentum_buffer"].numpy().copy()
                        for n, p in model.named_parameters()} if opt.state else None)
            opt_state = opt.state_dict() if opt.state else None
            g = gpucnn_update(state, buffers, lr, x, y, np.float32)
            t = torch_update(torch, model, opt_state, lr, x, y, torch.float32)
            r = torch_update(torch, model, opt_state, lr, x, y, torch.float64)
            gg, tg, rg = (flat(v[1], names) for v in (g, t, r))
            keys = sorted(r[2])
            gs, ts, rs = (flat(v[2], keys) for v in (g, t, r))
            print(f"   {step:4d} {lr:6g} {abs(g[0] - r[0]):.1e} / {abs(t[0] - r[0]):.1e}"
                  f"   {rel(gg, rg):.1e} / {rel(tg, rg):.1e}"
                  f"   {along(gg, rg):+.1e} / {along(tg, rg):+.1e}"
                  f"   {rel(gs, rs):.1e} / {rel(ts, rs):.1e}", flush=True)
        if step >= max(steps):
            break
        opt.zero_grad()
        torch.nn.CrossEntropyLoss()(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
        sched.step()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--verbose", action="store_true", help="every module's forward error")
    ap.add_argument("--parts", default="1,2,3,4", help="which parts to run (default all; "
                    "part 4 needs --trajectory)")
    ap.add_argument("--trajectory", metavar="STEPS", default=None,
                    help="part 4 at these steps of PyTorch's run, e.g. 0,40,120,200,300,380 "
                         "(needs the data; minutes)")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("precision_float32: needs PyTorch (pip install torch) as the measuring stick")
        return 1
    torch.set_num_threads(os.cpu_count())
    parts = set(args.parts.replace(" ", "").split(","))
    if not parts <= {"1", "2", "3", "4"}:
        ap.error(f"--parts {args.parts!r}: expected numbers from 1 to 4, e.g. 1,2,3")
    if "1" in parts:
        part1(torch, np.random.default_rng(0), args.batch)
    if parts & {"2", "3"}:
        part2_3(torch, args)
    if args.trajectory and "4" in parts:
        try:
            steps = sorted({int(v) for v in args.trajectory.split(",")})
        except ValueError:
            steps = [-1]
        if steps[0] < 0:
            ap.error(f"--trajectory {args.trajectory!r}: expected step numbers >= 0, "
                     "e.g. 0,40,120")
        part4(torch, args, steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
