// gpucnn implicit-GEMM convolution forward on the tensor cores in TF32 (compute capability >= 8.0).
//
// Used only when gpucnn.backends.cuda.allow_tf32 is True, for float32, on an sm_80+ device (the
// backend checks); the float64 instantiation exists because every kernel file is instantiated
// for both types, and traps.  Same GEMM and index maps as conv2d_igemm.cu's forward:
//   y[img, o, oh, ow] = sum over k = (c, p, q) of w[o, k] * x[img, c, oh*SH - PH + p, ow*SW - PW + q]
// Block: 256 threads = 8 warps computing a 64 (o) x 64 (img, oh, ow) tile; warp (wm, wn) =
// (warp % 4, warp / 4) owns rows 16*wm .. +16 and columns 32*wn .. +32: two 16 x 16 float
// accumulator fragments.  K is walked in steps of 16 (two m16n16k8 TF32 mma_sync per fragment):
// the A tile (w) and the B tile (x, gathered) are loaded into registers one step ahead, rounded
// to TF32 (__float_to_tf32: 10-bit mantissa, round to nearest) when stored to shared memory, and
// multiplied with float accumulation.  The accumulators go through shared memory so that the
// final stores to y are coalesced and bounds-checked.  Deterministic: fixed K order, no atomics.
// Needs the CUDA toolkit's <mma.h> (not an NVRTC built-in header): the loader adds the CUDA
// include directory, and falls back to the float32 kernel when it cannot compile this file.
#include <mma.h>

#define TF_BM 64
#define TF_BN 64
#define TF_BK 16
#define TF_LDA (TF_BK + 4)   // padded row lengths (multiples of 4 floats, as wmma requires)
#define TF_LDB (TF_BN + 4)
#define TF_LDC (TF_BN + 4)

template <typename T>
struct Tf32ConvForward {
    // (no TF32 for double: never launched)
    static __device__ void run(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                               long long N, long long C, long long H, long long W,
                               long long O, long long KH, long long KW, long long SH, long long SW,
                               long long PH, long long PW, long long OH, long long OW)
    {
        __trap();
    }
};

template <>
struct Tf32ConvForward<float> {
    static __device__ void run(const float* __restrict__ x, const float* __restrict__ w,
                               float* __restrict__ y,
                               long long N, long long C, long long H, long long W,
                               long long O, long long KH, long long KW, long long SH, long long SW,
                               long long PH, long long PW, long long OH, long long OW)
    {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
        using namespace nvcuda;
        __shared__ __align__(32) float As[TF_BM][TF_LDA];    // (o, k), row-major
        __shared__ __align__(32) float Bs[TF_BK][TF_LDB];    // (k, column), row-major
        __shared__ __align__(32) float Cs[TF_BM][TF_LDC];    // the finished tile
        const long long t = threadIdx.x;
        const long long warp = t / 32;
        const long long wm = warp % 4, wn = warp / 4;
        const long long KK = KH * KW;
        const long long K = C * KK;
        const long long L = OH * OW;
        const long long NC = N * L;
        const long long m0 = (long long)blockIdx.y * TF_BM;
        const long long n0 = (long long)blockIdx.x * TF_BN;
        const long long ak = t % TF_BK, am = t / TF_BK;       // A loader: k, rows am + 16u
        const long long bn = t % TF_BN, bk = t / TF_BN;       // B loader: column, rows bk + 4u
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
        const float* xn = x + img * C * H * W;
        float ra[4], rb[4];
        // the B loader's rows k = kb + bk + 4u as taps (c, p, q), advanced by 16 per load
        long long bc[4], bp[4], bq[4];
        const long long dc = TF_BK / KK, dp = (TF_BK - dc * KK) / KW, dq = TF_BK - dc * KK - dp * KW;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const long long k = bk + 4 * u;
            bc[u] = k / KK;
            bp[u] = (k - bc[u] * KK) / KW;
            bq[u] = k - bc[u] * KK - bp[u] * KW;
        }
        auto load = [&](long long kb) {   // kb = 0, 16, 32, ... in order
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const long long m = m0 + am + 16 * u, k = kb + ak;
                ra[u] = (m < O && k < K) ? w[m * K + k] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const long long k = kb + bk + 4 * u;
                const long long h = h0 + bp[u], ww = w0 + bq[u];
                rb[u] = (jin && k < K && h >= 0 && h < H && ww >= 0 && ww < W)
                            ? xn[(bc[u] * H + h) * W + ww] : 0.0f;
                bq[u] += dq;
                bp[u] += dp;
                bc[u] += dc;
                if (bq[u] >= KW) { bq[u] -= KW; bp[u] += 1; }
                if (bp[u] >= KH) { bp[u] -= KH; bc[u] += 1; }
            }
        };
        wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2];
        wmma::fill_fragment(acc[0], 0.0f);
        wmma::fill_fragment(acc[1], 0.0f);
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
        load(0);
        for (long long k0 = 0; k0 < K; k0 += TF_BK) {
#pragma unroll
            for (int u = 0; u < 4; ++u) As[am + 16 * u][ak] = wmma::__float_to_tf32(ra[u]);
#pragma unroll
            for (int u = 0; u < 4; ++u) Bs[bk + 4 * u][bn] = wmma::__float_to_tf32(rb[u]);
            __syncthreads();
            if (k0 + TF_BK < K) load(k0 + TF_BK);   // in flight during this step's mma
#pragma unroll
            for (int kk = 0; kk < TF_BK; kk += 8) {
                wmma::load_matrix_sync(fa, &As[16 * wm][kk], TF_LDA);
#pragma unroll
                for (int f = 0; f < 2; ++f) {
                    wmma::load_matrix_sync(fb, &Bs[kk][32 * wn + 16 * f], TF_LDB);
                    wmma::mma_sync(acc[f], fa, fb, acc[f]);
                }
            }
            __syncthreads();
        }
#pragma unroll
        for (int f = 0; f < 2; ++f)
            wmma::store_matrix_sync(&Cs[16 * wm][32 * wn + 16 * f], acc[f], TF_LDC, wmma::mem_row_major);
        __syncthreads();
        // 16 outputs per thread; neighbouring threads store neighbouring columns
        for (long long e = t; e < TF_BM * TF_BN; e += 256) {
            const long long mr = e / TF_BN, nc = e - mr * TF_BN;
            const long long m = m0 + mr, col = n0 + nc;
            if (m < O && col < NC) {
                const long long im = col / L;
                y[(im * O + m) * L + (col - im * L)] = Cs[mr][nc];
            }
        }
#else
        __trap();
#endif
    }
};

// One block (8 warps, 256 threads) per 64 x 64 tile of y viewed as (O, N*OH*OW); one thread
// stages 4 + 4 operand elements per K step and stores 16 outputs; each warp computes a 16 x 32
// part of the tile with TF32 wmma fragments (float accumulation, K ascending).
template <typename T>
__global__ void conv2d_igemm_forward_tf32(const T* __restrict__ x, const T* __restrict__ w,
                                          T* __restrict__ y,
                                          long long N, long long C, long long H, long long W,
                                          long long O, long long KH, long long KW, long long SH,
                                          long long SW, long long PH, long long PW, long long OH,
                                          long long OW)
{
    Tf32ConvForward<T>::run(x, w, y, N, C, H, W, O, KH, KW, SH, SW, PH, PW, OH, OW);
}
