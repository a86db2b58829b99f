// gpucnn batch normalisation kernels: per-channel statistics, the normalisation, its backward
// and the running-statistics update (gpucnn/backends/__init__.py gives the exact formulas).
//
// x and dy are viewed as (N, C, S): S = H*W for NCHW, L for (N, C, L), 1 for (N, C).  Every
// reduction is deterministic: a fixed partition into P parts per channel summed in double in a
// fixed order (first stage, one thread per (channel, part)), then one warp per channel adding
// the parts by a fixed shuffle tree (second stage) -- no atomics, bitwise reproducible.
// T is float or double; every integer argument is a long long.  Grid-stride loops throughout;
// the warp kernels need a block size that is a multiple of 32 (the backend's is).
// The per-channel mean itself comes from bias.cu's channel_sum_partial + channel_mean here.

__device__ __forceinline__ float sqrt_t(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_t(double v) { return sqrt(v); }

// The sum of a warp's 32 lane values by a fixed tree (lane l takes lane l + 16, 8, 4, 2, 1);
// lane 0 holds the total.
__device__ __forceinline__ double warp_sum(double v)
{
    for (int offset = 16; offset > 0; offset /= 2) {
        v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    return v;
}

// One warp (32 threads) per channel c of partial (C, P): thread (lane) l sums in double the
// parts p = l, l + 32, ... in increasing p; the lanes are added by warp_sum; lane 0 writes
// out[c] = (T)(sum / m).
template <typename T>
__global__ void channel_mean(const double* __restrict__ partial, T* __restrict__ out,
                             long long C, long long P, double m)
{
    const long long lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    for (long long c = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32; c < C; c += warps) {
        double sum = 0.0;
        for (long long p = lane; p < P; p += 32) {
            sum += partial[c * P + p];
        }
        sum = warp_sum(sum);
        if (lane == 0) out[c] = (T)(sum / m);
    }
}

// One thread per (channel c, part p), t = c*P + p: sums in double, in increasing element
// order, d*d with d = x - mean[c] (computed in T) over the elements e = p, p + P, ... (e < N*S)
// of channel c, element e being x[e / S, c, e % S]; writes partial[t].  As bias.cu's
// channel_sum_partial: (e / S, e % S) is divided out once, then advanced by (P / S, P % S)
// with a carry, so the inner loop has no integer division.
template <typename T>
__global__ void channel_sqdev_partial(const T* __restrict__ x, const T* __restrict__ mean,
                                      double* __restrict__ partial,
                                      long long N, long long C, long long S, long long P)
{
    const long long M = N * S;
    const long long step = (long long)gridDim.x * blockDim.x;
    const long long P_n = P / S;
    const long long P_s = P - P_n * S;                   // 0 <= P_s < S
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < C * P; t += step) {
        const long long c = t / P;
        const long long p = t - c * P;
        const T mu = mean[c];
        long long n = p / S;
        long long s = p - n * S;
        double sum = 0.0;
        for (long long e = p; e < M; e += P) {
            const double d = (double)(x[(n * C + c) * S + s] - mu);
            sum += d * d;
            n += P_n;
            s += P_s;
            if (s >= S) {
                s -= S;
                n += 1;
            }
        }
        partial[t] = sum;
    }
}

// One thread per element i of x (N, C, S), c = (i / S) % C:
// y[i] = (x[i] - mean[c]) * scale + bias[c],  scale = weight[c] / sqrt(var[c] + eps).
// As bias.cu's bias_forward: the channel is divided out once per thread, then each grid step
// moves (s, c) on by (step % S, (step / S) % C) with carries (no division in the loop).
template <typename T>
__global__ void batchnorm_forward(const T* __restrict__ x, const T* __restrict__ mean,
                                  const T* __restrict__ var, const T* __restrict__ weight,
                                  const T* __restrict__ bias, T* __restrict__ y,
                                  long long total, long long C, long long S, T eps)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const long long step_rows = step / S;
    const long long step_s = step - step_rows * S;       // 0 <= step_s < S
    const long long step_c = step_rows % C;              // 0 <= step_c < C
    const long long row = i / S;                         // n*C + c
    long long s = i - row * S;
    long long c = row % C;
    for (; i < total; i += step) {
        const T scale = weight[c] / sqrt_t(var[c] + eps);
        y[i] = (x[i] - mean[c]) * scale + bias[c];
        s += step_s;
        c += step_c;
        if (s >= S) {                                    // carry into the next row
            s -= S;
            c += 1;
        }
        if (c >= C) c -= C;                              // c < 2C here
    }
}

// One thread per (channel c, part p), t = c*P + p: over the elements e = p, p + P, ... of
// channel c (walked as in channel_sqdev_partial), sums in double dy and dy * (x - mean[c])
// (the difference computed in T); writes partial_dy[t] and partial_dyxmu[t].
template <typename T>
__global__ void batchnorm_backward_partial(const T* __restrict__ dy, const T* __restrict__ x,
                                           const T* __restrict__ mean,
                                           double* __restrict__ partial_dy,
                                           double* __restrict__ partial_dyxmu,
                                           long long N, long long C, long long S, long long P)
{
    const long long M = N * S;
    const long long step = (long long)gridDim.x * blockDim.x;
    const long long P_n = P / S;
    const long long P_s = P - P_n * S;                   // 0 <= P_s < S
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < C * P; t += step) {
        const long long c = t / P;
        const long long p = t - c * P;
        const T mu = mean[c];
        long long n = p / S;
        long long s = p - n * S;
        double s1 = 0.0, s2 = 0.0;
        for (long long e = p; e < M; e += P) {
            const long long k = (n * C + c) * S + s;
            const double g = (double)dy[k];
            s1 += g;
            s2 += g * (double)(x[k] - mu);
            n += P_n;
            s += P_s;
            if (s >= S) {
                s -= S;
                n += 1;
            }
        }
        partial_dy[t] = s1;
        partial_dyxmu[t] = s2;
    }
}

// One warp (32 threads) per channel c: each thread (lane) adds every 32nd part of partial_dy
// and partial_dyxmu (C, P) as channel_mean does, then lane 0 writes dbias[c] = (T)sum_dy and
// dweight[c] = (T)sum_dyxmu * invstd, invstd = 1 / sqrt(var[c] + eps).
template <typename T>
__global__ void batchnorm_backward_reduce(const double* __restrict__ partial_dy,
                                          const double* __restrict__ partial_dyxmu,
                                          const T* __restrict__ var, T* __restrict__ dweight,
                                          T* __restrict__ dbias, long long C, long long P, T eps)
{
    const long long lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    for (long long c = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32; c < C; c += warps) {
        double s1 = 0.0, s2 = 0.0;
        for (long long p = lane; p < P; p += 32) {
            s1 += partial_dy[c * P + p];
            s2 += partial_dyxmu[c * P + p];
        }
        s1 = warp_sum(s1);
        s2 = warp_sum(s2);
        if (lane == 0) {
            const T invstd = T(1) / sqrt_t(var[c] + eps);
            dbias[c] = (T)s1;
            dweight[c] = (T)s2 * invstd;
        }
    }
}

// One thread per element i of dy (N, C, S), c = (i / S) % C, with invstd = 1/sqrt(var[c]+eps)
// and a = weight[c] * invstd:
//   batch_stats != 0:  dx[i] = ((dy[i] - dbias[c]*inv_m) - (x[i] - mean[c]) * k2) * a,
//                      k2 = invstd * dweight[c] * inv_m         (the full training backward)
//   batch_stats == 0:  dx[i] = dy[i] * a                          (running statistics)
// (s, c) advance with carries as in batchnorm_forward.
template <typename T>
__global__ void batchnorm_backward_data(const T* __restrict__ dy, const T* __restrict__ x,
                                        const T* __restrict__ mean, const T* __restrict__ var,
                                        const T* __restrict__ weight,
                                        const T* __restrict__ dweight,
                                        const T* __restrict__ dbias, T* __restrict__ dx,
                                        long long total, long long C, long long S, T eps,
                                        T inv_m, long long batch_stats)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const long long step_rows = step / S;
    const long long step_s = step - step_rows * S;
    const long long step_c = step_rows % C;
    const long long row = i / S;
    long long s = i - row * S;
    long long c = row % C;
    for (; i < total; i += step) {
        const T invstd = T(1) / sqrt_t(var[c] + eps);
        const T a = weight[c] * invstd;
        if (batch_stats) {
            const T k1 = dbias[c] * inv_m;
            const T k2 = invstd * dweight[c] * inv_m;
            dx[i] = ((dy[i] - k1) - (x[i] - mean[c]) * k2) * a;
        } else {
            dx[i] = dy[i] * a;
        }
        s += step_s;
        c += step_c;
        if (s >= S) {
            s -= S;
            c += 1;
        }
        if (c >= C) c -= C;
    }
}

// One thread per channel c, in place:
// running_mean[c] = momentum*mean[c] + keep*running_mean[c],
// running_var[c]  = momentum*(var[c]*unbias) + keep*running_var[c]
// (keep = 1 - momentum, unbias = M/(M-1): the running variance is the unbiased one).
template <typename T>
__global__ void batchnorm_update_running(T* __restrict__ running_mean, T* __restrict__ running_var,
                                         const T* __restrict__ mean, const T* __restrict__ var,
                                         long long C, T momentum, T keep, T unbias)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < C; c += step) {
        running_mean[c] = momentum * mean[c] + keep * running_mean[c];
        running_var[c] = momentum * (var[c] * unbias) + keep * running_var[c];
    }
}
