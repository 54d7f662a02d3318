// Python module npkernels._C: the inside-mesh labeller (CPU, and CUDA when built with NP_WITH_CUDA).
#include <torch/extension.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "inside_mesh_build.h"

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

// n items of type T as an (n, width) tensor of dtype (width * dtype size = sizeof(T)).
template <class T>
at::Tensor to_tensor(const T* data, int64_t n, int64_t width, at::ScalarType dtype) {
  at::Tensor out = at::empty({n, width}, at::TensorOptions().dtype(dtype));
  if (n) std::memcpy(out.data_ptr(), data, n * sizeof(T));
  return out;
}

// For tests and diagnostics: the structure build_mesh builds for one mesh (vertices (V, 3) float,
// faces (F, 3) int64, validated), as tensors; see inside_mesh.h for the fields. three_pass: the
// device's build algorithm run on the host (see build_mesh).
std::map<std::string, at::Tensor> inside_mesh_structure(const at::Tensor& vertices, const at::Tensor& faces,
                                                        bool three_pass) {
  const at::Tensor v = vertices.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor f = faces.to(at::kCPU, at::kLong).contiguous();
  const HostMesh mesh = build_mesh(v.data_ptr<double>(), v.size(0), f.data_ptr<int64_t>(), f.size(0), three_pass);
  const MeshMeta& m = mesh.meta;
  int32_t grid[12];
  for (int a = 0; a < 3; ++a) {
    const int32_t row[4] = {m.shift_u[a], m.shift_v[a], m.side_u[a], m.side_v[a]};
    std::memcpy(grid + 4 * a, row, sizeof(row));
  }
  const int64_t nb = (int64_t)mesh.bedges.size(), nn = (int64_t)mesh.nodes.size();
  at::Tensor b_world = at::empty({nb, 6}, at::kDouble), b_lattice = at::empty({nb, 6}, at::kInt);
  at::Tensor b_k = at::empty({nb}, at::kInt);
  auto bw = b_world.accessor<double, 2>();
  auto bl = b_lattice.accessor<int32_t, 2>();
  for (int64_t i = 0; i < nb; ++i) {
    const BEdge& e = mesh.bedges[i];
    for (int c = 0; c < 3; ++c) {
      bw[i][c] = e.p[c];
      bw[i][3 + c] = e.q[c];
      bl[i][c] = e.lp[c];
      bl[i][3 + c] = e.lq[c];
    }
    b_k.data_ptr<int32_t>()[i] = e.k;
  }
  at::Tensor n_geometry = at::empty({nn, 13}, at::kDouble), n_links = at::empty({nn, 5}, at::kInt);
  auto ng = n_geometry.accessor<double, 2>();
  auto nl = n_links.accessor<int32_t, 2>();
  for (int64_t i = 0; i < nn; ++i) {
    const BNode& nd = mesh.nodes[i];
    for (int c = 0; c < 3; ++c) {
      ng[i][c] = nd.lo[c];
      ng[i][3 + c] = nd.hi[c];
      ng[i][6 + c] = nd.s[c];
      ng[i][9 + c] = nd.e[c];
    }
    ng[i][12] = nd.area;
    const int32_t links[5] = {nd.first, nd.count, nd.left, nd.right, nd.open};
    for (int c = 0; c < 5; ++c) nl[i][c] = links[c];
  }
  return {
      {"origin", to_tensor(m.origin, 3, 1, at::kDouble).view(-1)},
      {"scale", to_tensor(m.scale, 3, 1, at::kDouble).view(-1)},
      {"grid", to_tensor(grid, 12, 1, at::kInt).view({3, 4})},  // per axis: shift_u, shift_v, side_u, side_v
      {"cell_offset", to_tensor(m.cells, 3, 1, at::kLong).view(-1)},
      {"cells", to_tensor(mesh.cells.data(), (int64_t)mesh.cells.size(), 1, at::kLong).view(-1)},
      {"keys", to_tensor(mesh.keys.data(), (int64_t)mesh.keys.size(), 1, at::kLong).view(-1)},  // < 2^62
      {"tris", to_tensor(mesh.tris.data(), (int64_t)mesh.tris.size(), 10, at::kInt)},  // u[3], v[3], a[3], flags
      {"bedge_world", b_world},      // p, q
      {"bedge_lattice", b_lattice},  // lp, lq
      {"bedge_k", b_k},
      {"node_geometry", n_geometry},  // lo, hi, s, e, area
      {"node_links", n_links},        // first, count, left, right, open
      {"walk", to_tensor(mesh.walk.data(), (int64_t)mesh.walk.size(), 1, at::kInt).view(-1)},
      {"slack", at::full({}, m.slack, at::kDouble)},
  };
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
  m.def("inside_mesh_structure", &npk::inside_mesh_structure, py::arg("vertices"), py::arg("faces"),
        py::arg("three_pass") = false,
        "For tests: the CPU-built labeller structure of one mesh as a dict of tensors (see csrc/inside_mesh.h).");
}
