// CPU inside-mesh labeller: the structure build (build_mesh) and the point loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <utility>

#include "../inside_mesh_build.h"
#include "../inside_mesh_grid.h"

namespace npk {
namespace {

// Runs fn(b, e) over [begin, end) in chunks pulled from a shared counter by at::get_num_threads()
// workers. at::parallel_for splits statically, so one thread sharing its core with another process
// would hold up the whole call; here the other threads take over its share.
template <class Fn>
void dynamic_for(int64_t begin, int64_t end, int64_t chunk, const Fn& fn) {
  if (begin >= end) return;
  std::atomic<int64_t> next(begin);
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), (end - begin + chunk - 1) / chunk);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t b = next.fetch_add(chunk); b < end; b = next.fetch_add(chunk)) fn(b, std::min(b + chunk, end));
  });
}

// Sorts one cell list ascending (insertion sort for the usual short lists).
void sort_cell(uint64_t* first, int64_t n) {
  if (n > 32) {
    std::sort(first, first + n);
    return;
  }
  for (int64_t k = 1; k < n; ++k) {
    const uint64_t key = first[k];
    int64_t j = k;
    for (; j > 0 && first[j - 1] > key; --j) first[j] = first[j - 1];
    first[j] = key;
  }
}

// The device's build on the host, for tests: the shared count / scan / fill / sort steps in
// parallel over faces (atomic counters). Slower on CPU than build_axis: it rasterises twice and
// needs four parallel regions, which a loaded machine stretches (benchmarks/RESULTS.md).
void build_grid_three_pass(const std::vector<int32_t>& lat, const int64_t* faces, int64_t nf,
                           const double extent[3], HostMesh& mesh) {
  MeshMeta& m = mesh.meta;
  const int64_t region = grid_capacity(nf) + 1;
  mesh.tris.resize(3 * nf);
  std::atomic<int64_t> listed[3] = {0, 0, 0};
  dynamic_for(0, 3 * nf, 4096, [&](int64_t b, int64_t e) {
    int64_t n[3] = {0, 0, 0};
    for (int64_t i = b; i < e; ++i) {
      mesh.tris[i] = make_tri(lat.data(), faces, i % nf, int(i / nf));
      n[i / nf] += (mesh.tris[i].flags & kListed) != 0;
    }
    for (int a = 0; a < 3; ++a) listed[a] += n[a];
  });
  for (int a = 0; a < 3; ++a) {
    set_grid(&m, a, listed[a], extent);
    TORCH_CHECK(int64_t(m.side_u[a]) * m.side_v[a] < region, "inside_mesh: grid exceeds its capacity");
    m.cells[a] = a * region;
    m.tris[a] = a * nf;
  }
  auto for_listed = [&](auto&& pass) {
    dynamic_for(0, 3 * nf, 2048, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        if (mesh.tris[i].flags & kListed) pass(mesh.tris[i], int32_t(i % nf), int(i / nf));
    });
  };
  // count into slot c + 1 of each region, so that the inclusive scan yields the exclusive offsets
  mesh.cells.assign(3 * region + 1, 0);
  for_listed([&](const Tri& t, int32_t, int a) { count_face(t, m, a, mesh.cells.data() + m.cells[a] + 1); });
  std::partial_sum(mesh.cells.begin(), mesh.cells.end(), mesh.cells.begin());
  mesh.keys.resize(mesh.cells.back());
  std::vector<int64_t> cursor(mesh.cells);
  for_listed([&](const Tri& t, int32_t f, int a) { fill_face(t, f, m, a, cursor.data() + m.cells[a], mesh.keys.data()); });
  dynamic_for(0, 3 * region, 1024, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) sort_cell(mesh.keys.data() + mesh.cells[c], mesh.cells[c + 1] - mesh.cells[c]);
  });
}

// One axis of the CPU build: faces rasterised once (for_each_cell) into (cell, key) pairs,
// counting-sorted into the cell lists (offsets relative to the axis), each list sorted. The same
// structure as build_grid_three_pass.
struct AxisGrid {
  std::vector<int64_t> cells;  // grid_capacity(F) + 1 offsets
  std::vector<uint64_t> keys;
};
// tris: the axis' nf faces, written here; sets the axis' grid in m.
AxisGrid build_axis(const std::vector<int32_t>& lat, const int64_t* faces, int64_t nf, const double extent[3],
                    int a, Tri* tris, MeshMeta& m) {
  int64_t listed = 0;
  for (int64_t f = 0; f < nf; ++f) {
    tris[f] = make_tri(lat.data(), faces, f, a);
    listed += (tris[f].flags & kListed) != 0;
  }
  set_grid(&m, a, listed, extent);
  TORCH_CHECK(int64_t(m.side_u[a]) * m.side_v[a] <= grid_capacity(nf), "inside_mesh: grid exceeds its capacity");
  AxisGrid g;
  g.cells.assign(grid_capacity(nf) + 1, 0);
  std::vector<std::pair<int32_t, uint64_t>> pairs;
  pairs.reserve(4 * listed);
  for (int64_t f = 0; f < nf; ++f) {
    const Tri& t = tris[f];
    if (!(t.flags & kListed)) continue;
    const uint64_t key = entry_key(max3(t.a), int32_t(f));
    for_each_cell(t, m, a, [&](int64_t c) {
      pairs.push_back({int32_t(c), key});
      ++g.cells[c + 1];
    });
  }
  std::partial_sum(g.cells.begin(), g.cells.end(), g.cells.begin());
  g.keys.resize(pairs.size());
  std::vector<int64_t> cursor(g.cells.begin(), g.cells.end() - 1);
  for (const auto& [c, key] : pairs) g.keys[cursor[c]++] = key;
  for (size_t c = 0; c + 1 < g.cells.size(); ++c) sort_cell(g.keys.data() + g.cells[c], g.cells[c + 1] - g.cells[c]);
  return g;
}

// Open-boundary edges: directed edges between vertices merged by lattice position, counted +1
// along (lower id -> higher id) and -1 against it; a non-zero sum k is a boundary edge (lower ->
// higher), listed by (lower id, higher id).
std::vector<BEdge> boundary_edges(const double* vertices, const std::vector<int32_t>& lat, int64_t nv,
                                  const int64_t* faces, int64_t nf) {
  std::vector<int64_t> order(nv);
  std::iota(order.begin(), order.end(), 0);
  auto key = [&](int64_t i) { return std::make_tuple(lat[3 * i], lat[3 * i + 1], lat[3 * i + 2]); };
  std::sort(order.begin(), order.end(), [&](int64_t i, int64_t j) {
    return key(i) != key(j) ? key(i) < key(j) : i < j;
  });
  std::vector<int64_t> rep(nv);
  for (int64_t r = 0; r < nv; ++r)
    rep[order[r]] = (r > 0 && key(order[r]) == key(order[r - 1])) ? rep[order[r - 1]] : order[r];
  // Bucket the directed edges by their lower end (counting sort), then merge each small bucket.
  std::vector<int32_t> start(nv + 1, 0);
  auto edge = [&](int64_t f, int k) { return std::make_pair(rep[faces[3 * f + k]], rep[faces[3 * f + (k + 1) % 3]]); };
  for (int64_t f = 0; f < nf; ++f)
    for (int k = 0; k < 3; ++k) {
      const auto [i, j] = edge(f, k);
      if (i != j) ++start[std::min(i, j) + 1];
    }
  for (int64_t i = 0; i < nv; ++i) start[i + 1] += start[i];
  std::vector<std::pair<int64_t, int32_t>> bucket(start[nv]);  // (higher end, +1 along lower -> higher)
  std::vector<int32_t> cursor(start.begin(), start.end() - 1);
  for (int64_t f = 0; f < nf; ++f)
    for (int k = 0; k < 3; ++k) {
      const auto [i, j] = edge(f, k);
      if (i != j) bucket[cursor[std::min(i, j)]++] = {std::max(i, j), i < j ? 1 : -1};
    }
  std::vector<BEdge> out;
  for (int64_t i = 0; i < nv; ++i) {
    auto first = bucket.begin() + start[i], last = bucket.begin() + start[i + 1];
    std::sort(first, last);
    for (auto e = first; e != last;) {
      int32_t k = 0;
      auto run = e;
      for (; run != last && run->first == e->first; ++run) k += run->second;
      if (k != 0) out.push_back(make_bedge(vertices, lat.data(), i, e->first, k));
      e = run;
    }
  }
  return out;
}

}  // namespace

HostMesh build_mesh(const double* vertices, int64_t nv, const int64_t* faces, int64_t nf, bool three_pass) {
  HostMesh mesh{};
  MeshMeta& m = mesh.meta;
  double lo[3], hi[3], extent[3];
  for (int c = 0; c < 3; ++c) {
    lo[c] = hi[c] = vertices[c];
    for (int64_t i = 1; i < nv; ++i) {
      lo[c] = std::min(lo[c], vertices[3 * i + c]);
      hi[c] = std::max(hi[c], vertices[3 * i + c]);
    }
    extent[c] = hi[c] - lo[c];
  }
  lattice_frame(lo, hi, &m);
  std::vector<int32_t> lat(3 * nv);
  for (int64_t i = 0; i < nv; ++i) lattice_vertex(vertices + 3 * i, m, &lat[3 * i]);
  if (three_pass) {
    build_grid_three_pass(lat, faces, nf, extent, mesh);
    mesh.bedges = boundary_edges(vertices, lat, nv, faces, nf);
  } else {
    // one task per axis and one for the boundary edges
    AxisGrid grids[3];
    mesh.tris.resize(3 * nf);
    dynamic_for(0, 4, 1, [&](int64_t task, int64_t) {
      if (task < 3) grids[task] = build_axis(lat, faces, nf, extent, int(task), mesh.tris.data() + task * nf, m);
      else mesh.bedges = boundary_edges(vertices, lat, nv, faces, nf);
    });
    const int64_t region = grid_capacity(nf) + 1;
    mesh.cells.resize(3 * region + 1);
    mesh.keys.resize(grids[0].keys.size() + grids[1].keys.size() + grids[2].keys.size());
    int64_t base = 0;
    for (int a = 0; a < 3; ++a) {
      m.cells[a] = a * region;
      m.tris[a] = a * nf;
      for (int64_t c = 0; c < region; ++c) mesh.cells[m.cells[a] + c] = base + grids[a].cells[c];
      std::copy(grids[a].keys.begin(), grids[a].keys.end(), mesh.keys.begin() + base);
      base += (int64_t)grids[a].keys.size();
    }
    mesh.cells[3 * region] = base;
  }
  m.bedges = 0;
  m.n_bedges = (int64_t)mesh.bedges.size();
  m.nodes = m.walk = 0;
  m.slack = 0.0;
  if (m.n_bedges > 0) {
    BoundaryTree tree = build_boundary_tree(mesh.bedges.data(), m.n_bedges);
    mesh.nodes = std::move(tree.nodes);
    mesh.walk = std::move(tree.walk);
    m.slack = tree.slack;
  }
  return mesh;
}

// Labels points[offsets[m]:offsets[m+1]] against mesh m. Returns {inside (N,) bool, winding
// (N,) float64 or an empty tensor}; vertices (V_m, 3) float, faces (F_m, 3) int64, validated.
std::vector<at::Tensor> inside_mesh_cpu(const std::vector<at::Tensor>& vertices, const std::vector<at::Tensor>& faces,
                                        const at::Tensor& points, const at::Tensor& offsets, bool parity,
                                        bool want_winding) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3, "points must be (N, 3)");
  TORCH_CHECK(vertices.size() == faces.size() && offsets.numel() == (int64_t)vertices.size() + 1,
              "one faces tensor and one offset per mesh expected");
  const at::Tensor pts = points.contiguous();
  const at::Tensor offs = offsets.to(at::kCPU, at::kLong).contiguous();
  const int64_t n = pts.size(0);
  at::Tensor inside = at::empty({n}, pts.options().dtype(at::kBool));
  at::Tensor winding = at::empty({want_winding ? n : 0}, pts.options().dtype(at::kDouble));
  bool* in_ptr = inside.data_ptr<bool>();
  double* w_ptr = want_winding ? winding.data_ptr<double>() : nullptr;
  for (size_t mi = 0; mi < vertices.size(); ++mi) {
    const at::Tensor v = vertices[mi].to(at::kCPU, at::kDouble).contiguous();
    const at::Tensor f = faces[mi].to(at::kCPU, at::kLong).contiguous();
    const HostMesh mesh = build_mesh(v.data_ptr<double>(), v.size(0), f.data_ptr<int64_t>(), f.size(0), false);
    const int64_t begin = offs.data_ptr<int64_t>()[mi], end = offs.data_ptr<int64_t>()[mi + 1];
    AT_DISPATCH_FLOATING_TYPES(pts.scalar_type(), "inside_mesh_cpu", [&] {
      const scalar_t* p = pts.data_ptr<scalar_t>();
      dynamic_for(begin, end, 4096, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double q[3] = {double(p[3 * i]), double(p[3 * i + 1]), double(p[3 * i + 2])};
          in_ptr[i] = label_point(mesh.meta, mesh.cells.data(), mesh.keys.data(), mesh.tris.data(), mesh.bedges.data(),
                                  mesh.nodes.data(), mesh.walk.data(), q, parity, w_ptr ? w_ptr + i : nullptr);
        }
      });
    });
  }
  return {inside, winding};
}

}  // namespace npk
