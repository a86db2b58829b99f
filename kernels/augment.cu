// gpucnn data augmentation on the device: per-image crop of a zero-padded copy with an optional
// horizontal flip, and per-channel normalisation.  T is float or double; sizes are long long and
// every index is 64-bit.  Grid-stride loops: any grid and block size covers the whole output.

// One thread per output element y[n, c, i, j] (N x C x OH x OW):
//   jj = flip[n] ? OW - 1 - j : j
//   r  = top[n] + i - PH,  s = left[n] + jj - PW       (coordinates in the unpadded x)
//   y  = x[n, c, r, s] when 0 <= r < H and 0 <= s < W, else 0 (the zero padding).
// top/left are the crop's corner in the padded image (the host draws them in
// [0, H + 2 PH - OH] and [0, W + 2 PW - OW]); any value is safe: outside x reads as 0.
template <typename T>
__global__ void crop_flip(const T* __restrict__ x, const long long* __restrict__ top,
                          const long long* __restrict__ left, const unsigned char* __restrict__ flip,
                          T* __restrict__ y, long long n, long long c, long long h, long long w,
                          long long oh, long long ow, long long ph, long long pw)
{
    const long long total = n * c * oh * ow;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
        const long long j = idx % ow;
        const long long i = (idx / ow) % oh;
        const long long plane = idx / (ow * oh);          // n * C + channel
        const long long img = plane / c;
        const long long jj = flip[img] ? ow - 1 - j : j;
        const long long r = top[img] + i - ph;
        const long long s = left[img] + jj - pw;
        T v = T(0);
        if (r >= 0 && r < h && s >= 0 && s < w) {
            v = x[(plane * h + r) * w + s];
        }
        y[idx] = v;
    }
}

// One thread per element of x (N x C x HW): y = (x - mean[channel]) / std[channel].
template <typename T>
__global__ void channel_normalize(const T* __restrict__ x, const T* __restrict__ mean,
                                  const T* __restrict__ std, T* __restrict__ y,
                                  long long total, long long c, long long hw)
{
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
        const long long ch = (idx / hw) % c;
        y[idx] = (x[idx] - mean[ch]) / std[ch];
    }
}
