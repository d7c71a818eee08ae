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

namespace hn {
namespace {

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
    if (type == ScreenType::Int8 && vnni) return &avx512vnni::table;
#endif
    (void)bf16, (void)vnni;
#endif
    (void)type;
    return nullptr;
}

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
