// Kernels::wsum as plain loops, for the tables without an intrinsics version: included by
// dot_scalar.cpp, dot_avx2.cpp and dot_neon.cpp inside their anonymous namespace, so each
// copy is vectorised by the compiler with its file's flags (along p: one row of Y at a time).
// Out rows are built one at a time: for t, Out[i, :] += A[i, t] * Y[t, :].
inline void wsum_loop(const float* A, size_t ar, size_t ac, size_t m, size_t k, const float* Y, size_t ldy,
                      size_t d, float* Out, size_t ldo, bool add) {
    for (size_t i = 0; i < m; ++i) {
        float* o = Out + i * ldo;
        if (!add)
            for (size_t p = 0; p < d; ++p) o[p] = 0.f;
        for (size_t t = 0; t < k; ++t) {
            const float a = A[i * ar + t * ac];
            const float* y = Y + t * ldy;
            for (size_t p = 0; p < d; ++p) o[p] += a * y[p];
        }
    }
}
