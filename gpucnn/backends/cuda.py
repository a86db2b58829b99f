"""Numerics switches of the CUDA backend, named after PyTorch's ``torch.backends.cuda``.

``allow_tf32`` (default False), like ``torch.backends.cuda.matmul.allow_tf32`` /
``torch.backends.cudnn.allow_tf32``: when True, on a GPU of compute capability 8.0 or newer,
the float32 convolution forward of the implicit-GEMM path runs on the tensor cores in TF32
(inputs rounded to a 10-bit mantissa, products accumulated in float32;
kernels/conv2d_igemm_tf32.cu).  Results then differ from float32 by a relative ~1e-3 *
sqrt(K) (K = C*KH*KW) instead of ~1e-7 * sqrt(K).  float64, the backward passes, the
im2col path and GPUs before Ampere are unaffected.  Read at every call::

    import gpucnn.backends.cuda
    gpucnn.backends.cuda.allow_tf32 = True
"""
allow_tf32 = False
