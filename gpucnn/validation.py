"""Number checks shared by the layers, the optimizers, the run configuration and the command line.

A :class:`Rule` says what a number must be (an integer or a finite real, and a range);
calling it checks a value and raises one line naming the owner, the argument, what
was expected and what was got::

    >>> POSITIVE_INT(0, "in_channels", "Conv2d")
    Traceback (most recent call last):
    ValueError: Conv2d: in_channels must be a positive integer, got 0

A wrong type raises TypeError, a value out of range ValueError.  ``rule.parse`` is the
same check as an argparse ``type=`` (it reads the text first).
"""
from __future__ import annotations

import argparse
import math
import numbers

__all__ = ["Rule", "POSITIVE_INT", "NON_NEGATIVE_INT", "POSITIVE", "NON_NEGATIVE", "FRACTION",
           "int_pair", "one_of"]


def _fail(owner, name, expected, value, exc=ValueError):
    where = f"{owner}: " if owner else ""
    raise exc(f"{where}{name} must be {expected}, got {value!r}")


class Rule:
    """An integer (``kind=int``) or a finite real (``kind=float``), optionally within a range.

    ``low``/``high`` are the ends (None: unbounded); ``low_open``/``high_open`` exclude them.
    """

    def __init__(self, kind, low=None, high=None, *, low_open=False, high_open=False):
        if kind not in (int, float):
            raise TypeError(f"Rule: kind must be int or float, got {kind!r}")
        self.kind, self.low, self.high = kind, low, high
        self.low_open, self.high_open = low_open, high_open

    @property
    def expected(self):
        """What the rule accepts, in words ("a positive integer", "a number in (0, 1]")."""
        noun = "integer" if self.kind is int else "number"
        low, high = self.low, self.high
        if high is None and low is not None and low == 0:
            return f"a {'positive' if self.low_open else 'non-negative'} {noun}"
        if high is None and low == 1 and self.kind is int and not self.low_open:
            return "a positive integer"
        if low is None and high is None:
            return f"a finite {noun}" if self.kind is float else "an integer"
        if high is None:
            return f"a{'n' if noun == 'integer' else ''} {noun} {'>' if self.low_open else '>='} {low:g}"
        if low is None:
            return f"a{'n' if noun == 'integer' else ''} {noun} {'<' if self.high_open else '<='} {high:g}"
        return (f"a{'n' if noun == 'integer' else ''} {noun} in {'(' if self.low_open else '['}{low:g}, "
                f"{high:g}{')' if self.high_open else ']'}")

    @property
    def requirement(self):
        """What follows "must be" in an error: "in (0, 1]" for a range, else :attr:`expected`."""
        if self.low is not None and self.high is not None:
            return self.expected.split(" ", 2)[2]
        return self.expected

    def accepts(self, value):
        """Whether ``value`` (already of the right type) lies in the range."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __call__(self, value, name, owner=""):
        """``value`` as an int or float; TypeError for a wrong type, ValueError out of range."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.kind is int
                                                      else numbers.Real):
            _fail(owner, name, self.expected, value, TypeError)
        if self.kind is float and not math.isfinite(value):
            _fail(owner, name, self.expected, value)
        if not self.accepts(value):
            _fail(owner, name, self.requirement, value)
        return self.kind(value)

    def parse(self, text):
        """An argparse ``type=``: the text as a number satisfying the rule, else a one-line message."""
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if value is None or (self.kind is float and not math.isfinite(value)) or not self.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text!r}")
        return value


POSITIVE_INT = Rule(int, 1)
NON_NEGATIVE_INT = Rule(int, 0)
POSITIVE = Rule(float, 0, low_open=True)
NON_NEGATIVE = Rule(float, 0)
FRACTION = Rule(float, 0, 1, low_open=True)    #: (0, 1]: a decay factor


def int_pair(value, name, owner, minimum):
    """An int or an ``(h, w)`` pair of ints, each ``>= minimum``, as a tuple of two ints."""
    expected = f"an int or an (h, w) pair of integers >= {minimum}"
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            _fail(owner, name, expected, value)
        pair = tuple(value)
    else:
        pair = (value, value)
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            _fail(owner, name, expected, value, TypeError)
        if v < minimum:
            _fail(owner, name, expected, value)
    return (int(pair[0]), int(pair[1]))


def one_of(value, name, choices, owner=""):
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    if value not in choices:
        _fail(owner, name, f"one of {', '.join(map(str, choices))}", value)
    return value
