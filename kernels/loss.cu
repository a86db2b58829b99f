// gpucnn loss kernels: softmax cross-entropy (one thread per row, stable log-sum-exp) and
// mean squared error (deterministic partial sums; the host adds the partials and divides).
// T is float or double; labels are long long; every integer argument is a long long.
// Every kernel runs a grid-stride loop, so any grid and block size covers the whole output.

__device__ __forceinline__ float exp_t(float v) { return expf(v); }
__device__ __forceinline__ double exp_t(double v) { return exp(v); }
__device__ __forceinline__ float log_t(float v) { return logf(v); }
__device__ __forceinline__ double log_t(double v) { return log(v); }

// One thread per row n of logits (N, K): with z = logits[n] - max(logits[n]) and
// s = sum(exp(z)), writes probs[n, :] = exp(z) / s and row_loss[n] = log(s) - z[labels[n]]
// (the row's negative log-likelihood).  A label outside [0, K) gives a NaN row loss.
template <typename T>
__global__ void softmax_cross_entropy_forward(const T* __restrict__ logits,
                                              const long long* __restrict__ labels,
                                              T* __restrict__ probs, T* __restrict__ row_loss,
                                              long long N, long long K)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x; n < N; n += step) {
        const T* z = logits + n * K;
        T* pr = probs + n * K;
        T m = z[0];
        for (long long k = 1; k < K; ++k) {
            const T v = z[k];
            if (v > m || v != v) m = v;
        }
        T s = T(0);
        for (long long k = 0; k < K; ++k) {
            s += exp_t(z[k] - m);
        }
        for (long long k = 0; k < K; ++k) {
            pr[k] = exp_t(z[k] - m) / s;
        }
        const long long label = labels[n];
        if (label >= 0 && label < K) {
            row_loss[n] = log_t(s) - (z[label] - m);
        } else {
            row_loss[n] = log_t(T(-1));   // NaN: the label is out of range
        }
    }
}

// One thread per element (n, k) of probs (N, K): dx = (probs - [k == labels[n]]) * inv_n,
// inv_n = 1/N (the mean over the batch).
template <typename T>
__global__ void softmax_cross_entropy_backward(const T* __restrict__ probs,
                                               const long long* __restrict__ labels,
                                               T* __restrict__ dx,
                                               long long N, long long K, T inv_n)
{
    const long long total = N * K;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long n = i / K;
        const long long k = i - n * K;
        T v = probs[i];
        if (labels[n] == k) v -= T(1);
        dx[i] = v * inv_n;
    }
}

// One thread per part p (P parts): sums in double, in increasing i, (y[i] - t[i])^2 over
// i = p, p + P, p + 2P, ... (i < n); writes partial[p].  Neighbouring threads read
// neighbouring addresses.
template <typename T>
__global__ void squared_error_partial(const T* __restrict__ y, const T* __restrict__ t,
                                      double* __restrict__ partial, long long n, long long P)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < P; p += step) {
        double sum = 0.0;
        for (long long i = p; i < n; i += P) {
            const double d = (double)(y[i] - t[i]);
            sum += d * d;
        }
        partial[p] = sum;
    }
}

// One thread per element: dx = (y - t) * scale, scale = 2 / n.
template <typename T>
__global__ void mse_backward(const T* __restrict__ y, const T* __restrict__ t,
                             T* __restrict__ dx, long long n, T scale)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        dx[i] = (y[i] - t[i]) * scale;
    }
}

// One warp (the first 32 threads of block 0; any other thread returns at once): lane l sums
// in double, in increasing i, the values i = l, l + 32, ... (i < n) of v; the 32 lane sums
// are added by a fixed shuffle tree (lane l takes lane l + 16, then l + 8, 4, 2, 1) and lane
// 0 writes out[0] = sum / divisor.  The order depends on n only: bitwise reproducible.  This
// is how a loss becomes a 0-d device value without a host round trip.
template <typename T>
__global__ void mean_to_scalar(const T* __restrict__ v, double* __restrict__ out,
                               long long n, double divisor)
{
    if (blockIdx.x != 0 || threadIdx.x >= 32) return;
    const long long lane = threadIdx.x;
    double sum = 0.0;
    for (long long i = lane; i < n; i += 32) {
        sum += (double)v[i];
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) out[0] = sum / divisor;
}
