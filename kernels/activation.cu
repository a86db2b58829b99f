// gpucnn elementwise kernels: activations forward and backward (backward takes the saved
// output y), plus the in-place accumulate and the non-finite check used by the backend.
// T is float or double; n (the element count) is a long long; indices are 64-bit.
// Every kernel runs a grid-stride loop, so any grid and block size covers the whole array.

__device__ __forceinline__ float exp_t(float v) { return expf(v); }
__device__ __forceinline__ double exp_t(double v) { return exp(v); }
__device__ __forceinline__ float tanh_t(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_t(double v) { return tanh(v); }

template <typename T> __device__ __forceinline__ T sigmoid_t(T v)
{
    return T(1) / (T(1) + exp_t(-v));
}

// One thread per element: y = 1 / (1 + exp(-x)).  For x << 0, exp(-x) overflows to inf and
// y is exactly 0; for x >> 0, y is exactly 1: no NaN for any finite x.
// The correctly rounded reciprocal has a rarely taken slow-path branch that stops the compiler
// from batching loads across iterations, so the loop takes four grid steps at a time with its
// four loads first (same elements per thread, same formula), then finishes one step at a time.
template <typename T>
__global__ void sigmoid_forward(const T* __restrict__ x, T* __restrict__ y, long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * step < n; i += 4 * step) {
        const T x0 = x[i];
        const T x1 = x[i + step];
        const T x2 = x[i + 2 * step];
        const T x3 = x[i + 3 * step];
        y[i] = sigmoid_t(x0);
        y[i + step] = sigmoid_t(x1);
        y[i + 2 * step] = sigmoid_t(x2);
        y[i + 3 * step] = sigmoid_t(x3);
    }
    for (; i < n; i += step) {
        y[i] = sigmoid_t(x[i]);
    }
}

// One thread per element: dx = dy * y * (1 - y), from the saved output y.
template <typename T>
__global__ void sigmoid_backward(const T* __restrict__ dy, const T* __restrict__ y,
                                 T* __restrict__ dx, long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const T yi = y[i];
        dx[i] = dy[i] * yi * (T(1) - yi);
    }
}

// One thread per element: y = max(x, 0); a NaN stays NaN (as numpy.maximum) so that
// divergence stays visible.
template <typename T>
__global__ void relu_forward(const T* __restrict__ x, T* __restrict__ y, long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const T v = x[i];
        y[i] = (v > T(0) || v != v) ? v : T(0);
    }
}

// One thread per element: dx = dy where y > 0, else 0.
template <typename T>
__global__ void relu_backward(const T* __restrict__ dy, const T* __restrict__ y,
                              T* __restrict__ dx, long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        dx[i] = y[i] > T(0) ? dy[i] : T(0);
    }
}

// One thread per element: y = tanh(x).
template <typename T>
__global__ void tanh_forward(const T* __restrict__ x, T* __restrict__ y, long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        y[i] = tanh_t(x[i]);
    }
}

// One thread per element: dx = dy * (1 - y*y), from the saved output y.
template <typename T>
__global__ void tanh_backward(const T* __restrict__ dy, const T* __restrict__ y,
                              T* __restrict__ dx, long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const T yi = y[i];
        dx[i] = dy[i] * (T(1) - yi * yi);
    }
}

// One thread per element: dst += src, in place.
template <typename T>
__global__ void accumulate(T* __restrict__ dst, const T* __restrict__ src, long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        dst[i] += src[i];
    }
}

// One thread per element: if x is NaN or +-inf, stores 1 into flag[0] (the caller zeroes it
// first).  Every writer stores the same value, so the result does not depend on the order.
template <typename T>
__global__ void nonfinite_flag(const T* __restrict__ x, int* __restrict__ flag, long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const T v = x[i];
        if (!(v - v == T(0))) {              // inf - inf and NaN - NaN are NaN
            flag[0] = 1;
        }
    }
}
