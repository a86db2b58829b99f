// gpucnn convolution kernels: im2col / col2im around one cuBLAS GEMM (cupy.matmul).
//
// Layouts, all C-contiguous; T is float or double; every integer argument is a
// long long, and every flat index is 64-bit.
//   x, dx  (N, C, H, W)
//   cols   (C*KH*KW, N*OH*OW):  row r = (c*KH + p)*KW + q,  column j = (n*OH + oh)*OW + ow,
//          cols[r, j] = x[n, c, oh*SH - PH + p, ow*SW - PW + q]   (0 in the padding)
// Forward:          y(O, N*OH*OW) = W(O, C*KH*KW) @ cols, then swap_axes01 -> (N, O, OH, OW)
// Backward data:    dcols = W^T @ dy(O, N*OH*OW), then col2im (a gather, no atomics)
// Backward weight:  dW = dy(O, N*OH*OW) @ cols^T
// Every kernel runs a grid-stride loop, so any grid and block size covers the whole output.

// One thread per (channel c, column j = (n*OH + oh)*OW + ow): for every kernel tap (p, q),
// copies the input pixel x[n, c, oh*SH - PH + p, ow*SW - PW + q] (0 in the zero padding)
// into cols[(c*KH + p)*KW + q, j].  Neighbouring threads write neighbouring columns, and the
// index arithmetic (the divisions) is done once per KH*KW elements.
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ cols,
                       long long N, long long C, long long H, long long W,
                       long long KH, long long KW, long long SH, long long SW,
                       long long PH, long long PW, long long OH, long long OW)
{
    const long long L = OH * OW;
    const long long NL = N * L;
    const long long total = C * NL;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        const long long c = t / NL;
        const long long j = t - c * NL;      // column: (n, oh, ow)
        const long long n = j / L;
        const long long l = j - n * L;
        const long long oh = l / OW;
        const long long ow = l - oh * OW;
        const T* xc = x + (n * C + c) * H * W;                 // input plane (n, c)
        T* out = cols + c * KH * KW * NL + j;                  // cols[(c*KH + 0)*KW + 0, j]
        const long long h0 = oh * SH - PH;
        const long long w0 = ow * SW - PW;
        // taps k = p*KW + q in groups of 4: the group's loads are issued together, then its
        // stores (a tap loop with a runtime bound would wait for each load before the next)
        const long long KK = KH * KW;
        long long p = 0, q = 0;
        for (long long k0 = 0; k0 < KK; k0 += 4) {
            T v[4];
            bool inside[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const long long h = h0 + p;
                const long long w = w0 + q;
                inside[u] = k0 + u < KK && h >= 0 && h < H && w >= 0 && w < W;
                // every lane loads (the plane's first element for a padding tap), so the
                // four loads do not wait on each other's predicates
                v[u] = xc[inside[u] ? h * W + w : 0];
                const bool wrap = q + 1 == KW;
                q = wrap ? 0 : q + 1;
                p = wrap ? p + 1 : p;
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                if (!inside[u]) v[u] = T(0);
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                if (k0 + u < KK) out[(k0 + u) * NL] = v[u];
            }
        }
    }
}

// One thread per input-gradient element dx[n, c, h, w]: gathers the dcols entries of every
// (output position, kernel tap) pair that read x[n, c, h, w] and sums them in a fixed order
// (kernel tap p, q ascending, i.e. output position oh, ow descending, the NumPy backend's order).
// Tap (p, q) read x[n, c, h, w] from output position (oh, ow) when hp - p = oh*SH and
// wp - q = ow*SW with 0 <= oh < OH, 0 <= ow < OW (hp = h + PH, wp = w + PW: the padded row and
// column).  The taps go in groups of four: every lane of a group loads (dcols' first entry of
// the plane for an unused tap), so the four loads overlap; then the used ones are added in order.
template <typename T>
__global__ void col2im(const T* __restrict__ dcols, T* __restrict__ dx,
                       long long N, long long C, long long H, long long W,
                       long long KH, long long KW, long long SH, long long SW,
                       long long PH, long long PW, long long OH, long long OW)
{
    const long long NL = N * OH * OW;
    const long long KK = KH * KW;
    const bool unit_stride = SH == 1 && SW == 1;
    const long long total = N * C * H * W;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long row = i / W;         // (n, c, h)
        const long long w = i - row * W;
        const long long plane = row / H;     // n*C + c
        const long long h = row - plane * H;
        const long long n = plane / C;
        const long long c = plane - n * C;
        const long long hp = h + PH;         // row in the padded input
        const long long wp = w + PW;
        const T* col = dcols + c * KK * NL + n * OH * OW;
        T sum = T(0);
        long long p = 0, q = 0;
        for (long long k0 = 0; k0 < KK; k0 += 4) {
            T v[4];
            bool used[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const long long ohs = hp - p;                 // oh*SH if the tap is used
                const long long ows = wp - q;
                const long long oh = unit_stride ? ohs : ohs / SH;
                const long long ow = unit_stride ? ows : ows / SW;
                used[u] = k0 + u < KK && ohs >= 0 && ows >= 0 && oh * SH == ohs &&
                          ow * SW == ows && oh < OH && ow < OW;
                v[u] = col[used[u] ? (p * KW + q) * NL + oh * OW + ow : 0];
                const bool wrap = q + 1 == KW;
                q = wrap ? 0 : q + 1;
                p = wrap ? p + 1 : p;
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                if (used[u]) sum += v[u];
            }
        }
        dx[i] = sum;
    }
}

// V neighbouring elements moved as one access (V * sizeof(T) bytes, at most 16 per load for
// float; the compiler splits a double Quad into two 16-byte accesses).
template <typename T, int V> struct alignas(V * sizeof(T)) Vec { T v[V]; };

// The body of swap_axes01 with U = Vec<T, V> as the unit: LV = L / V units per row.  Thread
// index i is a unit of dst, i = (b*A + a)*LV + l; it is divided into (b, a, l) once per
// thread, then advanced by the precomputed grid step with carries (no division in the loop).
template <typename T, int V>
__device__ __forceinline__ void swap_axes01_units(const T* __restrict__ src, T* __restrict__ dst,
                                                  long long A, long long B, long long L)
{
    typedef Vec<T, V> U;
    const U* __restrict__ s = reinterpret_cast<const U*>(src);
    U* __restrict__ d = reinterpret_cast<U*>(dst);
    const long long LV = L / V;
    const long long total = A * B * LV;
    const long long step = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const long long step_rows = step / LV;
    const long long step_l = step - step_rows * LV;      // 0 <= step_l < LV
    const long long step_b = step_rows / A;
    const long long step_a = step_rows - step_b * A;     // 0 <= step_a < A
    const long long row = i / LV;                        // b*A + a
    long long l = i - row * LV;
    long long b = row / A;
    long long a = row - b * A;
    for (; i < total; i += step) {
        d[i] = s[(a * B + b) * LV + l];
        l += step_l;
        a += step_a;
        b += step_b;
        if (l >= LV) {
            l -= LV;
            a += 1;
        }
        if (a >= A) {                                    // a < 2A here
            a -= A;
            b += 1;
        }
    }
}

// One thread per element dst[b, a, l] = src[a, b, l] (or per 4 consecutive l when L is a
// multiple of 4 and both arrays are 4-element aligned): src (A, B, L) becomes dst (B, A, L).
// Turns the GEMM's (O, N, OH*OW) into NCHW and dy (N, O, OH*OW) into the GEMM's (O, N, OH*OW).
// Every row of L elements is copied whole, so reads and writes are both contiguous.
template <typename T>
__global__ void swap_axes01(const T* __restrict__ src, T* __restrict__ dst,
                            long long A, long long B, long long L)
{
    const unsigned long long quad = 4 * sizeof(T) - 1;
    if (L % 4 == 0 && ((unsigned long long)src & quad) == 0 && ((unsigned long long)dst & quad) == 0) {
        swap_axes01_units<T, 4>(src, dst, A, B, L);
    } else {
        swap_axes01_units<T, 1>(src, dst, A, B, L);
    }
}
