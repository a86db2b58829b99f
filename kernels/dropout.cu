// gpucnn dropout kernel: the mask is a counter-based hash of (seed, element index), so it is
// recomputed in the backward instead of stored, and the NumPy backend (numpy_layers.py)
// computes the identical mask.  T is float or double; integer arguments are long long.

// splitmix64's output function of z (uint64 arithmetic, wrapping mod 2^64).
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// One thread per element i (grid-stride): with h = splitmix64(seed + (i+1)*0x9E3779B97F4A7C15),
// the element is kept when (h >> 11) >= threshold (threshold = ceil(p * 2^53));
// y[i] = x[i] * (kept ? scale : 0), scale = 1/(1-p).  Used for the forward (x) and the
// backward (dy) alike.
template <typename T>
__global__ void dropout_apply(const T* __restrict__ x, T* __restrict__ y, long long n,
                              long long seed, long long threshold, T scale)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    const unsigned long long s = (unsigned long long)seed;
    const unsigned long long th = (unsigned long long)threshold;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const unsigned long long h =
            splitmix64(s + (unsigned long long)(i + 1) * 0x9E3779B97F4A7C15ULL);
        y[i] = x[i] * ((h >> 11) >= th ? scale : T(0));
    }
}
