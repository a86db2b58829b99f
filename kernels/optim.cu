// gpucnn optimizer kernels: fused elementwise SGD (momentum, Nesterov, weight decay) and Adam
// updates, in place, with the formulas of torch.optim.  Host-side constants (bias corrections)
// are computed once per step in double by the caller and passed in as T.
// T is float or double; n and the flags are long long.  Every kernel runs a grid-stride loop.

__device__ __forceinline__ float sqrt_t(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_t(double v) { return sqrt(v); }

// One thread per parameter element i:
//   g = grad + weight_decay * param                      (only if weight_decay != 0)
//   if use_buf (momentum != 0):
//       buf = first ? g : momentum * buf + g
//       g   = nesterov ? g + momentum * buf : buf
//   param -= lr * g
// When use_buf is 0, buf is not touched (the caller may pass any pointer).
template <typename T>
__global__ void sgd_update(T* __restrict__ param, const T* __restrict__ grad, T* buf,
                           long long n, T lr, T momentum, T weight_decay,
                           long long nesterov, long long first, long long use_buf)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const T p = param[i];
        T g = grad[i];
        if (weight_decay != T(0)) g = g + weight_decay * p;
        if (use_buf) {
            const T b = first ? g : buf[i] * momentum + g;
            buf[i] = b;
            g = nesterov ? g + momentum * b : b;
        }
        param[i] = p - lr * g;
    }
}

// One thread per parameter element i (step t >= 1):
//   g = grad + weight_decay * param                      (only if weight_decay != 0)
//   m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
//   param -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
// with step_size = lr / (1 - beta1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t).
template <typename T>
__global__ void adam_update(T* __restrict__ param, const T* __restrict__ grad,
                            T* __restrict__ m, T* __restrict__ v, long long n,
                            T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                            T weight_decay, T step_size, T inv_sqrt_bc2)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const T p = param[i];
        T g = grad[i];
        if (weight_decay != T(0)) g = g + weight_decay * p;
        const T mi = m[i] * beta1 + one_minus_beta1 * g;
        const T vi = v[i] * beta2 + one_minus_beta2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        const T denom = sqrt_t(vi) * inv_sqrt_bc2 + eps;
        param[i] = p - step_size * (mi / denom);
    }
}

// The updates of a captured CUDA graph (gpucnn/graph.py): the same formulas, with the values
// that change between replays read from device memory instead of kernel arguments, so the
// graph is captured once.  One thread per parameter element i, as sgd_update (first is
// always false here: the first step runs eagerly) with lr = lr_table[0].
template <typename T>
__global__ void sgd_update_indexed(T* __restrict__ param, const T* __restrict__ grad, T* buf,
                                   long long n, const T* __restrict__ lr_table, T momentum,
                                   T weight_decay, long long nesterov, long long use_buf)
{
    const T lr = lr_table[0];
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const T p = param[i];
        T g = grad[i];
        if (weight_decay != T(0)) g = g + weight_decay * p;
        if (use_buf) {
            const T b = buf[i] * momentum + g;
            buf[i] = b;
            g = nesterov ? g + momentum * b : b;
        }
        param[i] = p - lr * g;
    }
}

// One thread per parameter element i, as adam_update with step_size = table[2*r] and
// inv_sqrt_bc2 = table[2*r + 1], r = row[0] (the host fills the table for the coming steps).
template <typename T>
__global__ void adam_update_indexed(T* __restrict__ param, const T* __restrict__ grad,
                                    T* __restrict__ m, T* __restrict__ v, long long n,
                                    T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                    T weight_decay, const T* __restrict__ table,
                                    const long long* __restrict__ row)
{
    const long long r = row[0];
    const T step_size = table[2 * r];
    const T inv_sqrt_bc2 = table[2 * r + 1];
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const T p = param[i];
        T g = grad[i];
        if (weight_decay != T(0)) g = g + weight_decay * p;
        const T mi = m[i] * beta1 + one_minus_beta1 * g;
        const T vi = v[i] * beta2 + one_minus_beta2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        const T denom = sqrt_t(vi) * inv_sqrt_bc2 + eps;
        param[i] = p - step_size * (mi / denom);
    }
}

// One thread (thread 0 of block 0): row[0] += 1 -- the graph's step counter into the table.
// (Instantiated per T like every kernel here; T is unused.)
template <typename T>
__global__ void advance_row(long long* __restrict__ row)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) row[0] += 1;
}
