// ATen glue for the CUDA inside-mesh labeller: allocates the buffers, runs the device build of
// every mesh of the batch (inside_mesh_cuda.cu) and launches the point kernel once. The host reads
// back the batch's sizes once (entry total, boundary-edge counts); for open meshes it downloads
// the boundary edges and builds their hierarchy (build_boundary_tree, as on CPU), a second sync.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <vector>

#include "../inside_mesh_build.h"
#include "../inside_mesh_grid.h"
#include "inside_mesh_cuda.h"


namespace npk {
namespace {

void check(int err, const char* step) {
  TORCH_CHECK(err == 0, "inside_mesh CUDA ", step, " failed: ", cudaGetErrorString((cudaError_t)err));
}

// An uninitialised byte buffer of n items of T on the device (at least one byte).
template <class T>
at::Tensor device_buffer(int64_t n, const at::Device& device) {
  return at::empty({std::max<int64_t>(1, n * (int64_t)sizeof(T))}, at::TensorOptions().dtype(at::kByte).device(device));
}

template <class T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

template <class T>
at::Tensor to_device(const std::vector<T>& host, const at::Device& device) {
  const int64_t bytes = (int64_t)(host.size() * sizeof(T));
  at::Tensor cpu = at::empty({std::max<int64_t>(1, bytes)}, at::TensorOptions().dtype(at::kByte));
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
  const at::Device device = points.device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const size_t n_meshes = vertices.size();
  // inputs on the device; host-known layout: per mesh three count regions and 3 F Tris
  std::vector<at::Tensor> v(n_meshes), f(n_meshes), lat(n_meshes), work(n_meshes);
  std::vector<MeshMeta> metas(n_meshes);
  int64_t n_slots = 0, n_tris = 0;
  for (size_t mi = 0; mi < n_meshes; ++mi) {
    v[mi] = vertices[mi].to(device, at::kDouble).contiguous();
    f[mi] = faces[mi].to(device, at::kLong).contiguous();
    const int64_t nv = v[mi].size(0), nf = f[mi].size(0);
    TORCH_CHECK(nv < (int64_t(1) << 31) && 3 * nf < (int64_t(1) << 31), "inside_mesh: mesh ", mi,
                " too large for the CUDA build (", nv, " vertices, ", nf, " faces)");
    MeshMeta& m = metas[mi];
    std::memset(&m, 0, sizeof(m));
    const int64_t region = grid_capacity(nf) + 1;
    for (int a = 0; a < 3; ++a) {
      m.cells[a] = n_slots + a * region;
      m.tris[a] = n_tris + a * nf;
    }
    n_slots += 3 * region;
    n_tris += 3 * nf;
  }
  n_slots += 1;  // the entry total
  at::Tensor d_metas = to_device(metas, device);
  at::Tensor d_tris = device_buffer<Tri>(n_tris, device);
  at::Tensor d_counts = at::zeros({n_slots}, at::TensorOptions().dtype(at::kLong).device(device));
  at::Tensor d_cells = at::empty({n_slots}, d_counts.options());
  at::Tensor d_sizes = at::empty({(int64_t)n_meshes + 1}, d_counts.options());  // boundary edges per mesh, entries
  for (size_t mi = 0; mi < n_meshes; ++mi) {
    const int64_t nv = v[mi].size(0), nf = f[mi].size(0);
    size_t bytes = 0;
    check(np_inside_mesh_cuda_build_a(nullptr, &bytes, nullptr, nv, nullptr, nf, nullptr, nullptr, nullptr, nullptr,
                                      nullptr, stream), "build sizing");
    work[mi] = device_buffer<char>((int64_t)bytes, device);
    lat[mi] = at::empty({nv, 3}, at::TensorOptions().dtype(at::kInt).device(device));
    check(np_inside_mesh_cuda_build_a(work[mi].data_ptr(), &bytes, v[mi].data_ptr<double>(), nv,
                                      f[mi].data_ptr<int64_t>(), nf, ptr<MeshMeta>(d_metas) + mi,
                                      lat[mi].data_ptr<int32_t>(), ptr<Tri>(d_tris) + metas[mi].tris[0],
                                      d_counts.data_ptr<int64_t>(), d_sizes.data_ptr<int64_t>() + mi, stream),
          "build (count pass)");
  }
  size_t scan_bytes = 0;
  check(np_inside_mesh_cuda_scan(nullptr, &scan_bytes, nullptr, nullptr, n_slots, stream), "scan sizing");
  at::Tensor scan_work = device_buffer<char>((int64_t)scan_bytes, device);
  check(np_inside_mesh_cuda_scan(scan_work.data_ptr(), &scan_bytes, d_counts.data_ptr<int64_t>(),
                                 d_cells.data_ptr<int64_t>(), n_slots, stream), "scan");
  d_sizes.narrow(0, (int64_t)n_meshes, 1).copy_(d_cells.narrow(0, n_slots - 1, 1));
  // the one read-back of the build: sizes and the headers the device completed
  const at::Tensor h_sizes = d_sizes.cpu();
  const at::Tensor h_metas = d_metas.cpu();
  std::memcpy(metas.data(), h_metas.data_ptr(), n_meshes * sizeof(MeshMeta));
  const int64_t n_keys = h_sizes.data_ptr<int64_t>()[n_meshes];
  std::vector<int64_t> bedge_base(n_meshes + 1, 0);
  for (size_t mi = 0; mi < n_meshes; ++mi) bedge_base[mi + 1] = bedge_base[mi] + h_sizes.data_ptr<int64_t>()[mi];
  at::Tensor d_keys_in = device_buffer<uint64_t>(n_keys, device), d_keys = device_buffer<uint64_t>(n_keys, device);
  at::Tensor d_cursor = d_cells.clone();
  at::Tensor d_bedges = device_buffer<BEdge>(bedge_base[n_meshes], device);
  for (size_t mi = 0; mi < n_meshes; ++mi)
    check(np_inside_mesh_cuda_build_b(work[mi].data_ptr(), v[mi].data_ptr<double>(), v[mi].size(0), f[mi].size(0),
                                      ptr<MeshMeta>(d_metas) + mi, lat[mi].data_ptr<int32_t>(),
                                      ptr<Tri>(d_tris) + metas[mi].tris[0], d_cursor.data_ptr<int64_t>(),
                                      ptr<uint64_t>(d_keys_in), ptr<BEdge>(d_bedges) + bedge_base[mi], stream),
          "build (fill pass)");
  if (n_keys > 0) {
    size_t sort_bytes = 0;
    check(np_inside_mesh_cuda_sort(nullptr, &sort_bytes, nullptr, nullptr, n_keys, nullptr, n_slots - 1, stream),
          "sort sizing");
    at::Tensor sort_work = device_buffer<char>((int64_t)sort_bytes, device);
    check(np_inside_mesh_cuda_sort(sort_work.data_ptr(), &sort_bytes, ptr<uint64_t>(d_keys_in), ptr<uint64_t>(d_keys),
                                   n_keys, d_cells.data_ptr<int64_t>(), n_slots - 1, stream), "sort");
  }
  // open meshes: the boundary-edge hierarchy, built on the host from the downloaded edges
  std::vector<BNode> nodes;
  std::vector<int32_t> walk;
  if (bedge_base[n_meshes] > 0) {
    const at::Tensor h_bedges = d_bedges.cpu();
    const BEdge* edges = reinterpret_cast<const BEdge*>(h_bedges.data_ptr());
    for (size_t mi = 0; mi < n_meshes; ++mi) {
      MeshMeta& m = metas[mi];
      m.bedges = bedge_base[mi];
      m.n_bedges = bedge_base[mi + 1] - bedge_base[mi];
      if (m.n_bedges == 0) continue;
      BoundaryTree tree = build_boundary_tree(edges + m.bedges, m.n_bedges);
      m.nodes = (int64_t)nodes.size();
      m.walk = (int64_t)walk.size();
      m.slack = tree.slack;
      nodes.insert(nodes.end(), tree.nodes.begin(), tree.nodes.end());
      walk.insert(walk.end(), tree.walk.begin(), tree.walk.end());
    }
    d_metas = to_device(metas, device);
  }
  const at::Tensor d_nodes = to_device(nodes, device), d_walk = to_device(walk, device);
  const at::Tensor d_offsets = offsets.to(device, at::kLong).contiguous();
  const at::Tensor pts = points.contiguous();
  const int64_t n = pts.size(0);
  at::Tensor inside = at::empty({n}, pts.options().dtype(at::kBool));
  at::Tensor winding = at::empty({want_winding ? n : 0}, pts.options().dtype(at::kDouble));
  check(np_inside_mesh_cuda_launch(pts.data_ptr(), pts.scalar_type() == at::kDouble, n, d_offsets.data_ptr<int64_t>(),
                                   (int)n_meshes, ptr<MeshMeta>(d_metas), d_cells.data_ptr<int64_t>(),
                                   ptr<uint64_t>(d_keys), ptr<Tri>(d_tris), ptr<BEdge>(d_bedges), ptr<BNode>(d_nodes),
                                   ptr<int32_t>(d_walk), parity, inside.data_ptr<bool>(),
                                   want_winding ? winding.data_ptr<double>() : nullptr, stream),
        "launch");
  return {inside, winding};
}

}  // namespace npk
