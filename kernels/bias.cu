// gpucnn bias kernels: add a per-channel bias, and its gradient as a deterministic
// two-stage reduction (fixed partition, fixed summation order, no atomics).
//
// y and dy are viewed as (N, C, HW): HW = H*W for NCHW tensors, 1 for (N, features).
// T is float or double; every integer argument is a long long; partial sums are double.
// Every kernel runs a grid-stride loop, so any grid covers the whole output (row_sum needs a
// block size that is a multiple of 32).

// One thread per element y[n, c, s] (grid-stride): adds b[c] in place.  The channel is found
// by division once per thread; each grid step then moves (s, c) on by the precomputed
// (step % HW, (step / HW) % C) with carries, so the loop itself has no integer division.
template <typename T>
__global__ void bias_forward(T* __restrict__ y, const T* __restrict__ b,
                             long long total, long long C, long long HW)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const long long step_rows = step / HW;
    const long long step_s = step - step_rows * HW;      // 0 <= step_s < HW
    const long long step_c = step_rows % C;              // 0 <= step_c < C
    const long long row = i / HW;                        // n*C + c
    long long s = i - row * HW;
    long long c = row % C;
    for (; i < total; i += step) {
        y[i] += b[c];
        s += step_s;
        c += step_c;
        if (s >= HW) {                                   // carry into the next row
            s -= HW;
            c += 1;
        }
        if (c >= C) c -= C;                              // c < 2C here
    }
}

// One thread per (channel c, part p), thread index t = c*P + p: sums in double, in increasing
// m, the elements m = p, p + P, p + 2P, ... (m < N*HW) of channel c, where element m is
// dy[m / HW, c, m % HW]; writes partial[t].  Neighbouring threads read neighbouring addresses.
// (m / HW, m % HW) is divided out once and then advanced by (P / HW, P % HW) with a carry.
template <typename T>
__global__ void channel_sum_partial(const T* __restrict__ dy, double* __restrict__ partial,
                                    long long N, long long C, long long HW, long long P)
{
    const long long M = N * HW;
    const long long total = C * P;
    const long long step = (long long)gridDim.x * blockDim.x;
    const long long P_n = P / HW;
    const long long P_s = P - P_n * HW;                   // 0 <= P_s < HW
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        const long long c = t / P;
        const long long p = t - c * P;
        long long n = p / HW;
        long long s = p - n * HW;
        double sum = 0.0;
        for (long long m = p; m < M; m += P) {
            sum += (double)dy[(n * C + c) * HW + s];
            n += P_n;
            s += P_s;
            if (s >= HW) {
                s -= HW;
                n += 1;
            }
        }
        partial[t] = sum;
    }
}

// One warp (32 threads, lanes l) per row r of partial (R, P): thread l sums in double, in
// increasing p, the values p = l, l + 32, ... of the row; the 32 lane sums are then added by a fixed shuffle tree
// (lane l takes lane l + 16, then l + 8, 4, 2, 1) and lane 0 writes out[r] rounded once to T.
// The order depends on nothing but P, so the result is bitwise reproducible.  The block size
// must be a multiple of 32 (the backend's is); warps stride over the rows.
template <typename T>
__global__ void row_sum(const double* __restrict__ partial, T* __restrict__ out,
                        long long R, long long P)
{
    const long long lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    for (long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < R; r += warps) {
        double sum = 0.0;
        for (long long p = lane; p < P; p += 32) {
            sum += partial[r * P + p];
        }
        for (int offset = 16; offset > 0; offset /= 2) {
            sum += __shfl_down_sync(0xffffffffu, sum, offset);
        }
        if (lane == 0) out[r] = (T)sum;
    }
}

__device__ __forceinline__ float exp_t(float v) { return expf(v); }
__device__ __forceinline__ double exp_t(double v) { return exp(v); }
__device__ __forceinline__ float tanh_t(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_t(double v) { return tanh(v); }

// One thread per element y[n, c, s] (grid-stride, channel stepping as bias_forward): in place,
// v = y + b[c], then y = act(v) with act 0: identity, 1: relu (max(v, 0), NaN stays NaN),
// 2: sigmoid (1 / (1 + exp(-v))), 3: tanh -- the formulas of activation.cu, so the fused
// launch is bitwise the bias_forward launch followed by the activation's.
template <typename T>
__global__ void bias_act_forward(T* __restrict__ y, const T* __restrict__ b,
                                 long long total, long long C, long long HW, long long act)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const long long step_rows = step / HW;
    const long long step_s = step - step_rows * HW;      // 0 <= step_s < HW
    const long long step_c = step_rows % C;              // 0 <= step_c < C
    const long long row = i / HW;                        // n*C + c
    long long s = i - row * HW;
    long long c = row % C;
    for (; i < total; i += step) {
        T v = y[i] + b[c];
        if (act == 1) {
            v = (v > T(0) || v != v) ? v : T(0);
        } else if (act == 2) {
            v = T(1) / (T(1) + exp_t(-v));
        } else if (act == 3) {
            v = tanh_t(v);
        }
        y[i] = v;
        s += step_s;
        c += step_c;
        if (s >= HW) {
            s -= HW;
            c += 1;
        }
        if (c >= C) c -= C;
    }
}
