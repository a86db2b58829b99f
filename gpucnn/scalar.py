"""``Scalar``: a number that stays where it was computed until it is read.

A loss returns a :class:`Scalar` holding a 0-d array on the backend that computed it (a
NumPy array on the CPU, a CuPy array on the GPU).  Nothing waits for the device until
the value is *read*: ``float(x)``, ``x.item()``, formatting and printing, ``bool``,
comparisons and arithmetic with Python numbers (all of which read it once and then behave
as that float does).  ``x.array`` is the 0-d array itself, for device-side accumulation
(the trainer adds the losses of many steps on the device and reads them once).

On the CPU reading costs nothing and the float is the one the loss computed, bit for bit.
"""
from __future__ import annotations

import numbers

import numpy as np


class Scalar:
    """A 0-d backend array that behaves as a float when read."""

    __slots__ = ("array", "_value")

    def __init__(self, array):
        self.array = array
        self._value = None

    # ------------------------------------------------------------------ reading
    def item(self) -> float:
        """The value as a Python float (waits for the device once; cached afterwards)."""
        if self._value is None:
            a = self.array
            if not isinstance(a, np.ndarray) and hasattr(a, "get"):
                a = a.get()
            self._value = float(np.asarray(a).reshape(()))
        return self._value

    __float__ = item

    def __array__(self, dtype=None, copy=None):
        """A host 0-d array (``np.asarray(losses)`` of a list of Scalars gives floats)."""
        return np.asarray(self.item(), dtype=dtype)

    def __int__(self):
        return int(self.item())

    def __index__(self):  # pragma: no cover - a loss is not an index; only for completeness
        raise TypeError("a Scalar cannot be used as an index")

    def __bool__(self):
        return bool(self.item())

    def __format__(self, spec):
        return format(self.item(), spec)

    def __str__(self):
        return str(self.item())

    def __repr__(self):
        return repr(self.item())

    def __hash__(self):
        return hash(self.item())

    def __round__(self, ndigits=None):
        return round(self.item(), ndigits)

    def __abs__(self):
        return abs(self.item())

    def __neg__(self):
        return -self.item()

    def __pos__(self):
        return self.item()

    # ----------------------------------------------------- arithmetic, comparison
    @staticmethod
    def _other(o):
        if isinstance(o, Scalar):
            return o.item()
        if isinstance(o, (int, float, np.integer, np.floating)) and not isinstance(o, bool):
            return float(o)
        if isinstance(o, bool):
            return float(o)
        return None


def _binary(name, swap=False):
    op = getattr(float, name)

    def method(self, other):
        o = Scalar._other(other)
        if o is None:
            return NotImplemented
        return op(self.item(), o)
    method.__name__ = name
    return method


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
              "__truediv__", "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__",
              "__rmod__", "__pow__", "__rpow__", "__eq__", "__ne__", "__lt__", "__le__",
              "__gt__", "__ge__"):
    setattr(Scalar, _name, _binary(_name))

numbers.Real.register(Scalar)   # math.isfinite, pytest.approx, ... accept it as a real number


def as_scalar(value):
    """``value`` (a Scalar, a 0-d array or a Python number) as a Scalar."""
    if isinstance(value, Scalar):
        return value
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return Scalar(value)
    return Scalar(np.asarray(float(value), dtype=np.float64))
