// Row passes of the dense loss path (cpp/loss_dense.cpp): plain loops over one row of
// a score block, included by rows_<isa>.cpp inside an anonymous namespace and
// vectorised by the compiler with that file's flags (-fno-trapping-math lets it
// turn the selects into blends).  The reductions keep kRowLanes partial results.
// Only builtins here: nothing inline may be shared with baseline code.

constexpr size_t kRowLanes = 16;

template <class T>
inline T row_exp_le0(T x);  // exp(x) for x <= 0 (and -inf)
template <>
inline float row_exp_le0(float x) { return exp_nonpos(x); }
template <>
inline double row_exp_le0(double x) { return x < -708.0 ? 0.0 : __builtin_exp(x); }  // no subnormals (see row_tiny)

template <class T>
inline T lanes_sum(const T* acc) {
    T s = 0;
    for (size_t k = 0; k < kRowLanes; ++k) s += acc[k];
    return s;
}

// s[c] = s[c] > thr ? -inf : scale * s[c]; returns 0 when every scale * s[c] is finite
// (NaN otherwise: x * 0 is NaN exactly for +-inf and NaN).
template <class T>
T logits_row(T* s, size_t n, T scale, T thr) {
    const T ninf = -__builtin_inf();
    T acc[kRowLanes] = {};
    size_t c = 0;
    for (; c + kRowLanes <= n; c += kRowLanes)
        for (size_t k = 0; k < kRowLanes; ++k) {
            const T z = s[c + k] * scale;
            acc[k] += z * T(0);
            s[c + k] = s[c + k] > thr ? ninf : z;
        }
    for (; c < n; ++c) {
        const T z = s[c] * scale;
        acc[0] += z * T(0);
        s[c] = s[c] > thr ? ninf : z;
    }
    return lanes_sum(acc);
}

// max of s[0 .. n) (-inf for n = 0; s holds no NaN)
template <class T>
T max_row(const T* s, size_t n) {
    T acc[kRowLanes];
    for (size_t k = 0; k < kRowLanes; ++k) acc[k] = -__builtin_inf();
    size_t c = 0;
    for (; c + kRowLanes <= n; c += kRowLanes)
        for (size_t k = 0; k < kRowLanes; ++k) acc[k] = s[c + k] > acc[k] ? s[c + k] : acc[k];
    for (; c < n; ++c) acc[0] = s[c] > acc[0] ? s[c] : acc[0];
    T m = acc[0];
    for (size_t k = 1; k < kRowLanes; ++k) m = acc[k] > m ? acc[k] : m;
    return m;
}

// s[c] = exp(s[c] - shift) (every s[c] - shift <= 0 or -inf); returns their sum
template <class T>
T exp_sum_row(T* s, size_t n, T shift) {
    T acc[kRowLanes] = {};
    size_t c = 0;
    for (; c + kRowLanes <= n; c += kRowLanes)
        for (size_t k = 0; k < kRowLanes; ++k) {
            const T e = row_exp_le0<T>(s[c + k] - shift);
            s[c + k] = e;
            acc[k] += e;
        }
    for (; c < n; ++c) {
        const T e = row_exp_le0<T>(s[c] - shift);
        s[c] = e;
        acc[0] += e;
    }
    return lanes_sum(acc);
}

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

// s[c] *= v[c] (v given) or f, subnormal products written as 0
template <class T>
void mul_row(T* s, const T* v, size_t n, T f) {
    if (v)
        for (size_t c = 0; c < n; ++c) s[c] = row_flush(s[c] * v[c]);
    else
        for (size_t c = 0; c < n; ++c) s[c] = row_flush(s[c] * f);
}
