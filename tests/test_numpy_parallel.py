"""The NumPy backend's BLAS thread control (threadpoolctl) and its choice of convolution plan."""
import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from gpucnn.backends.numpy import conv
from gpucnn.backends.numpy.parallel import WORKERS


def _blas_threads():
    return [lib.get_num_threads() for lib in ThreadpoolController().select(user_api="blas").lib_controllers]


def test_blas_is_held_to_one_thread_inside_a_primitive_and_restored_after():
    if not WORKERS.blas.libs():
        pytest.skip("no BLAS library that threadpoolctl can control")
    libs = WORKERS.blas.libs()
    before = [lib.get_num_threads() for lib in libs]
    for lib in libs:
        lib.set_num_threads(2)
    try:
        inside = WORKERS.run(lambda s, e: _blas_threads(), [(0, 1)], blas=True)[0]
        assert inside and all(n == 1 for n in inside)
        assert all(lib.get_num_threads() == 2 for lib in libs)
        # without blas=True the limit is left alone
        assert all(n == 2 for n in WORKERS.run(lambda s, e: _blas_threads(), [(0, 1)])[0])
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, weight, plan", [
    ((8, 16, 8, 8), (32, 16, 1, 1), (1, 1), (0, 0), False, conv.PointwisePlan),
    ((8, 1, 28, 28), (6, 1, 5, 5), (1, 1), (2, 2), False, conv.WidePlan),      # LeNet conv1
    ((8, 3, 32, 32), (32, 3, 3, 3), (1, 1), (1, 1), False, conv.WidePlan),    # CIFAR conv1
    ((8, 3, 32, 32), (32, 3, 3, 3), (1, 1), (1, 1), True, conv.RectPlan),     # its backward-weight
    ((8, 64, 8, 8), (128, 64, 3, 3), (1, 1), (1, 1), False, conv.WidePlan),   # O*(Wp-OW) = 128
    ((8, 64, 8, 8), (160, 64, 3, 3), (1, 1), (1, 1), False, conv.RectPlan),   # O*(Wp-OW) > 150
    ((8, 3, 9, 9), (4, 3, 3, 3), (2, 2), (1, 1), False, conv.RectPlan),
])
def test_plan_choice(x_shape, w_shape, stride, padding, weight, plan):
    assert type(conv.plan_for(x_shape, w_shape, stride, padding, for_weight=weight)) is plan


@pytest.mark.parametrize("kernel, stride, padding", [((1, 1), (1, 1), (0, 0)), ((3, 3), (1, 1), (1, 1)),
                                                     ((3, 2), (2, 1), (1, 0))])
def test_every_plan_matches_a_direct_loop(kernel, stride, padding):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 7, 6))
    w = rng.standard_normal((4, 2) + kernel)
    y = conv.conv2d_forward(x, w, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    ref = np.zeros_like(y)
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            win = xp[:, :, i * stride[0]:i * stride[0] + kernel[0], j * stride[1]:j * stride[1] + kernel[1]]
            ref[:, :, i, j] = np.tensordot(win, w, axes=([1, 2, 3], [1, 2, 3]))
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_workers_run_under_the_callers_errstate():
    """np.errstate set by the caller holds on the worker threads too (NumPy keeps it in a
    context variable, which the pool copies into each task): no RuntimeWarning escapes a
    worker where the caller silenced it, and 'raise' raises from any worker."""
    import warnings
    from gpucnn.backends.numpy.parallel import Workers
    pool = Workers(threads=3)
    a = np.full(3000, np.inf)

    def part(s, e):
        return np.subtract(a[s:e], a[s:e])          # inf - inf: "invalid value"
    ranges = [(0, 1000), (1000, 2000), (2000, 3000)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(invalid="ignore"):
            out = pool.run(part, ranges)
    assert all(np.isnan(o).all() for o in out)
    with np.errstate(invalid="raise"):
        with pytest.raises(FloatingPointError):
            pool.run(lambda s, e: part(s, e) if s > 0 else None, ranges)
