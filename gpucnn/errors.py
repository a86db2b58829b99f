"""Error classes that more than one module raises or catches."""
from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(ValueError):
    """An array that must be finite holds NaN or infinity (a layer's input, a loss's output).

    A ValueError, so ``except ValueError`` still catches it; the trainer catches this
    class to tell a diverged run from a bad argument.
    """
