"""``gpucnn check`` cases for issue 10's primitives (batch norm, dropout, option-A shortcut,
residual add, label smoothing), each against ``gpucnn.reference``; ``check._cases`` yields them.

Same shape as check.py's cases: (primitive, case, run(B, dt) -> tuple, ref(dt) -> tuple).
"""
from __future__ import annotations

import numpy as np

from . import reference


def _rand(seed, shape, dtype, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(dtype)


def cases():
    a = lambda dt: _rand(30, (3, 4, 5), dt)
    b = lambda dt: _rand(31, (3, 4, 5), dt)
    yield ("add", "3x4x5", lambda B, dt: (B.add(B.asarray(a(dt)), B.asarray(b(dt))),),
           lambda dt: (a(dt).astype(np.float64) + b(dt).astype(np.float64),))

    for label, shape in (("nchw", (3, 2, 4, 5)), ("2d", (7, 3))):
        c = shape[1]
        x = lambda dt, shape=shape: _rand(32, shape, dt, 2.0, 1.0)
        dy = lambda dt, shape=shape: _rand(33, shape, dt)
        w = lambda dt, c=c: _rand(34, (c,), dt, 0.5, 1.0)
        bb = lambda dt, c=c: _rand(35, (c,), dt)
        rmean = lambda dt, c=c: _rand(36, (c,), dt)
        rvar = lambda dt, c=c: np.abs(_rand(37, (c,), dt)) + dt(0.5)
        yield ("batchnorm_stats", label, lambda B, dt, x=x: B.batchnorm_stats(B.asarray(x(dt))),
               lambda dt, x=x: reference.batchnorm(x(dt))[1:])
        yield ("batchnorm_forward", label,
               lambda B, dt, x=x, w=w, bb=bb, m=rmean, v=rvar: (B.batchnorm_forward(
                   *(B.asarray(t(dt)) for t in (x, m, v, w, bb)), 1e-5),),
               lambda dt, x=x, w=w, bb=bb, m=rmean, v=rvar: (reference.batchnorm(
                   x(dt), w(dt), bb(dt), 1e-5, m(dt), v(dt))[0],))

        def run_bn_train(B, dt, x=x, dy=dy, w=w):
            mean, var = B.batchnorm_stats(B.asarray(x(dt)))
            return B.batchnorm_backward(B.asarray(dy(dt)), B.asarray(x(dt)), mean, var,
                                        B.asarray(w(dt)), 1e-5, True)
        yield ("batchnorm_backward", label + "-train", run_bn_train,
               lambda dt, x=x, dy=dy, w=w: reference.batchnorm_backward(dy(dt), x(dt), w(dt), 1e-5))
        yield ("batchnorm_backward", label + "-eval",
               lambda B, dt, x=x, dy=dy, w=w, m=rmean, v=rvar: B.batchnorm_backward(
                   *(B.asarray(t(dt)) for t in (dy, x, m, v, w)), 1e-5, False),
               lambda dt, x=x, dy=dy, w=w, m=rmean, v=rvar: reference.batchnorm_backward(
                   dy(dt), x(dt), w(dt), 1e-5, m(dt), v(dt)))

        def run_running(B, dt, x=x, m=rmean, v=rvar, shape=shape):
            mean, var = B.batchnorm_stats(B.asarray(x(dt)))
            rm, rv = B.asarray(m(dt)), B.asarray(v(dt))
            B.batchnorm_update_running(rm, rv, mean, var, 0.1, int(np.prod(shape)) // shape[1])
            return rm, rv
        yield ("batchnorm_update_running", label, run_running,
               lambda dt, x=x, m=rmean, v=rvar: reference.batchnorm_running(m(dt), v(dt), x(dt), 0.1))

    dx_ = lambda dt: _rand(38, (4, 37), dt)
    for p in (0.25, 1.0):
        for prim in ("dropout_forward", "dropout_backward"):
            yield (prim, f"p{p}", lambda B, dt, p=p, prim=prim: (getattr(B, prim)(B.asarray(dx_(dt)), p, 987654321),),
                   lambda dt, p=p: (dx_(dt).astype(np.float64) * reference.dropout_mask((4, 37), p, 987654321),))

    sx = lambda dt: _rand(39, (2, 3, 5, 6), dt)
    sdy = lambda dt: _rand(40, (2, 8, 3, 3), dt)
    yield ("subsample_pad_forward", "3to8-s2",
           lambda B, dt: (B.subsample_pad_forward(B.asarray(sx(dt)), (2, 2), 2, 8),),
           lambda dt: (reference.subsample_pad(sx(dt), 8, 2, 2),))
    yield ("subsample_pad_backward", "3to8-s2",
           lambda B, dt: (B.subsample_pad_backward(B.asarray(sdy(dt)), (2, 3, 5, 6), (2, 2), 2),),
           lambda dt: (reference.subsample_pad_backward(sdy(dt), (2, 3, 5, 6), 2, 2),))

    z = lambda dt: _rand(41, (6, 4), dt, 3.0)
    labels = np.array([0, 3, 1, 1, 2, 3], dtype=np.int64)
    yield ("label_smoothing_cross_entropy_forward", "6x4-e0.1",
           lambda B, dt: (B.label_smoothing_cross_entropy_forward(B.asarray(z(dt)), B.asarray(labels), 0.1)[0],),
           lambda dt: (reference.label_smoothing_cross_entropy(z(dt), labels, 0.1)[0],))

    def run_ls_bwd(B, dt):
        _, probs = B.label_smoothing_cross_entropy_forward(B.asarray(z(dt)), B.asarray(labels), 0.1)
        return (B.label_smoothing_cross_entropy_backward(probs, B.asarray(labels), 0.1),)
    yield ("label_smoothing_cross_entropy_backward", "6x4-e0.1", run_ls_bwd,
           lambda dt: (reference.label_smoothing_cross_entropy(z(dt), labels, 0.1)[1],))
