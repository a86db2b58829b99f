// gpucnn data kernels: mini-batches gathered on the device from a dataset resident there.
// T is float or double; idx holds long long sample indices; every integer argument is a
// long long.  Every kernel runs a grid-stride loop, so any grid covers the whole output.

// One thread per element out[b, j] of the batch (B rows of D values): out[b, j] =
// src[idx[b], j] -- the rows of a (N, D) dataset picked by idx, in the order of idx.
template <typename T>
__global__ void gather_rows(const T* __restrict__ src, const long long* __restrict__ idx,
                            T* __restrict__ out, long long B, long long D)
{
    const long long total = B * D;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long b = i / D;
        const long long j = i - b * D;
        out[i] = src[idx[b] * D + j];
    }
}

// One thread per element out[b, c, s] (B images of C channels of S pixels, uint8 source
// (N, C, S)): out = (src[idx[b], c, s] * inv_max - mean[c]) / stdev[c] in T -- the conversion,
// scaling and per-channel normalisation of data.normalize, in one pass over the batch.
template <typename T>
__global__ void gather_normalize(const unsigned char* __restrict__ src,
                                 const long long* __restrict__ idx, const T* __restrict__ mean,
                                 const T* __restrict__ stdev, T* __restrict__ out,
                                 long long B, long long C, long long S, T inv_max)
{
    const long long total = B * C * S;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long row = i / S;                     // b*C + c
        const long long s = i - row * S;
        const long long b = row / C;
        const long long c = row - b * C;
        const T v = (T)src[(idx[b] * C + c) * S + s] * inv_max;
        out[i] = (v - mean[c]) / stdev[c];
    }
}
