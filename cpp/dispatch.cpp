// Run-time choice of the kernel table.  Compiled for the baseline ISA: it only
// asks the CPU (through libgcc's __builtin_cpu_supports, which also checks
// that the OS saves the wider registers) and stores a pointer.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>
#include "simd/kernels.h"
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace hn {
namespace {

// AMX-TILE and AMX-INT8 in CPUID, the tile state enabled in XCR0 by the OS, and (Linux
// 5.16+) this process granted the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM):
// without that grant the first tile instruction raises SIGILL.  Asked once.
bool detect_amx() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__linux__) && !defined(HN_NO_AMX)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25))) return false;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return false;  // XTILECFG, XTILEDATA
    const long kReqXcompPerm = 0x1023, kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
#else
    return false;
#endif
}

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(HN_NO_AVX512VNNI) && !defined(HN_NO_AMX)
// The AMX dot_tile for panels of kMinAmxQueries queries or more: a tile multiplies 16
// query rows whatever their number, and for a few queries the VNNI loop, which streams
// the rows once per query, is as fast (measured: 1 query, 200,000 x 384 rows, 1.3x
// faster on VNNI; panels of 4 about even, of 8 1.2x faster on AMX).
constexpr size_t kMinAmxQueries = 8;
void dot_tile_amx_or_vnni(const ScreenQueries& Q, size_t nq, const uint32_t* X, size_t nx, size_t dp,
                          const ScreenRows& R, float* S, size_t lds) {
    if (nq >= kMinAmxQueries) amx::dot_tile_int8(Q, nq, X, nx, dp, R, S, lds);
    else avx512vnni::table.dot_tile(Q, nq, X, nx, dp, R, S, lds);
}
#endif

std::atomic<bool>& amx_on() {
    static std::atomic<bool> on{[] {
        const char* env = std::getenv("HARDNEG_AMX");
        return !(env && std::strcmp(env, "0") == 0);
    }()};
    return on;
}

std::vector<const Kernels*> detect() {
    std::vector<const Kernels*> v;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        v.push_back(&avx512::table);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        v.push_back(&avx2::table);
#endif
#if defined(__aarch64__)
    v.push_back(&neon::table);
#endif
    v.push_back(&scalar::table);
    return v;
}

const std::vector<const Kernels*>& available() {
    static const std::vector<const Kernels*> v = detect();
    return v;
}

const Kernels* find(const char* name) {
    for (const Kernels* k : available())
        if (std::strcmp(k->name, name) == 0) return k;
    return nullptr;
}

const Kernels* initial() {
    const char* env = std::getenv("HARDNEG_SIMD");
    if (env && *env) {
        if (const Kernels* k = find(env)) return k;
        // An unusable override falls back to the best level rather than aborting
        // the import; hardneg.info() shows what was picked.
    }
    return available().front();
}

std::atomic<const Kernels*>& current() {
    static std::atomic<const Kernels*> k{initial()};
    return k;
}

}  // namespace

const Kernels& kernels() { return *current().load(std::memory_order_relaxed); }

const RowOps<float>& row_ops_f32() {
#if defined(__x86_64__) || defined(_M_X64)
    const Kernels* k = &kernels();
    if (k == &avx512::table) return avx512::rows_f32;
    if (k == &avx2::table) return avx2::rows_f32;
#endif
    return scalar::rows_f32;
}

const ScreenKernels* screen_kernels(ScreenType type) {
#if defined(__x86_64__) || defined(_M_X64)
    if (&kernels() != &avx512::table) return nullptr;
    // what the CPU runs, asked once (in this order: base initialises the CPU model)
    static const bool base = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    }();
    static const bool bf16 = base && __builtin_cpu_supports("avx512bf16");
    static const bool vnni = base && __builtin_cpu_supports("avx512vnni");
#if !defined(HN_NO_AVX512BF16)
    if (type == ScreenType::Bf16 && bf16) return &avx512bf16::table;
#endif
#if !defined(HN_NO_AVX512VNNI)
#if !defined(HN_NO_AMX)
    // the VNNI table with its dot_tile on AMX tiles (built on first use: the VNNI table
    // lives in another file, whose static initialisation may come after this one's)
    static const ScreenKernels amx_int8 = [] {
        ScreenKernels t = avx512vnni::table;
        t.dot_tile = dot_tile_amx_or_vnni;
        t.amx = true;
        return t;
    }();
    if (type == ScreenType::Int8 && vnni && amx_enabled()) return &amx_int8;
#endif
    if (type == ScreenType::Int8 && vnni) return &avx512vnni::table;
#endif
    (void)bf16, (void)vnni;
#endif
    (void)type;
    return nullptr;
}

bool amx_available() {
    static const bool ok = detect_amx();
    return ok;
}
bool cpu_is_amd() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__linux__)
    static const bool amd = [] {
        unsigned a, b, c, d;
        if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
        char v[13];
        std::memcpy(v, &b, 4), std::memcpy(v + 4, &d, 4), std::memcpy(v + 8, &c, 4);
        v[12] = 0;
        return std::strcmp(v, "AuthenticAMD") == 0;
    }();
    return amd;
#else
    return false;
#endif
}
bool amx_enabled() { return amx_on().load(std::memory_order_relaxed) && amx_available(); }
void set_amx(bool on) { amx_on().store(on); }

void set_simd_level(const char* name) {
    const Kernels* k = find(name);
    if (!k) {
        std::string msg = std::string("simd level '") + name + "' is not available on this CPU; choose from:";
        for (const Kernels* a : available()) msg += std::string(" '") + a->name + "'";
        throw std::invalid_argument(msg);
    }
    current().store(k);
}

const char* const* available_simd_levels(size_t* count) {
    static std::vector<const char*> names = [] {
        std::vector<const char*> n;
        for (const Kernels* k : available()) n.push_back(k->name);
        return n;
    }();
    *count = names.size();
    return names.data();
}

}  // namespace hn
