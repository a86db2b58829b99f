"""Backend parity: every primitive, forward and backward, float32 and float64, over a matrix
of shapes, on each backend of tests/backend_registry.py against the NumPy backend.

Tolerances are gpucnn/tolerances.py's (float64: 1e-10 normwise relative; float32: per op,
with the reasoning written there).  Inputs are generated on the host from fixed seeds and
handed to both backends, so both compute from the same numbers.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import backends, tolerances
from gpucnn.backends import PRIMITIVES

DTYPES = (np.float32, np.float64)


def _rand(seed, shape, dtype, scale=1.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _host(B, a):
    if isinstance(a, tuple):
        return tuple(_host(B, v) for v in a)
    if isinstance(a, (float, int, bool, np.floating, np.integer, np.bool_)):
        return a
    return np.array(B.to_numpy(a), copy=True)


class Case:
    """One primitive on one shape: ``run(B, dtype)`` returns the host copies of its results."""

    def __init__(self, primitive, ident, run, large=False):
        self.primitive, self.ident, self.run, self.large = primitive, ident, run, large

    def __repr__(self):
        return f"{self.primitive}[{self.ident}]"


CASES: list[Case] = []


def case(primitive, ident, large=False):
    def deco(fn):
        CASES.append(Case(primitive, ident, fn, large))
        return fn
    return deco


# ----------------------------------------------------------------------------- convolution
# (N, C, H, W, O, kh, kw, stride, padding)
CONV_SHAPES = [
    ("odd-nonsquare", (2, 3, 7, 9, 5, 3, 3, (1, 1), (0, 0))),
    ("batch1-stride2-pad1", (1, 4, 8, 8, 6, 3, 3, (2, 2), (1, 1))),
    ("rect-kernel-mixed-stride", (3, 5, 11, 6, 7, 5, 3, (2, 1), (2, 1))),
    ("c33-o35-1x1", (2, 33, 6, 5, 35, 1, 1, (1, 1), (0, 0))),
    ("kernel-equals-input", (2, 3, 5, 5, 2, 5, 5, (1, 1), (2, 2))),
    ("stride-exceeds-kernel", (2, 2, 9, 10, 3, 2, 2, (3, 3), (0, 1))),
]
CONV_LARGE = ("large-batch", (64, 3, 16, 16, 16, 5, 5, (1, 1), (2, 2)))


def _conv_inputs(shape, dtype, seed):
    n, c, h, w, o, kh, kw, s, p = shape
    x = _rand(seed, (n, c, h, w), dtype)
    wt = _rand(seed + 1, (o, c, kh, kw), dtype, scale=0.3)
    oh, ow = (h + 2 * p[0] - kh) // s[0] + 1, (w + 2 * p[1] - kw) // s[1] + 1
    dy = _rand(seed + 2, (n, o, oh, ow), dtype)
    return x, wt, dy, s, p


for _ident, _shape in CONV_SHAPES + [CONV_LARGE]:
    _large = _ident == "large-batch"

    @case("conv2d_forward", _ident, _large)
    def _(B, dt, shape=_shape):
        x, wt, _, s, p = _conv_inputs(shape, dt, 10)
        return B.conv2d_forward(B.asarray(x), B.asarray(wt), s, p)

    @case("conv2d_backward_data", _ident, _large)
    def _(B, dt, shape=_shape):
        x, wt, dy, s, p = _conv_inputs(shape, dt, 20)
        return B.conv2d_backward_data(B.asarray(dy), B.asarray(wt), x.shape, s, p)

    @case("conv2d_backward_weight", _ident, _large)
    def _(B, dt, shape=_shape):
        x, wt, dy, s, p = _conv_inputs(shape, dt, 30)
        return B.conv2d_backward_weight(B.asarray(dy), B.asarray(x), wt.shape, s, p)


def _chunked(B):
    """The CUDA backend processes big batches in chunks; force several chunks here."""
    if hasattr(B, "max_cols_elements"):
        B.max_cols_elements = 300   # a few samples per chunk for the shape below
    return B


@case("conv2d_forward", "batch-chunks")
def _(B, dt):
    x, wt, _, s, p = _conv_inputs((5, 2, 6, 7, 3, 3, 3, (1, 1), (1, 1)), dt, 40)
    saved = getattr(B, "max_cols_elements", None)
    try:
        return _chunked(B).conv2d_forward(B.asarray(x), B.asarray(wt), s, p)
    finally:
        if saved is not None:
            B.max_cols_elements = saved


@case("conv2d_backward_data", "batch-chunks")
def _(B, dt):
    x, wt, dy, s, p = _conv_inputs((5, 2, 6, 7, 3, 3, 3, (1, 1), (1, 1)), dt, 41)
    saved = getattr(B, "max_cols_elements", None)
    try:
        return _chunked(B).conv2d_backward_data(B.asarray(dy), B.asarray(wt), x.shape, s, p)
    finally:
        if saved is not None:
            B.max_cols_elements = saved


@case("conv2d_backward_weight", "batch-chunks")
def _(B, dt):
    x, wt, dy, s, p = _conv_inputs((5, 2, 6, 7, 3, 3, 3, (1, 1), (1, 1)), dt, 42)
    saved = getattr(B, "max_cols_elements", None)
    try:
        return _chunked(B).conv2d_backward_weight(B.asarray(dy), B.asarray(x), wt.shape, s, p)
    finally:
        if saved is not None:
            B.max_cols_elements = saved


# ------------------------------------------------------------------------------ dense, bias
LINEAR_SHAPES = [("1x7to3", (1, 7, 3)), ("5x33to35", (5, 33, 35)), ("64x100to10", (64, 100, 10))]
for _ident, (_n, _i, _o) in LINEAR_SHAPES:
    @case("linear_forward", _ident)
    def _(B, dt, n=_n, i=_i, o=_o):
        return B.linear_forward(B.asarray(_rand(50, (n, i), dt)), B.asarray(_rand(51, (o, i), dt)))

    @case("linear_backward_data", _ident)
    def _(B, dt, n=_n, i=_i, o=_o):
        return B.linear_backward_data(B.asarray(_rand(52, (n, o), dt)),
                                      B.asarray(_rand(53, (o, i), dt)))

    @case("linear_backward_weight", _ident)
    def _(B, dt, n=_n, i=_i, o=_o):
        return B.linear_backward_weight(B.asarray(_rand(54, (n, o), dt)),
                                        B.asarray(_rand(55, (n, i), dt)))


BIAS_SHAPES = [("nchw-odd", (2, 5, 3, 7)), ("batch1-c33", (1, 33, 4, 4)), ("2d", (6, 10)),
               ("2d-batch1", (1, 35))]
for _ident, _shape in BIAS_SHAPES:
    @case("bias_forward", _ident)
    def _(B, dt, shape=_shape):
        y = B.asarray(_rand(60, shape, dt))
        return B.bias_forward(y, B.asarray(_rand(61, (shape[1],), dt)))

    @case("bias_backward", _ident)
    def _(B, dt, shape=_shape):
        return B.bias_backward(B.asarray(_rand(62, shape, dt)))


@case("bias_backward", "large-batch", large=True)
def _(B, dt):
    return B.bias_backward(B.asarray(_rand(63, (256, 6, 28, 28), dt)))


# -------------------------------------------------------------------------------- pooling
# (N, C, H, W, kernel, stride, padding)
POOL_SHAPES = [
    ("2x2-even", (2, 3, 8, 8, (2, 2), (2, 2), (0, 0))),
    ("3x3-s2-p1-odd", (1, 5, 7, 9, (3, 3), (2, 2), (1, 1))),
    ("rect-c33", (2, 33, 6, 5, (2, 3), (1, 2), (1, 1))),
    ("overlap-s1", (3, 2, 5, 5, (3, 3), (1, 1), (0, 0))),
    ("2x2-odd-drops-edge", (2, 2, 7, 5, (2, 2), (2, 2), (0, 0))),
    ("3x3-s3-p1-disjoint", (2, 3, 8, 7, (3, 3), (3, 3), (1, 1))),
    ("2x1-s3x2-gaps", (1, 4, 9, 7, (2, 1), (3, 2), (1, 0))),
    ("2x2-s2-p1", (2, 3, 6, 5, (2, 2), (2, 2), (1, 1))),
    ("2x2-w4k-odd-h", (3, 1, 7, 8, (2, 2), (2, 2), (0, 0))),   # vector path, H odd
    ("2x2-w4k-even", (2, 3, 6, 12, (2, 2), (2, 2), (0, 0))),   # vector path, H even
]
POOL_LARGE = ("large-batch", (128, 16, 16, 16, (2, 2), (2, 2), (0, 0)))


def _pool_out(shape):
    n, c, h, w, k, s, p = shape
    return (n, c, (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1)


def _ties(seed, shape, dtype):
    """Small integers: many equal values in each window, to test the first-maximum rule."""
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype(dtype)


for _ident, _shape in POOL_SHAPES + [POOL_LARGE]:
    _large = _ident == "large-batch"

    @case("maxpool2d_forward", _ident, _large)
    def _(B, dt, shape=_shape):
        return B.maxpool2d_forward(B.asarray(_rand(70, shape[:4], dt)), *shape[4:])

    @case("maxpool2d_backward", _ident, _large)
    def _(B, dt, shape=_shape):
        from gpucnn.backends import cpu_backend as numpy_backend
        x = _rand(71, shape[:4], dt)
        _, argmax = numpy_backend().maxpool2d_forward(x, *shape[4:])
        dy = _rand(72, _pool_out(shape), dt)
        return B.maxpool2d_backward(B.asarray(dy), B.asarray(argmax), x.shape, *shape[4:])

    @case("avgpool2d_forward", _ident, _large)
    def _(B, dt, shape=_shape):
        return B.avgpool2d_forward(B.asarray(_rand(73, shape[:4], dt)), *shape[4:])

    @case("avgpool2d_backward", _ident, _large)
    def _(B, dt, shape=_shape):
        dy = _rand(74, _pool_out(shape), dt)
        return B.avgpool2d_backward(B.asarray(dy), shape[:4], *shape[4:])


for _ident, _shape in [POOL_SHAPES[1], POOL_SHAPES[3]]:
    @case("maxpool2d_forward", "ties-" + _ident)
    def _(B, dt, shape=_shape):
        return B.maxpool2d_forward(B.asarray(_ties(75, shape[:4], dt)), *shape[4:])

    @case("maxpool2d_backward", "ties-" + _ident)
    def _(B, dt, shape=_shape):
        from gpucnn.backends import cpu_backend as numpy_backend
        x = _ties(76, shape[:4], dt)
        _, argmax = numpy_backend().maxpool2d_forward(x, *shape[4:])
        dy = _rand(77, _pool_out(shape), dt)
        return B.maxpool2d_backward(B.asarray(dy), B.asarray(argmax), x.shape, *shape[4:])


# ---------------------------------------------------------------------------- activations
ACT_SHAPES = [("nchw-odd", (2, 3, 5, 7)), ("2d", (4, 33)), ("1d-1", (1,))]
ACT_LARGE = ("large", (256, 16, 16, 16))


def _act_input(seed, shape, dt):
    x = _rand(seed, shape, dt, scale=3.0)
    if x.size > 4:   # saturation: exp overflows in sigmoid, tanh is exactly +-1
        x.flat[:4] = np.array([1000.0, -1000.0, 30.0, -30.0], dtype=dt)
    return x


for _name in ("sigmoid", "relu", "tanh"):
    for _ident, _shape in ACT_SHAPES + [ACT_LARGE]:
        _large = _ident == "large"

        @case(f"{_name}_forward", _ident, _large)
        def _(B, dt, shape=_shape, name=_name):
            return getattr(B, f"{name}_forward")(B.asarray(_act_input(80, shape, dt)))

        @case(f"{_name}_backward", _ident, _large)
        def _(B, dt, shape=_shape, name=_name):
            from gpucnn.backends import cpu_backend as numpy_backend
            y = getattr(numpy_backend(), f"{name}_forward")(_act_input(81, shape, dt))
            dy = _rand(82, shape, dt)
            return getattr(B, f"{name}_backward")(B.asarray(dy), B.asarray(y))


# --------------------------------------------------------------------------------- losses
CE_SHAPES = [("1x10", (1, 10)), ("7x3", (7, 3)), ("64x100", (64, 100)), ("5x1", (5, 1))]
for _ident, (_n, _k) in CE_SHAPES:
    @case("softmax_cross_entropy_forward", _ident)
    def _(B, dt, n=_n, k=_k):
        logits = _rand(90, (n, k), dt, scale=4.0)
        labels = np.random.default_rng(91).integers(0, k, size=n).astype(np.int64)
        return B.softmax_cross_entropy_forward(B.asarray(logits), B.asarray(labels))

    @case("softmax_cross_entropy_backward", _ident)
    def _(B, dt, n=_n, k=_k):
        from gpucnn.backends import cpu_backend as numpy_backend
        labels = np.random.default_rng(92).integers(0, k, size=n).astype(np.int64)
        _, probs = numpy_backend().softmax_cross_entropy_forward(_rand(93, (n, k), dt), labels)
        return B.softmax_cross_entropy_backward(B.asarray(probs), B.asarray(labels))


@case("softmax_cross_entropy_forward", "extreme-logits")
def _(B, dt):
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -999.0],
                       [88.0, 89.0, 90.0]], dtype=dt)
    labels = np.array([1, 2, 0], dtype=np.int64)
    return B.softmax_cross_entropy_forward(B.asarray(logits), B.asarray(labels))


MSE_SHAPES = [("nchw", (2, 3, 4, 5)), ("2d", (7, 3)), ("one", (1, 1))]
for _ident, _shape in MSE_SHAPES + [("large", (1024, 1000))]:
    _large = _ident == "large"

    @case("mse_forward", _ident, _large)
    def _(B, dt, shape=_shape):
        return B.mse_forward(B.asarray(_rand(100, shape, dt)), B.asarray(_rand(101, shape, dt)))

    @case("mse_backward", _ident, _large)
    def _(B, dt, shape=_shape):
        return B.mse_backward(B.asarray(_rand(102, shape, dt)), B.asarray(_rand(103, shape, dt)))


# ----------------------------------------------------------------------------- optimizers
SGD_VARIANTS = [
    ("plain", dict(momentum=0.0, weight_decay=0.0, nesterov=False, first=False)),
    ("wd", dict(momentum=0.0, weight_decay=0.01, nesterov=False, first=False)),
    ("momentum-first", dict(momentum=0.9, weight_decay=0.0, nesterov=False, first=True)),
    ("momentum", dict(momentum=0.9, weight_decay=0.0, nesterov=False, first=False)),
    ("nesterov-wd", dict(momentum=0.8, weight_decay=0.05, nesterov=True, first=False)),
    ("nesterov-first", dict(momentum=0.8, weight_decay=0.0, nesterov=True, first=True)),
]
for _ident, _kw in SGD_VARIANTS:
    @case("sgd_update", _ident)
    def _(B, dt, kw=_kw):
        shape = (5, 3, 3, 3)
        param = B.asarray(_rand(110, shape, dt))
        buf = B.asarray(_rand(112, shape, dt)) if kw["momentum"] else None
        B.sgd_update(param, B.asarray(_rand(111, shape, dt)), buf, 0.1, **kw)
        return (param, buf) if buf is not None else param

ADAM_VARIANTS = [("step1", (1, 0.0)), ("step7-wd", (7, 0.01)), ("step1000", (1000, 0.0))]
for _ident, (_step, _wd) in ADAM_VARIANTS:
    @case("adam_update", _ident)
    def _(B, dt, step=_step, wd=_wd):
        shape = (7, 11)
        param = B.asarray(_rand(120, shape, dt))
        m = B.asarray(_rand(122, shape, dt, scale=0.1))
        v = B.asarray(np.abs(_rand(123, shape, dt, scale=0.1)))
        B.adam_update(param, B.asarray(_rand(121, shape, dt)), m, v, step, 1e-3, 0.9, 0.999,
                      1e-8, wd)
        return param, m, v


# ------------------------------------------------------------------------ array handling
@case("asarray", "roundtrip")
def _(B, dt):
    a = _rand(130, (3, 4), np.float64)
    return B.to_numpy(B.asarray(a, dtype=dt))


@case("to_numpy", "view-of-result")
def _(B, dt):
    return B.to_numpy(B.asarray(_rand(131, (2, 3, 4, 5), dt)))


@case("zeros", "shape")
def _(B, dt):
    z = B.zeros((3, 5, 2), dt)
    assert np.dtype(z.dtype) == np.dtype(dt)
    return z


@case("all_finite", "finite-nan-inf")
def _(B, dt):
    a = _rand(132, (3, 300), dt)
    out = [B.all_finite(B.asarray(a))]
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[2, 299] = bad
        out.append(B.all_finite(B.asarray(b)))
    return np.array(out)


@case("accumulate", "nchw")
def _(B, dt):
    dst = B.asarray(_rand(133, (2, 3, 4, 5), dt))
    B.accumulate(dst, B.asarray(_rand(134, (2, 3, 4, 5), dt)))
    return dst


# ---------------------------------------------------------------------------- augmentation
# (N, C, H, W, (OH, OW), (PH, PW)); offsets and flips drawn on the host from a fixed seed
CROP_SHAPES = [
    ("cifar-like", (5, 3, 8, 8, (8, 8), (2, 2))),
    ("rect-smaller-crop", (4, 2, 7, 9, (5, 6), (1, 3))),
    ("no-padding", (3, 1, 6, 5, (4, 3), (0, 0))),
    ("crop-larger-than-input", (2, 3, 4, 5, (7, 9), (2, 3))),
]

for _ident, _shape in CROP_SHAPES:
    @case("crop_flip", _ident)
    def _(B, dt, shape=_shape):
        n, c, h, w, (oh, ow), (ph, pw) = shape
        rng = np.random.default_rng(140)
        top = rng.integers(0, h + 2 * ph - oh + 1, n)
        left = rng.integers(0, w + 2 * pw - ow + 1, n)
        flip = rng.random(n) < 0.5
        flip[:2] = (True, False)
        return B.crop_flip(B.asarray(_rand(141, (n, c, h, w), dt)), top, left, flip,
                           (oh, ow), (ph, pw))


@case("channel_normalize", "nchw")
def _(B, dt):
    return B.channel_normalize(B.asarray(_rand(142, (3, 4, 5, 6), dt)),
                               [0.1, -0.2, 0.3, 0.0], [0.25, 1.5, 0.3, 2.0])


@case("channel_normalize", "2d")
def _(B, dt):
    return B.channel_normalize(B.asarray(_rand(143, (7, 3), dt)), [0.5, 0.4, 0.3], [0.2, 0.2, 0.3])


# ---------------------------------------------------------------------------------- tests
def test_every_primitive_has_cases():
    covered = {c.primitive for c in CASES}
    assert covered == set(PRIMITIVES), sorted(set(PRIMITIVES) ^ covered)


def _check(results_got, results_ref, primitive, dtype, label):
    got = results_got if isinstance(results_got, tuple) else (results_got,)
    ref = results_ref if isinstance(results_ref, tuple) else (results_ref,)
    assert len(got) == len(ref), label
    tol = tolerances.rtol(primitive, dtype)
    for k, (g, r) in enumerate(zip(got, ref)):
        g_arr, r_arr = np.asarray(g), np.asarray(r)
        assert g_arr.shape == r_arr.shape, f"{label} output {k}: shape {g_arr.shape} != {r_arr.shape}"
        if not isinstance(g, (float, bool, np.bool_)) and r_arr.dtype.kind == "f":
            assert g_arr.dtype == r_arr.dtype, f"{label} output {k}: dtype {g_arr.dtype} != {r_arr.dtype}"
        abs_err, rel, ok = tolerances.compare(g_arr, r_arr, tol)
        assert ok, (f"{label} output {k}: max abs error {abs_err:.3g}, relative {rel:.3g} "
                    f"> tolerance {tol:g}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_primitive_parity(case, dtype, other_backend, backend_entry, numpy_backend):
    if case.large and not backend_entry.large:
        pytest.skip(f"large shapes do not run on the {backend_entry.name} backend (CPU time)")
    ref = _host(numpy_backend, case.run(numpy_backend, dtype))
    got = _host(other_backend, case.run(other_backend, dtype))
    _check(got, ref, case.primitive, dtype, f"{case!r} {np.dtype(dtype).name} on {other_backend.name}")


def test_the_parity_check_can_fail(numpy_backend):
    """An error just past the tolerance is reported (the comparison is not vacuous)."""
    ref = np.linspace(-1, 1, 50)
    tol = tolerances.rtol("conv2d_forward", np.float64)
    bad = ref.copy()
    bad[17] += 3 * tol
    with pytest.raises(AssertionError, match="relative"):
        _check(bad, ref, "conv2d_forward", np.float64, "planted")
    _check(ref + tol / 10, ref, "conv2d_forward", np.float64, "within")


# ----------------------------------------------------------------------------- determinism
def _workload(B, dt):
    x, wt, dy, s, p = _conv_inputs((4, 3, 9, 9, 6, 3, 3, (1, 1), (1, 1)), dt, 140)
    xb, wb, dyb = B.asarray(x), B.asarray(wt), B.asarray(dy)
    out = [B.conv2d_forward(xb, wb, s, p), B.conv2d_backward_data(dyb, wb, x.shape, s, p),
           B.conv2d_backward_weight(dyb, xb, wt.shape, s, p), B.bias_backward(dyb)]
    pool = (3, 3), (1, 1), (1, 1)
    y, am = B.maxpool2d_forward(xb, *pool)
    out += [y, am, B.maxpool2d_backward(B.asarray(_rand(141, y.shape, dt)), am, x.shape, *pool),
            B.avgpool2d_backward(B.asarray(_rand(142, y.shape, dt)), x.shape, *pool)]
    param, buf = B.asarray(wt), B.zeros(wt.shape, dt)
    m, v = B.zeros(wt.shape, dt), B.zeros(wt.shape, dt)
    for step in range(1, 4):
        B.sgd_update(param, out[2], buf, 0.01, 0.9, 1e-4, True, step == 1)
        B.adam_update(param, out[2], m, v, step, 1e-3, 0.9, 0.999, 1e-8, 0.0)
    out += [param, buf, m, v]
    return [np.array(B.to_numpy(a), copy=True) for a in out]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_two_identical_runs_are_bitwise_identical(dtype, other_backend):
    first = _workload(other_backend, dtype)
    second = _workload(other_backend, dtype)
    for k, (a, b) in enumerate(zip(first, second)):
        assert a.tobytes() == b.tobytes(), f"result {k} differs between two identical runs"


# ------------------------------------------------------------- whole-network training
def _net(seed, dtype):
    import gpucnn
    gpucnn.manual_seed(seed)
    model = gpucnn.Sequential(
        gpucnn.Conv2d(1, 4, 3, padding=1), gpucnn.ReLU(), gpucnn.MaxPool2d(2),
        gpucnn.Conv2d(4, 6, 3, stride=1), gpucnn.Tanh(), gpucnn.AvgPool2d(2, stride=1),
        gpucnn.Flatten(), gpucnn.Linear(6 * 2 * 2, 12), gpucnn.Sigmoid(), gpucnn.Linear(12, 3))
    return model.to(dtype=dtype)


def _train(model, opt_name, x, labels, steps=50):
    import gpucnn
    if opt_name == "sgd":
        opt = gpucnn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4,
                         nesterov=True)
    else:
        opt = gpucnn.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = gpucnn.CrossEntropyLoss()
    losses = []
    for step in range(steps):
        lo = (step * 8) % x.shape[0]
        opt.zero_grad()
        out = model(x[lo:lo + 8])
        losses.append(loss_fn(out, labels[lo:lo + 8]))
        model.backward(loss_fn.backward())
        opt.step()
    return np.array(losses), {k: np.array(v) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_whole_network_training_stays_together(dtype, opt_name, other_backend, backend_entry):
    rng = np.random.default_rng(150)
    x = rng.standard_normal((32, 1, 10, 10)).astype(dtype)
    labels = (x[:, 0, :5].sum(axis=(1, 2)) > 0).astype(np.int64) + (x[:, 0, 5:, 5:].mean(axis=(1, 2)) > 0)
    ref_loss, ref_params = _train(_net(7, dtype), opt_name, x, labels)

    model = _net(7, dtype)
    if backend_entry.device is not None:
        model.to(backend_entry.device)
        assert model.device == other_backend.name
        xb = other_backend.asarray(x)
        got_loss, got_params = _train(model, opt_name, xb, labels)
    else:
        with backends.override_backend(other_backend):
            got_loss, got_params = _train(model, opt_name, x, labels)

    tol = tolerances.TRAINING[np.dtype(dtype).name]
    assert ref_loss[-1] < ref_loss[0], "the reference run did not learn; the test is vacuous"
    _, rel, ok = tolerances.compare(got_loss, ref_loss, tol)
    assert ok, f"loss histories differ by {rel:.3g} (relative) > {tol:g}"
    assert got_params.keys() == ref_params.keys()
    for name in ref_params:
        assert got_params[name].dtype == ref_params[name].dtype, name
        _, rel, ok = tolerances.compare(got_params[name], ref_params[name], tol)
        assert ok, f"parameter {name} differs by {rel:.3g} (relative) > {tol:g} after 50 steps"


# ------------------------------------------------------------------ grid-stride coverage
@pytest.mark.parametrize("case", [c for c in CASES if not c.large], ids=repr)
def test_parity_with_a_tiny_grid(case, other_backend, numpy_backend, monkeypatch):
    """2 blocks of 32 threads: every kernel's grid-stride loop must cover the whole output."""
    from gpucnn.backends import kernels
    monkeypatch.setattr(kernels, "BLOCK", 32)
    monkeypatch.setattr(kernels, "MAX_BLOCKS", 2)
    assert kernels.launch_config(10_000) == ((2,), (32,))
    ref = _host(numpy_backend, case.run(numpy_backend, np.float64))
    got = _host(other_backend, case.run(other_backend, np.float64))
    _check(got, ref, case.primitive, np.float64, f"{case!r} float64 on {other_backend.name}, tiny grid")
