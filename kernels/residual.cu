// gpucnn residual-block kernels: the element-wise sum of the two branches, and the ResNet
// paper's option-A shortcut (stride subsampling + zero-padded channels) with its backward as
// a gather.  T is float or double; every integer argument is a long long; grid-stride loops.

// One thread per element i: out[i] = a[i] + b[i].
template <typename T>
__global__ void add(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                    long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        out[i] = a[i] + b[i];
    }
}

// One thread per output element y[n, o, i, j] of y (N, CO, OH, OW): with c = o - pad_before,
// y = x[n, c, i*sh, j*sw] when 0 <= c < C, else 0.
template <typename T>
__global__ void subsample_pad_forward(const T* __restrict__ x, T* __restrict__ y,
                                      long long N, long long C, long long H, long long W,
                                      long long CO, long long OH, long long OW,
                                      long long sh, long long sw, long long pad_before)
{
    const long long total = N * CO * OH * OW;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long j = i % OW;
        const long long r = i / OW;
        const long long oi = r % OH;
        const long long no = r / OH;
        const long long o = no % CO;
        const long long n = no / CO;
        const long long c = o - pad_before;
        y[i] = (c >= 0 && c < C) ? x[((n * C + c) * H + oi * sh) * W + j * sw] : T(0);
    }
}

// One thread per input element dx[n, c, h, w] of dx (N, C, H, W) (a gather, no atomics):
// dx = dy[n, c + pad_before, h/sh, w/sw] when sh divides h and sw divides w, else 0.
template <typename T>
__global__ void subsample_pad_backward(const T* __restrict__ dy, T* __restrict__ dx,
                                       long long N, long long C, long long H, long long W,
                                       long long CO, long long OH, long long OW,
                                       long long sh, long long sw, long long pad_before)
{
    const long long total = N * C * H * W;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long w = i % W;
        const long long r = i / W;
        const long long h = r % H;
        const long long nc = r / H;
        const long long c = nc % C;
        const long long n = nc / C;
        T v = T(0);
        if (h % sh == 0 && w % sw == 0) {
            v = dy[((n * CO + c + pad_before) * OH + h / sh) * OW + w / sw];
        }
        dx[i] = v;
    }
}
