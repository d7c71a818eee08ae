// The extension module hardneg._core.  Each bind_*.cpp file registers one
// module's functions; bindings only convert and validate, kernels live in cpp/.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_info(py::module_& m);
void bind_topk(py::module_& m);
void bind_bm25(py::module_& m);
void bind_metrics(py::module_& m);
void bind_losses(py::module_& m);

PYBIND11_MODULE(_core, m) {
    m.doc() = "hardneg C++ kernels (private: use the hardneg package)";
    bind_info(m);
    bind_topk(m);
    bind_bm25(m);
    bind_metrics(m);
    bind_losses(m);
}
