// gpucnn pooling kernels, NCHW, forward one thread per output element, backward one thread
// per input element gathering from the windows that contain it (no atomics, deterministic).
//
// Output size OH = (H + 2*PH - KH) / SH + 1 (likewise OW).  Max pooling treats the padding as
// -inf (a padded cell is never chosen), takes the first maximum in row-major window order
// (a NaN counts as a maximum, as numpy.argmax does), and records in argmax the flat index
// h*W + w of the chosen element in its (unpadded) input plane.  Average pooling divides by
// KH*KW always (padded zeros count).  T is float or double; every integer argument is a
// long long; flat indices are 64-bit.  Every kernel runs a grid-stride loop.
//
// The windows containing padded input row hp = h + PH are the output rows oh with
// oh*SH <= hp <= oh*SH + KH - 1, i.e. oh in [oh_lo, oh_hi):
//     oh_lo = hp < KH ? 0 : (hp - KH) / SH + 1,    oh_hi = min(hp / SH + 1, OH).
// Backward kernels walk those windows with oh, ow descending (window tap ascending), the
// order in which the NumPy backend adds them.

template <typename T> __device__ __forceinline__ T negative_infinity();
template <> __device__ __forceinline__ float negative_infinity<float>()
{
    return __int_as_float(0xff800000);
}
template <> __device__ __forceinline__ double negative_infinity<double>()
{
    return __longlong_as_double(0xfff0000000000000LL);
}

// One thread per output element y[n, c, oh, ow]: the maximum of its window and, in
// argmax[n, c, oh, ow], the flat index h*W + w of that maximum in the input plane.
template <typename T>
__global__ void maxpool2d_forward(const T* __restrict__ x, T* __restrict__ y,
                                  int* __restrict__ argmax,
                                  long long N, long long C, long long H, long long W,
                                  long long OH, long long OW, long long KH, long long KW,
                                  long long SH, long long SW, long long PH, long long PW)
{
    const long long total = N * C * OH * OW;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long ow = i % OW;
        long long t = i / OW;
        const long long oh = t % OH;
        const long long plane = t / OH;                  // n*C + c
        const T* xp = x + plane * H * W;
        const long long h0 = oh * SH - PH;
        const long long w0 = ow * SW - PW;
        T best = negative_infinity<T>();
        long long best_at = -1;
        for (long long p = 0; p < KH; ++p) {
            const long long h = h0 + p;
            if (h < 0 || h >= H) continue;
            for (long long q = 0; q < KW; ++q) {
                const long long w = w0 + q;
                if (w < 0 || w >= W) continue;
                const T v = xp[h * W + w];
                const bool v_nan = v != v;
                const bool best_nan = best != best;
                if (best_at < 0 || (!best_nan && (v > best || v_nan))) {
                    best = v;
                    best_at = h * W + w;
                }
            }
        }
        y[i] = best;
        argmax[i] = (int)best_at;
    }
}

// One thread per input-gradient element dx[n, c, h, w]: the sum of dy over the windows that
// contain (h, w) and chose it as their maximum (argmax == h*W + w).
template <typename T>
__global__ void maxpool2d_backward(const T* __restrict__ dy, const int* __restrict__ argmax,
                                   T* __restrict__ dx,
                                   long long N, long long C, long long H, long long W,
                                   long long OH, long long OW, long long KH, long long KW,
                                   long long SH, long long SW, long long PH, long long PW)
{
    const long long total = N * C * H * W;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long w = i % W;
        long long t = i / W;
        const long long h = t % H;
        const long long plane = t / H;                   // n*C + c
        const long long hp = h + PH;
        const long long wp = w + PW;
        const long long oh_lo = hp < KH ? 0 : (hp - KH) / SH + 1;
        const long long oh_hi = (hp / SH + 1 < OH) ? hp / SH + 1 : OH;
        const long long ow_lo = wp < KW ? 0 : (wp - KW) / SW + 1;
        const long long ow_hi = (wp / SW + 1 < OW) ? wp / SW + 1 : OW;
        const int me = (int)(h * W + w);
        const long long base = plane * OH * OW;
        T sum = T(0);
        for (long long oh = oh_hi - 1; oh >= oh_lo; --oh) {
            for (long long ow = ow_hi - 1; ow >= ow_lo; --ow) {
                const long long o = base + oh * OW + ow;
                if (argmax[o] == me) sum += dy[o];
            }
        }
        dx[i] = sum;
    }
}

// One thread per output element y[n, c, oh, ow]: the sum of the window's in-plane elements in
// row-major order, times inv_area = 1 / (KH*KW).
template <typename T>
__global__ void avgpool2d_forward(const T* __restrict__ x, T* __restrict__ y,
                                  long long N, long long C, long long H, long long W,
                                  long long OH, long long OW, long long KH, long long KW,
                                  long long SH, long long SW, long long PH, long long PW,
                                  T inv_area)
{
    const long long total = N * C * OH * OW;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long ow = i % OW;
        long long t = i / OW;
        const long long oh = t % OH;
        const long long plane = t / OH;
        const T* xp = x + plane * H * W;
        const long long h0 = oh * SH - PH;
        const long long w0 = ow * SW - PW;
        T sum = T(0);
        for (long long p = 0; p < KH; ++p) {
            const long long h = h0 + p;
            if (h < 0 || h >= H) continue;
            for (long long q = 0; q < KW; ++q) {
                const long long w = w0 + q;
                if (w < 0 || w >= W) continue;
                sum += xp[h * W + w];
            }
        }
        y[i] = sum * inv_area;
    }
}

// One thread per input-gradient element dx[n, c, h, w]: the sum of dy * inv_area over the
// windows that contain (h, w).
template <typename T>
__global__ void avgpool2d_backward(const T* __restrict__ dy, T* __restrict__ dx,
                                   long long N, long long C, long long H, long long W,
                                   long long OH, long long OW, long long KH, long long KW,
                                   long long SH, long long SW, long long PH, long long PW,
                                   T inv_area)
{
    const long long total = N * C * H * W;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long w = i % W;
        long long t = i / W;
        const long long h = t % H;
        const long long plane = t / H;
        const long long hp = h + PH;
        const long long wp = w + PW;
        const long long oh_lo = hp < KH ? 0 : (hp - KH) / SH + 1;
        const long long oh_hi = (hp / SH + 1 < OH) ? hp / SH + 1 : OH;
        const long long ow_lo = wp < KW ? 0 : (wp - KW) / SW + 1;
        const long long ow_hi = (wp / SW + 1 < OW) ? wp / SW + 1 : OW;
        const long long base = plane * OH * OW;
        T sum = T(0);
        for (long long oh = oh_hi - 1; oh >= oh_lo; --oh) {
            for (long long ow = ow_hi - 1; ow >= ow_lo; --ow) {
                sum += dy[base + oh * OW + ow] * inv_area;
            }
        }
        dx[i] = sum;
    }
}
