// mma.h for the CUDA emulator: a warp-level stand-in for nvcuda::wmma (the TF32 subset gpucnn
// uses: m16n16k8 with precision::tf32 operands and float accumulators; float/double shapes of
// the same API work too).  Test infrastructure only; found first on the emulator's include path.
//
// How it maps onto the emulator: a block's threads are fibers that switch only at barriers and
// warp intrinsics.  On a GPU a fragment is spread over the warp's 32 lanes; here every lane holds
// the whole tile (row-major, num_elements = rows * cols), which is equivalent because fragments
// are only ever filled, loaded, multiplied and stored as a whole (code that touches x[i] applies
// the same elementwise operation to every element, e.g. __float_to_tf32).
//  * load_matrix_sync / mma_sync / store_matrix_sync are warp-collective: each one first meets
//    the other 31 lanes at the same call (a rendezvous over the full mask that compares source
//    lines), so a lane that is not converged with its warp (a divergent branch, an exited lane,
//    another wmma call) is reported (KernelSyncError).  It does not order memory: a lane reading a tile that another
//    lane wrote with no __syncthreads()/__syncwarp() between is still a reported race.
//  * load_matrix_sync reads the whole tile in every lane (through the instrumented kernel code
//    path: bounds, races, and the 256-bit pointer alignment and ldm % 4 that wmma requires);
//  * mma_sync computes D = A*B + C in every lane: each product of two TF32 operands (the low 13
//    mantissa bits dropped, as the tensor cores ignore them) is exact in float, and is added in
//    float in ascending k; that is a valid order for the hardware, whose accumulation order is
//    unspecified -- the tests' TF32 tolerance covers any order;
//  * store_matrix_sync: lane l stores the elements i with i % 32 == l, so the tile is written
//    once, by the whole warp, as on a GPU (a reader needs a barrier after it).
#pragma once

extern "C" void cuda_emu_check_cast(const volatile void* p, unsigned long long align, int line);

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision { struct tf32 {}; }
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <typename Use, int M, int N, int K> struct shape;
template <int M, int N, int K> struct shape<matrix_a, M, N, K> { enum { rows = M, cols = K }; };
template <int M, int N, int K> struct shape<matrix_b, M, N, K> { enum { rows = K, cols = N }; };
template <int M, int N, int K> struct shape<accumulator, M, N, K> { enum { rows = M, cols = N }; };
template <typename T> struct storage { typedef T type; };
template <> struct storage<precision::tf32> { typedef float type; };

inline unsigned lane_id() {
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    return t % 32;
}
// every lane of the warp must arrive at this same call (the runtime's WMMA rendezvous, op 9,
// compares the source lines; it does not order memory)
inline void converge(int line) { (void)cuda_emu_warp_op(9, 0xffffffffu, 0, line, 32, line); }

inline void check_pointer(const volatile void* p, unsigned ldm, int line) {
    cuda_emu_check_cast(p, 32, line);   // wmma needs 256-bit aligned tile pointers
    if (ldm % 4 != 0) __trap();         // and ldm a multiple of 16 bytes (4 floats)
}
inline float tf32_operand(float v) {    // what the tensor cores read: the top 19 bits
    unsigned int b = __float_as_uint(v);
    return __uint_as_float(b & 0xffffe000u);
}
inline double tf32_operand(double v) { return v; }
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    typedef typename detail::storage<T>::type element_type;
    enum { rows = detail::shape<Use, M, N, K>::rows, cols = detail::shape<Use, M, N, K>::cols,
           num_elements = rows * cols };
    element_type x[num_elements];
};

// __float_to_tf32: round to nearest (ties away from zero) to a 10-bit mantissa, as cvt.rna.tf32.f32;
// the result is a float whose low 13 mantissa bits are 0.  Inf and NaN pass through.
inline float __float_to_tf32(float v) {
    unsigned int b = __float_as_uint(v);
    if ((b & 0x7f800000u) == 0x7f800000u) return v;
    b = (b + 0x1000u) & 0xffffe000u;
    return __uint_as_float(b);
}

template <typename Use, int M, int N, int K, typename T, typename L, typename V>
inline void fill_fragment_impl(fragment<Use, M, N, K, T, L>& f, V v) {
    for (int i = 0; i < fragment<Use, M, N, K, T, L>::num_elements; ++i) f.x[i] = v;
}
#define fill_fragment(f, v) fill_fragment_impl(f, v)

template <typename Use, int M, int N, int K, typename T, typename P>
inline void load_impl(fragment<Use, M, N, K, T, row_major>& f, const P* p, unsigned ldm, int line) {
    detail::converge(line);
    detail::check_pointer(p, ldm, line);
    typedef fragment<Use, M, N, K, T, row_major> F;
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = p[(long long)r * ldm + c];
}
template <typename Use, int M, int N, int K, typename T, typename P>
inline void load_impl(fragment<Use, M, N, K, T, col_major>& f, const P* p, unsigned ldm, int line) {
    detail::converge(line);
    detail::check_pointer(p, ldm, line);
    typedef fragment<Use, M, N, K, T, col_major> F;
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = p[(long long)c * ldm + r];
}
template <int M, int N, int K, typename T, typename P>
inline void load_impl(fragment<accumulator, M, N, K, T, void>& f, const P* p, unsigned ldm,
                      layout_t layout, int line) {
    detail::converge(line);
    detail::check_pointer(p, ldm, line);
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c)
            f.x[r * N + c] = layout == mem_row_major ? p[(long long)r * ldm + c] : p[(long long)c * ldm + r];
}
#define load_matrix_sync(...) load_impl(__VA_ARGS__, __LINE__)

// The product itself touches only the lane's own fragments (its stack): not instrumented.
template <int M, int N, int K, typename TA, typename TC, typename LA, typename LB>
__attribute__((no_sanitize_thread, noinline))
void mma_product(fragment<accumulator, M, N, K, TC, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                 const fragment<matrix_b, M, N, K, TA, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c) {
    typedef typename fragment<accumulator, M, N, K, TC, void>::element_type E;
    E out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            E s = c.x[i * N + j];
            for (int k = 0; k < K; ++k)
                s += (E)detail::tf32_operand(a.x[i * K + k]) * (E)detail::tf32_operand(b.x[k * N + j]);
            out[i * N + j] = s;
        }
    for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}
template <int M, int N, int K, typename TA, typename TC, typename LA, typename LB>
inline void mma_impl(fragment<accumulator, M, N, K, TC, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TA, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c,
                     int line) {
    detail::converge(line);
    mma_product(d, a, b, c);
}
#define mma_sync(...) mma_impl(__VA_ARGS__, __LINE__)

template <int M, int N, int K, typename T, typename P>
inline void store_impl(P* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm, layout_t layout,
                       int line) {
    detail::converge(line);
    detail::check_pointer(p, ldm, line);
    const unsigned lane = detail::lane_id();
    for (int i = (int)lane; i < M * N; i += 32) {
        const int r = i / N, c = i % N;
        p[layout == mem_row_major ? (long long)r * ldm + c : (long long)c * ldm + r] = f.x[i];
    }
}
#define store_matrix_sync(...) store_impl(__VA_ARGS__, __LINE__)

}  // namespace wmma
}  // namespace nvcuda
