// Row passes of the dense loss path (cpp/loss_dense.cpp): plain loops over one row of
// a score block, included by rows_<isa>.cpp inside an anonymous namespace and
// vectorised by the compiler with that file's flags (-fno-trapping-math lets it
// turn the selects into blends).  The reductions keep kShortLanes or kLongLanes partial
// results (below).
// Only builtins here: nothing inline may be shared with baseline code.

// Partial results per reduction: kShortLanes (one AVX-512 register of floats), or for rows of
// at least kLongRow columns kLongLanes (four independent chains: the exp sum no longer waits
// on one add chain; measured on a 32 x 2,048 block with 512-bit vectors, 42 -> 27 us for a
// set of passes).  Short rows keep 16: the final reduction of 64 lanes would cost more than
// their passes.  The lane count is fixed by n, so a row's sums do not depend on anything else.
constexpr size_t kShortLanes = 16;
constexpr size_t kLongLanes = 64;
constexpr size_t kLongRow = 512;

template <class T>
inline T row_exp_le0(T x);  // exp(x) for x <= 0 (and -inf)
template <>
inline float row_exp_le0(float x) { return exp_nonpos(x); }
template <>
inline double row_exp_le0(double x) { return x < -708.0 ? 0.0 : __builtin_exp(x); }  // no subnormals (see row_tiny)

// The smallest normal value of T.  The weights these passes write feed the caller's BLAS
// matmuls (the gradients), where every subnormal operand costs a microcode assist: measured,
// a 32 x 2,048 by 2,048 x 384 sgemm took 0.35 ms with normal weights and 49 ms with
// subnormal ones.  So a weight below it is written as 0, as a CPU flushing subnormals to
// zero would (its contribution is below the last bit of any sum it could enter).
template <class T>
inline T row_tiny();
template <>
inline float row_tiny() { return __FLT_MIN__; }
template <>
inline double row_tiny() { return __DBL_MIN__; }

// x, or 0 when x is subnormal
template <class T>
inline T row_flush(T x) {
    return __builtin_fabs(x) < row_tiny<T>() ? T(0) : x;
}

// the sum of the L partial results, in lane order
template <class T, size_t L>
inline T lanes_sum(const T* acc) {
    T s = 0;
    for (size_t k = 0; k < L; ++k) s += acc[k];
    return s;
}

// their max, pairwise (exact in any order)
template <class T, size_t L>
inline T lanes_max(T* acc) {
    for (size_t w = L / 2; w >= 1; w /= 2)
        for (size_t k = 0; k < w; ++k) acc[k] = acc[k + w] > acc[k] ? acc[k + w] : acc[k];
    return acc[0];
}

// logits_row's loop; kScaled: sim = s[c] * v[c] (flushed), else sim = s[c].  (The max
// stays a pass of its own: folded into this loop, the compiler no longer vectorised it.)
template <class T, bool kScaled, size_t L>
T logits_loop(T* s, const T* v, size_t n, T scale, T thr) {
    const T ninf = -__builtin_inf();
    T acc[L] = {};
    size_t c = 0;
    for (; c + L <= n; c += L)
        for (size_t k = 0; k < L; ++k) {
            T sim = s[c + k];
            if (kScaled) sim = row_flush(sim * v[c + k]);
            const T z = sim * scale;
            acc[k] += z * T(0);
            s[c + k] = sim > thr ? ninf : z;
        }
    for (; c < n; ++c) {
        T sim = s[c];
        if (kScaled) sim = row_flush(sim * v[c]);
        const T z = sim * scale;
        acc[0] += z * T(0);
        s[c] = sim > thr ? ninf : z;
    }
    return lanes_sum<T, L>(acc);
}

// s[c] = sim > thr ? -inf : scale * sim with sim = s[c], or s[c] * v[c] when v is given
// (a subnormal product written as 0).  Returns 0 when every scale * sim is finite (NaN
// otherwise: x * 0 is NaN exactly for +-inf and NaN).  One pass: the scaling and the mask.
template <class T>
T logits_row(T* s, const T* v, size_t n, T scale, T thr) {
    if (n >= kLongRow)
        return v ? logits_loop<T, true, kLongLanes>(s, v, n, scale, thr)
                 : logits_loop<T, false, kLongLanes>(s, v, n, scale, thr);
    return v ? logits_loop<T, true, kShortLanes>(s, v, n, scale, thr)
             : logits_loop<T, false, kShortLanes>(s, v, n, scale, thr);
}

template <class T, size_t L>
T max_loop(const T* s, size_t n) {
    T acc[L];
    for (size_t k = 0; k < L; ++k) acc[k] = -__builtin_inf();
    size_t c = 0;
    for (; c + L <= n; c += L)
        for (size_t k = 0; k < L; ++k) acc[k] = s[c + k] > acc[k] ? s[c + k] : acc[k];
    for (; c < n; ++c) acc[0] = s[c] > acc[0] ? s[c] : acc[0];
    return lanes_max<T, L>(acc);
}

// max of s[0 .. n) (-inf for n = 0; s holds no NaN)
template <class T>
T max_row(const T* s, size_t n) {
    return n >= kLongRow ? max_loop<T, kLongLanes>(s, n) : max_loop<T, kShortLanes>(s, n);
}

template <class T, bool kScaled, size_t L>
T exp_sum_loop(T* s, const T* v, size_t n, T shift) {
    T acc[L] = {};
    size_t c = 0;
    for (; c + L <= n; c += L)
        for (size_t k = 0; k < L; ++k) {
            const T e = row_exp_le0<T>(s[c + k] - shift);
            s[c + k] = kScaled ? row_flush(e * v[c + k]) : e;
            acc[k] += e;
        }
    for (; c < n; ++c) {
        const T e = row_exp_le0<T>(s[c] - shift);
        s[c] = kScaled ? row_flush(e * v[c]) : e;
        acc[0] += e;
    }
    return lanes_sum<T, L>(acc);
}

// e_c = exp(s[c] - shift) (every s[c] - shift <= 0 or -inf); s[c] = e_c, or e_c * v[c]
// (flushed) when v is given; returns the sum of the e_c
template <class T>
T exp_sum_row(T* s, const T* v, size_t n, T shift) {
    if (n >= kLongRow)
        return v ? exp_sum_loop<T, true, kLongLanes>(s, v, n, shift) : exp_sum_loop<T, false, kLongLanes>(s, v, n, shift);
    return v ? exp_sum_loop<T, true, kShortLanes>(s, v, n, shift) : exp_sum_loop<T, false, kShortLanes>(s, v, n, shift);
}

// s[c] *= f, subnormal products written as 0
template <class T>
void mul_row(T* s, size_t n, T f) {
    for (size_t c = 0; c < n; ++c) s[c] = row_flush(s[c] * f);
}
