// CUDA inside-mesh kernel: one thread per point, the same predicates as the CPU path
// (inside_mesh.h). Plain nvcc: no ATen/torch headers; the ATen glue is inside_mesh_glue.cpp.
#include <cuda_runtime.h>

#include "../inside_mesh.h"

namespace {

// Points (N, 3) of all meshes, packed; point i belongs to the mesh m with
// offsets[m] <= i < offsets[m + 1] (binary search over the n_meshes + 1 offsets).
template <typename T>
__global__ void inside_mesh_kernel(const T* __restrict__ points, int64_t n, const int64_t* __restrict__ offsets,
                                   int n_meshes, const npk::MeshMeta* __restrict__ metas,
                                   const int32_t* __restrict__ cells, const npk::Entry* __restrict__ entries,
                                   const npk::Tri* __restrict__ tris, const npk::BEdge* __restrict__ bedges,
                                   bool parity, bool* __restrict__ inside, double* __restrict__ winding) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int lo = 0, hi = n_meshes - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= i) lo = mid;
    else hi = mid - 1;
  }
  const double p[3] = {double(points[3 * i]), double(points[3 * i + 1]), double(points[3 * i + 2])};
  int crossings;
  double boundary;
  npk::query_point(metas[lo], cells, entries, tris, bedges, p, parity, &crossings, &boundary);
  const double w = crossings + boundary;
  inside[i] = parity ? (crossings & 1) != 0 : fabs(w) > 0.5;
  if (winding) winding[i] = w;
}

}  // namespace

// Launches the kernel on `stream`; every pointer is device memory (winding may be null).
// points_double selects float64 points, else float32. Returns the cudaError_t of the launch.
extern "C" int np_inside_mesh_cuda_launch(const void* points, int points_double, int64_t n, const int64_t* offsets,
                                          int n_meshes, const npk::MeshMeta* metas, const int32_t* cells,
                                          const npk::Entry* entries, const npk::Tri* tris, const npk::BEdge* bedges,
                                          int parity, bool* inside, double* winding, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const unsigned blocks = (unsigned)((n + threads - 1) / threads);
  if (points_double) {
    inside_mesh_kernel<double><<<blocks, threads, 0, stream>>>(static_cast<const double*>(points), n, offsets,
                                                               n_meshes, metas, cells, entries, tris, bedges,
                                                               parity != 0, inside, winding);
  } else {
    inside_mesh_kernel<float><<<blocks, threads, 0, stream>>>(static_cast<const float*>(points), n, offsets,
                                                              n_meshes, metas, cells, entries, tris, bedges,
                                                              parity != 0, inside, winding);
  }
  return (int)cudaGetLastError();
}
