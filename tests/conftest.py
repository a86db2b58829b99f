"""Shared fixtures.

``other_backend``: each backend of ``tests/backend_registry.py`` in turn (the CUDA backend,
the CPU emulator of the CUDA kernels, ...), to be compared against the NumPy backend;
skipped, with the probe's reason, where it cannot run -- or failed, when the environment
variable GPUCNN_REQUIRE (a comma-separated list, e.g. "cuda") names it: a GPU run must not
pass by skipping.  ``numpy_backend``: the reference.
"""
from __future__ import annotations

import os

import pytest

from tests import backend_registry


def pytest_generate_tests(metafunc):
    if "other_backend" in metafunc.fixturenames:
        metafunc.parametrize(
            "other_backend",
            [pytest.param(e.name, marks=e.marks, id=e.name) for e in backend_registry.BACKENDS],
            indirect=True)


def _registry_backend(name):
    entry = backend_registry.entry(name)
    backend, reason = entry.get()
    if backend is None:
        if entry.name in os.environ.get("GPUCNN_REQUIRE", "").split(","):
            pytest.fail(f"GPUCNN_REQUIRE names {entry.name!r} but it cannot run: {reason}")
        pytest.skip(reason)
    return backend


@pytest.fixture
def other_backend(request):
    return _registry_backend(request.param)


@pytest.fixture(params=["cpu"] + [pytest.param(e.name, marks=e.marks, id=e.name)
                                  for e in backend_registry.BACKENDS])
def backend(request):
    """The NumPy backend, then every backend of tests/backend_registry.py (CUDA, the CPU
    emulator of the CUDA kernels), each to be checked against the reference directly."""
    if request.param == "cpu":
        from gpucnn.backends import cpu_backend
        return cpu_backend()
    return _registry_backend(request.param)


@pytest.fixture
def backend_entry(other_backend):
    return backend_registry.entry(other_backend.name)


@pytest.fixture(scope="session")
def numpy_backend():
    from gpucnn.backends import cpu_backend
    return cpu_backend()
