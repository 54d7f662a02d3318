// Exact inside-mesh predicates and the per-point query, shared by the CPU and CUDA kernels.
//
// Winding number by the antipodal decomposition along an axis-aligned ray (+a, a in {x, y, z}):
//   w(p) = sum over faces crossed by the ray of sign(n_a)                 (exact integer)
//        + sum over open-boundary edges (A, B, k) of k * atan2(num, den) / (2 pi)   (0 when closed)
// with x1 = -e_a, num = x1 . (A-p) x (B-p), den = |A-p||B-p| + |B-p| x1.(A-p) + |A-p| x1.(B-p)
// + (A-p).(B-p) (van Oosterom-Strackee half solid angle of the spherical triangle (x1, A, B)).
//
// Exactness: vertices and points are snapped to a 2^30 integer lattice of the mesh bounding box
// (per axis; `quantize`), and every predicate is evaluated exactly in int64/__int128 arithmetic.
// A zero is resolved by one fixed symbolic perturbation of the query point, p + (e, e^2, e^3)
// along (x, y, z), the same for every axis, so each crossing counts exactly once, the integer
// part is independent of the chosen axis, and labels are bit-identical on CPU and GPU. Points
// exactly on the surface therefore get a deterministic (unspecified) label. The sign of `num`
// is taken from the same exact edge predicate, so the atan2 branch cut agrees with the crossing
// count. No ATen or torch headers here: the file compiles with plain nvcc.
#pragma once

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define NP_HD __host__ __device__ __forceinline__
#else
#define NP_HD inline
#endif

namespace npk {

constexpr int32_t kLatticeBits = 30;
constexpr int64_t kLattice = int64_t(1) << kLatticeBits;  // vertices snap to [0, kLattice]

// One face projected along axis a: lattice coordinates (u, v) in the plane, a along the ray.
struct Tri {
  int32_t u[3], v[3], a[3];
  int32_t flags;  // kPositive: projected orientation D > 0; kTieAbove: a crossing at the point's height counts
};
enum : int32_t { kPositive = 1, kTieAbove = 2 };

// Cell-list entry: face index (into the axis' Tri array) and the face's maximum a coordinate.
struct Entry {
  int32_t tri, amax;
};

// Open-boundary edge P -> Q with net multiplicity k: world coordinates and lattice coordinates.
struct BEdge {
  double p[3], q[3];
  int32_t lp[3], lq[3];
  int32_t k, pad;
};

// Per-mesh header. Per axis a: a (side_u x side_v) grid over the (u, v) lattice square with
// cells of 2^shift_u x 2^shift_v lattice units (shaped like the mesh, not the square); `cells`
// holds side_u * side_v + 1 offsets into the axis' entries (cell (cu, cv) at cv * side_u + cu),
// entries sorted by amax descending inside each cell; then the axis' Tri array. All offsets
// index the packed arrays.
struct MeshMeta {
  double origin[3], scale[3];  // lattice = rint((x - origin) * scale)
  int32_t shift_u[3], shift_v[3], side_u[3], side_v[3];
  int64_t cells[3], entries[3], tris[3];
  int64_t bedges, n_bedges;
};

NP_HD int axis_u(int a) { return a == 0 ? 1 : 0; }   // x -> (y, z), y -> (x, z), z -> (x, y)
NP_HD int axis_v(int a) { return a == 2 ? 1 : 2; }
NP_HD int axis_hand(int a) { return a == 1 ? -1 : 1; }  // (u, v, a) right-handed?

NP_HD int sign64(int64_t x) { return (x > 0) - (x < 0); }

// Lattice coordinate of a world coordinate, clamped to [-1, kLattice + 1] (outside the mesh box
// every predicate gives the same answer as for the true coordinate).
NP_HD int64_t quantize(double x, double origin, double scale) {
  double t = (x - origin) * scale;
  t = fmin(fmax(t, -1.0), (double)(kLattice + 1));
  return (int64_t)rint(t);
}

// orient(P, Q, X) = (Q - P) x (X - P), exact (|coordinates| <= 2^30 + 1, so |det| < 2^62).
NP_HD int64_t orient2d(int64_t pu, int64_t pv, int64_t qu, int64_t qv, int64_t xu, int64_t xv) {
  return (qu - pu) * (xv - pv) - (qv - pv) * (xu - pu);
}

// Sign of orient(P, Q, X + (e, e^2)) given det = orient(P, Q, X); 0 only when P == Q.
// Antisymmetric in (P, Q), so two faces sharing an edge always see opposite signs.
NP_HD int perturbed_sign(int64_t det, int64_t pu, int64_t pv, int64_t qu, int64_t qv) {
  if (det != 0) return sign64(det);
  if (qv != pv) return sign64(pv - qv);
  return sign64(qu - pu);
}

// Signed (winding) or unsigned (parity) number of faces crossed by the ray from lattice point
// (qu, qv, qa) along +a, scanning one cell list sorted by amax descending.
NP_HD int count_crossings(const Entry* ent, int32_t begin, int32_t end, const Tri* tris, int64_t qu,
                          int64_t qv, int64_t qa, int hand, bool parity) {
  int count = 0;
  for (int32_t k = begin; k < end; ++k) {
    const Entry e = ent[k];
    if (e.amax < qa) break;  // this face and every later one lie strictly below the point
    const Tri& t = tris[e.tri];
    const int sd = (t.flags & kPositive) ? 1 : -1;
    const int64_t w0 = orient2d(t.u[1], t.v[1], t.u[2], t.v[2], qu, qv);
    if (perturbed_sign(w0, t.u[1], t.v[1], t.u[2], t.v[2]) != sd) continue;
    const int64_t w1 = orient2d(t.u[2], t.v[2], t.u[0], t.v[0], qu, qv);
    if (perturbed_sign(w1, t.u[2], t.v[2], t.u[0], t.v[0]) != sd) continue;
    const int64_t w2 = orient2d(t.u[0], t.v[0], t.u[1], t.v[1], qu, qv);
    if (perturbed_sign(w2, t.u[0], t.v[0], t.u[1], t.v[1]) != sd) continue;
    // D * (height of the face over (qu, qv) - qa) = sum_i w_i (a_i - qa), |.| < 2^95.
    const __int128 h = (__int128)w0 * (t.a[0] - qa) + (__int128)w1 * (t.a[1] - qa) +
                       (__int128)w2 * (t.a[2] - qa);
    const bool above = h == 0 ? (t.flags & kTieAbove) != 0 : ((h > 0) == (sd > 0));
    if (above) count += parity ? 1 : sd * hand;
  }
  return count;
}

// Boundary-edge correction (in turns) for the ray along +a from world point p / lattice point l.
NP_HD double boundary_term(const BEdge* be, int64_t n, const double p[3], const int64_t l[3], int a) {
  const int iu = axis_u(a), iv = axis_v(a), hand = axis_hand(a);
  // Outside the mesh box in (u, v) the lattice point is clamped, so the exact predicate does not
  // describe the point; there the ray passes no edge and the floating-point sign is safe.
  const bool exact = l[iu] >= 0 && l[iu] <= kLattice && l[iv] >= 0 && l[iv] <= kLattice;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const BEdge& e = be[i];
    int s = 0;
    if (exact) {
      const int64_t det = orient2d(e.lp[iu], e.lp[iv], e.lq[iu], e.lq[iv], l[iu], l[iv]);
      s = perturbed_sign(det, e.lp[iu], e.lp[iv], e.lq[iu], e.lq[iv]);
      if (s == 0) continue;  // edge parallel to the ray: its spherical triangle has zero area
    }
    double x[3], y[3];
    for (int j = 0; j < 3; ++j) {
      x[j] = e.p[j] - p[j];
      y[j] = e.q[j] - p[j];
    }
    const double nx = sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]);
    const double ny = sqrt(y[0] * y[0] + y[1] * y[1] + y[2] * y[2]);
    const double cross = x[iu] * y[iv] - x[iv] * y[iu];
    const double num = exact ? copysign(fabs(cross), (double)(-hand * s)) : -hand * cross;
    const double den = nx * ny - ny * x[a] - nx * y[a] + (x[0] * y[0] + x[1] * y[1] + x[2] * y[2]);
    sum += e.k * atan2(num, den);
  }
  return sum / (2.0 * 3.14159265358979323846);
}

// Winding number (or crossing parity) of world point p: the integer crossing count and, in
// winding mode, the boundary correction. The axis is the one whose cell holds the fewest faces.
NP_HD void query_point(const MeshMeta& m, const int32_t* cells, const Entry* entries, const Tri* tris,
                       const BEdge* bedges, const double p[3], bool parity, int* crossings,
                       double* boundary) {
  int64_t l[3];
  for (int j = 0; j < 3; ++j) l[j] = quantize(p[j], m.origin[j], m.scale[j]);
  int best = 2;
  int64_t best_cell = -1;
  int32_t best_n = 0x7fffffff;
  for (int a = 2; a >= 0; --a) {
    const int64_t u = l[axis_u(a)], v = l[axis_v(a)];
    int64_t cell = -1;
    int32_t n = 0;
    if (u >= 0 && u <= kLattice && v >= 0 && v <= kLattice) {
      const int64_t cu = u >> m.shift_u[a] < m.side_u[a] ? u >> m.shift_u[a] : m.side_u[a] - 1;
      const int64_t cv = v >> m.shift_v[a] < m.side_v[a] ? v >> m.shift_v[a] : m.side_v[a] - 1;
      cell = cv * m.side_u[a] + cu;
      const int32_t* c = cells + m.cells[a];
      n = c[cell + 1] - c[cell];
    }
    if (n < best_n) {
      best = a;
      best_n = n;
      best_cell = cell;
    }
  }
  int count = 0;
  if (best_n > 0) {
    const int32_t* c = cells + m.cells[best];
    count = count_crossings(entries + m.entries[best], c[best_cell], c[best_cell + 1], tris + m.tris[best],
                            l[axis_u(best)], l[axis_v(best)], l[best], axis_hand(best), parity);
  }
  *crossings = count;
  *boundary = (parity || m.n_bedges == 0) ? 0.0 : boundary_term(bedges + m.bedges, m.n_bedges, p, l, best);
}

}  // namespace npk
