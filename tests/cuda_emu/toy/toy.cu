// Toy kernels that exercise the emulator itself (tests/test_emulated.py); not part of gpucnn.

// One thread per element of a grid-stride loop: y[i] = a * x[i] + y[i].
template <typename T>
__global__ void axpy(const T* __restrict__ x, T* __restrict__ y, T a, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        y[i] = a * x[i] + y[i];
    }
}

// One block per output: out[b] = sum of x[b*len : (b+1)*len], a shared-memory tree reduction
// (needs blockDim.x == 256: a power of two).
template <typename T>
__global__ void block_sum(const T* __restrict__ x, T* __restrict__ out, int len) {
    __shared__ T buf[256];
    T acc = 0;
    for (int i = threadIdx.x; i < len; i += blockDim.x) acc += x[(long long)blockIdx.x * len + i];
    buf[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

// Each thread reads its neighbour's value after a barrier: y[i] = x[(i + 1) % blockDim.x] of the block.
// A barrier that the threads past `n` skip by returning early.
__global__ void early_exit_barrier(const int* __restrict__ x, int* __restrict__ y, int n) {
    __shared__ int buf[1024];
    if ((int)threadIdx.x >= n) return;
    buf[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = buf[(threadIdx.x + 1) % n];
}

// 2-D grid and block: out[r, c] = r * 1000 + c for an (rows, cols) array.
__global__ void fill_2d(int* __restrict__ out, int rows, int cols) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int r = blockIdx.y * blockDim.y + threadIdx.y;
    if (r < rows && c < cols) out[r * cols + c] = r * 1000 + c;
}

// Writes one past the end of a row buffer when `skew` is 1 (out-of-bounds demo).
__global__ void shifted_copy(const float* __restrict__ x, float* __restrict__ y, int n, int skew) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i + skew] = x[i];
}

// Reads one before the start when `skew` is 1.
__global__ void shifted_read(const double* __restrict__ x, double* __restrict__ y, int n, int skew) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i - skew];
}

// Race-detector demos ---------------------------------------------------------------------------

// In place: x[i] += x[i + 1]. Thread i reads the element thread i + 1 overwrites: a data race.
__global__ void shift_add_inplace(float* __restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n - 1) x[i] += x[i + 1];
}

// Every thread stores its own index into out[0]: the last writer wins -- a data race.
__global__ void last_writer_wins(int* __restrict__ out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[0] = i;
}

// Every thread whose element is negative stores 1 into flag[0]: the same value, benign.
__global__ void any_negative(const float* __restrict__ x, int* __restrict__ flag, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && x[i] < 0.0f) flag[0] = 1;
}

// y[i] = x[i]; barrier; z[i] = y[(i + 1) % n]. Race-free in one block (the barrier orders the
// write before the neighbour's read); with several blocks the neighbour across a block boundary
// is not ordered by __syncthreads -- a data race.
__global__ void rotate_through_global(const float* __restrict__ x, float* y, float* __restrict__ z, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
    __syncthreads();
    if (i < n) z[i] = y[(i + 1) % n];
}

// atomicAdd from every thread into one counter: not a race.
__global__ void count_positive(const float* __restrict__ x, int* __restrict__ count, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && x[i] > 0.0f) atomicAdd(count, 1);
}

// Warp-intrinsic demos ----------------------------------------------------------------------------

// One warp per 32 consecutive elements: out[warp] = sum of x over the warp, by __shfl_down_sync;
// lanes past n contribute 0 (they still take part, so the full mask is right).
template <typename T>
__global__ void warp_sum(const T* __restrict__ x, T* __restrict__ out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    T v = i < n ? x[i] : T(0);
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if ((threadIdx.x & 31) == 0) out[i / 32] = v;
}

// y[i] = x of lane (lane ^ 1), via __shfl_xor_sync; ballot[warp] = lanes whose x > 0;
// idx[i] = x of lane 3 of the same 8-lane segment (width 8); up[i] = x of lane - 2 (own if < 2).
__global__ void warp_exchange(const int* __restrict__ x, int* __restrict__ y, unsigned* __restrict__ ballot,
                              int* __restrict__ idx, int* __restrict__ up) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = x[i];
    y[i] = __shfl_xor_sync(0xffffffffu, v, 1);
    unsigned b = __ballot_sync(0xffffffffu, v > 0);
    if ((threadIdx.x & 31) == 0) ballot[i / 32] = b;
    idx[i] = __shfl_sync(0xffffffffu, v, 3, 8);
    up[i] = __shfl_up_sync(0xffffffffu, v, 2);
}

// Returns early for i >= n, then shuffles from lane + 1: the last active lane reads an exited lane.
__global__ void shuffle_from_exited_lane(const float* __restrict__ x, float* __restrict__ y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = __shfl_down_sync(0xffffffffu, x[i], 1);
    y[i] = v;
}

// A grid-stride loop whose step is zero when `step_blocks` is 0: never ends.
__global__ void stuck_loop(float* __restrict__ y, long long n, long long step_blocks) {
    for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step_blocks * blockDim.x) y[i] += 1.0f;
}

// Recursion deep enough to overflow any small stack when `depth` is large.
__device__ float deep(int depth, volatile float* scratch) {
    volatile float local[64];
    local[depth % 64] = (float)depth;
    return depth <= 0 ? scratch[0] : deep(depth - 1, scratch) + local[depth % 64];
}
__global__ void deep_recursion(float* __restrict__ y, int depth) {
    y[threadIdx.x] = deep(depth, y + threadIdx.x);
}

// Writes through a pointer to const (casting the const away): x[i] = 0.
__global__ void write_through_const(const float* __restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) const_cast<float*>(x)[i] = 0.0f;
}

// Shared-memory demos -----------------------------------------------------------------------------

// C = A @ B for (M, K) x (K, N) float matrices, 8x8 tiles in shared memory; one thread per C
// element. `skip_second_barrier` != 0 drops the barrier that keeps the next tile's loads from
// overwriting the tile other threads are still reading (the classic tiling bug).
__global__ void tiled_matmul(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                             int M, int K, int N, int skip_second_barrier) {
    __shared__ float As[8][8];
    __shared__ float Bs[8][8];
    int row = blockIdx.y * 8 + threadIdx.y, col = blockIdx.x * 8 + threadIdx.x;
    float acc = 0.0f;
    for (int t = 0; t < (K + 7) / 8; ++t) {
        int ka = t * 8 + threadIdx.x, kb = t * 8 + threadIdx.y;
        As[threadIdx.y][threadIdx.x] = (row < M && ka < K) ? A[row * K + ka] : 0.0f;
        Bs[threadIdx.y][threadIdx.x] = (kb < K && col < N) ? B[kb * N + col] : 0.0f;
        __syncthreads();
        for (int k = 0; k < 8; ++k) acc += As[threadIdx.y][k] * Bs[k][threadIdx.x];
        if (!skip_second_barrier) __syncthreads();
    }
    if (row < M && col < N) C[row * N + col] = acc;
}

// out[i] = the block's shared slot i, which is uninitialised unless `write_first`.
__global__ void read_uninitialised_shared(float* __restrict__ out, int write_first) {
    __shared__ float s[64];
    if (write_first) s[threadIdx.x] = 1.0f;
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

// Lane i writes slot i, then reads slot i ^ 1 of the same warp; `use_syncwarp` orders the two.
__global__ void warp_shared_exchange(const int* __restrict__ x, int* __restrict__ y, int use_syncwarp) {
    __shared__ int s[64];
    s[threadIdx.x] = x[threadIdx.x];
    if (use_syncwarp) __syncwarp();
    y[threadIdx.x] = s[threadIdx.x ^ 1];
}

// Alignment demos -------------------------------------------------------------------------------

// A two-float struct loaded as one 8-byte access, as kernels/pool2d.cu's Pair<float>.
struct alignas(8) FloatPair { float a, b; };

// y[i] = x[offset + 2i] + x[offset + 2i + 1], the two read as one FloatPair: misaligned (a fault
// on a GPU) when offset is odd, however the bytes happen to lie on the host.
__global__ void pair_sum(const float* __restrict__ x, float* __restrict__ y, long long offset, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const FloatPair p = *(const FloatPair*)(x + offset + 2 * i);   // C cast: the load is checked
        y[i] = p.a + p.b;
    }
}

// y[offset + 4i .. offset + 4i + 3] = (i, i, i, i), stored as one float4 (16 bytes): misaligned
// unless offset is a multiple of 4.
__global__ void float4_fill(float* __restrict__ y, long long offset, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float f = (float)i;
        *(float4*)(y + offset + 4 * i) = make_float4(f, f, f, f);        // the store is checked
    }
}

// out[i] = a[i].x + a[i].y for double2 elements read from a double array at element offset
// `offset` (16-byte accesses: misaligned when offset is odd; the reinterpret_cast is checked
// first).
__global__ void double2_sum(const double* __restrict__ a, double* __restrict__ out, long long offset, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const double2 v = reinterpret_cast<const double2*>(a + offset)[i];
        out[i] = v.x + v.y;
    }
}

// A 32-byte aligned struct of four doubles (as kernels/pool2d.cu's Quad<double>): out[i] = the
// sum of the four, read as one struct through reinterpret_cast from a + offset + 4i. Wider than
// 16 bytes, its load reaches the runtime only as a byte range: the cast is what is checked.
struct alignas(32) Double4 { double a, b, c, d; };
__global__ void double4_sum(const double* __restrict__ a, double* __restrict__ out, long long offset, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const Double4 v = *reinterpret_cast<const Double4*>(a + offset + 4 * i);
        out[i] = v.a + v.b + v.c + v.d;
    }
}
