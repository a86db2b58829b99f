// runtime.cpp -- the launcher and the checkers of the CUDA-on-CPU emulator.
//
// Compiled WITHOUT instrumentation and linked into every emulated module next to the
// instrumented wrapper translation unit (the kernels).
//
// Launch: blocks run one after another (x fastest, as the hardware numbers them). Inside a block,
// threads run one after another; when the kernel's source calls __syncthreads() or a warp
// intrinsic, each thread is a ucontext fiber: __syncthreads() switches back to the scheduler,
// which resumes nobody until every thread of the block has arrived (a real barrier), and a
// *_sync warp intrinsic resumes its lanes once every lane named in its mask has arrived. Threads
// that miss a barrier, or lanes that disagree, are reported (undefined behaviour on a GPU).
//
// Memory checks: g++ -fsanitize=thread (instrumentation only, no TSan runtime) makes every load
// and store in the kernel call __tsan_{read,write}N(addr), implemented here:
//  * bounds -- Python copies each array argument into a buffer with a readable guard zone on
//    both sides and PROT_NONE pages beyond; an access there is reported with the argument,
//    element, thread and block. Any other address that is not a __shared__ variable, a stack,
//    the module's static data or the launch's argument slots is a wild access, reported before
//    it happens; a hardware fault during a launch is caught and reported too.
//  * races -- a shadow per 4-byte word of every array and __shared__ variable (see below).
// Every error stops the launch; Python turns the Report into an exception naming the kernel.
#include <csetjmp>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sys/mman.h>
#include <time.h>
#include <link.h>
#include <pthread.h>
#include <ucontext.h>

// Built with -fvisibility=hidden: only these are visible to Python.
#define EXPORT __attribute__((visibility("default")))

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

// The built-in variables (same layout as cuda_emu_builtins_t in cuda_emu.h).
struct Builtins { uint3 threadIdx; uint3 blockIdx; dim3 blockDim; dim3 gridDim; int warpSize; };
extern "C" { Builtins cuda_emu_builtins = {{0, 0, 0}, {0, 0, 0}, {1, 1, 1}, {1, 1, 1}, 32}; }
#define cuda_emu_threadIdx cuda_emu_builtins.threadIdx
#define cuda_emu_blockIdx cuda_emu_builtins.blockIdx
#define cuda_emu_blockDim cuda_emu_builtins.blockDim
#define cuda_emu_gridDim cuda_emu_builtins.gridDim

// Kept in sync with _Guard / _Report in tests/cuda_emu/__init__.py.
struct Guard {
    uintptr_t start, end;        // the array: [start, end)
    uintptr_t zone_lo, zone_hi;  // readable guard zones: [zone_lo, start) and [end, zone_hi)
    uintptr_t fault_lo, fault_hi;  // whole mapping incl. PROT_NONE pages: [fault_lo, fault_hi)
    uintptr_t shadow;            // race detector: 2 uint64 (last writer, last reader) per 4-byte word
    uintptr_t shadow_bytes;
};

enum ErrorKind {
    OK = 0,
    OUT_OF_BOUNDS = 1,      // access in a guard zone (instrumented)
    FAULT_NEAR_ARRAY = 2,   // hardware fault in the PROT_NONE pages around an array
    NULL_POINTER = 3,       // fault near address 0
    BARRIER_EXIT = 4,       // some threads exited while others wait at __syncthreads()
    BARRIER_MISMATCH = 5,   // threads of a block wait at different __syncthreads() calls
    TRAP = 6,               // __trap()
    BAD_LAUNCH = 7,         // launch configuration the runtime cannot run
    RACE = 8,               // two threads of one launch touch a word without a barrier between
    WARP_MISMATCH = 9,      // lanes named in a *_sync mask disagree (op, mask) or never arrive
    WARP_INACTIVE_SOURCE = 10,  // a shuffle reads a lane that does not take part (undefined value)
    WARP_BAD_ARG = 11,      // invalid width, or the caller's own bit missing from the mask
    STACK_OVERFLOW = 12,    // a thread overflowed its fiber stack
    TIMEOUT = 13,           // the launch ran past its time limit (an endless loop?)
    WILD_ACCESS = 14,       // an access to memory that is no argument, stack, shared or static data
    MISALIGNED = 15,        // an N-byte access (N = 2, 4, 8, 16) at an address that is not a multiple of N
};

enum RaceKind { WRITE_WRITE = 1, READ_AFTER_WRITE = 2, WRITE_AFTER_READ = 3 };

struct Report {
    int64_t kind;
    int64_t arg;          // index into the guards (== kernel parameter index), -1 if none
    int64_t offset;       // byte offset of the access relative to the array start
    int64_t size;         // bytes accessed
    int64_t is_write;
    int64_t block[3];
    int64_t thread[3];
    int64_t count;        // how many bad accesses were seen before the launch stopped
    int64_t race;         // RaceKind
    int64_t other_block;  // the other thread of a race: linear block index
    int64_t other_thread; //   and linear thread index within its block
};

static const size_t kFiberStack = 256 * 1024;  // per thread, the lowest page a PROT_NONE guard
static const int kMaxThreads = 1024;
static char* g_stacks = nullptr;
static double g_time_limit = 0;    // seconds; 0 = none
static double g_start_time = 0;
static uint64_t g_access_count = 0;

static const Guard* g_guards = nullptr;
static int g_nguards = 0;
static Report* g_report = nullptr;
static volatile int g_stop = 0;
static sigjmp_buf g_jump;
static volatile int g_jump_armed = 0;

static void note_error(int kind, int arg, int64_t offset, int64_t size, int is_write) {
    Report* r = g_report;
    r->count += 1;
    if (r->kind == OK) {
        r->kind = kind;
        r->arg = arg;
        r->offset = offset;
        r->size = size;
        r->is_write = is_write;
        r->block[0] = cuda_emu_blockIdx.x; r->block[1] = cuda_emu_blockIdx.y; r->block[2] = cuda_emu_blockIdx.z;
        r->thread[0] = cuda_emu_threadIdx.x; r->thread[1] = cuda_emu_threadIdx.y; r->thread[2] = cuda_emu_threadIdx.z;
    }
    g_stop = 1;
}

// ---- race detector ------------------------------------------------------------------------------
// Each 4-byte word of an array argument and of every __shared__ variable remembers its last
// writer and last reader: (block, thread, the block's barrier epoch, the warp's __syncwarp epoch).
// Two accesses by different threads are ordered only when both are in the same block with a
// __syncthreads() between them, or in the same warp with a __syncwarp() between them; anything
// else in one launch is concurrent on a GPU, whatever order the emulator ran them in. Reported:
// a read of a word a concurrent thread wrote, a write to a word a concurrent thread read, and a
// write over a concurrent thread's write *with a different value* (the same value stored by many
// threads, e.g. an "any element non-finite" flag, is benign). Atomics are exempt. Accesses
// narrower than 4 bytes are only bounds-checked.
static int cuda_emu_in_atomic = 0;
extern "C" void cuda_emu_atomic_begin(void) { ++cuda_emu_in_atomic; }
extern "C" void cuda_emu_atomic_end(void) { --cuda_emu_in_atomic; }
static uint64_t g_block_lin = 0;
static uint64_t g_thread_lin = 0;
static uint64_t g_epoch = 0;
static uint64_t g_warp_epoch[32];

static const uint64_t kValid = 1ull << 63;
static const uint64_t kShared = 1ull << 62;   // reader slot: another concurrent thread read it too

// An access, packed: valid | shared | block (24 bits) | barrier epoch (18) | warp epoch (10) | thread (10).
typedef uint64_t Access;
struct ShadowWord { Access writer, reader; };
static const uint64_t kShadowPerWord = sizeof(ShadowWord);

static inline Access my_access() {
    return kValid | ((g_block_lin & 0xFFFFFF) << 38) | ((g_epoch & 0x3FFFF) << 20) |
           ((g_warp_epoch[g_thread_lin / 32] & 0x3FF) << 10) | g_thread_lin;
}
static inline uint64_t id_block(Access id) { return (id >> 38) & 0xFFFFFF; }
static inline uint64_t id_epoch(Access id) { return (id >> 20) & 0x3FFFF; }
static inline uint64_t id_warp_epoch(Access id) { return (id >> 10) & 0x3FF; }
static inline uint64_t id_thread(Access id) { return id & 0x3FF; }
static inline bool same_thread(Access a, Access b) {
    return id_block(a) == id_block(b) && id_thread(a) == id_thread(b);
}
static inline bool same_phase(Access a, Access b) {  // no barrier between them
    return id_epoch(a) == id_epoch(b) &&
           (id_thread(a) / 32 != id_thread(b) / 32 || id_warp_epoch(a) == id_warp_epoch(b));
}
static inline bool concurrent(Access prev, Access me) {
    if (!(prev & kValid)) return false;
    if (id_block(prev) != id_block(me)) return true;
    if (id_thread(prev) == id_thread(me)) return false;
    return same_phase(prev, me);
}

// arg >= 0: kernel parameter; arg <= -2: __shared__ variable number -2 - arg.
static void note_race(int race, int arg, int64_t offset, int64_t size, int is_write, uint64_t me, uint64_t other) {
    Report* r = g_report;
    bool first = r->kind == OK;
    note_error(RACE, arg, offset, size, is_write);
    if (!first) return;
    r->race = race;
    uint64_t t = id_thread(me), b = id_block(me);
    const dim3& bd = cuda_emu_blockDim; const dim3& gd = cuda_emu_gridDim;
    r->thread[0] = t % bd.x; r->thread[1] = (t / bd.x) % bd.y; r->thread[2] = t / (bd.x * bd.y);
    r->block[0] = b % gd.x; r->block[1] = (b / gd.x) % gd.y; r->block[2] = b / ((uint64_t)gd.x * gd.y);
    r->other_block = (int64_t)id_block(other);
    r->other_thread = (int64_t)id_thread(other);
}

// A write over a concurrent thread's write: decided after the store, by comparing the bytes.
static struct {
    int active;
    uintptr_t addr;
    size_t n;
    unsigned char before[16];
    int arg;
    int64_t offset;
    uint64_t me, other;
} g_pending;

static inline void resolve_pending() {
    if (!g_pending.active) return;
    g_pending.active = 0;
    if (memcmp((const void*)g_pending.addr, g_pending.before, g_pending.n) != 0)
        note_race(WRITE_WRITE, g_pending.arg, g_pending.offset, (int64_t)g_pending.n, 1, g_pending.me, g_pending.other);
}

static void track(ShadowWord* shadow, uintptr_t start, int arg, uintptr_t a, size_t n, int is_write) {
    Access me = my_access();
    uint64_t w0 = (a - start) / 4, w1 = (a + n - 1 - start) / 4;
    for (uint64_t k = w0; k <= w1; ++k) {
        Access& writer = shadow[k].writer;
        Access& reader = shadow[k].reader;
        if (is_write) {
            Access r = reader;
            if (concurrent(r, me) || ((r & kShared) && same_thread(r, me) && same_phase(r, me))) {
                note_race(WRITE_AFTER_READ, arg, (int64_t)(a - start), (int64_t)n, 1, me, r);
                return;
            }
            if (concurrent(writer, me) && !g_pending.active && n <= 16) {
                g_pending.active = 1;
                g_pending.addr = a;
                g_pending.n = n;
                memcpy(g_pending.before, (const void*)a, n);
                g_pending.arg = arg;
                g_pending.offset = (int64_t)(a - start);
                g_pending.me = me;
                g_pending.other = writer;
            }
            writer = me;
        } else {
            if (concurrent(writer, me)) {
                note_race(READ_AFTER_WRITE, arg, (int64_t)(a - start), (int64_t)n, 0, me, writer);
                return;
            }
            if (!(reader & kValid)) {
                reader = me;
            } else if (same_thread(reader, me)) {
                reader = me | ((reader & kShared) && same_phase(reader, me) ? kShared : 0);
            } else if (concurrent(reader, me)) {
                reader |= kShared;  // keep the other reader's id
            } else {
                reader = me;  // ordered before us by a barrier
            }
        }
    }
}

// ---- __shared__ variables ------------------------------------------------------------------------
// Function-local statics of the kernel file (found by Python in the symbol table). Each block
// starts with them filled with 0xFF bytes (NaN for floats, -1 for integers), as uninitialised
// shared memory, and with a fresh race shadow.
struct SharedVar { uintptr_t start, end; ShadowWord* shadow; };
static SharedVar g_shared[256];
static int g_nshared = 0;

extern "C" EXPORT int cuda_emu_set_shared(const uint64_t* ranges, int n) {
    for (int i = 0; i < g_nshared; ++i) munmap(g_shared[i].shadow, (g_shared[i].end - g_shared[i].start + 3) / 4 * kShadowPerWord);
    g_nshared = 0;
    for (int i = 0; i < n && i < 256; ++i) {
        uint64_t size = ranges[2 * i + 1];
        void* sh = mmap(nullptr, (size + 3) / 4 * kShadowPerWord + 1, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (sh == MAP_FAILED) return -1;
        g_shared[g_nshared++] = SharedVar{(uintptr_t)ranges[2 * i], (uintptr_t)(ranges[2 * i] + size), (ShadowWord*)sh};
    }
    return g_nshared;
}

static void reset_shared() {
    for (int i = 0; i < g_nshared; ++i) {
        size_t size = g_shared[i].end - g_shared[i].start;
        memset((void*)g_shared[i].start, 0xFF, size);
        memset(g_shared[i].shadow, 0, (size + 3) / 4 * kShadowPerWord);
    }
    memset(g_warp_epoch, 0, sizeof g_warp_epoch);
}

static double now_seconds() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static void check_time();

// Address ranges a kernel may touch besides its arguments and __shared__ variables.
static uintptr_t g_legit[24][2];
static int g_nlegit = 0;
static int g_nlegit_fixed = 0;  // the module's segments and the stacks; launch slots follow
static pthread_t g_legit_thread;
// (No function-local statics in this file: Python takes the module's local statics for the
// kernels' __shared__ variables.)

static void note_wild(uintptr_t a, size_t n, int is_write) {
    if (a < 65536) {
        note_error(NULL_POINTER, -1, (int64_t)a, (int64_t)n, is_write);
        return;
    }
    // Name the nearest array argument and the distance, as for an out-of-bounds access.
    int best = -1;
    uint64_t best_d = ~0ull;
    for (int i = 0; i < g_nguards; ++i) {
        if (g_guards[i].end <= g_guards[i].start && g_guards[i].zone_hi == 0) continue;
        uint64_t d = a < g_guards[i].start ? g_guards[i].start - a : a - g_guards[i].start;
        if (d < best_d) { best_d = d; best = i; }
    }
    note_error(WILD_ACCESS, best, best >= 0 ? (int64_t)(a - g_guards[best].start) : (int64_t)a, (int64_t)n, is_write);
}

// Alignment: a GPU faults ("misaligned address") on an N-byte load or store whose address is
// not a multiple of N; the host CPU does not. The aligned callbacks (__tsan_readN/writeN, which
// g++ emits when the type says the access is N-aligned: float at 4, double and float2/Pair<float>
// at 8, float4/Quad<float>/double2 at 16; the kernels are compiled with -fno-tree-sra so that a
// vector struct stays one access instead of being split into its fields) check it here and name
// the argument (or __shared__ variable) and the byte offset.
static void note_misaligned(uintptr_t a, size_t n, int is_write) {
    const Guard* g = g_guards;
    for (int i = 0; i < g_nguards; ++i) {
        if (a >= g[i].zone_lo && a < g[i].zone_hi) {
            note_error(MISALIGNED, i, (int64_t)(a - g[i].start), (int64_t)n, is_write);
            return;
        }
    }
    for (int i = 0; i < g_nshared; ++i) {
        if (a >= g_shared[i].start && a < g_shared[i].end) {
            note_error(MISALIGNED, -2 - i, (int64_t)(a - g_shared[i].start), (int64_t)n, is_write);
            return;
        }
    }
    note_error(MISALIGNED, -1, (int64_t)(a & 0xFFFF), (int64_t)n, is_write);  // stack / static data
}

// A reinterpret_cast to a pointer whose target type needs `align` bytes, of an address that is
// not a multiple of it (cuda_emu.h checks the address; this names the argument and the offset).
extern "C" void cuda_emu_check_cast(const volatile void* p, unsigned long long align, int) {
    if (((uintptr_t)p & (align - 1)) != 0) note_misaligned((uintptr_t)p, (size_t)align, 2);
}

static inline void check_access(uintptr_t a, size_t n, int is_write, int aligned = 0) {
    if (g_pending.active) resolve_pending();
    if ((++g_access_count & ((1u << 22) - 1)) == 0) check_time();
    if (a - (uintptr_t)&cuda_emu_builtins < sizeof cuda_emu_builtins) return;  // threadIdx & co.
    if (aligned && (a & (n - 1)) != 0) {
        note_misaligned(a, n, is_write);
        return;
    }
    const Guard* g = g_guards;
    for (int i = 0; i < g_nguards; ++i) {
        if (a + n > g[i].zone_lo && a < g[i].zone_hi) {
            if (a >= g[i].start && a + n <= g[i].end) {  // inside the array
                if (n >= 4 && !cuda_emu_in_atomic && g[i].shadow)
                    track((ShadowWord*)g[i].shadow, g[i].start, i, a, n, is_write);
                return;
            }
            note_error(OUT_OF_BOUNDS, i, (int64_t)(a - g[i].start), (int64_t)n, is_write);
            return;
        }
    }
    for (int i = 0; i < g_nshared; ++i) {
        if (a >= g_shared[i].start && a + n <= g_shared[i].end) {
            if (n >= 4 && !cuda_emu_in_atomic) track(g_shared[i].shadow, g_shared[i].start, -2 - i, a, n, is_write);
            return;
        }
    }
    // Anything else must be the thread's stack, the module's own static data (the built-in
    // variables, __device__/__constant__ data) or the launch's argument slots; otherwise the
    // kernel followed a wild pointer, reported before the access can corrupt the process.
    for (int i = 0; i < g_nlegit; ++i)
        if (a >= g_legit[i][0] && a + n <= g_legit[i][1]) return;
    for (int i = 0; i < g_nguards; ++i) {  // in the PROT_NONE pages around an array
        if (a + n > g[i].fault_lo && a < g[i].fault_hi) {
            note_error(OUT_OF_BOUNDS, i, (int64_t)(a - g[i].start), (int64_t)n, is_write);
            return;
        }
    }
    note_wild(a, n, is_write);
}

// g++ -fsanitize=thread (compile only, no TSan runtime linked) calls these before every load
// and store of the kernel code; unlike AddressSanitizer's, its instrumentation keeps a store
// that follows a load of the same address, which the race detector needs.
extern "C" {
#define CUDA_EMU_CB(n)                                                                     \
    void __tsan_read##n(void* p) { check_access((uintptr_t)p, n, 0, 1); }                  \
    void __tsan_write##n(void* p) { check_access((uintptr_t)p, n, 1, 1); }                 \
    void __tsan_unaligned_read##n(void* p) { check_access((uintptr_t)p, n, 0); }           \
    void __tsan_unaligned_write##n(void* p) { check_access((uintptr_t)p, n, 1); }          \
    void __tsan_volatile_read##n(void* p) { check_access((uintptr_t)p, n, 0, 1); }         \
    void __tsan_volatile_write##n(void* p) { check_access((uintptr_t)p, n, 1, 1); }        \
    void __tsan_unaligned_volatile_read##n(void* p) { check_access((uintptr_t)p, n, 0); }  \
    void __tsan_unaligned_volatile_write##n(void* p) { check_access((uintptr_t)p, n, 1); }
CUDA_EMU_CB(1)
CUDA_EMU_CB(2)
CUDA_EMU_CB(4)
CUDA_EMU_CB(8)
CUDA_EMU_CB(16)
void __tsan_read_range(void* p, size_t n) { check_access((uintptr_t)p, n, 0); }
void __tsan_write_range(void* p, size_t n) { check_access((uintptr_t)p, n, 1); }
void __tsan_init(void) {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit(void) {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
}

// ---- guarded buffers ---------------------------------------------------------------------------
// [fault pages, PROT_NONE][zone, rw][array, rounded up to pages][zone, rw][fault pages, PROT_NONE]
// The array starts right after the front zone; its end is followed by the slack up to the page
// boundary and then the back zone, all of which counts as "past the end".
extern "C" EXPORT int cuda_emu_alloc_guarded(uint64_t nbytes, uint64_t zone, uint64_t fault, Guard* g) {
    const uint64_t page = 4096;
    zone = (zone + page - 1) / page * page;
    fault = (fault + page - 1) / page * page;
    uint64_t body = (nbytes + page - 1) / page * page;
    uint64_t total = 2 * fault + 2 * zone + body;
    void* p = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return -1;
    char* base = (char*)p;
    if (mprotect(base + fault, 2 * zone + body, PROT_READ | PROT_WRITE) != 0) {
        munmap(p, total);
        return -1;
    }
    g->fault_lo = (uintptr_t)base;
    g->fault_hi = (uintptr_t)(base + total);
    g->zone_lo = (uintptr_t)(base + fault);
    g->start = g->zone_lo + zone;
    g->end = g->start + nbytes;
    g->zone_hi = g->start + body + zone;
    g->shadow_bytes = (nbytes + 3) / 4 * kShadowPerWord;
    g->shadow = 0;
    if (g->shadow_bytes) {
        void* sh = mmap(nullptr, g->shadow_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (sh == MAP_FAILED) {
            munmap(p, total);
            return -1;
        }
        g->shadow = (uintptr_t)sh;
    }
    return 0;
}

extern "C" EXPORT void cuda_emu_free_guarded(const Guard* g) {
    if (g->fault_hi > g->fault_lo) munmap((void*)g->fault_lo, g->fault_hi - g->fault_lo);
    if (g->shadow) munmap((void*)g->shadow, g->shadow_bytes);
}

// ---- hardware faults: PROT_NONE pages and null pointers ------------------------------------------
static struct sigaction g_old_segv, g_old_bus;
static stack_t g_old_altstack;
static char g_altstack[1 << 16];

// An endless loop that touches memory ends here instead of hanging the test run.
static void check_time() {
    if (g_time_limit > 0 && g_jump_armed && now_seconds() - g_start_time > g_time_limit) {
        note_error(TIMEOUT, -1, (int64_t)g_time_limit, 0, -1);
        g_jump_armed = 0;
        siglongjmp(g_jump, 1);
    }
}

static void on_fault(int sig, siginfo_t* info, void* ctx) {
    uintptr_t a = (uintptr_t)info->si_addr;
    if (g_jump_armed) {
        if (g_stacks && a >= (uintptr_t)g_stacks && a < (uintptr_t)g_stacks + kFiberStack * kMaxThreads &&
            (a - (uintptr_t)g_stacks) % kFiberStack < 4096) {
            note_error(STACK_OVERFLOW, -1, (int64_t)kFiberStack, 0, -1);
            g_jump_armed = 0;
            siglongjmp(g_jump, 1);
        }
        for (int i = 0; i < g_nguards; ++i) {
            if (a >= g_guards[i].fault_lo && a < g_guards[i].fault_hi) {
                note_error(FAULT_NEAR_ARRAY, i, (int64_t)(a - g_guards[i].start), 0, -1);
                g_jump_armed = 0;
                siglongjmp(g_jump, 1);
            }
        }
        if (a < 65536) {
            note_error(NULL_POINTER, -1, (int64_t)a, 0, -1);
            g_jump_armed = 0;
            siglongjmp(g_jump, 1);
        }
    }
    if (g_jump_armed) {  // anywhere else during a launch: a wild pointer of the kernel's
        note_wild(a, 0, -1);
        g_jump_armed = 0;
        siglongjmp(g_jump, 1);
    }
    // Not ours: put the previous handler back and let the access fault again into it.
    sigaction(SIGSEGV, &g_old_segv, nullptr);
    sigaction(SIGBUS, &g_old_bus, nullptr);
    (void)sig; (void)ctx;
}

static void install_fault_handler() {
    stack_t ss;
    ss.ss_sp = g_altstack;
    ss.ss_size = sizeof g_altstack;
    ss.ss_flags = 0;
    sigaltstack(&ss, &g_old_altstack);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
}

static void remove_fault_handler() {
    sigaction(SIGSEGV, &g_old_segv, nullptr);
    sigaction(SIGBUS, &g_old_bus, nullptr);
    sigaltstack(&g_old_altstack, nullptr);
}

// ---- fibers ------------------------------------------------------------------------------------
typedef void (*Entry)(void**);
static inline void set_thread(unsigned t, const unsigned* block);

enum FiberState { RUNNING = 0, AT_BARRIER = 1, DONE = 2, AT_WARP = 3 };
struct Fiber {
    ucontext_t ctx;
    int state;
    long site;
};

static Fiber g_fibers[kMaxThreads];
static ucontext_t g_sched;
static int g_cur = -1;
static int g_fiber_mode = 0;
static Entry g_entry = nullptr;
static void** g_args = nullptr;

static void fiber_main() {
    g_entry(g_args);
    resolve_pending();
    g_fibers[g_cur].state = DONE;
    // returning resumes uc_link == &g_sched
}

// `line` tells the barriers of a kernel apart (the compiler may duplicate one call site).
extern "C" void cuda_emu_syncthreads(int line) {
    long site = line;
    if (!g_fiber_mode) {
        // Only reachable when the source did not mention __syncthreads (e.g. via a macro) and the
        // block has more than one thread; a barrier cannot be honoured without fibers.
        if (cuda_emu_blockDim.x * cuda_emu_blockDim.y * cuda_emu_blockDim.z > 1)
            note_error(BAD_LAUNCH, -1, 0, 0, -1);
        return;
    }
    resolve_pending();
    Fiber* f = &g_fibers[g_cur];
    f->state = AT_BARRIER;
    f->site = site;
    swapcontext(&f->ctx, &g_sched);
}

extern "C" void cuda_emu_trap(void) { note_error(TRAP, -1, 0, 0, -1); }

// ---- warp intrinsics ------------------------------------------------------------------------------
// A lane calling a *_sync intrinsic posts its operands and yields; the scheduler computes the
// results once every lane named in the mask has arrived (or exited), as the hardware does for a
// converged warp. Warps are 32 consecutive linear thread indices of the block.
// WMMA: the rendezvous of an nvcuda::wmma *_sync call (tests/cuda_emu/mma.h); arg = its source
// line, which every lane must share (a lane at another wmma call is not converged).
enum WarpOp { SHFL_IDX = 1, SHFL_UP = 2, SHFL_DOWN = 3, SHFL_XOR = 4, BALLOT = 5, ANY = 6, ALL = 7, SYNCWARP = 8,
              WMMA = 9 };
struct WarpPost {
    int op;
    unsigned mask;
    uint64_t value;
    int arg;
    int width;
    uint64_t result;
};
static WarpPost g_warp[kMaxThreads];

static void warp_error(int kind, unsigned lane, unsigned other, int op) {
    set_thread(lane, (const unsigned*)&cuda_emu_blockDim);
    note_error(kind, -1, (int64_t)lane, (int64_t)other, op);
}

extern "C" uint64_t cuda_emu_warp_op(int op, unsigned mask, uint64_t value, int arg, int width, int line) {
    (void)line;
    if (!g_fiber_mode) {  // the source scan missed the intrinsic (a macro?): cannot synchronise
        note_error(BAD_LAUNCH, -1, 0, 0, -1);
        return value;
    }
    resolve_pending();
    WarpPost* w = &g_warp[g_cur];
    w->op = op;
    w->mask = mask;
    w->value = value;
    w->arg = arg;
    w->width = width;
    w->result = value;
    g_fibers[g_cur].state = AT_WARP;
    swapcontext(&g_fibers[g_cur].ctx, &g_sched);
    return w->result;
}

extern "C" unsigned cuda_emu_activemask(void) {
    unsigned nthreads = cuda_emu_blockDim.x * cuda_emu_blockDim.y * cuda_emu_blockDim.z;
    if (!g_fiber_mode) return 1u << (g_thread_lin % 32);
    unsigned base = (unsigned)g_cur / 32 * 32, m = 0;
    for (unsigned j = 0; j < 32 && base + j < nthreads; ++j)
        if (g_fibers[base + j].state != DONE) m |= 1u << j;
    return m;
}

// Release every group of lanes whose mask is complete; false when none could be released.
// Sets g_stop on a usage error.
static bool release_warps(unsigned nthreads) {
    bool released = false;
    for (unsigned base = 0; base < nthreads; base += 32) {
        unsigned lanes = nthreads - base < 32 ? nthreads - base : 32;
        for (unsigned l = 0; l < lanes; ++l) {
            if (g_fibers[base + l].state != AT_WARP) continue;
            const WarpPost& p = g_warp[base + l];
            if (!((p.mask >> l) & 1u) || p.width <= 0 || p.width > 32 || (p.width & (p.width - 1))) {
                warp_error(WARP_BAD_ARG, base + l, p.width, p.op);
                return false;
            }
            unsigned group = 0;  // lanes taking part: named in the mask and arrived
            bool ready = true;
            for (unsigned j = 0; j < 32; ++j) {
                if (!((p.mask >> j) & 1u) || j >= lanes) continue;  // lanes past the block's end have exited
                const Fiber& f = g_fibers[base + j];
                if (f.state == DONE) continue;
                if (f.state != AT_WARP) { ready = false; break; }
                const WarpPost& q = g_warp[base + j];
                if (q.op != p.op || q.mask != p.mask || (p.op == WMMA && q.arg != p.arg)) {
                    warp_error(WARP_MISMATCH, base + l, base + j, p.op);
                    return false;
                }
                group |= 1u << j;
            }
            if (!ready) continue;
            uint64_t vote = 0;
            bool any = false, all = true;
            for (unsigned j = 0; j < 32; ++j) {
                if (!((group >> j) & 1u)) continue;
                bool pred = g_warp[base + j].value != 0;
                vote |= (uint64_t)pred << j;
                any = any || pred;
                all = all && pred;
            }
            for (unsigned j = 0; j < 32; ++j) {
                if (!((group >> j) & 1u)) continue;
                WarpPost& q = g_warp[base + j];
                unsigned w = (unsigned)q.width, seg = j & ~(w - 1), src = j;
                switch (q.op) {
                    case SHFL_IDX: src = seg + ((unsigned)q.arg & (w - 1)); break;
                    case SHFL_UP: src = (j >= seg + (unsigned)q.arg) ? j - (unsigned)q.arg : j; break;
                    case SHFL_DOWN: src = (j + (unsigned)q.arg < seg + w) ? j + (unsigned)q.arg : j; break;
                    case SHFL_XOR: src = j ^ ((unsigned)q.arg & 31u); if (src >= seg + w) src = j; break;
                    default: break;
                }
                if (q.op <= SHFL_XOR) {
                    if (!((group >> src) & 1u)) {
                        warp_error(WARP_INACTIVE_SOURCE, base + j, base + src, q.op);
                        return false;
                    }
                    q.result = g_warp[base + src].value;
                } else if (q.op == BALLOT) {
                    q.result = vote;
                } else if (q.op == ANY) {
                    q.result = any;
                } else if (q.op == ALL) {
                    q.result = all;
                } else {
                    q.result = 0;
                }
            }
            for (unsigned j = 0; j < 32; ++j)
                if ((group >> j) & 1u) g_fibers[base + j].state = RUNNING;
            if (p.op == SYNCWARP) ++g_warp_epoch[base / 32];  // orders the lanes' memory accesses
            released = true;
        }
    }
    return released;
}

static inline void set_thread(unsigned t, const unsigned* block) {
    g_thread_lin = t;
    cuda_emu_threadIdx.x = t % block[0];
    cuda_emu_threadIdx.y = (t / block[0]) % block[1];
    cuda_emu_threadIdx.z = t / (block[0] * block[1]);
}

static void allocate_stacks() {
    void* p = mmap(nullptr, kFiberStack * kMaxThreads, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return;
    g_stacks = (char*)p;
    for (int t = 0; t < kMaxThreads; ++t) mprotect(g_stacks + (size_t)t * kFiberStack, 4096, PROT_NONE);
}

static void run_block_fibers(unsigned nthreads, const unsigned* block) {
    for (unsigned t = 0; t < nthreads; ++t) {
        Fiber* f = &g_fibers[t];
        getcontext(&f->ctx);
        f->ctx.uc_stack.ss_sp = g_stacks + (size_t)t * kFiberStack + 4096;
        f->ctx.uc_stack.ss_size = kFiberStack - 4096;
        f->ctx.uc_link = &g_sched;
        makecontext(&f->ctx, fiber_main, 0);
        f->state = RUNNING;
        f->site = 0;
    }
    for (;;) {
        // Run every runnable thread until it finishes or waits (at a barrier or a warp intrinsic).
        for (unsigned t = 0; t < nthreads; ++t) {
            if (g_fibers[t].state != RUNNING) continue;
            g_cur = (int)t;
            set_thread(t, block);
            swapcontext(&g_sched, &g_fibers[t].ctx);
            if (g_stop) return;
        }
        if (release_warps(nthreads)) continue;
        if (g_stop) return;
        unsigned waiting = 0, at_warp = 0, first_warp = 0;
        long site = 0;
        int mismatch = 0;
        for (unsigned t = 0; t < nthreads; ++t) {
            if (g_fibers[t].state == AT_BARRIER) {
                if (waiting == 0) site = g_fibers[t].site;
                else if (g_fibers[t].site != site) mismatch = 1;
                ++waiting;
            } else if (g_fibers[t].state == AT_WARP) {
                if (at_warp++ == 0) first_warp = t;
            }
        }
        if (at_warp) {  // lanes wait in a warp intrinsic for lanes that wait at __syncthreads()
            const WarpPost& p = g_warp[first_warp];
            unsigned other = first_warp;
            for (unsigned j = 0; j < 32; ++j) {
                unsigned t = first_warp / 32 * 32 + j;
                if (t < nthreads && ((p.mask >> j) & 1u) && g_fibers[t].state == AT_BARRIER) { other = t; break; }
            }
            warp_error(WARP_MISMATCH, first_warp, other, p.op);
            return;
        }
        if (waiting == 0) return;
        if (waiting != nthreads) {
            cuda_emu_threadIdx = {0, 0, 0};
            note_error(BARRIER_EXIT, -1, (int64_t)(nthreads - waiting), 0, -1);
            return;
        }
        if (mismatch) {
            note_error(BARRIER_MISMATCH, -1, 0, 0, -1);
            return;
        }
        ++g_epoch;  // everything before this barrier is ordered before everything after it
        for (unsigned t = 0; t < nthreads; ++t) g_fibers[t].state = RUNNING;
    }
}

// grid, block: 3 unsigned each. guards: one per kernel parameter (zeros for scalars).
// Returns 0 when the launch ran clean, else the error kind (details in *report).
static int find_module_segments(struct dl_phdr_info* info, size_t, void* probe) {
    uintptr_t p = (uintptr_t)probe;
    bool mine = false;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
        if (ph.p_type == PT_LOAD && p >= lo && p < lo + ph.p_memsz) mine = true;
    }
    if (!mine) return 0;
    for (int i = 0; i < info->dlpi_phnum && g_nlegit < 16; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_LOAD) continue;
        uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
        g_legit[g_nlegit][0] = lo;
        g_legit[g_nlegit][1] = lo + ph.p_memsz;
        ++g_nlegit;
    }
    return 1;
}

static void set_legit_ranges(const void* slots, size_t slots_bytes, void** args, int nargs) {
    // The module's segments, the fiber stacks and the calling thread's stack do not move:
    // found once per calling thread (pthread_getattr_np reads /proc for the main thread).
    if (g_nlegit_fixed == 0 || !pthread_equal(g_legit_thread, pthread_self())) {
        g_nlegit = 0;
        dl_iterate_phdr(find_module_segments, (void*)&find_module_segments);
        g_legit[g_nlegit][0] = (uintptr_t)g_stacks;
        g_legit[g_nlegit][1] = (uintptr_t)g_stacks + kFiberStack * kMaxThreads;
        ++g_nlegit;
        pthread_attr_t attr;
        void* stack_lo;
        size_t stack_size;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            if (pthread_attr_getstack(&attr, &stack_lo, &stack_size) == 0) {
                g_legit[g_nlegit][0] = (uintptr_t)stack_lo;
                g_legit[g_nlegit][1] = (uintptr_t)stack_lo + stack_size;
                ++g_nlegit;
            }
            pthread_attr_destroy(&attr);
        }
        g_nlegit_fixed = g_nlegit;
        g_legit_thread = pthread_self();
    }
    g_nlegit = g_nlegit_fixed;
    g_legit[g_nlegit][0] = (uintptr_t)slots;
    g_legit[g_nlegit][1] = (uintptr_t)slots + slots_bytes;
    ++g_nlegit;
    g_legit[g_nlegit][0] = (uintptr_t)args;
    g_legit[g_nlegit][1] = (uintptr_t)(args + nargs);
    ++g_nlegit;
}

// time_limit: seconds before the launch is abandoned as an endless loop (0: no limit).
extern "C" EXPORT int cuda_emu_launch(void* entry, const unsigned* grid, const unsigned* block, void** args,
                                      int fiber_mode, const Guard* guards, int nguards, Report* report,
                                      double time_limit, const void* slots, uint64_t slots_bytes) {
    g_time_limit = time_limit;
    g_start_time = now_seconds();
    g_access_count = 0;
    memset(report, 0, sizeof *report);
    memset(&g_pending, 0, sizeof g_pending);
    cuda_emu_in_atomic = 0;
    report->arg = -1;
    g_report = report;
    g_guards = guards;
    g_nguards = nguards;
    g_stop = 0;
    g_entry = (Entry)entry;
    g_args = args;
    g_fiber_mode = fiber_mode;
    unsigned nthreads = block[0] * block[1] * block[2];
    if (nthreads == 0 || nthreads > (unsigned)kMaxThreads) {
        note_error(BAD_LAUNCH, -1, nthreads, 0, -1);
        return (int)report->kind;
    }
    cuda_emu_gridDim = {grid[0], grid[1], grid[2]};
    cuda_emu_blockDim = {block[0], block[1], block[2]};
    if (!g_stacks) allocate_stacks();
    if (!g_stacks) {
        note_error(BAD_LAUNCH, -1, -1, 0, -1);
        return (int)report->kind;
    }
    set_legit_ranges(slots, slots_bytes, args, nguards);
    install_fault_handler();
    if (sigsetjmp(g_jump, 1) == 0) {
        g_jump_armed = 1;
        for (unsigned bz = 0; bz < grid[2] && !g_stop; ++bz)
            for (unsigned by = 0; by < grid[1] && !g_stop; ++by)
                for (unsigned bx = 0; bx < grid[0] && !g_stop; ++bx) {
                    cuda_emu_blockIdx = {bx, by, bz};
                    g_block_lin = bx + (uint64_t)grid[0] * (by + (uint64_t)grid[1] * bz);
                    g_epoch = 0;
                    reset_shared();
                    if (fiber_mode) {
                        run_block_fibers(nthreads, block);
                    } else {
                        for (unsigned t = 0; t < nthreads && !g_stop; ++t) {
                            set_thread(t, block);
                            g_entry(g_args);
                            resolve_pending();
                        }
                    }
                }
    }
    g_jump_armed = 0;
    g_pending.active = 0;
    remove_fault_handler();
    g_guards = nullptr;
    g_nguards = 0;
    return (int)report->kind;
}
