// ATen glue for the CUDA inside-mesh kernel: builds every mesh's structure on the host (the same
// builder as the CPU path), packs them into one set of device arrays, and launches once.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstring>
#include <vector>

#include "../inside_mesh_build.h"

extern "C" int np_inside_mesh_cuda_launch(const void* points, int points_double, int64_t n, const int64_t* offsets,
                                          int n_meshes, const npk::MeshMeta* metas, const int32_t* cells,
                                          const npk::Entry* entries, const npk::Tri* tris, const npk::BEdge* bedges,
                                          int parity, bool* inside, double* winding, cudaStream_t stream);

namespace npk {
namespace {

template <class T>
at::Tensor to_device(const std::vector<T>& host, const at::Device& device) {
  const int64_t bytes = (int64_t)(host.size() * sizeof(T));
  at::Tensor cpu = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  if (bytes) std::memcpy(cpu.data_ptr(), host.data(), bytes);
  return cpu.to(device);
}

}  // namespace

std::vector<at::Tensor> inside_mesh_cuda(const std::vector<at::Tensor>& vertices, const std::vector<at::Tensor>& faces,
                                         const at::Tensor& points, const at::Tensor& offsets, bool parity,
                                         bool want_winding) {
  TORCH_CHECK(points.is_cuda() && points.dim() == 2 && points.size(1) == 3, "points must be a CUDA (N, 3) tensor");
  TORCH_CHECK(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
              "points must be float32 or float64");
  TORCH_CHECK(vertices.size() == faces.size() && offsets.numel() == (int64_t)vertices.size() + 1,
              "one faces tensor and one offset per mesh expected");
  const c10::cuda::CUDAGuard guard(points.device());
  std::vector<MeshMeta> metas;
  std::vector<int32_t> cells;
  std::vector<Entry> entries;
  std::vector<Tri> tris;
  std::vector<BEdge> bedges;
  for (size_t mi = 0; mi < vertices.size(); ++mi) {
    const at::Tensor v = vertices[mi].to(at::kCPU, at::kDouble).contiguous();
    const at::Tensor f = faces[mi].to(at::kCPU, at::kLong).contiguous();
    HostMesh mesh = build_mesh(v.data_ptr<double>(), v.size(0), f.data_ptr<int64_t>(), f.size(0));
    for (int a = 0; a < 3; ++a) {  // rebase the mesh's offsets onto the packed arrays
      mesh.meta.cells[a] += (int64_t)cells.size();
      mesh.meta.entries[a] += (int64_t)entries.size();
      mesh.meta.tris[a] += (int64_t)tris.size();
    }
    mesh.meta.bedges += (int64_t)bedges.size();
    metas.push_back(mesh.meta);
    cells.insert(cells.end(), mesh.cells.begin(), mesh.cells.end());
    entries.insert(entries.end(), mesh.entries.begin(), mesh.entries.end());
    tris.insert(tris.end(), mesh.tris.begin(), mesh.tris.end());
    bedges.insert(bedges.end(), mesh.bedges.begin(), mesh.bedges.end());
  }
  const at::Device device = points.device();
  const at::Tensor d_metas = to_device(metas, device), d_cells = to_device(cells, device);
  const at::Tensor d_entries = to_device(entries, device), d_tris = to_device(tris, device);
  const at::Tensor d_bedges = to_device(bedges, device);
  const at::Tensor d_offsets = offsets.to(device, at::kLong).contiguous();
  const at::Tensor pts = points.contiguous();
  const int64_t n = pts.size(0);
  at::Tensor inside = at::empty({n}, pts.options().dtype(at::kBool));
  at::Tensor winding = at::empty({want_winding ? n : 0}, pts.options().dtype(at::kDouble));
  const int err = np_inside_mesh_cuda_launch(
      pts.data_ptr(), pts.scalar_type() == at::kDouble, n, d_offsets.data_ptr<int64_t>(), (int)metas.size(),
      reinterpret_cast<const MeshMeta*>(d_metas.data_ptr()), reinterpret_cast<const int32_t*>(d_cells.data_ptr()),
      reinterpret_cast<const Entry*>(d_entries.data_ptr()), reinterpret_cast<const Tri*>(d_tris.data_ptr()),
      reinterpret_cast<const BEdge*>(d_bedges.data_ptr()), parity, inside.data_ptr<bool>(),
      want_winding ? winding.data_ptr<double>() : nullptr, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "inside_mesh CUDA launch failed: ", cudaGetErrorString((cudaError_t)err));
  return {inside, winding};
}

}  // namespace npk
