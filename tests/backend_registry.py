"""The backends the parity tests compare against the NumPy backend.

One entry per backend; ``tests/conftest.py`` turns the list into the ``other_backend``
fixture's parameters, so adding a backend to the parity suite is one line here.

* ``name``     test id, and the backend's ``.name``
* ``factory``  () -> (backend, None), or (None, the reason it cannot run here: the test skips)
* ``marks``    pytest marks for its parameter (select with ``-m gpu`` / ``-m emulated``)
* ``large``    whether the large-shape cases run on it (the CPU emulator takes ~10 s for them)
* ``device``   what ``Module.to()`` is given to put a model on it; None when models run
               on it through ``gpucnn.backends.override_backend`` instead
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass
class BackendEntry:
    name: str
    factory: object
    marks: tuple = ()
    large: bool = True
    device: str | None = None
    _result: tuple | None = field(default=None, repr=False)

    def get(self):
        """(backend, None) or (None, reason), probed once per test session."""
        if self._result is None:
            try:
                self._result = self.factory()
            except Exception as exc:  # a broken factory is a skip with its reason, not a crash
                self._result = (None, f"{self.name} backend unavailable: "
                                      f"{type(exc).__name__}: {exc}")
        return self._result


def _cuda():
    from gpucnn import backends
    backend, reason = backends._try_cuda()
    if backend is None:
        return None, f"no CUDA backend: {reason}"
    return backend, None


def _emulated():
    from tests.cuda_emu import emulator_unavailable_reason, make_emulated_backend
    reason = emulator_unavailable_reason()
    if reason is not None:
        return None, f"the CUDA emulator cannot run here: {reason}"
    return make_emulated_backend(), None


BACKENDS = [
    BackendEntry("cuda", _cuda, marks=(pytest.mark.gpu,), large=True, device="cuda"),
    BackendEntry("emulated", _emulated, marks=(pytest.mark.emulated,), large=True),
]


def entry(name: str) -> BackendEntry:
    for e in BACKENDS:
        if e.name == name:
            return e
    raise KeyError(name)
