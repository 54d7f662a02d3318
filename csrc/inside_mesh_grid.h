// Steps of the inside-mesh structure build, shared by the CPU builder (cpu/inside_mesh_cpu.cpp)
// and the CUDA build kernels (cuda/inside_mesh_cuda.cu), so that both build the same structure:
//   frame  the mesh's bounding box -> the 2^30 lattice (origin, scale); vertices -> lattice points;
//   faces  one Tri per (axis, face); kListed unless its projected area is zero (never crossed);
//   shape  per axis a power-of-two grid over the (u, v) lattice square, about four faces per cell,
//          shaped like the mesh's projection, at most grid_capacity(F) cells;
//   count  each face adds 1 to every cell its exact conservative rasterisation touches (atomic);
//   scan   exclusive prefix sum of the counts -> cell offsets;
//   fill   each face writes its entry key into those cells at a per-cell cursor (atomic);
//   sort   each cell's keys ascending: amax descending, ties by face index. This is a total order,
//          so the structure does not depend on the order the atomics ran in. count_crossings needs
//          the amax order for its early exit; its count, an exact integer sum, needs no order.
// Layout of one mesh's cell offsets: three regions of grid_capacity(F) + 1 slots (axis a at
// a * (capacity + 1)), then one slot for the total; unused slots count 0.
#pragma once

#include "inside_mesh.h"

namespace npk {

constexpr double kFacesPerCell = 4.0;  // grid density: about four projected faces per cell
constexpr int32_t kMaxLog2Side = 11;   // at most 2048 cells per side

NP_HD int64_t min3(const int32_t x[3]) { return x[0] < x[1] ? (x[0] < x[2] ? x[0] : x[2]) : (x[1] < x[2] ? x[1] : x[2]); }
NP_HD int64_t max3(const int32_t x[3]) { return x[0] > x[1] ? (x[0] > x[2] ? x[0] : x[2]) : (x[1] > x[2] ? x[1] : x[2]); }

// Relaxed atomic fetch-and-add (the count and fill passes run in parallel on CPU and GPU).
NP_HD int64_t atomic_add(int64_t* target, int64_t value) {
#ifdef __CUDA_ARCH__
  return (int64_t)atomicAdd(reinterpret_cast<unsigned long long*>(target), (unsigned long long)value);
#else
  return __atomic_fetch_add(target, value, __ATOMIC_RELAXED);
#endif
}

// Lattice frame from the mesh's bounding box [lo, hi]: origin = lo, each extent maps to kLattice
// (a flat axis borrows the widest extent); near2: (2^10 lattice units of the widest axis)^2.
NP_HD void lattice_frame(const double lo[3], const double hi[3], MeshMeta* m) {
  double widest = 0.0;
  for (int c = 0; c < 3; ++c) widest = dmax(widest, hi[c] - lo[c]);
  for (int c = 0; c < 3; ++c) {
    const double extent = hi[c] - lo[c];
    m->origin[c] = lo[c];
    m->scale[c] = double(kLattice) / (extent > 0 ? extent : (widest > 0 ? widest : 1.0));
  }
  const double near = ldexp(widest > 0 ? widest : 1.0, 10 - kLatticeBits);
  m->near2 = near * near;
}

// Lattice point of vertex x (3 world coordinates), clamped to [0, kLattice].
NP_HD void lattice_vertex(const double* x, const MeshMeta& m, int32_t* out) {
  for (int c = 0; c < 3; ++c) {
    const int64_t q = quantize(x[c], m.origin[c], m.scale[c]);
    out[c] = (int32_t)(q < 0 ? 0 : (q > kLattice ? kLattice : q));
  }
}

// Face f projected along axis a from lattice points lat (V, 3); kListed marks a non-zero
// projected area.
NP_HD Tri make_tri(const int32_t* lat, const int64_t* faces, int64_t f, int a) {
  const int iu = axis_u(a), iv = axis_v(a), hand = axis_hand(a);
  const int32_t* x[3] = {lat + 3 * faces[3 * f], lat + 3 * faces[3 * f + 1], lat + 3 * faces[3 * f + 2]};
  Tri t;
  for (int k = 0; k < 3; ++k) {
    t.u[k] = x[k][iu];
    t.v[k] = x[k][iv];
    t.a[k] = x[k][a];
  }
  const int64_t d = orient2d(t.u[0], t.v[0], t.u[1], t.v[1], t.u[2], t.v[2]);
  // sign of n . (e, e^2, e^3) for the lattice normal n = (B - A) x (C - A): its first non-zero component
  int64_t e1[3], e2[3];
  for (int c = 0; c < 3; ++c) {
    e1[c] = int64_t(x[1][c]) - x[0][c];
    e2[c] = int64_t(x[2][c]) - x[0][c];
  }
  const int64_t n[3] = {e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]};
  const int pert = n[0] != 0 ? sign64(n[0]) : (n[1] != 0 ? sign64(n[1]) : sign64(n[2]));
  // A crossing exactly at the point's height: above iff -(n . delta) / n_a > 0, n_a = hand * d.
  const bool tie_above = -pert * hand * sign64(d) > 0;
  t.flags = (d > 0 ? kPositive : 0) | (tie_above ? kTieAbove : 0) | (d != 0 ? kListed : 0);
  return t;
}

// round(log2 x) for x > 1 (0 otherwise), at most kMaxLog2Side; exact (frexp) on host and device.
NP_HD int32_t clamp_log2(double x) {
  if (!(x > 1.0)) return 0;
  int e;
  const double mant = frexp(x, &e);  // x = mant * 2^e, mant in [0.5, 1)
  const int32_t lg = mant >= 0.70710678118654757 ? e : e - 1;  // no double lies between sqrt(0.5) and this
  return lg < kMaxLog2Side ? lg : kMaxLog2Side;
}

// Grid of one axis for n_tris listed faces and the mesh's world extents (eu, ev) in the plane:
// log2 of the cells per side, about n_tris / kFacesPerCell cells shaped like the extents.
NP_HD void grid_shape(int64_t n_tris, double eu, double ev, int32_t* lg_u, int32_t* lg_v) {
  const double n_target = dmax(1.0, n_tris / kFacesPerCell);
  *lg_u = clamp_log2(eu > 0 && ev > 0 ? sqrt(n_target * eu / ev) : (eu > 0 ? n_target : 1.0));
  *lg_v = clamp_log2(n_target / double(int64_t(1) << *lg_u));
}

// Upper bound on side_u * side_v for a mesh of n_faces faces: with t = log2(n_target), lg_v is 0
// or at most round(t - lg_u) <= t - lg_u + 1/2, so lg_u + lg_v <= max(kMaxLog2Side, t + 1/2).
NP_HD int64_t grid_capacity(int64_t n_faces) {
  const double n_target = dmax(1.0, n_faces / kFacesPerCell);
  int64_t capacity = int64_t(1) << kMaxLog2Side;
  while (capacity < 1.4142135623730951 * n_target && capacity < (int64_t(1) << (2 * kMaxLog2Side))) capacity <<= 1;
  return capacity;
}

// Writes axis a's grid into m from its listed-face count and the mesh's extents (world, per coordinate).
NP_HD void set_grid(MeshMeta* m, int a, int64_t n_tris, const double extent[3]) {
  int32_t lg_u, lg_v;
  grid_shape(n_tris, extent[axis_u(a)], extent[axis_v(a)], &lg_u, &lg_v);
  m->side_u[a] = 1 << lg_u;
  m->side_v[a] = 1 << lg_v;
  m->shift_u[a] = kLatticeBits - lg_u;
  m->shift_v[a] = kLatticeBits - lg_v;
}

// Calls fn(cell) for every cell of axis a whose closed lattice rectangle meets the closed projected
// face: the cells of the face's bounding box that no edge's outer half-plane contains entirely.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class Fn>
NP_HD void for_each_cell(const Tri& t, const MeshMeta& m, int a, Fn&& fn) {
  const int32_t shift_u = m.shift_u[a], shift_v = m.shift_v[a];
  const int64_t last_u = m.side_u[a] - 1, last_v = m.side_v[a] - 1;
  const int sd = (t.flags & kPositive) ? 1 : -1;
  int64_t cu0 = min3(t.u) >> shift_u, cu1 = max3(t.u) >> shift_u;
  int64_t cv0 = min3(t.v) >> shift_v, cv1 = max3(t.v) >> shift_v;
  cu0 = cu0 < last_u ? cu0 : last_u;
  cu1 = cu1 < last_u ? cu1 : last_u;
  cv0 = cv0 < last_v ? cv0 : last_v;
  cv1 = cv1 < last_v ? cv1 : last_v;
  // One row or column of cells: the face's integer bounding box lies in its band, and the face
  // (convex, spanning that box) meets every cell of it, as the edge tests would find.
  const bool band = cu0 == cu1 || cv0 == cv1;
  for (int64_t cv = cv0; cv <= cv1; ++cv) {
    const int64_t vlo = cv << shift_v, vhi = cv == last_v ? kLattice : ((cv + 1) << shift_v) - 1;
    for (int64_t cu = cu0; cu <= cu1; ++cu) {
      const int64_t ulo = cu << shift_u, uhi = cu == last_u ? kLattice : ((cu + 1) << shift_u) - 1;
      bool overlap = true;
      if (band) {
        fn(cv * m.side_u[a] + cu);
        continue;
      }
      for (int i = 0; i < 3 && overlap; ++i) {
        const int j = (i + 1) % 3;
        const int64_t du = int64_t(t.u[j]) - t.u[i], dv = int64_t(t.v[j]) - t.v[i];
        // the corner that maximises sd * orient(P_i, P_j, X)
        const int64_t xv = sd * du > 0 ? vhi : vlo, xu = sd * dv < 0 ? uhi : ulo;
        overlap = sd * orient2d(t.u[i], t.v[i], t.u[j], t.v[j], xu, xv) >= 0;
      }
      if (overlap) fn(cv * m.side_u[a] + cu);
    }
  }
}

// Count pass for one listed face of axis a: counts (the axis' region) += 1 per touched cell.
NP_HD void count_face(const Tri& t, const MeshMeta& m, int a, int64_t* counts) {
  for_each_cell(t, m, a, [&](int64_t c) { atomic_add(counts + c, 1); });
}

// Fill pass for listed face f of axis a: its key into every touched cell at that cell's cursor.
NP_HD void fill_face(const Tri& t, int32_t f, const MeshMeta& m, int a, int64_t* cursor, uint64_t* keys) {
  const uint64_t key = entry_key(max3(t.a), f);
  for_each_cell(t, m, a, [&](int64_t c) { keys[atomic_add(cursor + c, 1)] = key; });
}

// Open-boundary edge from vertex i to vertex j (lower -> higher merged index) with multiplicity k.
NP_HD BEdge make_bedge(const double* vertices, const int32_t* lat, int64_t i, int64_t j, int32_t k) {
  BEdge b;
  for (int c = 0; c < 3; ++c) {
    b.p[c] = vertices[3 * i + c];
    b.q[c] = vertices[3 * j + c];
    b.lp[c] = lat[3 * i + c];
    b.lq[c] = lat[3 * j + c];
  }
  b.k = k;
  b.pad = 0;
  return b;
}

}  // namespace npk
