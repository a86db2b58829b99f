"""The global random generator used for parameter initialisation.

Like PyTorch, the default generator starts from a fixed seed, so two runs of
the same script initialise identically; ``manual_seed(n)`` reseeds it.
"""
from __future__ import annotations

import numpy as np

DEFAULT_SEED = 67280421310721 % (2**32)

_generator = np.random.default_rng(DEFAULT_SEED)


def manual_seed(seed):
    """Reseed the global generator (an int >= 0) and return it."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: expected a non-negative integer seed, got {seed!r}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def default_generator():
    return _generator


def get_rng_state():
    """The global generator's state as a JSON-serialisable dict."""
    return _generator.bit_generator.state


def set_rng_state(state):
    """Restore a state returned by :func:`get_rng_state`."""
    if not isinstance(state, dict) or "bit_generator" not in state:
        raise ValueError("set_rng_state: expected a dict from get_rng_state() "
                         f"(with a 'bit_generator' key), got {type(state).__name__}")
    name = state["bit_generator"]
    bitgen_cls = getattr(np.random, name, None)
    if bitgen_cls is None:
        raise ValueError(f"set_rng_state: unknown bit generator {name!r}")
    global _generator
    bitgen = bitgen_cls()
    bitgen.state = state
    _generator = np.random.Generator(bitgen)


def resolve(rng):
    """The generator to draw from: ``rng`` if given, else the global one."""
    if rng is None:
        return _generator
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng: expected a numpy.random.Generator or an int seed, got {type(rng).__name__}")
