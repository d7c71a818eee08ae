// The screen kernels' epilogue, shared by every file that computes screened scores
// (screen_avx512bf16.cpp, screen_avx512vnni.cpp, screen_amx.cpp): included inside each
// file's anonymous namespace, compiled with that file's AVX-512 flags.

// The stored value for query i and the 16 rows of group g, from their screened
// scores k: ub = k * xn + (a_i rho + b_i del + e0_i).
inline void store_ub(float* dst, __m512 k, const ScreenQueries& q, int i, const ScreenRows& r, int g) {
    if (r.xn) k = _mm512_mul_ps(k, _mm512_loadu_ps(r.xn + 16 * g));
    if (r.rho) {
        __m512 e = _mm512_fmadd_ps(_mm512_set1_ps(q.a[i]), _mm512_loadu_ps(r.rho + 16 * g), _mm512_set1_ps(q.e0[i]));
        e = _mm512_fmadd_ps(_mm512_set1_ps(q.b[i]), _mm512_loadu_ps(r.del + 16 * g), e);
        k = _mm512_add_ps(k, e);
    }
    _mm512_storeu_ps(dst, k);
}
