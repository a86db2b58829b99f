"""The .cu kernel sources ship inside the wheel.

Builds the wheel from the checkout, installs it (no dependencies) into a fresh virtual
environment outside the repository, and from there imports gpucnn and finds every kernel
source through the installed package ``gpucnn.kernels``.  NumPy is borrowed from the running
interpreter through a .pth file, so nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import venv

import numpy
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPUCNN_DEVICE")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _can_build_offline():
    """True when this interpreter's setuptools can build a wheel itself (>= 70.1 carries
    bdist_wheel; older ones need the separate 'wheel' package).  Otherwise pip builds in an
    isolated environment, fetching setuptools as pyproject.toml's build-system asks."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    from importlib.metadata import version
    major, minor = (int(p) for p in version("setuptools").split(".")[:2])
    return (major, minor) >= (77, 0) or importlib.util.find_spec("wheel") is not None


@pytest.mark.slow
def test_wheel_ships_the_kernels(tmp_path):
    from gpucnn.backends import kernels

    # 1. build the wheel (offline when setuptools is importable here) from a copy of the
    #    sources, so that setuptools' build/ and *.egg-info stay out of the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "kernels", "gpucnn"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(dist), "-q"]
    if _can_build_offline():
        cmd.append("--no-build-isolation")
    _run(cmd, cwd=tmp_path, env=_clean_env())
    wheels = list(dist.glob("gpucnn-*.whl"))
    assert len(wheels) == 1, wheels

    # 2. a fresh virtual environment outside the repository, the wheel installed into it
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=(os.name != "nt")).create(env_dir)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=tmp_path, env=_clean_env()).stdout.strip()
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
          "--target", site, str(wheels[0])], cwd=tmp_path, env=_clean_env())
    numpy_parent = pathlib.Path(numpy.__file__).resolve().parents[1]
    (pathlib.Path(site) / "_borrowed_numpy.pth").write_text(str(numpy_parent) + "\n")

    # 3. import it from there and find every kernel source through the installed package
    probe = (
        "import pathlib, gpucnn\n"
        "from gpucnn.backends import kernels\n"
        # the NumPy backend's package (gpucnn.backends.numpy) ships too, and computes
        "import numpy as np\n"
        "from gpucnn.backends import cpu_backend\n"
        "y = cpu_backend().conv2d_forward(np.ones((1, 1, 4, 4), np.float32),\n"
        "                                 np.ones((1, 1, 3, 3), np.float32), (1, 1), (1, 1))\n"
        "assert y.shape == (1, 1, 4, 4) and y[0, 0, 1, 1] == 9, y\n"
        "d = kernels.kernel_dir()\n"
        "print(pathlib.Path(gpucnn.__file__).resolve())\n"
        "print(d.resolve())\n"
        "for f in kernels.KERNELS:\n"
        "    src = kernels.read_source(f)\n"
        "    assert '__global__' in src, f\n"
        "    print(f, len(src))\n"
        "print(len(kernels.instantiations()))\n"
    )
    out = _run([str(py), "-c", probe], cwd=tmp_path, env=_clean_env()).stdout.split("\n")
    pkg_file, kdir = pathlib.Path(out[0]), pathlib.Path(out[1])
    site_path = pathlib.Path(site).resolve()
    assert site_path in pkg_file.parents, f"gpucnn was imported from {pkg_file}, not the venv"
    assert kdir == site_path / "gpucnn" / "kernels", kdir
    assert REPO not in kdir.parents
    found = dict(line.split() for line in out[2:2 + len(kernels.KERNELS)])
    for f in kernels.KERNELS:
        assert int(found[f]) == len(kernels.read_source(f)), f"{f} differs from the checkout's"
    assert int(out[2 + len(kernels.KERNELS)]) == len(kernels.instantiations())
