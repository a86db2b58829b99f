// gpucnn implicit-GEMM convolution: the three convolution GEMMs computed straight from the
// NCHW tensors, with no im2col buffer in global memory.
//
// Layouts, all C-contiguous; T is float or double; every integer argument is a long long and
// every global index is 64-bit.  x, dx (N, C, H, W); w, dw (O, C, KH, KW); y, dy (N, O, OH, OW).
// KK = KH*KW; a tap r = p*KW + q.  Each kernel is one GEMM  out[m, n] = sum_k A[m, k] * B[k, n]
// whose operands are read through index maps (the "virtual" im2col matrix):
//
//   forward          m = o,  n = (img, oh, ow),  k = (c, p, q)      A = w,  B = x gathered
//   backward data    m = c,  n = (img, h, w),    k = (o, p, q)      A = w,  B = dy gathered
//                    (dy[img, o, oh, ow] with oh*SH = h + PH - p, ow*SW = w + PW - q, else 0)
//   backward weight  m = o,  n = (c, p, q),      k = (img, oh, ow)  A = dy, B = x gathered
//
// Tiling (all three): a block of 256 threads computes a 64 x 64 tile of out; the K dimension
// is walked in steps of 16: each thread loads 4 elements of the A tile and 4 of the B tile into
// registers (the loads of step s+1 are issued before the arithmetic of step s), stores them in
// shared memory (As[16][64], Bs[16][64]), and after a barrier accumulates its 4 x 4 outputs
// (rows ty + 16i, columns tx + 16j: register blocking, conflict-free shared reads); threads
// whose rows all lie past M (a layer with fewer than 64 channels) skip the arithmetic.
// Determinism: every output element is one thread's sum over k in ascending order, one fused
// multiply-add per term (explicit fma: one rounding per term, whatever --fmad says); no atomics.
// Backward weight splits its long reduction (N*OH*OW) into S fixed slices of `chunk` terms
// (blockIdx.z), each writing its partial tile, and igemm_split_sum adds the S partials of each
// element in slice order: the partition depends on the shapes only, so results are bitwise
// reproducible run to run and device to device.
//
// Launch: grid (ceil(Ncols / 64), ceil(M / 64), S), block 256, no dynamic shared memory.

#define IG_BM 64
#define IG_BN 64
#define IG_BK 16
#define IG_THREADS 256

__device__ __forceinline__ float ig_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double ig_fma(double a, double b, double c) { return fma(a, b, c); }

// One thread's share of one K step: acc[i][j] += As[k][ty + 16i] * Bs[k][tx + 16j], k ascending.
template <typename T>
__device__ __forceinline__ void igemm_step(const T (*As)[IG_BM], const T (*Bs)[IG_BN], T (*acc)[4],
                                           long long tx, long long ty)
{
#pragma unroll
    for (int k = 0; k < IG_BK; ++k) {
        T a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = ig_fma(a[i], b[j], acc[i][j]);
        }
    }
}

// One block per 64 x 64 tile of y viewed as (O, N*OH*OW); one thread per 4 x 4 outputs
// y[img, o, oh, ow] (o = tile row + ty + 16i, column (img, oh, ow) = tile column + tx + 16j),
// each the sum over (c, p, q) ascending of w[o, c, p, q] * x[img, c, oh*SH - PH + p, ow*SW - PW + q]
// (0 in the zero padding).
template <typename T>
__global__ void conv2d_igemm_forward(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                     long long N, long long C, long long H, long long W,
                     long long O, long long KH, long long KW, long long SH, long long SW,
                     long long PH, long long PW, long long OH, long long OW)
{
    __shared__ T As[IG_BK][IG_BM];
    __shared__ T Bs[IG_BK][IG_BN];
    const long long t = threadIdx.x;
    const long long tx = t % 16, ty = t / 16;
    const long long KK = KH * KW;
    const long long K = C * KK;
    const long long L = OH * OW;
    const long long NC = N * L;
    const long long m0 = (long long)blockIdx.y * IG_BM;
    const long long n0 = (long long)blockIdx.x * IG_BN;
    // A loader: k = ak, rows am + 16u (16 neighbouring threads read 16 consecutive weights)
    const long long ak = t % IG_BK, am = t / IG_BK;
    // B loader: one output position per thread (neighbouring threads: neighbouring ow), rows bk + 4u
    const long long bn = t % IG_BN, bk = t / IG_BN;
    const long long j = n0 + bn;
    const bool jin = j < NC;
    long long img = 0, h0 = 0, w0 = 0;
    if (jin) {
        img = j / L;
        const long long l = j - img * L;
        const long long oh = l / OW;
        h0 = oh * SH - PH;
        w0 = (l - oh * OW) * SW - PW;
    }
    const T* xn = x + img * C * H * W;
    T ra[4], rb[4];
    T acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) acc[i][jj] = T(0);
    }
    // The B loader's rows k = kb + bk + 4u as taps (c, p, q): divided once here, then advanced
    // by one K step (16 = dc*KK + dp*KW + dq) per load with carries (no division in the loop).
    long long bc[4], bp[4], bq[4];
    const long long dc = IG_BK / KK, dp = (IG_BK - dc * KK) / KW, dq = IG_BK - dc * KK - dp * KW;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const long long k = bk + 4 * u;
        bc[u] = k / KK;
        bp[u] = (k - bc[u] * KK) / KW;
        bq[u] = k - bc[u] * KK - bp[u] * KW;
    }
    // this thread's 4 + 4 tile elements of K step kb (called for kb = 0, 16, 32, ... in order)
    auto load = [&](long long kb) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const long long m = m0 + am + 16 * u, k = kb + ak;
            ra[u] = (m < O && k < K) ? w[m * K + k] : T(0);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const long long k = kb + bk + 4 * u;
            const long long h = h0 + bp[u], ww = w0 + bq[u];
            rb[u] = (jin && k < K && h >= 0 && h < H && ww >= 0 && ww < W)
                        ? xn[(bc[u] * H + h) * W + ww] : T(0);
            bq[u] += dq;
            bp[u] += dp;
            bc[u] += dc;
            if (bq[u] >= KW) { bq[u] -= KW; bp[u] += 1; }
            if (bp[u] >= KH) { bp[u] -= KH; bc[u] += 1; }
        }
    };
    load(0);
    for (long long k0 = 0; k0 < K; k0 += IG_BK) {
#pragma unroll
        for (int u = 0; u < 4; ++u) As[ak][am + 16 * u] = ra[u];
#pragma unroll
        for (int u = 0; u < 4; ++u) Bs[bk + 4 * u][bn] = rb[u];
        __syncthreads();
        if (k0 + IG_BK < K) load(k0 + IG_BK);   // in flight during this step's arithmetic
        if (m0 + ty < O) igemm_step<T>(As, Bs, acc, tx, ty);   // else all 4 rows are past O
        __syncthreads();
    }
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
        const long long col = n0 + tx + 16 * jj;
        if (col >= NC) continue;
        const long long im = col / L;
        const long long l = col - im * L;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const long long m = m0 + ty + 16 * i;
            if (m < O) y[(im * O + m) * L + l] = acc[i][jj];
        }
    }
}

// One block per 64 x 64 tile of dx viewed as (C, N*H*W); one thread per 4 x 4 elements
// dx[img, c, h, w], each the sum over (o, p, q) ascending of w[o, c, p, q] * dy[img, o, oh, ow]
// for the taps with oh*SH = h + PH - p and ow*SW = w + PW - q inside dy (a gather, no atomics).
template <typename T>
__global__ void conv2d_igemm_backward_data(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,
                           long long N, long long C, long long H, long long W,
                           long long O, long long KH, long long KW, long long SH, long long SW,
                           long long PH, long long PW, long long OH, long long OW)
{
    __shared__ T As[IG_BK][IG_BM];
    __shared__ T Bs[IG_BK][IG_BN];
    const long long t = threadIdx.x;
    const long long tx = t % 16, ty = t / 16;
    const long long KK = KH * KW;
    const long long K = O * KK;
    const long long HW = H * W;
    const long long NC = N * HW;
    const long long m0 = (long long)blockIdx.y * IG_BM;
    const long long n0 = (long long)blockIdx.x * IG_BN;
    const long long ak = t % IG_BK, am = t / IG_BK;
    const long long bn = t % IG_BN, bk = t / IG_BN;
    const long long j = n0 + bn;
    const bool jin = j < NC;
    long long img = 0, hp = 0, wp = 0;
    if (jin) {
        img = j / HW;
        const long long l = j - img * HW;
        const long long h = l / W;
        hp = h + PH;                      // row and column in the padded input
        wp = (l - h * W) + PW;
    }
    const T* dyn = dy + img * O * OH * OW;
    T ra[4], rb[4];
    T acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) acc[i][jj] = T(0);
    }
    // the B loader's rows k = kb + bk + 4u as taps (o, p, q), advanced per load as in the forward
    long long bo[4], bp[4], bq[4];
    const long long dc = IG_BK / KK, dp = (IG_BK - dc * KK) / KW, dq = IG_BK - dc * KK - dp * KW;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const long long k = bk + 4 * u;
        bo[u] = k / KK;
        bp[u] = (k - bo[u] * KK) / KW;
        bq[u] = k - bo[u] * KK - bp[u] * KW;
    }
    const bool unit_stride = SH == 1 && SW == 1;
    // this thread's 4 + 4 tile elements of K step kb (called for kb = 0, 16, 32, ... in order)
    auto load = [&](long long kb) {
        const long long ka = kb + ak;
        const long long ao = ka / KK;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const long long m = m0 + am + 16 * u;
            ra[u] = (m < C && ka < K) ? w[(ao * C + m) * KK + (ka - ao * KK)] : T(0);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const long long k = kb + bk + 4 * u;
            const long long ohs = hp - bp[u], ows = wp - bq[u];     // oh*SH, ow*SW if the tap is used
            const long long oh = unit_stride ? ohs : ohs / SH;
            const long long ow = unit_stride ? ows : ows / SW;
            rb[u] = (jin && k < K && ohs >= 0 && ows >= 0 && oh * SH == ohs && ow * SW == ows &&
                     oh < OH && ow < OW) ? dyn[(bo[u] * OH + oh) * OW + ow] : T(0);
            bq[u] += dq;
            bp[u] += dp;
            bo[u] += dc;
            if (bq[u] >= KW) { bq[u] -= KW; bp[u] += 1; }
            if (bp[u] >= KH) { bp[u] -= KH; bo[u] += 1; }
        }
    };
    load(0);
    for (long long k0 = 0; k0 < K; k0 += IG_BK) {
#pragma unroll
        for (int u = 0; u < 4; ++u) As[ak][am + 16 * u] = ra[u];
#pragma unroll
        for (int u = 0; u < 4; ++u) Bs[bk + 4 * u][bn] = rb[u];
        __syncthreads();
        if (k0 + IG_BK < K) load(k0 + IG_BK);
        if (m0 + ty < C) igemm_step<T>(As, Bs, acc, tx, ty);   // else all 4 rows are past C
        __syncthreads();
    }
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
        const long long col = n0 + tx + 16 * jj;
        if (col >= NC) continue;
        const long long im = col / HW;
        const long long l = col - im * HW;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const long long m = m0 + ty + 16 * i;
            if (m < C) dx[(im * C + m) * HW + l] = acc[i][jj];
        }
    }
}

// One block per 64 x 64 tile of dw viewed as (O, C*KH*KW) and per reduction slice s =
// blockIdx.z; one thread per 4 x 4 elements part[s, o, (c, p, q)], each the sum over
// r = (img, oh, ow) in [s*chunk, min((s+1)*chunk, N*OH*OW)), ascending, of
// dy[img, o, oh, ow] * x[img, c, oh*SH - PH + p, ow*SW - PW + q] (0 in the zero padding).
// chunk is a multiple of 16; with one slice, part is dw itself.
template <typename T>
__global__ void conv2d_igemm_backward_weight(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ part,
                             long long N, long long C, long long H, long long W,
                             long long O, long long KH, long long KW, long long SH, long long SW,
                             long long PH, long long PW, long long OH, long long OW, long long chunk)
{
    __shared__ T As[IG_BK][IG_BM];
    __shared__ T Bs[IG_BK][IG_BN];
    const long long t = threadIdx.x;
    const long long tx = t % 16, ty = t / 16;
    const long long KK = KH * KW;
    const long long NC = C * KK;              // columns (c, p, q)
    const long long L = OH * OW;
    const long long R = N * L;                // the reduction
    const long long m0 = (long long)blockIdx.y * IG_BM;
    const long long n0 = (long long)blockIdx.x * IG_BN;
    const long long s = blockIdx.z;
    const long long kbeg = s * chunk;
    const long long kend = min(R, kbeg + chunk);
    // both loaders: reduction index kbeg + k0 + lk (16 neighbouring threads: 16 neighbouring
    // output positions, contiguous in dy and, for unit stride, in x); tile rows/columns lr + 16u
    const long long lk = t % IG_BK, lr = t / IG_BK;
    long long xoff[4], ph[4], pw[4];          // this thread's 4 B columns (c, p, q), decoded once
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const long long col = n0 + lr + 16 * u;
        const long long c = col / KK, r = col - c * KK, p = r / KW;
        xoff[u] = col < NC ? c * H * W : -1;
        ph[u] = p - PH;
        pw[u] = (r - p * KW) - PW;
    }
    T ra[4], rb[4];
    T acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) acc[i][jj] = T(0);
    }
    auto load = [&](long long kb) {
        const long long r = kb + lk;
        const bool rin = r < kend;
        const long long im = rin ? r / L : 0;
        const long long l = rin ? r - im * L : 0;
        const long long oh = l / OW, ow = l - oh * OW;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const long long m = m0 + lr + 16 * u;
            ra[u] = (rin && m < O) ? dy[(im * O + m) * L + l] : T(0);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const long long h = oh * SH + ph[u], ww = ow * SW + pw[u];
            rb[u] = (rin && xoff[u] >= 0 && h >= 0 && h < H && ww >= 0 && ww < W)
                        ? x[im * C * H * W + xoff[u] + h * W + ww] : T(0);
        }
    };
    if (kbeg < kend) load(kbeg);
    for (long long k0 = kbeg; k0 < kend; k0 += IG_BK) {
#pragma unroll
        for (int u = 0; u < 4; ++u) As[lk][lr + 16 * u] = ra[u];
#pragma unroll
        for (int u = 0; u < 4; ++u) Bs[lk][lr + 16 * u] = rb[u];
        __syncthreads();
        if (k0 + IG_BK < kend) load(k0 + IG_BK);
        if (m0 + ty < O) igemm_step<T>(As, Bs, acc, tx, ty);   // else all 4 rows are past O
        __syncthreads();
    }
    T* out = part + s * O * NC;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const long long m = m0 + ty + 16 * i;
        if (m >= O) continue;
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            const long long col = n0 + tx + 16 * jj;
            if (col < NC) out[m * NC + col] = acc[i][jj];
        }
    }
}

// One thread per dw element i: dw[i] = part[0, i] + part[1, i] + ... + part[S-1, i], added in
// slice order (the fixed final sum of conv2d_igemm_backward_weight's split reduction).
template <typename T>
__global__ void igemm_split_sum(const T* __restrict__ part, T* __restrict__ dw,
                                long long total, long long S)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        T sum = part[i];
        for (long long s = 1; s < S; ++s) sum += part[s * total + i];
        dw[i] = sum;
    }
}
