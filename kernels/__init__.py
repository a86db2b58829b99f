"""CUDA C++ sources of gpucnn's kernels (installed as the package data ``gpucnn.kernels``)."""
