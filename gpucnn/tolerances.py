"""How closely two backends must agree, per primitive and dtype.

A result ``got`` matches the reference ``ref`` when

    max |got - ref|  <=  rtol * max(max |ref|, 1e-30)

i.e. the largest error, relative to the largest magnitude of the reference
(a normwise relative error; an elementwise one would be meaningless where a
sum cancels to nearly zero).  Integer results (the max-pool argmax) must be
equal, and so must ``all_finite``.

float64: 1e-10 for every primitive.
float32 (machine epsilon 1.2e-7):

* 1e-6 (about 8 ulp of the largest value) for elementwise formulas, pooling
  and the loss gradients: the kernels evaluate the same expressions in the same order
  as the NumPy backend, so they differ at most by the last bits of ``exp``,
  ``log``, ``tanh`` (CUDA's are within 2 ulp, NumPy's within 1) and by sums
  over overlapping windows.
* 1e-5 for the GEMM-based primitives (convolution, linear): a dot product of K
  terms computed in a different order (cuBLAS tiles vs. NumPy's BLAS) differs by
  up to about sqrt(K) ulp of the largest partial sum; 1e-5 holds for K up to a
  few thousand, the sizes the tests use.
* 1e-5 for the reductions over whole tensors (bias gradient, MSE loss,
  cross-entropy loss): NumPy adds float32 values in float32 (pairwise, or in
  BLAS's order), which is itself ~8e-7 off the exact sum at a million terms
  (measured on the MSE parity case); the CUDA kernels accumulate in double.
"""
from __future__ import annotations

import numpy as np

FLOAT64_RTOL = 1e-10

_GEMM = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "conv2d_backward",
         "linear_forward", "linear_backward_data", "linear_backward_weight")
_REDUCTIONS = ("bias_backward", "mse_forward", "softmax_cross_entropy_forward",
               # per-channel sums (the batch-norm backward's dx reads them: one rounding of a
               # sum of M terms, then an element-wise formula)
               "batchnorm_stats", "batchnorm_backward", "label_smoothing_cross_entropy_forward")

_FLOAT32 = {name: 1e-5 for name in _GEMM + _REDUCTIONS}

#: primitive -> {dtype name: rtol}
TOLERANCES = {}
for _name in ("asarray", "to_numpy", "zeros", "all_finite", "accumulate",
              "conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "conv2d_backward",
              "linear_forward", "linear_backward_data", "linear_backward_weight",
              "bias_forward", "bias_backward",
              "maxpool2d_forward", "maxpool2d_backward",
              "avgpool2d_forward", "avgpool2d_backward",
              "sigmoid_forward", "sigmoid_backward", "relu_forward", "relu_backward",
              "tanh_forward", "tanh_backward",
              "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
              "mse_forward", "mse_backward", "sgd_update", "adam_update",
              "bias_act_forward", "gather_rows", "gather_normalize",
              "add", "batchnorm_stats", "batchnorm_forward", "batchnorm_backward",
              "batchnorm_update_running", "dropout_forward", "dropout_backward",
              "subsample_pad_forward", "subsample_pad_backward",
              "label_smoothing_cross_entropy_forward", "label_smoothing_cross_entropy_backward"):
    TOLERANCES[_name] = {"float32": _FLOAT32.get(_name, 1e-6), "float64": FLOAT64_RTOL}
del _name
#: crop_flip copies values (exact); channel_normalize is one subtraction and one division,
#: correctly rounded on both sides (kept at the elementwise 1e-6 for flush-to-zero denormals)
TOLERANCES["crop_flip"] = {"float32": 0.0, "float64": 0.0}
TOLERANCES["channel_normalize"] = {"float32": 1e-6, "float64": FLOAT64_RTOL}

#: Whole-network training (tests/test_parity.py): after 50 steps from the same seed, the
#: loss history and every parameter agree to this normwise relative error.  Measured by
#: perturbing every GEMM result by 2 ulp of noise on the NumPy backend: float32 runs moved
#: by <= 5e-7, float64 by <= 1e-15.  float32 keeps room for a rare discrete event (a ReLU
#: input or max-pool tie within rounding of zero switching sides), which moves one
#: gradient element by its full size.
TRAINING = {"float32": 1e-3, "float64": 1e-10}


def rtol(primitive: str, dtype) -> float:
    name = np.dtype(dtype).name
    try:
        return TOLERANCES[primitive][name]
    except KeyError:
        raise KeyError(f"no tolerance for primitive {primitive!r} and dtype {name}") from None


def compare(got, ref, tol):
    """Return (max_abs_err, rel_err, ok) for arrays or scalars; integers must be equal."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        return float("inf"), float("inf"), False
    if ref.dtype.kind in "iub" or got.dtype.kind in "iub":
        diff = int(np.count_nonzero(got != ref))
        return float(diff), float(diff), diff == 0
    g = got.astype(np.float64)
    r = ref.astype(np.float64)
    if g.size == 0:
        return 0.0, 0.0, True
    if not (np.isfinite(g).all() and np.isfinite(r).all()):
        same = bool(np.array_equal(g, r, equal_nan=True))
        return (0.0 if same else float("inf")), (0.0 if same else float("inf")), same
    abs_err = float(np.max(np.abs(g - r)))
    scale = max(float(np.max(np.abs(r))), 1e-30)
    rel = abs_err / scale
    return abs_err, rel, rel <= tol


def tf32_rtol(k: int) -> float:
    """Normwise relative tolerance of a TF32 dot product of ``k`` terms (the convolution forward
    with ``gpucnn.backends.cuda.allow_tf32``), against a float64 reference.

    TF32 keeps a 10-bit mantissa: rounding an operand to nearest errs by at most 2**-11
    relative, so a product of two rounded operands by at most ~2**-10 (the product itself and
    the float32 accumulation are exact to 2**-24, negligible here).  With independent errors of
    either sign, the error of a k-term sum grows like sqrt(k) times that of one term, while the
    largest output is at least the size of one term: 2**-10 * sqrt(k) (about 1e-3 * sqrt(k)).
    This is not the float32 tolerance loosened: float32 (1e-5 for the GEMMs) stays as it is, and
    the TF32 result must fail it (tests/test_conv_igemm.py checks both).
    """
    return 2.0 ** -10 * max(1.0, float(k)) ** 0.5
