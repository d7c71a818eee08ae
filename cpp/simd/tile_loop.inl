// The tile loop shared by the x86 kernel files.  Included inside each ISA file's
// anonymous namespace after it has defined MQ, MC and block<RQ, RC, T>, so
// every copy is compiled with that file's flags and stays internal to it (no ODR
// leakage between instruction sets).
//
// Each group of MQ queries (held in L1) sweeps the whole corpus tile, which the
// caller sized to stay in L2: per step MQ query loads from L1 and MC corpus
// loads from L2 feed MQ*MC FMAs.  (Measured: better than sweeping the queries
// for each corpus group, even for small batches.)
using BlockFn = void (*)(const float*, size_t, const void*, size_t, size_t, float*, size_t);

// block<RQ, RC, T> for every edge size (1..MQ queries x 1..MC rows), indexed
// [RQ][RC]: a table built at compile time from the file's MQ and MC.
template <DType T, int RQ, int RC>
constexpr void fill_blocks(BlockFn (&t)[MQ + 1][MC + 1]) {
    t[RQ][RC] = &block<RQ, RC, T>;
    if constexpr (RC > 1)
        fill_blocks<T, RQ, RC - 1>(t);
    else if constexpr (RQ > 1)
        fill_blocks<T, RQ - 1, MC>(t);
}
template <DType T>
struct BlockTable {
    BlockFn t[MQ + 1][MC + 1] = {};
    constexpr BlockTable() { fill_blocks<T, MQ, MC>(t); }
};
template <DType T>
inline BlockFn block_fn(size_t rq, size_t rc) {
    static constexpr BlockTable<T> table{};
    return table.t[rq][rc];
}

template <DType T>
void dot_tile_t(const float* Q, size_t ldq, size_t nq, const void* X, size_t ldx, size_t nx,
                size_t d, float* S, size_t lds) {
    const size_t es = (T == DType::F32) ? 4 : 2;
    const char* xb = static_cast<const char*>(X);
    for (size_t i = 0; i < nq; i += MQ) {
        const size_t rq = nq - i < (size_t)MQ ? nq - i : (size_t)MQ;
        for (size_t j = 0; j < nx; j += MC) {
            const size_t rc = nx - j < (size_t)MC ? nx - j : (size_t)MC;
            block_fn<T>(rq, rc)(Q + i * ldq, ldq, xb + j * ldx * es, ldx, d, S + i * lds + j, lds);
        }
    }
}

void dot_tile(const float* Q, size_t ldq, size_t nq, const void* X, size_t ldx, size_t nx,
              size_t d, DType xt, float* S, size_t lds) {
    switch (xt) {
        case DType::F32: dot_tile_t<DType::F32>(Q, ldq, nq, X, ldx, nx, d, S, lds); break;
        case DType::F16: dot_tile_t<DType::F16>(Q, ldq, nq, X, ldx, nx, d, S, lds); break;
        case DType::BF16: dot_tile_t<DType::BF16>(Q, ldq, nq, X, ldx, nx, d, S, lds); break;
    }
}
