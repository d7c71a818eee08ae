// The library-wide default thread count, kept in C++ so that threadpoolctl (which talks to shared
// libraries through C symbols) can read and set it like it does OpenBLAS's or OpenMP's.
#pragma once

namespace hn {

// 0 = not set: the Python layer then picks the default (env, CPUs, torch's count).
int default_threads();
void set_default_threads(int n);

}  // namespace hn

// C symbols for threadpoolctl's controller (python/hardneg/_threads.py registers it).
extern "C" {
__attribute__((visibility("default"))) int hardneg_get_num_threads(void);
__attribute__((visibility("default"))) void hardneg_set_num_threads(int n);
__attribute__((visibility("default"))) const char* hardneg_get_version(void);
}
