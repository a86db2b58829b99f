// gpucnn label-smoothed softmax cross-entropy (PyTorch's CrossEntropyLoss(label_smoothing=eps)):
// the target is (1 - eps)*onehot + eps/K.  T is float or double; labels are long long; every
// integer argument is a long long; grid-stride loops.

__device__ __forceinline__ float exp_t(float v) { return expf(v); }
__device__ __forceinline__ double exp_t(double v) { return exp(v); }
__device__ __forceinline__ float log_t(float v) { return logf(v); }
__device__ __forceinline__ double log_t(double v) { return log(v); }

// One thread per row n of logits (N, K): with m = max(logits[n]), z = logits[n] - m and
// s = sum(exp(z)) (increasing k), writes probs[n, :] = exp(z) / s and
// row_loss[n] = log(s) - keep * z[labels[n]] - eps_over_k * sum_k z[k]
// (keep = 1 - eps, eps_over_k = eps/K).  A NaN logit makes the row NaN; a label outside
// [0, K) gives a NaN row loss.
template <typename T>
__global__ void label_smoothing_cross_entropy_forward(const T* __restrict__ logits,
                                                      const long long* __restrict__ labels,
                                                      T* __restrict__ probs,
                                                      T* __restrict__ row_loss,
                                                      long long N, long long K,
                                                      T keep, T eps_over_k)
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
        T zsum = T(0);
        for (long long k = 0; k < K; ++k) {
            s += exp_t(z[k] - m);
            zsum += z[k] - m;
        }
        for (long long k = 0; k < K; ++k) {
            pr[k] = exp_t(z[k] - m) / s;
        }
        const long long label = labels[n];
        if (label >= 0 && label < K) {
            row_loss[n] = log_t(s) - keep * (z[label] - m) - eps_over_k * zsum;
        } else {
            row_loss[n] = log_t(T(-1));   // NaN: the label is out of range
        }
    }
}

// One thread per element (n, k) of probs (N, K):
// dx = (probs - (k == labels[n] ? on : off)) * inv_n, on = 1 - eps + eps/K, off = eps/K.
template <typename T>
__global__ void label_smoothing_cross_entropy_backward(const T* __restrict__ probs,
                                                       const long long* __restrict__ labels,
                                                       T* __restrict__ dx,
                                                       long long N, long long K,
                                                       T on, T off, T inv_n)
{
    const long long total = N * K;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long n = i / K;
        const long long k = i - n * K;
        dx[i] = (probs[i] - (labels[n] == k ? on : off)) * inv_n;
    }
}
