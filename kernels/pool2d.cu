// gpucnn pooling kernels, NCHW, forward one thread per output element, backward one thread
// per input element gathering from the windows that contain it (no atomics, deterministic).
//
// Output size OH = (H + 2*PH - KH) / SH + 1 (likewise OW).  Max pooling treats the padding as
// -inf (a padded cell is never chosen), takes the first maximum in row-major window order
// (a NaN counts as a maximum, as numpy.argmax does), and records in argmax the flat index
// h*W + w of the chosen element in its (unpadded) input plane.  Average pooling divides by
// KH*KW always (padded zeros count).  T is float or double; every integer argument is a
// long long; flat indices are 64-bit.  Every kernel runs a grid-stride loop.
//
// Backward, general case: the windows containing padded input row hp = h + PH are the output
// rows oh with oh*SH <= hp < oh*SH + KH; walking down from min(hp / SH, OH - 1) while
// oh*SH + KH > hp visits exactly them (likewise for columns), in the order in which the
// NumPy backend adds them (window tap ascending).
// Backward, disjoint windows (SH >= KH and SW >= KW): every input element lies in at most one
// window, so one thread per stride cell writes its SH x SW input elements (fewer divisions).
// 2x2 windows with column stride 2 and no column padding (MaxPool2d(2), AvgPool2d(2)) take a
// fast path in the forward and disjoint backward kernels: no tap loops, and each window row
// is one 8/16-byte Pair access when W is even and the array is Pair-aligned (the kernel checks
// the address itself, so a view that starts at an odd element falls back to single accesses).
// Forward, MaxPool2d(2)/AvgPool2d(2) without padding and with W % 4 == 0 on Quad-aligned
// arrays: each thread takes two neighbouring outputs, each window row pair one 16-byte
// (float) Quad load, the outputs one Pair store.  Backward (disjoint kernels), the same
// with H even: two cells per thread, dy (and argmax) one Pair load, each dx row one Quad
// store.  The host launches half the threads then (cuda_backend._per_thread); the kernels
// check the conditions and the alignment themselves and otherwise take one item per
// thread, which the grid-stride loop covers.
//
// Max and average pooling share their walks: the forward window walk (pool2d_forward_walk),
// the overlapping backward gather (pool2d_backward_walk) and the disjoint backward cell walk
// (pool2d_backward_disjoint_walk) are templates on a small policy struct that says what one
// reduction does with the values it meets: MaxPool / AvgPool (forward), MaxGrad / AvgGrad
// (backward).  Each __global__ kernel below is the walk instantiated with its policy.

template <typename T> __device__ __forceinline__ T negative_infinity();
template <> __device__ __forceinline__ float negative_infinity<float>()
{
    return __int_as_float(0xff800000);
}
template <> __device__ __forceinline__ double negative_infinity<double>()
{
    return __longlong_as_double(0xfff0000000000000LL);
}

// Two neighbouring elements loaded or stored as one 8-byte (float) or 16-byte (double) access.
// Only used where the host-independent check in the kernel has found the address aligned.
template <typename T> struct alignas(2 * sizeof(T)) Pair { T a, b; };

// Four neighbouring elements as one 16-byte access (float) or two (double).
template <typename T> struct alignas(4 * sizeof(T)) Quad { T a, b, c, d; };

// Whether p points at a Quad boundary.
template <typename T> __device__ __forceinline__ bool quad_aligned(const T* p)
{
    return ((unsigned long long)p & (4 * sizeof(T) - 1)) == 0;
}

// Whether p points at a Pair boundary.
template <typename T> __device__ __forceinline__ bool pair_aligned(const T* p)
{
    return ((unsigned long long)p & (2 * sizeof(T) - 1)) == 0;
}

// The max-pooling rule for the next element v (flat in-plane index at) of a window, in window
// order: the first element is taken, then any v > best, and a NaN (which then stays).
template <typename T>
__device__ __forceinline__ void take_max(T v, long long at, T& best, long long& best_at)
{
    const bool v_nan = v != v;
    const bool best_nan = best != best;
    if (best_at < 0 || (!best_nan && (v > best || v_nan))) {
        best = v;
        best_at = at;
    }
}

// ------------------------------------------------------------------------------ policies
// Forward: an accumulator per output (Acc), started by start(), fed the window's in-plane
// values v (flat in-plane index at) in row-major window order by take(), written by store()
// (one output) or store2() (two neighbouring outputs, one Pair store each).
template <typename T> struct MaxPool {
    T* y;
    int* argmax;
    struct Acc { T best; long long at; };
    __device__ __forceinline__ Acc start() const
    {
        Acc a;
        a.best = negative_infinity<T>();
        a.at = -1;
        return a;
    }
    __device__ __forceinline__ void take(Acc& a, T v, long long at) const
    {
        take_max(v, at, a.best, a.at);
    }
    __device__ __forceinline__ void store(long long i, const Acc& a) const
    {
        y[i] = a.best;
        argmax[i] = (int)a.at;
    }
    __device__ __forceinline__ bool pair_outputs() const
    {
        return pair_aligned(y) && pair_aligned(argmax);
    }
    __device__ __forceinline__ void store2(long long i, const Acc& a0, const Acc& a1) const
    {
        Pair<T> yo;
        yo.a = a0.best;
        yo.b = a1.best;
        *reinterpret_cast<Pair<T>*>(y + i) = yo;
        Pair<int> ao;
        ao.a = (int)a0.at;
        ao.b = (int)a1.at;
        *reinterpret_cast<Pair<int>*>(argmax + i) = ao;
    }
};

template <typename T> struct AvgPool {
    T* y;
    T inv_area;
    struct Acc { T sum; };
    __device__ __forceinline__ Acc start() const { Acc a; a.sum = T(0); return a; }
    __device__ __forceinline__ void take(Acc& a, T v, long long) const { a.sum += v; }
    __device__ __forceinline__ void store(long long i, const Acc& a) const
    {
        y[i] = a.sum * inv_area;
    }
    __device__ __forceinline__ bool pair_outputs() const { return pair_aligned(y); }
    __device__ __forceinline__ void store2(long long i, const Acc& a0, const Acc& a1) const
    {
        Pair<T> yo;
        yo.a = a0.sum * inv_area;
        yo.b = a1.sum * inv_area;
        *reinterpret_cast<Pair<T>*>(y + i) = yo;
    }
};

// Backward: add(sum, o, me) adds output o's share of the input element with in-plane index
// me (overlapping windows); cell(o, has_window) reads what window o passes back (Cell) and
// value(cell, at) gives the input element at its gradient (disjoint windows); cells2 reads
// two neighbouring windows with one Pair load each.
template <typename T> struct MaxGrad {
    const T* dy;
    const int* argmax;
    struct Cell { T g; long long chosen; };
    __device__ __forceinline__ void add(T& sum, long long o, int me) const
    {
        if (argmax[o] == me) sum += dy[o];
    }
    __device__ __forceinline__ Cell cell(long long o, bool has_window) const
    {
        Cell c;
        c.g = has_window ? dy[o] : T(0);
        c.chosen = has_window ? (long long)argmax[o] : -1;
        return c;
    }
    __device__ __forceinline__ T value(const Cell& c, long long at) const
    {
        return c.chosen == at ? c.g : T(0);
    }
    __device__ __forceinline__ bool pair_inputs() const
    {
        return pair_aligned(dy) && pair_aligned(argmax);
    }
    __device__ __forceinline__ void cells2(long long o, Cell& c0, Cell& c1) const
    {
        const Pair<T> g = *reinterpret_cast<const Pair<T>*>(dy + o);
        const Pair<int> chosen = *reinterpret_cast<const Pair<int>*>(argmax + o);
        c0.g = g.a;
        c0.chosen = chosen.a;
        c1.g = g.b;
        c1.chosen = chosen.b;
    }
};

template <typename T> struct AvgGrad {
    const T* dy;
    T inv_area;
    struct Cell { T g; };
    __device__ __forceinline__ void add(T& sum, long long o, int) const
    {
        sum += dy[o] * inv_area;
    }
    __device__ __forceinline__ Cell cell(long long o, bool has_window) const
    {
        Cell c;
        c.g = has_window ? dy[o] * inv_area : T(0);
        return c;
    }
    __device__ __forceinline__ T value(const Cell& c, long long) const { return c.g; }
    __device__ __forceinline__ bool pair_inputs() const { return pair_aligned(dy); }
    __device__ __forceinline__ void cells2(long long o, Cell& c0, Cell& c1) const
    {
        const Pair<T> g = *reinterpret_cast<const Pair<T>*>(dy + o);
        c0.g = g.a * inv_area;
        c1.g = g.b * inv_area;
    }
};

// ------------------------------------------------------------------------------- walks
// One thread per output element y[n, c, oh, ow]: R's reduction over the window's in-plane
// elements in row-major window order.
template <typename T, typename R>
__device__ __forceinline__ void pool2d_forward_walk(const T* __restrict__ x, const R& r,
                                                    long long N, long long C, long long H,
                                                    long long W, long long OH, long long OW,
                                                    long long KH, long long KW, long long SH,
                                                    long long SW, long long PH, long long PW)
{
    typedef typename R::Acc Acc;
    const long long total = N * C * OH * OW;
    const long long step = (long long)gridDim.x * blockDim.x;
    // 2x2 windows with column stride 2 and no column padding (the usual MaxPool2d(2)): the
    // window's two columns w0, w0 + 1 are always inside the plane; each row is one Pair load
    // when W is even and x is Pair-aligned.  Rows are still bounds-checked.
    const bool two_by_two = KH == 2 && KW == 2 && SW == 2 && PW == 0;
    const bool paired = two_by_two && W % 2 == 0 && pair_aligned(x);
    // MaxPool2d(2) with W % 4 == 0 and aligned arrays: each thread takes two neighbouring
    // outputs (OW is even, so they share a row), their window rows are one Quad load each
    // (both rows always inside the plane: SH == 2, PH == 0), the outputs one Pair store each.
    // Twice the bytes in flight per thread, half the index arithmetic.
    const bool quad = paired && SH == 2 && PH == 0 && W % 4 == 0 && quad_aligned(x) &&
                      r.pair_outputs();
    const long long per = quad ? 2 : 1;                  // outputs per item
    const long long items = total / per;                 // total is even when quad
    for (long long it = (long long)blockIdx.x * blockDim.x + threadIdx.x; it < items;
         it += step) {
        const long long i = it * per;                    // the item's first output
        const long long orow = i / OW;                   // (n, c, oh)
        const long long ow = i - orow * OW;
        const long long plane = orow / OH;               // n*C + c
        const long long oh = orow - plane * OH;
        const T* xp = x + plane * H * W;
        const long long h0 = oh * SH - PH;
        const long long w0 = ow * SW - PW;
        if (quad && h0 >= 0 && h0 + 1 < H) {             // (always, but checked)
            const long long at = h0 * W + w0;            // in-plane index of the top-left tap
            const Quad<T> t = *reinterpret_cast<const Quad<T>*>(xp + at);
            const Quad<T> u = *reinterpret_cast<const Quad<T>*>(xp + at + W);
            Acc a0 = r.start(), a1 = r.start();          // the general path's order
            r.take(a0, t.a, at);
            r.take(a0, t.b, at + 1);
            r.take(a0, u.a, at + W);
            r.take(a0, u.b, at + W + 1);
            r.take(a1, t.c, at + 2);
            r.take(a1, t.d, at + 3);
            r.take(a1, u.c, at + W + 2);
            r.take(a1, u.d, at + W + 3);
            r.store2(i, a0, a1);
            continue;
        }
        // one output per item, or (quad, should its rows be outside the plane) two
        for (long long k = 0; k < per; ++k) {
            const long long wk = w0 + k * SW;
            Acc acc = r.start();
            if (two_by_two) {
                const long long h1 = h0 + 1;
                const bool top = h0 >= 0 && h0 < H;
                const bool bottom = h1 >= 0 && h1 < H;
                T v00 = T(0), v01 = T(0), v10 = T(0), v11 = T(0);
                if (paired) {
                    if (top) {
                        const Pair<T> p = *reinterpret_cast<const Pair<T>*>(xp + h0 * W + wk);
                        v00 = p.a;
                        v01 = p.b;
                    }
                    if (bottom) {
                        const Pair<T> p = *reinterpret_cast<const Pair<T>*>(xp + h1 * W + wk);
                        v10 = p.a;
                        v11 = p.b;
                    }
                } else {
                    if (top) {
                        v00 = xp[h0 * W + wk];
                        v01 = xp[h0 * W + wk + 1];
                    }
                    if (bottom) {
                        v10 = xp[h1 * W + wk];
                        v11 = xp[h1 * W + wk + 1];
                    }
                }
                if (top) {
                    r.take(acc, v00, h0 * W + wk);
                    r.take(acc, v01, h0 * W + wk + 1);
                }
                if (bottom) {
                    r.take(acc, v10, h1 * W + wk);
                    r.take(acc, v11, h1 * W + wk + 1);
                }
            } else {
                for (long long p = 0; p < KH; ++p) {
                    const long long h = h0 + p;
                    if (h < 0 || h >= H) continue;
                    for (long long q = 0; q < KW; ++q) {
                        const long long w = wk + q;
                        if (w < 0 || w >= W) continue;
                        r.take(acc, xp[h * W + w], h * W + w);
                    }
                }
            }
            r.store(i + k, acc);
        }
    }
}

// One thread per input-gradient element dx[n, c, h, w]: the sum of R's shares of it over
// the windows that contain (h, w).
template <typename T, typename R>
__device__ __forceinline__ void pool2d_backward_walk(const R& r, T* __restrict__ dx,
                                                     long long N, long long C, long long H,
                                                     long long W, long long OH, long long OW,
                                                     long long KH, long long KW, long long SH,
                                                     long long SW, long long PH, long long PW)
{
    const long long total = N * C * H * W;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long row = i / W;                     // (n, c, h)
        const long long w = i - row * W;
        const long long plane = row / H;                 // n*C + c
        const long long h = row - plane * H;
        const long long hp = h + PH;
        const long long wp = w + PW;
        const long long oh_top = hp / SH < OH - 1 ? hp / SH : OH - 1;
        const long long ow_top = wp / SW < OW - 1 ? wp / SW : OW - 1;
        const int me = (int)(h * W + w);
        const long long base = plane * OH * OW;
        T sum = T(0);
        for (long long oh = oh_top; oh >= 0 && oh * SH + KH > hp; --oh) {
            for (long long ow = ow_top; ow >= 0 && ow * SW + KW > wp; --ow) {
                r.add(sum, base + oh * OW + ow, me);
            }
        }
        dx[i] = sum;
    }
}

// Disjoint windows only (SH >= KH, SW >= KW).  The padded plane is cut into stride cells
// (a, b) = rows [a*SH, a*SH + SH) x columns [b*SW, b*SW + SW), a < ceil((H + PH) / SH),
// b < ceil((W + PW) / SW); each input element lies in exactly one cell, and a cell meets at
// most window (a, b).  One thread per cell (n, c, a, b): writes dx for the cell's in-plane
// elements, R's value inside window (a, b), else 0.
// 2x2 windows, stride 2, no column padding: one cell = one window, two columns per row, each
// row one Pair store when W is even and dx is Pair-aligned.  Without padding, H even,
// W % 4 == 0 and aligned arrays, cells are the windows (cell index = output index), and each
// thread takes two neighbouring cells: R's inputs one Pair load each, each of the two dx rows
// one Quad store.
template <typename T, typename R>
__device__ __forceinline__ void pool2d_backward_disjoint_walk(const R& r, T* __restrict__ dx,
                                                              long long N, long long C,
                                                              long long H, long long W,
                                                              long long OH, long long OW,
                                                              long long KH, long long KW,
                                                              long long SH, long long SW,
                                                              long long PH, long long PW)
{
    typedef typename R::Cell Cell;
    const long long A = (H + PH + SH - 1) / SH;          // cell rows
    const long long B = (W + PW + SW - 1) / SW;          // cell columns
    const long long total = N * C * A * B;
    const long long step = (long long)gridDim.x * blockDim.x;
    const bool two_by_two = KH == 2 && KW == 2 && SH == 2 && SW == 2 && PW == 0;
    const bool paired = two_by_two && W % 2 == 0 && pair_aligned(dx);
    const bool quad = paired && PH == 0 && H % 2 == 0 && W % 4 == 0 && quad_aligned(dx) &&
                      r.pair_inputs();
    const long long per = quad ? 2 : 1;                  // cells per item
    const long long items = total / per;                 // total is even when quad
    for (long long it = (long long)blockIdx.x * blockDim.x + threadIdx.x; it < items;
         it += step) {
        const long long i = it * per;                    // the item's first cell
        const long long crow = i / B;                    // (n, c, a)
        const long long b = i - crow * B;
        const long long plane = crow / A;                // n*C + c
        const long long a = crow - plane * A;
        T* dxp = dx + plane * H * W;
        if (quad && a < OH && b + 1 < OW && 2 * a + 1 < H) {   // (always, but checked)
            Cell c0, c1;
            r.cells2(plane * OH * OW + a * OW + b, c0, c1);
            const long long at = 2 * a * W + 2 * b;      // in-plane top-left of cell b
            for (int k = 0; k < 2; ++k) {
                const long long row = at + k * W;
                Quad<T> q;
                q.a = r.value(c0, row);
                q.b = r.value(c0, row + 1);
                q.c = r.value(c1, row + 2);
                q.d = r.value(c1, row + 3);
                // dxp + row, written as a flat offset: (cell rows are the output rows, so
                // the window's top-left is 2 * (i - b) * 2 + 2 * b); NVCC then emits one
                // 16-byte store (with dxp + row it splits the store into four)
                *reinterpret_cast<Quad<T>*>(dx + (4 * i - 2 * b + k * W)) = q;
            }
            continue;
        }
        // one cell per item, or (quad, should the check above fail) two
        for (long long bk = b; bk < b + per; ++bk) {
            const bool has_window = a < OH && bk < OW;
            const Cell c = r.cell(plane * OH * OW + a * OW + bk, has_window);
            if (two_by_two) {
                // the cell is the window: columns w0, w0 + 1 (the second may pass the edge
                // when W is odd), rows 2a - PH + k for k = 0, 1
                const long long w0 = 2 * bk;
                for (int k = 0; k < 2; ++k) {
                    const long long h = 2 * a + k - PH;
                    if (h < 0 || h >= H) continue;
                    const long long at = h * W + w0;
                    const T g0 = r.value(c, at);
                    const T g1 = r.value(c, at + 1);
                    if (paired) {
                        Pair<T> pr;
                        pr.a = g0;
                        pr.b = g1;
                        *reinterpret_cast<Pair<T>*>(dxp + at) = pr;
                    } else {
                        dxp[at] = g0;
                        if (w0 + 1 < W) dxp[at + 1] = g1;
                    }
                }
                continue;
            }
            for (long long hp = a * SH; hp < a * SH + SH; ++hp) {
                const long long h = hp - PH;
                if (h < 0 || h >= H) continue;
                for (long long wp = bk * SW; wp < bk * SW + SW; ++wp) {
                    const long long w = wp - PW;
                    if (w < 0 || w >= W) continue;
                    const bool in_window = has_window && hp - a * SH < KH && wp - bk * SW < KW;
                    dxp[h * W + w] = in_window ? r.value(c, h * W + w) : T(0);
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------- kernels
// One thread per output element y[n, c, oh, ow] (two on the 2x2 fast path): the maximum of
// its window and, in argmax[n, c, oh, ow], the flat index h*W + w of that maximum.
template <typename T>
__global__ void maxpool2d_forward(const T* __restrict__ x, T* __restrict__ y,
                                  int* __restrict__ argmax,
                                  long long N, long long C, long long H, long long W,
                                  long long OH, long long OW, long long KH, long long KW,
                                  long long SH, long long SW, long long PH, long long PW)
{
    MaxPool<T> r;
    r.y = y;
    r.argmax = argmax;
    pool2d_forward_walk(x, r, N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}

// One thread per output element y[n, c, oh, ow] (two on the 2x2 fast path): the sum of the
// window's in-plane elements in row-major order, times inv_area = 1 / (KH*KW).
template <typename T>
__global__ void avgpool2d_forward(const T* __restrict__ x, T* __restrict__ y,
                                  long long N, long long C, long long H, long long W,
                                  long long OH, long long OW, long long KH, long long KW,
                                  long long SH, long long SW, long long PH, long long PW,
                                  T inv_area)
{
    AvgPool<T> r;
    r.y = y;
    r.inv_area = inv_area;
    pool2d_forward_walk(x, r, N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}

// One thread per input-gradient element dx[n, c, h, w]: the sum of dy over the windows that
// contain (h, w) and chose it as their maximum (argmax == h*W + w).
template <typename T>
__global__ void maxpool2d_backward(const T* __restrict__ dy, const int* __restrict__ argmax,
                                   T* __restrict__ dx,
                                   long long N, long long C, long long H, long long W,
                                   long long OH, long long OW, long long KH, long long KW,
                                   long long SH, long long SW, long long PH, long long PW)
{
    MaxGrad<T> r;
    r.dy = dy;
    r.argmax = argmax;
    pool2d_backward_walk(r, dx, N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}

// One thread per input-gradient element dx[n, c, h, w]: the sum of dy * inv_area over the
// windows that contain (h, w).
template <typename T>
__global__ void avgpool2d_backward(const T* __restrict__ dy, T* __restrict__ dx,
                                   long long N, long long C, long long H, long long W,
                                   long long OH, long long OW, long long KH, long long KW,
                                   long long SH, long long SW, long long PH, long long PW,
                                   T inv_area)
{
    AvgGrad<T> r;
    r.dy = dy;
    r.inv_area = inv_area;
    pool2d_backward_walk(r, dx, N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}

// Disjoint windows (SH >= KH, SW >= KW): one thread per stride cell (n, c, a, b) (two on the
// 2x2 fast path) writes dx for the cell's elements: dy[n, c, a, b] where argmax chose the
// element, else 0.
template <typename T>
__global__ void maxpool2d_backward_disjoint(const T* __restrict__ dy,
                                            const int* __restrict__ argmax, T* __restrict__ dx,
                                            long long N, long long C, long long H, long long W,
                                            long long OH, long long OW, long long KH, long long KW,
                                            long long SH, long long SW, long long PH, long long PW)
{
    MaxGrad<T> r;
    r.dy = dy;
    r.argmax = argmax;
    pool2d_backward_disjoint_walk(r, dx, N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}

// Disjoint windows (SH >= KH, SW >= KW): one thread per stride cell (n, c, a, b) (two on the
// 2x2 fast path) writes dx for the cell's elements: dy[n, c, a, b] * inv_area inside window
// (a, b), else 0.
template <typename T>
__global__ void avgpool2d_backward_disjoint(const T* __restrict__ dy, T* __restrict__ dx,
                                            long long N, long long C, long long H, long long W,
                                            long long OH, long long OW, long long KH, long long KW,
                                            long long SH, long long SW, long long PH, long long PW,
                                            T inv_area)
{
    AvgGrad<T> r;
    r.dy = dy;
    r.inv_area = inv_area;
    pool2d_backward_disjoint_walk(r, dx, N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}
