#include "thread_control.h"

#include <atomic>
#include <cstdlib>
#include <initializer_list>
#include <thread>

#include <sched.h>

namespace hn {
namespace {
std::atomic<int> g_threads{0};

// What a call without num_threads would use when nothing was set, as far as C++ can tell
// (the Python layer also caps it by torch's count): HARDNEG_NUM_THREADS, OMP_NUM_THREADS, CPUs.
int env_or_cpus() {
    for (const char* name : {"HARDNEG_NUM_THREADS", "OMP_NUM_THREADS"}) {
        if (const char* v = std::getenv(name)) {
            char* end = nullptr;
            long n = std::strtol(v, &end, 10);
            if (end != v && n > 0 && n <= 1024) return (int)n;
        }
    }
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set) > 0 ? CPU_COUNT(&set) : 1;
#endif
    unsigned n = std::thread::hardware_concurrency();
    return n ? (int)n : 1;
}
}  // namespace

int default_threads() { return g_threads.load(std::memory_order_relaxed); }
void set_default_threads(int n) { g_threads.store(n > 0 ? (n > 1024 ? 1024 : n) : 0, std::memory_order_relaxed); }

}  // namespace hn

extern "C" int hardneg_get_num_threads(void) {
    int n = hn::default_threads();
    return n > 0 ? n : hn::env_or_cpus();
}

extern "C" void hardneg_set_num_threads(int n) { hn::set_default_threads(n); }

#ifndef HARDNEG_VERSION
#define HARDNEG_VERSION "unknown"
#endif
extern "C" const char* hardneg_get_version(void) { return HARDNEG_VERSION; }
