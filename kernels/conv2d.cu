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

// One thread per element cols[r, j]: copies the input pixel that output position j
// sees through kernel tap r, or 0 when that pixel lies in the zero padding.
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ cols,
                       long long N, long long C, long long H, long long W,
                       long long KH, long long KW, long long SH, long long SW,
                       long long PH, long long PW, long long OH, long long OW)
{
    const long long L = OH * OW;
    const long long NL = N * L;
    const long long total = C * KH * KW * NL;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long r = i / NL;          // row: (c, p, q)
        const long long j = i - r * NL;      // column: (n, oh, ow)
        const long long n = j / L;
        const long long l = j - n * L;
        const long long oh = l / OW;
        const long long ow = l - oh * OW;
        const long long c = r / (KH * KW);
        const long long pq = r - c * (KH * KW);
        const long long p = pq / KW;
        const long long q = pq - p * KW;
        const long long h = oh * SH - PH + p;
        const long long w = ow * SW - PW + q;
        T v = T(0);
        if (h >= 0 && h < H && w >= 0 && w < W) {
            v = x[((n * C + c) * H + h) * W + w];
        }
        cols[i] = v;
    }
}

// One thread per input-gradient element dx[n, c, h, w]: gathers the dcols entries of every
// (output position, kernel tap) pair that read x[n, c, h, w] and sums them in a fixed order
// (kernel tap p, q ascending, i.e. output position oh, ow descending, the NumPy backend's order).
template <typename T>
__global__ void col2im(const T* __restrict__ dcols, T* __restrict__ dx,
                       long long N, long long C, long long H, long long W,
                       long long KH, long long KW, long long SH, long long SW,
                       long long PH, long long PW, long long OH, long long OW)
{
    const long long NL = N * OH * OW;
    const long long total = N * C * H * W;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long w = i % W;
        long long t = i / W;
        const long long h = t % H;
        t /= H;
        const long long c = t % C;
        const long long n = t / C;
        const long long hp = h + PH;         // row in the padded input
        const long long wp = w + PW;
        // output rows oh whose window covers padded row hp: oh*SH <= hp <= oh*SH + KH - 1
        const long long oh_lo = hp < KH ? 0 : (hp - KH) / SH + 1;
        const long long oh_hi = (hp / SH + 1 < OH) ? hp / SH + 1 : OH;   // exclusive
        const long long ow_lo = wp < KW ? 0 : (wp - KW) / SW + 1;
        const long long ow_hi = (wp / SW + 1 < OW) ? wp / SW + 1 : OW;
        T sum = T(0);
        for (long long oh = oh_hi - 1; oh >= oh_lo; --oh) {
            const long long p = hp - oh * SH;                 // 0 <= p < KH
            for (long long ow = ow_hi - 1; ow >= ow_lo; --ow) {
                const long long q = wp - ow * SW;             // 0 <= q < KW
                sum += dcols[((c * KH + p) * KW + q) * NL + (n * OH + oh) * OW + ow];
            }
        }
        dx[i] = sum;
    }
}

// One thread per element dst[b, a, l] = src[a, b, l]: src (A, B, L) becomes dst (B, A, L).
// Turns the GEMM's (O, N, OH*OW) into NCHW and dy (N, O, OH*OW) into the GEMM's (O, N, OH*OW).
template <typename T>
__global__ void swap_axes01(const T* __restrict__ src, T* __restrict__ dst,
                            long long A, long long B, long long L)
{
    const long long total = A * B * L;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long l = i % L;
        const long long t = i / L;
        const long long a = t % A;
        const long long b = t / A;
        dst[i] = src[(a * B + b) * L + l];
    }
}
