// CPU inside-mesh labeller: structure build (also used by the CUDA glue) and the point loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <utility>

#include "../inside_mesh_build.h"

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

struct AxisGrid {
  int32_t shift_u = kLatticeBits, shift_v = kLatticeBits, side_u = 1, side_v = 1;
  std::vector<int32_t> cells;
  std::vector<Entry> entries;
  std::vector<Tri> tris;
};

constexpr double kFacesPerCell = 4.0;  // grid density: about four projected faces per cell
constexpr int32_t kMaxLog2Side = 11;

int32_t clamp_log2(double x) {
  const double lg = x > 1.0 ? std::round(std::log2(x)) : 0.0;
  return (int32_t)std::min<double>(lg, kMaxLog2Side);
}

// Calls fn(cell) for every cell whose closed lattice rectangle meets the closed projected face:
// cells of the face's bounding box that no edge's outer half-plane contains entirely.
template <class Fn>
void for_each_cell(const Tri& t, const AxisGrid& g, Fn&& fn) {
  const int sd = (t.flags & kPositive) ? 1 : -1;
  const int64_t umin = std::min({t.u[0], t.u[1], t.u[2]}), umax = std::max({t.u[0], t.u[1], t.u[2]});
  const int64_t vmin = std::min({t.v[0], t.v[1], t.v[2]}), vmax = std::max({t.v[0], t.v[1], t.v[2]});
  const int64_t last_u = g.side_u - 1, last_v = g.side_v - 1;
  const int64_t cu0 = std::min(umin >> g.shift_u, last_u), cu1 = std::min(umax >> g.shift_u, last_u);
  const int64_t cv0 = std::min(vmin >> g.shift_v, last_v), cv1 = std::min(vmax >> g.shift_v, last_v);
  for (int64_t cv = cv0; cv <= cv1; ++cv) {
    const int64_t vlo = cv << g.shift_v, vhi = cv == last_v ? kLattice : ((cv + 1) << g.shift_v) - 1;
    for (int64_t cu = cu0; cu <= cu1; ++cu) {
      const int64_t ulo = cu << g.shift_u, uhi = cu == last_u ? kLattice : ((cu + 1) << g.shift_u) - 1;
      bool overlap = true;
      for (int i = 0; i < 3 && overlap; ++i) {
        const int j = (i + 1) % 3;
        const int64_t du = int64_t(t.u[j]) - t.u[i], dv = int64_t(t.v[j]) - t.v[i];
        // the corner that maximises sd * orient(P_i, P_j, X)
        const int64_t xv = sd * du > 0 ? vhi : vlo, xu = sd * dv < 0 ? uhi : ulo;
        overlap = sd * orient2d(t.u[i], t.v[i], t.u[j], t.v[j], xu, xv) >= 0;
      }
      if (overlap) fn(cv * g.side_u + cu);
    }
  }
}

// extent: the mesh's world extent per coordinate, to shape the cells like the projected mesh.
AxisGrid build_axis(const std::vector<int32_t>& lat, const int64_t* faces, int64_t nf,
                    const std::vector<int8_t>& normal_pert, const double extent[3], int a) {
  const int iu = axis_u(a), iv = axis_v(a), hand = axis_hand(a);
  AxisGrid g;
  g.tris.reserve(nf);
  for (int64_t f = 0; f < nf; ++f) {
    Tri t;
    for (int k = 0; k < 3; ++k) {
      const int32_t* x = &lat[3 * faces[3 * f + k]];
      t.u[k] = x[iu];
      t.v[k] = x[iv];
      t.a[k] = x[a];
    }
    const int64_t d = orient2d(t.u[0], t.v[0], t.u[1], t.v[1], t.u[2], t.v[2]);
    if (d == 0) continue;  // zero projected area: never crossed by a perturbed ray
    // A crossing exactly at the point's height: above iff -(n . delta) / n_a > 0, n_a = hand * d.
    const bool tie_above = -normal_pert[f] * hand * sign64(d) > 0;
    t.flags = (d > 0 ? kPositive : 0) | (tie_above ? kTieAbove : 0);
    g.tris.push_back(t);
  }
  const double n_target = std::max(1.0, g.tris.size() / kFacesPerCell);
  const double eu = extent[iu], ev = extent[iv];
  const int32_t lg_u = clamp_log2(eu > 0 && ev > 0 ? std::sqrt(n_target * eu / ev) : (eu > 0 ? n_target : 1.0));
  const int32_t lg_v = clamp_log2(n_target / double(int64_t(1) << lg_u));
  g.side_u = 1 << lg_u;
  g.side_v = 1 << lg_v;
  g.shift_u = kLatticeBits - lg_u;
  g.shift_v = kLatticeBits - lg_v;
  const int64_t n_cells = int64_t(g.side_u) * g.side_v;
  // Rasterise once into (cell, entry) pairs, then counting-sort the pairs into the cell lists.
  std::vector<int32_t> pair_cell;
  std::vector<Entry> pair_entry;
  pair_cell.reserve(4 * g.tris.size());
  pair_entry.reserve(4 * g.tris.size());
  g.cells.assign(n_cells + 1, 0);
  for (int32_t i = 0; i < (int32_t)g.tris.size(); ++i) {
    const Tri& t = g.tris[i];
    const Entry e{i, std::max({t.a[0], t.a[1], t.a[2]})};
    for_each_cell(t, g, [&](int64_t c) {
      pair_cell.push_back((int32_t)c);
      pair_entry.push_back(e);
      ++g.cells[c + 1];
    });
  }
  for (int64_t c = 0; c < n_cells; ++c) g.cells[c + 1] += g.cells[c];
  g.entries.resize(g.cells[n_cells]);
  std::vector<int32_t> cursor(g.cells.begin(), g.cells.end() - 1);
  for (size_t k = 0; k < pair_cell.size(); ++k) g.entries[cursor[pair_cell[k]]++] = pair_entry[k];
  // Each list is in face order; a stable sort by amax descending gives (amax desc, face asc).
  for (int64_t c = 0; c < n_cells; ++c) {
    Entry* first = g.entries.data() + g.cells[c];
    const int32_t n = g.cells[c + 1] - g.cells[c];
    if (n > 32) {
      std::stable_sort(first, first + n, [](const Entry& x, const Entry& y) { return x.amax > y.amax; });
      continue;
    }
    for (int32_t k = 1; k < n; ++k) {
      const Entry e = first[k];
      int32_t j = k;
      for (; j > 0 && first[j - 1].amax < e.amax; --j) first[j] = first[j - 1];
      first[j] = e;
    }
  }
  return g;
}

// Open-boundary edges: directed edges between vertices merged by lattice position, counted +1
// along (lower id -> higher id) and -1 against it; a non-zero sum k is a boundary edge (lower -> higher).
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
      if (k != 0) {
        BEdge b{};
        const int64_t j = e->first;
        for (int c = 0; c < 3; ++c) {
          b.p[c] = vertices[3 * i + c];
          b.q[c] = vertices[3 * j + c];
          b.lp[c] = lat[3 * i + c];
          b.lq[c] = lat[3 * j + c];
        }
        b.k = k;
        out.push_back(b);
      }
      e = run;
    }
  }
  return out;
}

}  // namespace

HostMesh build_mesh(const double* vertices, int64_t nv, const int64_t* faces, int64_t nf) {
  HostMesh mesh;
  MeshMeta& m = mesh.meta;
  double lo[3], hi[3], extent[3], widest = 0.0;
  for (int c = 0; c < 3; ++c) {
    lo[c] = hi[c] = vertices[c];
    for (int64_t i = 1; i < nv; ++i) {
      lo[c] = std::min(lo[c], vertices[3 * i + c]);
      hi[c] = std::max(hi[c], vertices[3 * i + c]);
    }
    extent[c] = hi[c] - lo[c];
    widest = std::max(widest, extent[c]);
  }
  for (int c = 0; c < 3; ++c) {
    m.origin[c] = lo[c];
    m.scale[c] = double(kLattice) / (extent[c] > 0 ? extent[c] : (widest > 0 ? widest : 1.0));
  }
  std::vector<int32_t> lat(3 * nv);
  for (int64_t i = 0; i < nv; ++i)
    for (int c = 0; c < 3; ++c)
      lat[3 * i + c] = (int32_t)std::min<int64_t>(std::max<int64_t>(quantize(vertices[3 * i + c], m.origin[c], m.scale[c]), 0), kLattice);
  // sign of n . (e, e^2, e^3) for the lattice normal n = (B - A) x (C - A): its first non-zero component
  std::vector<int8_t> normal_pert(nf);
  for (int64_t f = 0; f < nf; ++f) {
    int64_t e1[3], e2[3];
    for (int c = 0; c < 3; ++c) {
      e1[c] = int64_t(lat[3 * faces[3 * f + 1] + c]) - lat[3 * faces[3 * f] + c];
      e2[c] = int64_t(lat[3 * faces[3 * f + 2] + c]) - lat[3 * faces[3 * f] + c];
    }
    const int64_t n[3] = {e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]};
    normal_pert[f] = (int8_t)(n[0] != 0 ? sign64(n[0]) : n[1] != 0 ? sign64(n[1]) : sign64(n[2]));
  }
  AxisGrid grids[3];
  dynamic_for(0, 4, 1, [&](int64_t task, int64_t) {
    if (task < 3) grids[task] = build_axis(lat, faces, nf, normal_pert, extent, (int)task);
    else mesh.bedges = boundary_edges(vertices, lat, nv, faces, nf);
  });
  for (int a = 0; a < 3; ++a) {
    m.shift_u[a] = grids[a].shift_u;
    m.shift_v[a] = grids[a].shift_v;
    m.side_u[a] = grids[a].side_u;
    m.side_v[a] = grids[a].side_v;
    m.cells[a] = (int64_t)mesh.cells.size();
    m.entries[a] = (int64_t)mesh.entries.size();
    m.tris[a] = (int64_t)mesh.tris.size();
    mesh.cells.insert(mesh.cells.end(), grids[a].cells.begin(), grids[a].cells.end());
    mesh.entries.insert(mesh.entries.end(), grids[a].entries.begin(), grids[a].entries.end());
    mesh.tris.insert(mesh.tris.end(), grids[a].tris.begin(), grids[a].tris.end());
  }
  m.bedges = 0;
  m.n_bedges = (int64_t)mesh.bedges.size();
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
    const HostMesh mesh = build_mesh(v.data_ptr<double>(), v.size(0), f.data_ptr<int64_t>(), f.size(0));
    const int64_t begin = offs.data_ptr<int64_t>()[mi], end = offs.data_ptr<int64_t>()[mi + 1];
    AT_DISPATCH_FLOATING_TYPES(pts.scalar_type(), "inside_mesh_cpu", [&] {
      const scalar_t* p = pts.data_ptr<scalar_t>();
      dynamic_for(begin, end, 4096, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double q[3] = {double(p[3 * i]), double(p[3 * i + 1]), double(p[3 * i + 2])};
          int crossings;
          double boundary;
          query_point(mesh.meta, mesh.cells.data(), mesh.entries.data(), mesh.tris.data(), mesh.bedges.data(), q,
                      parity, &crossings, &boundary);
          const double w = crossings + boundary;
          in_ptr[i] = parity ? (crossings & 1) != 0 : fabs(w) > 0.5;
          if (w_ptr) w_ptr[i] = w;
        }
      });
    });
  }
  return {inside, winding};
}

}  // namespace npk
