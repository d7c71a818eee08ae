#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <thread>
#include <vector>

#include "simd/kernels.h"

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
}
