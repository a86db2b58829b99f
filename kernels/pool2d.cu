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
// Backward, general case: the windows containing padded input row hp = h + PH are the output
// rows oh with oh*SH <= hp < oh*SH + KH; walking down from min(hp / SH, OH - 1) while
// oh*SH + KH > hp visits exactly them (likewise for columns), in the order in which the
// NumPy backend adds them (window tap ascending).
// Backward, disjoint windows (SH >= KH and SW >= KW): every input element lies in at most one
// window, so one thread per stride cell writes its SH x SW input elements (fewer divisions).

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
        const long long orow = i / OW;                   // (n, c, oh)
        const long long ow = i - orow * OW;
        const long long plane = orow / OH;               // n*C + c
        const long long oh = orow - plane * OH;
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
        const long long row = i / W;                     // (n, c, h)
        const long long w = i - row * W;
        const long long plane = row / H;                 // n*C + c
        const long long h = row - plane * H;
        const long long hp = h + PH;
        const long long wp = w + PW;
        const long long oh_top = hp / SH < OH - 1 ? hp / SH : OH - 1;
        const long long ow_top = wp / SW < OW - 1 ? wp / SW : OW - 1;
        const int me = (int)(h * W + w);
        const long long base = plane * OH * OW;
        T sum = T(0);
        for (long long oh = oh_top; oh >= 0 && oh * SH + KH > hp; --oh) {
            for (long long ow = ow_top; ow >= 0 && ow * SW + KW > wp; --ow) {
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
        const long long orow = i / OW;                   // (n, c, oh)
        const long long ow = i - orow * OW;
        const long long plane = orow / OH;               // n*C + c
        const long long oh = orow - plane * OH;
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
        const long long row = i / W;                     // (n, c, h)
        const long long w = i - row * W;
        const long long plane = row / H;                 // n*C + c
        const long long h = row - plane * H;
        const long long hp = h + PH;
        const long long wp = w + PW;
        const long long oh_top = hp / SH < OH - 1 ? hp / SH : OH - 1;
        const long long ow_top = wp / SW < OW - 1 ? wp / SW : OW - 1;
        const long long base = plane * OH * OW;
        T sum = T(0);
        for (long long oh = oh_top; oh >= 0 && oh * SH + KH > hp; --oh) {
            for (long long ow = ow_top; ow >= 0 && ow * SW + KW > wp; --ow) {
                sum += dy[base + oh * OW + ow] * inv_area;
            }
        }
        dx[i] = sum;
    }
}

// Disjoint windows only (SH >= KH, SW >= KW).  The padded plane is cut into stride cells
// (a, b) = rows [a*SH, a*SH + SH) x columns [b*SW, b*SW + SW), a < ceil((H + PH) / SH),
// b < ceil((W + PW) / SW); each input element lies in exactly one cell, and a cell meets at
// most window (a, b).  One thread per cell (n, c, a, b): writes dx for the cell's in-plane
// elements, dy[n, c, a, b] where argmax chose the element, else 0.
template <typename T>
__global__ void maxpool2d_backward_disjoint(const T* __restrict__ dy,
                                            const int* __restrict__ argmax, T* __restrict__ dx,
                                            long long N, long long C, long long H, long long W,
                                            long long OH, long long OW, long long KH, long long KW,
                                            long long SH, long long SW, long long PH, long long PW)
{
    const long long A = (H + PH + SH - 1) / SH;          // cell rows
    const long long B = (W + PW + SW - 1) / SW;          // cell columns
    const long long total = N * C * A * B;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long crow = i / B;                    // (n, c, a)
        const long long b = i - crow * B;
        const long long plane = crow / A;                // n*C + c
        const long long a = crow - plane * A;
        const bool has_window = a < OH && b < OW;
        const long long o = plane * OH * OW + a * OW + b;
        const T g = has_window ? dy[o] : T(0);
        const long long chosen = has_window ? (long long)argmax[o] : -1;
        T* dxp = dx + plane * H * W;
        for (long long hp = a * SH; hp < a * SH + SH; ++hp) {
            const long long h = hp - PH;
            if (h < 0 || h >= H) continue;
            for (long long wp = b * SW; wp < b * SW + SW; ++wp) {
                const long long w = wp - PW;
                if (w < 0 || w >= W) continue;
                const bool in_window = has_window && hp - a * SH < KH && wp - b * SW < KW;
                dxp[h * W + w] = (in_window && chosen == h * W + w) ? g : T(0);
            }
        }
    }
}

// Disjoint windows only (SH >= KH, SW >= KW), cells as for maxpool2d_backward_disjoint.
// One thread per cell (n, c, a, b): writes dx for the cell's in-plane elements,
// dy[n, c, a, b] * inv_area inside window (a, b), else 0.
template <typename T>
__global__ void avgpool2d_backward_disjoint(const T* __restrict__ dy, T* __restrict__ dx,
                                            long long N, long long C, long long H, long long W,
                                            long long OH, long long OW, long long KH, long long KW,
                                            long long SH, long long SW, long long PH, long long PW,
                                            T inv_area)
{
    const long long A = (H + PH + SH - 1) / SH;
    const long long B = (W + PW + SW - 1) / SW;
    const long long total = N * C * A * B;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long crow = i / B;                    // (n, c, a)
        const long long b = i - crow * B;
        const long long plane = crow / A;                // n*C + c
        const long long a = crow - plane * A;
        const bool has_window = a < OH && b < OW;
        const T g = has_window ? dy[plane * OH * OW + a * OW + b] * inv_area : T(0);
        T* dxp = dx + plane * H * W;
        for (long long hp = a * SH; hp < a * SH + SH; ++hp) {
            const long long h = hp - PH;
            if (h < 0 || h >= H) continue;
            for (long long wp = b * SW; wp < b * SW + SW; ++wp) {
                const long long w = wp - PW;
                if (w < 0 || w >= W) continue;
                const bool in_window = has_window && hp - a * SH < KH && wp - b * SW < KW;
                dxp[h * W + w] = in_window ? g : T(0);
            }
        }
    }
}
