// Python module npkernels._C: the inside-mesh labeller (CPU, and CUDA when built with NP_WITH_CUDA).
#include <torch/extension.h>

#include <vector>

namespace npk {
std::vector<at::Tensor> inside_mesh_cpu(const std::vector<at::Tensor>& vertices, const std::vector<at::Tensor>& faces,
                                        const at::Tensor& points, const at::Tensor& offsets, bool parity,
                                        bool want_winding);
#ifdef NP_WITH_CUDA
std::vector<at::Tensor> inside_mesh_cuda(const std::vector<at::Tensor>& vertices, const std::vector<at::Tensor>& faces,
                                         const at::Tensor& points, const at::Tensor& offsets, bool parity,
                                         bool want_winding);
#endif

// Routes by the device of `points`.
std::vector<at::Tensor> inside_mesh(const std::vector<at::Tensor>& vertices, const std::vector<at::Tensor>& faces,
                                    const at::Tensor& points, const at::Tensor& offsets, bool parity,
                                    bool want_winding) {
  if (points.is_cuda()) {
#ifdef NP_WITH_CUDA
    return inside_mesh_cuda(vertices, faces, points, offsets, parity, want_winding);
#else
    TORCH_CHECK(false, "npkernels._C was built without CUDA support");
#endif
  }
  return inside_mesh_cpu(vertices, faces, points, offsets, parity, want_winding);
}

bool has_cuda() {
#ifdef NP_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace npk

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("inside_mesh", &npk::inside_mesh, py::arg("vertices"), py::arg("faces"), py::arg("points"),
        py::arg("offsets"), py::arg("parity"), py::arg("want_winding"), py::call_guard<py::gil_scoped_release>(),
        "Label points[offsets[m]:offsets[m+1]] against mesh m (vertices[m] (V,3) float, faces[m] (F,3) int64).\n"
        "Returns [inside (N,) bool, winding (N,) float64 or empty]. Inputs must be validated by the caller.");
  m.def("has_cuda", &npk::has_cuda, "True when the module was compiled with the CUDA kernel.");
}
