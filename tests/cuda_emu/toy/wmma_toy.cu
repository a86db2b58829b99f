// Kernels that test the emulator's nvcuda::wmma stand-in (tests/cuda_emu/mma.h); one warp each.
#include <mma.h>
using namespace nvcuda;

typedef wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> FragB;
typedef wmma::fragment<wmma::accumulator, 16, 16, 8, float> FragC;

// One warp: c (16x16) = tf32(a) (16x8) @ tf32(b) (8x16) + 1, a and b loaded from global memory.
__global__ void wmma_tile(const float* a, const float* b, float* c, long long shift)
{
    FragA fa;
    FragB fb;
    FragC fc;
    wmma::fill_fragment(fc, 1.0f);
    wmma::load_matrix_sync(fa, a + shift, 8);
    wmma::load_matrix_sync(fb, b, 16);
    for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
    for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

// Lane 0 skips the mma: the warp is not converged (undefined on a GPU).
__global__ void wmma_divergent(const float* a, const float* b, float* c)
{
    FragA fa;
    FragB fb;
    FragC fc;
    wmma::fill_fragment(fc, 0.0f);
    wmma::load_matrix_sync(fa, a, 8);
    wmma::load_matrix_sync(fb, b, 16);
    if (threadIdx.x != 0) wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

// Each lane stages part of a in shared memory, then the warp loads it with no barrier between.
__global__ void wmma_missing_barrier(const float* a, const float* b, float* c)
{
    __shared__ __align__(32) float As[16 * 8];
    for (long long i = threadIdx.x; i < 16 * 8; i += 32) As[i] = a[i];
    FragA fa;
    FragB fb;
    FragC fc;
    wmma::fill_fragment(fc, 0.0f);
    wmma::load_matrix_sync(fa, As, 8);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
    __syncthreads();
}
