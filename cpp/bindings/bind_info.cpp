#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <thread>
#include <vector>

#include "simd/kernels.h"
#include "thread_control.h"

namespace py = pybind11;

void bind_info(py::module_& m) {
    m.def("simd_level", [] { return std::string(hn::kernels().name); },
          "Name of the SIMD kernel table in use.");
    m.def("available_simd_levels", [] {
        size_t n = 0;
        const char* const* names = hn::available_simd_levels(&n);
        return std::vector<std::string>(names, names + n);
    });
    m.def("set_simd_level", [](const std::string& name) { hn::set_simd_level(name.c_str()); }, py::arg("name"));
    m.def("hardware_concurrency", [] { return (int)std::thread::hardware_concurrency(); });
    // the library-wide default set by hn.set_num_threads or threadpoolctl (0: not set)
    m.def("default_threads", [] { return hn::default_threads(); });
    m.def("set_default_threads", [](int n) { hn::set_default_threads(n); }, py::arg("n"));
}
