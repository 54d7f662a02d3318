// CUDA inside-mesh labeller: the structure build on the device and the point kernel, with the
// steps and predicates the CPU path uses (inside_mesh_grid.h, inside_mesh.h). Plain nvcc: no
// ATen/torch headers; the ATen glue (inside_mesh_glue.cpp) allocates every buffer and calls the
// extern "C" launchers declared in inside_mesh_cuda.h.
//
// Build of one batch: per mesh, build_a (bounding box -> lattice frame, lattice points, one Tri per
// (axis, face) and the listed counts, grid shape, the count pass; and the open-boundary edges up to
// their count: vertices merged by lattice position through two stable radix sorts, directed edges
// between merged vertices sorted and summed by key, non-zero sums flagged and scanned); then one
// scan of all meshes' counts into cell offsets; (the host reads the entry total and the boundary
// edge counts); per mesh, build_b (fill pass, boundary edges gathered in (lower, higher) order,
// as the CPU lists them); one segmented sort of all cell lists. The boundary-edge hierarchy of an
// open mesh is built on the host from the downloaded edges (build_boundary_tree, as on CPU).
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_reduce.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include "../inside_mesh_grid.h"
#include "inside_mesh_cuda.h"

namespace {

using npk::BEdge;
using npk::MeshMeta;
using npk::Tri;

constexpr int kThreads = 256;
constexpr unsigned long long kNoEdge = ~0ull;  // key of a directed edge between merged vertices

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return (unsigned)(b < 1 ? 1 : (b > 65535 * 32 ? 65535 * 32 : b));  // the kernels loop with a grid stride
}

#define NP_GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

#define NP_TRY(expr)                              \
  do {                                            \
    const cudaError_t np_err = (expr);            \
    if (np_err != cudaSuccess) return (int)np_err; \
  } while (0)

// Finite doubles as unsigned integers of the same order (for atomicMin / atomicMax).
__device__ unsigned long long order_key(double x) {
  const unsigned long long u = (unsigned long long)__double_as_longlong(x);
  return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}
__device__ double order_value(unsigned long long k) {
  return __longlong_as_double((long long)((k >> 63) ? (k & 0x7fffffffffffffffull) : ~k));
}

struct MaxOp {
  __device__ int32_t operator()(int32_t x, int32_t y) const { return x > y ? x : y; }
};
struct SumOp {
  __device__ int32_t operator()(int32_t x, int32_t y) const { return x + y; }
};

// ---------------------------------------------------------------- grid kernels

// box: 3 order keys of the minima (preset to ~0), then 3 of the maxima (preset to 0).
__global__ void box_kernel(const double* __restrict__ v, int64_t nv, unsigned long long* box) {
  double lo[3] = {HUGE_VAL, HUGE_VAL, HUGE_VAL}, hi[3] = {-HUGE_VAL, -HUGE_VAL, -HUGE_VAL};
  NP_GRID_STRIDE(i, nv) {
    for (int c = 0; c < 3; ++c) {
      lo[c] = npk::dmin(lo[c], v[3 * i + c]);
      hi[c] = npk::dmax(hi[c], v[3 * i + c]);
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1)
    for (int c = 0; c < 3; ++c) {
      lo[c] = npk::dmin(lo[c], __shfl_down_sync(0xffffffffu, lo[c], offset));
      hi[c] = npk::dmax(hi[c], __shfl_down_sync(0xffffffffu, hi[c], offset));
    }
  if ((threadIdx.x & 31) == 0)
    for (int c = 0; c < 3; ++c) {
      atomicMin(&box[c], order_key(lo[c]));
      atomicMax(&box[3 + c], order_key(hi[c]));
    }
}

__global__ void frame_kernel(const unsigned long long* box, MeshMeta* meta) {
  double lo[3], hi[3];
  for (int c = 0; c < 3; ++c) {
    lo[c] = order_value(box[c]);
    hi[c] = order_value(box[3 + c]);
  }
  npk::lattice_frame(lo, hi, meta);
}

__global__ void lattice_kernel(const double* __restrict__ v, int64_t nv, const MeshMeta* meta, int32_t* lat) {
  NP_GRID_STRIDE(i, nv) npk::lattice_vertex(v + 3 * i, *meta, lat + 3 * i);
}

// tris (3 nf): axis a's faces at a * nf; listed: per axis, the faces with a non-zero projected area.
__global__ void tri_kernel(const int32_t* __restrict__ lat, const int64_t* __restrict__ faces, int64_t nf, Tri* tris,
                           unsigned long long* listed) {
  __shared__ unsigned long long block_listed[3];
  if (threadIdx.x < 3) block_listed[threadIdx.x] = 0;
  __syncthreads();
  NP_GRID_STRIDE(i, 3 * nf) {
    const int a = int(i / nf);
    const Tri t = npk::make_tri(lat, faces, i - a * nf, a);
    tris[i] = t;
    if (t.flags & npk::kListed) atomicAdd(&block_listed[a], 1ull);
  }
  __syncthreads();
  if (threadIdx.x < 3 && block_listed[threadIdx.x]) atomicAdd(&listed[threadIdx.x], block_listed[threadIdx.x]);
}

__global__ void shape_kernel(const unsigned long long* box, const unsigned long long* listed, MeshMeta* meta) {
  double extent[3];
  for (int c = 0; c < 3; ++c) extent[c] = order_value(box[3 + c]) - order_value(box[c]);
  for (int a = 0; a < 3; ++a) npk::set_grid(meta, a, (int64_t)listed[a], extent);
}

// counts: the batch's, each cell's count one slot on (so that an inclusive scan gives offsets).
__global__ void count_kernel(const Tri* __restrict__ tris, int64_t nf, const MeshMeta* meta, int64_t* counts) {
  const MeshMeta& m = *meta;
  NP_GRID_STRIDE(i, 3 * nf) {
    const int a = int(i / nf);
    const Tri t = tris[i];
    if (t.flags & npk::kListed) npk::count_face(t, m, a, counts + m.cells[a] + 1);
  }
}

__global__ void fill_kernel(const Tri* __restrict__ tris, int64_t nf, const MeshMeta* meta, int64_t* cursor,
                            uint64_t* keys) {
  const MeshMeta& m = *meta;
  NP_GRID_STRIDE(i, 3 * nf) {
    const int a = int(i / nf);
    const Tri t = tris[i];
    if (t.flags & npk::kListed) npk::fill_face(t, int32_t(i - a * nf), m, a, cursor + m.cells[a], keys);
  }
}

// ---------------------------------------------------------------- boundary-edge kernels

__global__ void z_key_kernel(const int32_t* __restrict__ lat, int64_t nv, uint32_t* key, int32_t* index) {
  NP_GRID_STRIDE(i, nv) {
    key[i] = (uint32_t)lat[3 * i + 2];
    index[i] = (int32_t)i;
  }
}

__global__ void xy_key_kernel(const int32_t* __restrict__ lat, const int32_t* __restrict__ order, int64_t nv,
                              uint64_t* key) {
  NP_GRID_STRIDE(r, nv) {
    const int32_t* x = lat + 3 * int64_t(order[r]);
    key[r] = ((uint64_t)x[0] << 31) | (uint64_t)x[1];
  }
}

// head[r]: r where the sorted vertex r starts a run of equal lattice positions, else 0.
__global__ void head_kernel(const int32_t* __restrict__ lat, const int32_t* __restrict__ order, int64_t nv,
                            int32_t* head) {
  NP_GRID_STRIDE(r, nv) {
    bool start = r == 0;
    if (!start) {
      const int32_t *x = lat + 3 * int64_t(order[r]), *y = lat + 3 * int64_t(order[r - 1]);
      start = x[0] != y[0] || x[1] != y[1] || x[2] != y[2];
    }
    head[r] = start ? (int32_t)r : 0;
  }
}

// rep: the smallest index with the vertex's lattice position (runs are sorted by index).
__global__ void rep_kernel(const int32_t* __restrict__ order, const int32_t* __restrict__ start, int64_t nv,
                           int32_t* rep) {
  NP_GRID_STRIDE(r, nv) rep[order[r]] = order[start[r]];
}

// Directed edge k of face f between merged vertices i -> j: key (min << 32 | max), +1 along
// lower -> higher, -1 against; kNoEdge when i == j.
__global__ void edge_kernel(const int32_t* __restrict__ rep, const int64_t* __restrict__ faces, int64_t nf,
                            uint64_t* key, int32_t* sign) {
  NP_GRID_STRIDE(e, 3 * nf) {
    const int64_t f = e / 3, k = e - 3 * f;
    const int32_t i = rep[faces[3 * f + k]], j = rep[faces[3 * f + (k + 1) % 3]];
    key[e] = i == j ? kNoEdge : ((uint64_t)(i < j ? i : j) << 32) | (uint64_t)(i < j ? j : i);
    sign[e] = i == j ? 0 : (i < j ? 1 : -1);
  }
}

// flag[r] = 1 for a summed edge with a non-zero multiplicity; flag[n] = 0 (n = 3 nf).
__global__ void flag_kernel(const uint64_t* __restrict__ key, const int32_t* __restrict__ sum,
                            const int64_t* __restrict__ n_runs, int64_t n, int64_t* flag) {
  NP_GRID_STRIDE(r, n + 1) flag[r] = r < *n_runs && key[r] != kNoEdge && sum[r] != 0;
}

__global__ void bedge_kernel(const double* __restrict__ v, const int32_t* __restrict__ lat,
                             const uint64_t* __restrict__ key, const int32_t* __restrict__ sum,
                             const int64_t* __restrict__ flag, const int64_t* __restrict__ position, int64_t n,
                             BEdge* out) {
  NP_GRID_STRIDE(r, n) {
    if (flag[r]) out[position[r]] = npk::make_bedge(v, lat, int64_t(key[r] >> 32), int64_t(key[r] & 0xffffffffu), sum[r]);
  }
}

// ---------------------------------------------------------------- scratch of build_a / build_b

struct Carver {
  char* base;
  size_t size = 0;
  template <class T>
  T* take(int64_t n) {
    size = (size + 255) & ~size_t(255);
    T* p = base ? reinterpret_cast<T*>(base + size) : nullptr;
    size += size_t(n) * sizeof(T);
    return p;
  }
};

struct Scratch {
  unsigned long long *box, *listed;
  uint32_t *z_in, *z_out;
  uint64_t *xy_in, *xy_out, *edge_key_in, *edge_key_out, *run_key;
  int32_t *index, *order_z, *order, *head, *start, *rep, *sign_in, *sign_out, *run_sum;
  int64_t *n_runs, *flag, *position;
  void* temp;
  size_t temp_bytes;
};

// Carves build_a's scratch for nv vertices and nf faces from base (nullptr: sizes only); returns its size.
size_t carve(char* base, int64_t nv, int64_t nf, Scratch* s) {
  Carver c{base};
  const int64_t ne = 3 * nf;
  s->box = c.take<unsigned long long>(6);
  s->listed = c.take<unsigned long long>(3);
  s->z_in = c.take<uint32_t>(nv);
  s->z_out = c.take<uint32_t>(nv);
  s->xy_in = c.take<uint64_t>(nv);
  s->xy_out = c.take<uint64_t>(nv);
  s->index = c.take<int32_t>(nv);
  s->order_z = c.take<int32_t>(nv);
  s->order = c.take<int32_t>(nv);
  s->head = c.take<int32_t>(nv);
  s->start = c.take<int32_t>(nv);
  s->rep = c.take<int32_t>(nv);
  s->edge_key_in = c.take<uint64_t>(ne);
  s->edge_key_out = c.take<uint64_t>(ne);
  s->sign_in = c.take<int32_t>(ne);
  s->sign_out = c.take<int32_t>(ne);
  s->run_key = c.take<uint64_t>(ne);
  s->run_sum = c.take<int32_t>(ne);
  s->n_runs = c.take<int64_t>(1);
  s->flag = c.take<int64_t>(ne + 1);
  s->position = c.take<int64_t>(ne + 1);
  size_t bytes = 0, need = 0;  // the largest CUB scratch of the calls below
  cub::DeviceRadixSort::SortPairs(nullptr, need, s->z_in, s->z_out, s->index, s->order_z, nv, 0, 31);
  bytes = need > bytes ? need : bytes;
  cub::DeviceRadixSort::SortPairs(nullptr, need, s->xy_in, s->xy_out, s->order_z, s->order, nv, 0, 62);
  bytes = need > bytes ? need : bytes;
  cub::DeviceScan::InclusiveScan(nullptr, need, s->head, s->start, MaxOp(), nv);
  bytes = need > bytes ? need : bytes;
  cub::DeviceRadixSort::SortPairs(nullptr, need, s->edge_key_in, s->edge_key_out, s->sign_in, s->sign_out, ne);
  bytes = need > bytes ? need : bytes;
  cub::DeviceReduce::ReduceByKey(nullptr, need, s->edge_key_out, s->run_key, s->sign_out, s->run_sum, s->n_runs,
                                 SumOp(), ne);
  bytes = need > bytes ? need : bytes;
  cub::DeviceScan::ExclusiveSum(nullptr, need, s->flag, s->position, ne + 1);
  bytes = need > bytes ? need : bytes;
  s->temp_bytes = bytes;
  s->temp = c.take<char>((int64_t)bytes);
  return c.size;
}

}  // namespace

extern "C" int np_inside_mesh_cuda_build_a(void* work, size_t* work_bytes, const double* vertices, int64_t nv,
                                           const int64_t* faces, int64_t nf, MeshMeta* meta, int32_t* lat,
                                           Tri* tris, int64_t* counts, int64_t* n_bedges, cudaStream_t stream) {
  Scratch s;
  const size_t bytes = carve(static_cast<char*>(work), nv, nf, &s);
  if (!work) {
    *work_bytes = bytes;
    return (int)cudaSuccess;
  }
  const int64_t ne = 3 * nf;
  NP_TRY(cudaMemsetAsync(s.box, 0xff, 3 * sizeof(unsigned long long), stream));
  NP_TRY(cudaMemsetAsync(s.box + 3, 0, 3 * sizeof(unsigned long long), stream));
  NP_TRY(cudaMemsetAsync(s.listed, 0, 3 * sizeof(unsigned long long), stream));
  box_kernel<<<blocks_for(nv), kThreads, 0, stream>>>(vertices, nv, s.box);
  frame_kernel<<<1, 1, 0, stream>>>(s.box, meta);
  lattice_kernel<<<blocks_for(nv), kThreads, 0, stream>>>(vertices, nv, meta, lat);
  tri_kernel<<<blocks_for(3 * nf), kThreads, 0, stream>>>(lat, faces, nf, tris, s.listed);
  shape_kernel<<<1, 1, 0, stream>>>(s.box, s.listed, meta);
  count_kernel<<<blocks_for(3 * nf), kThreads, 0, stream>>>(tris, nf, meta, counts);
  NP_TRY(cudaGetLastError());
  // open-boundary edges
  size_t temp = s.temp_bytes;
  z_key_kernel<<<blocks_for(nv), kThreads, 0, stream>>>(lat, nv, s.z_in, s.index);
  NP_TRY(cub::DeviceRadixSort::SortPairs(s.temp, temp, s.z_in, s.z_out, s.index, s.order_z, nv, 0, 31, stream));
  xy_key_kernel<<<blocks_for(nv), kThreads, 0, stream>>>(lat, s.order_z, nv, s.xy_in);
  temp = s.temp_bytes;
  NP_TRY(cub::DeviceRadixSort::SortPairs(s.temp, temp, s.xy_in, s.xy_out, s.order_z, s.order, nv, 0, 62, stream));
  head_kernel<<<blocks_for(nv), kThreads, 0, stream>>>(lat, s.order, nv, s.head);
  temp = s.temp_bytes;
  NP_TRY(cub::DeviceScan::InclusiveScan(s.temp, temp, s.head, s.start, MaxOp(), nv, stream));
  rep_kernel<<<blocks_for(nv), kThreads, 0, stream>>>(s.order, s.start, nv, s.rep);
  edge_kernel<<<blocks_for(ne), kThreads, 0, stream>>>(s.rep, faces, nf, s.edge_key_in, s.sign_in);
  temp = s.temp_bytes;
  NP_TRY(cub::DeviceRadixSort::SortPairs(s.temp, temp, s.edge_key_in, s.edge_key_out, s.sign_in, s.sign_out, ne, 0,
                                         64, stream));
  temp = s.temp_bytes;
  NP_TRY(cub::DeviceReduce::ReduceByKey(s.temp, temp, s.edge_key_out, s.run_key, s.sign_out, s.run_sum, s.n_runs,
                                        SumOp(), ne, stream));
  flag_kernel<<<blocks_for(ne + 1), kThreads, 0, stream>>>(s.run_key, s.run_sum, s.n_runs, ne, s.flag);
  temp = s.temp_bytes;
  NP_TRY(cub::DeviceScan::ExclusiveSum(s.temp, temp, s.flag, s.position, ne + 1, stream));
  NP_TRY(cudaMemcpyAsync(n_bedges, s.position + ne, sizeof(int64_t), cudaMemcpyDeviceToDevice, stream));
  return (int)cudaGetLastError();
}

extern "C" int np_inside_mesh_cuda_scan(void* work, size_t* work_bytes, const int64_t* counts, int64_t* cells,
                                        int64_t n, cudaStream_t stream) {
  if (!work) return (int)cub::DeviceScan::InclusiveSum(nullptr, *work_bytes, counts, cells, n, stream);
  return (int)cub::DeviceScan::InclusiveSum(work, *work_bytes, counts, cells, n, stream);
}

extern "C" int np_inside_mesh_cuda_build_b(void* work, const double* vertices, int64_t nv, int64_t nf,
                                           const MeshMeta* meta, const int32_t* lat, const Tri* tris,
                                           int64_t* cursor, uint64_t* keys, BEdge* bedges, cudaStream_t stream) {
  Scratch s;
  carve(static_cast<char*>(work), nv, nf, &s);
  fill_kernel<<<blocks_for(3 * nf), kThreads, 0, stream>>>(tris, nf, meta, cursor, keys);
  bedge_kernel<<<blocks_for(3 * nf), kThreads, 0, stream>>>(vertices, lat, s.run_key, s.run_sum, s.flag, s.position,
                                                            3 * nf, bedges);
  return (int)cudaGetLastError();
}

extern "C" int np_inside_mesh_cuda_sort(void* work, size_t* work_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                                        int64_t n_keys, const int64_t* cells, int64_t n_cells, cudaStream_t stream) {
  return (int)cub::DeviceSegmentedSort::SortKeys(work, *work_bytes, keys_in, keys_out, n_keys, n_cells, cells,
                                                 cells + 1, stream);
}

namespace {

// Points (N, 3) of all meshes, packed; point i belongs to the mesh m with
// offsets[m] <= i < offsets[m + 1] (binary search over the n_meshes + 1 offsets).
template <typename T>
__global__ void inside_mesh_kernel(const T* __restrict__ points, int64_t n, const int64_t* __restrict__ offsets,
                                   int n_meshes, const MeshMeta* __restrict__ metas, const int64_t* __restrict__ cells,
                                   const uint64_t* __restrict__ keys, const Tri* __restrict__ tris,
                                   const BEdge* __restrict__ bedges, const npk::BNode* __restrict__ nodes,
                                   const int32_t* __restrict__ walk, bool parity, bool* __restrict__ inside,
                                   double* __restrict__ winding) {
  NP_GRID_STRIDE(i, n) {
    int lo = 0, hi = n_meshes - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (offsets[mid] <= i) lo = mid;
      else hi = mid - 1;
    }
    const double p[3] = {double(points[3 * i]), double(points[3 * i + 1]), double(points[3 * i + 2])};
    inside[i] = npk::label_point(metas[lo], cells, keys, tris, bedges, nodes, walk, p, parity,
                                 winding ? winding + i : nullptr);
  }
}

}  // namespace

extern "C" int np_inside_mesh_cuda_launch(const void* points, int points_double, int64_t n, const int64_t* offsets,
                                          int n_meshes, const MeshMeta* metas, const int64_t* cells,
                                          const uint64_t* keys, const Tri* tris, const BEdge* bedges,
                                          const npk::BNode* nodes, const int32_t* walk, int parity, bool* inside,
                                          double* winding, cudaStream_t stream) {
  if (n == 0) return (int)cudaSuccess;
  if (points_double) {
    inside_mesh_kernel<double><<<blocks_for(n), kThreads, 0, stream>>>(
        static_cast<const double*>(points), n, offsets, n_meshes, metas, cells, keys, tris, bedges, nodes, walk,
        parity != 0, inside, winding);
  } else {
    inside_mesh_kernel<float><<<blocks_for(n), kThreads, 0, stream>>>(
        static_cast<const float*>(points), n, offsets, n_meshes, metas, cells, keys, tris, bedges, nodes, walk,
        parity != 0, inside, winding);
  }
  return (int)cudaGetLastError();
}
