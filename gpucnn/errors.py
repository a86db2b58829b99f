"""Error classes that more than one module raises or catches."""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np

__all__ = ["NonFiniteError", "quiet_overflow"]


class NonFiniteError(ValueError):
    """An array that must be finite holds NaN or infinity (a layer's input, a loss's output).

    A ValueError, so ``except ValueError`` still catches it; the trainer catches this
    class to tell a diverged run from a bad argument.
    """


@contextmanager
def quiet_overflow():
    """No floating-point warnings where overflow is expected and its outcome is checked.

    ``np.errstate`` covers this thread; the NumPy backend's worker threads do not inherit
    it, so their RuntimeWarnings are filtered too.  What overflow leads to (a non-finite
    loss or output) is reported by the caller as one clear error.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
