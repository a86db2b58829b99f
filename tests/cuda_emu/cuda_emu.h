// cuda_emu.h -- just enough CUDA C++ for kernels/*.cu to compile with the host g++.
//
// Test infrastructure only (see tests/cuda_emu/__init__.py). The wrapper translation unit that
// the emulator generates includes this header, then the unchanged .cu file, then exports one
// extern "C" entry point per kernel instantiation. The launcher (runtime.cpp) runs the grid:
// blocks one after another; the threads of a block one after another, or, when the source
// calls __syncthreads() or a warp intrinsic, as fibers so that __syncthreads() is a real barrier
// and __shfl_*_sync / __ballot_sync / __syncwarp exchange values between converged lanes.
//
// Every load and store the kernel makes is instrumented by g++ (-fsanitize=thread, without the
// TSan runtime); runtime.cpp checks each address against the guard zones around the kernel's
// array arguments (out-of-bounds accesses) and keeps a shadow of who last wrote and read each
// word (data races between threads of one launch).
#pragma once

#include <math.h>      // float overloads of exp/log/... in the global namespace, as in CUDA
#include <stdint.h>
#include <stddef.h>
#include <float.h>
#include <limits.h>
#include <type_traits>
#include <utility>

// ---- built-in variables ----------------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// One struct, so the memory checker can skip these reads with a single comparison.
struct cuda_emu_builtins_t {
    uint3 threadIdx;
    uint3 blockIdx;
    dim3 blockDim;
    dim3 gridDim;
    int warpSize;
};
extern "C" {
extern cuda_emu_builtins_t cuda_emu_builtins;
void cuda_emu_syncthreads(int line);
void cuda_emu_trap(void);
}

#define threadIdx (cuda_emu_builtins.threadIdx)
#define blockIdx (cuda_emu_builtins.blockIdx)
#define blockDim (cuda_emu_builtins.blockDim)
#define gridDim (cuda_emu_builtins.gridDim)
#define warpSize (cuda_emu_builtins.warpSize)

// ---- vector types: CUDA's sizes and alignments (a load or store of one must be aligned to it) ----
#define CUDA_EMU_VEC2(name, T, A) struct alignas(A) name { T x, y; }; \
    static inline name make_##name(T x, T y) { name v; v.x = x; v.y = y; return v; }
#define CUDA_EMU_VEC4(name, T, A) struct alignas(A) name { T x, y, z, w; }; \
    static inline name make_##name(T x, T y, T z, T w) { name v; v.x = x; v.y = y; v.z = z; v.w = w; return v; }
CUDA_EMU_VEC2(float2, float, 8)
CUDA_EMU_VEC4(float4, float, 16)
CUDA_EMU_VEC2(double2, double, 16)
CUDA_EMU_VEC2(int2, int, 8)
CUDA_EMU_VEC4(int4, int, 16)
CUDA_EMU_VEC2(longlong2, long long, 16)
#undef CUDA_EMU_VEC2
#undef CUDA_EMU_VEC4

// ---- qualifiers --------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Blocks run one after another on one OS thread, so a function-local static is exactly one
// copy per block, shared by the block's threads (the fibers).
#define __shared__ static
#define __constant__ static const
// g++ understands __restrict__ natively.

#define __syncthreads() cuda_emu_syncthreads(__LINE__)
#define __trap() cuda_emu_trap()
#define __threadfence() ((void)0)
#define __threadfence_block() ((void)0)

// ---- math: CUDA's device math library, mapped to libm ------------------------------------------
// Intrinsics are computed with the accurate libm function (the GPU's fast approximations differ
// in the last bits; the parity tolerances cover that).
// (glibc declares its own __expf & co., so these are macros rather than functions.)
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __log10f(x) log10f(x)
#define __powf(x, y) powf(x, y)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
static inline float __fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline double __drcp_rn(double x) { return 1.0 / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline double __dsqrt_rn(double x) { return sqrt(x); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline float __saturatef(float x) { return saturatef(x); }
static inline int __float_as_int(float x) { int i; __builtin_memcpy(&i, &x, 4); return i; }
static inline float __int_as_float(int i) { float x; __builtin_memcpy(&x, &i, 4); return x; }
static inline unsigned int __float_as_uint(float x) { unsigned int i; __builtin_memcpy(&i, &x, 4); return i; }
static inline float __uint_as_float(unsigned int i) { float x; __builtin_memcpy(&x, &i, 4); return x; }
static inline long long __double_as_longlong(double x) { long long i; __builtin_memcpy(&i, &x, 8); return i; }
static inline double __longlong_as_double(long long i) { double x; __builtin_memcpy(&x, &i, 8); return x; }

// CUDA's min/max: overloaded for every arithmetic pair, result in the common type.
template <typename A, typename B,
          typename = typename std::enable_if<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>::type>
static inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a > (C)b ? (C)a : (C)b;
}
template <typename A, typename B,
          typename = typename std::enable_if<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>::type>
static inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a < (C)b ? (C)a : (C)b;
}
static inline int __mul24(int a, int b) { return a * b; }
static inline unsigned int __umul24(unsigned int a, unsigned int b) { return a * b; }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }

// ---- atomics: fibers switch only at barriers, so a plain read-modify-write is atomic here -------
// (between cuda_emu_atomic_begin/end the race detector ignores the accesses; bounds still count)
extern "C" void cuda_emu_atomic_begin(void);
extern "C" void cuda_emu_atomic_end(void);
#define CUDA_EMU_ATOMIC(name, expr)                                                       \
    template <typename T> static inline T name(T* p, T v) {                               \
        cuda_emu_atomic_begin(); T old = *p; *p = (expr); cuda_emu_atomic_end(); return old; \
    }
CUDA_EMU_ATOMIC(atomicAdd, old + v)
CUDA_EMU_ATOMIC(atomicSub, old - v)
CUDA_EMU_ATOMIC(atomicExch, v)
CUDA_EMU_ATOMIC(atomicMax, old > v ? old : v)
CUDA_EMU_ATOMIC(atomicMin, old < v ? old : v)
CUDA_EMU_ATOMIC(atomicAnd, old & v)
CUDA_EMU_ATOMIC(atomicOr, old | v)
CUDA_EMU_ATOMIC(atomicXor, old ^ v)
template <typename T> static inline T atomicCAS(T* p, T cmp, T v) {
    cuda_emu_atomic_begin(); T old = *p; if (old == cmp) *p = v; cuda_emu_atomic_end(); return old;
}

// ---- pointer casts: a reinterpret_cast to a pointer must meet the target type's alignment -----
// (What the kernels use for vector accesses: *reinterpret_cast<const Pair<T>*>(p). Loads and
// stores up to 16 bytes are checked where they happen, in runtime.cpp; a wider vector type,
// e.g. a 32-byte Quad<double>, reaches the runtime only as a byte range, so the cast is checked
// here: the pointer it makes must be aligned to alignof(target), or the access through it is
// undefined in C++ and faults on a GPU.)
extern "C" void cuda_emu_check_cast(const volatile void* p, unsigned long long align, int line);
namespace cuda_emu {
// (is_convertible rather than is_pointer: g++ keeps __restrict__ on `x + i`, and is_pointer is false
// for a restrict-qualified pointer)
template <typename To, typename From,
          bool = std::is_pointer<To>::value && std::is_convertible<typename std::decay<From>::type, const volatile void*>::value>
struct Cast {
    static To run(From&& v) { return reinterpret_cast<To>(std::forward<From>(v)); }
};
template <typename To, typename From>
struct Cast<To, From, true> {
    static To run(From&& v, int line = 0) {
        typedef typename std::remove_cv<typename std::remove_pointer<To>::type>::type Target;
        const unsigned long long align = std::is_void<Target>::value ? 1 : alignof(typename std::conditional<std::is_void<Target>::value, char, Target>::type);
        // always the (opaque) call: g++ may drop an inline test whose failure it deems undefined
        if (align > 1) cuda_emu_check_cast(v, align, line);
        return reinterpret_cast<To>(v);
    }
};
template <typename To, typename From>
inline To reinterpret(From&& v) { return Cast<To, From>::run(std::forward<From>(v)); }
}  // namespace cuda_emu
#define reinterpret_cast ::cuda_emu::reinterpret

// ---- read-only cache load ------------------------------------------------------------------------
template <typename T> static inline T __ldg(const T* p) { return *p; }

// ---- warp intrinsics (the *_sync family): each call is a rendezvous of the lanes in its mask ----
extern "C" unsigned long long cuda_emu_warp_op(int op, unsigned mask, unsigned long long value, int arg,
                                               int width, int line);
extern "C" unsigned cuda_emu_activemask(void);
namespace cuda_emu {
template <typename T>
inline T warp_value(int line, int op, unsigned mask, T var, int arg, int width = 32) {
    static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
    unsigned long long bits = 0;
    __builtin_memcpy(&bits, &var, sizeof(T));
    bits = cuda_emu_warp_op(op, mask, bits, arg, width, line);
    T out;
    __builtin_memcpy(&out, &bits, sizeof(T));
    return out;
}
inline unsigned long long warp_vote(int line, int op, unsigned mask, int pred) {
    return cuda_emu_warp_op(op, mask, pred != 0, 0, 32, line);
}
struct SyncWarp {  // __syncwarp() and __syncwarp(mask) without variadic-macro tricks
    int line;
    explicit SyncWarp(int l) : line(l) {}
    void operator()(unsigned mask = 0xffffffffu) const { cuda_emu_warp_op(8, mask, 0, 0, 32, line); }
};
}  // namespace cuda_emu
#define __shfl_sync(...) ::cuda_emu::warp_value(__LINE__, 1, __VA_ARGS__)
#define __shfl_up_sync(...) ::cuda_emu::warp_value(__LINE__, 2, __VA_ARGS__)
#define __shfl_down_sync(...) ::cuda_emu::warp_value(__LINE__, 3, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuda_emu::warp_value(__LINE__, 4, __VA_ARGS__)
#define __ballot_sync(mask, pred) ((unsigned)::cuda_emu::warp_vote(__LINE__, 5, mask, pred))
#define __any_sync(mask, pred) ((int)::cuda_emu::warp_vote(__LINE__, 6, mask, pred))
#define __all_sync(mask, pred) ((int)::cuda_emu::warp_vote(__LINE__, 7, mask, pred))
#define __syncwarp ::cuda_emu::SyncWarp(__LINE__)
#define __activemask() cuda_emu_activemask()

// ---- used by the generated wrapper translation unit, not by kernels ----------------------------
namespace cuda_emu {

// One int per parameter type: 1000 * pointer depth + 100 * kind + sizeof(base type),
// kind 1 = floating point, 2 = signed integer, 3 = unsigned integer, 4 = bool, 0 = other.
template <typename T>
constexpr int type_code() {
    typedef typename std::remove_cv<T>::type U;
    return std::is_pointer<U>::value ? 1000 + type_code<typename std::remove_pointer<U>::type>()
         : std::is_same<U, bool>::value ? 400 + (int)sizeof(U)
         : std::is_floating_point<U>::value ? 100 + (int)sizeof(U)
         : std::is_integral<U>::value ? (std::is_signed<U>::value ? 200 : 300) + (int)sizeof(U)
         : 0;
}
template <>
constexpr int type_code<void>() { return 0; }

// {number of parameters, type code of each}.
template <typename... P>
const int* signature(void (*)(P...)) {
    static const int s[] = {(int)sizeof...(P), type_code<P>()..., 0};
    return s;
}

// args[i] points at the value of parameter i (as cuLaunchKernel's kernelParams).
template <typename... P, size_t... I>
inline void invoke_impl(void (*f)(P...), void** args, std::index_sequence<I...>) {
    f(*static_cast<typename std::remove_cv<typename std::remove_reference<P>::type>::type*>(args[I])...);
}
template <typename... P>
inline void invoke(void (*f)(P...), void** args) {
    invoke_impl(f, args, std::index_sequence_for<P...>{});
}

}  // namespace cuda_emu
