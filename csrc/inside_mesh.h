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
// exactly on the surface therefore get a deterministic (unspecified) label. At the atan2 branch
// cut (den <= 0) the sign of `num` is taken from the same exact edge predicate, so the cut agrees
// with the crossing count (elsewhere atan2 is continuous and the floating-point sign is used).
// No ATen or torch headers here: the file compiles with plain nvcc.
//
// Open meshes: a label needs only the side of 0.5 that |w| is on, so label_point first bounds the
// boundary term with the hierarchy of boundary_decide (far chains: their chord's term plus a
// bounded remainder) and sums every edge only when the bounds leave |w| within their reach of 0.5
// (or when w itself is asked for). Both give the label of the full sum: its rounding is inside
// m.slack.
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
  int32_t flags;  // kPositive: projected orientation D > 0; kTieAbove: a crossing at the point's height
                  // counts; kListed: D != 0 (a zero projected area is never crossed, nor listed)
};
enum : int32_t { kPositive = 1, kTieAbove = 2, kListed = 4 };

// Cell-list entry, one uint64: (kLattice - amax) << 32 | face, with amax the face's largest a
// coordinate. Ascending keys list the faces by amax descending, ties by face index.
NP_HD uint64_t entry_key(int64_t amax, int32_t face) { return (uint64_t(kLattice - amax) << 32) | uint32_t(face); }
NP_HD int64_t entry_amax(uint64_t key) { return kLattice - int64_t(key >> 32); }
NP_HD int32_t entry_face(uint64_t key) { return int32_t(key & 0xffffffffu); }

// Open-boundary edge P -> Q with net multiplicity k: world coordinates and lattice coordinates.
struct BEdge {
  double p[3], q[3];
  int32_t lp[3], lq[3];
  int32_t k, pad;
};

// Node of the boundary-edge hierarchy (built by build_boundary_tree). Its edges are a run of unit
// half-edges: `walk` codes (edge index << 1) | (k < 0), each |k| times, along the edge's boundary
// direction, so that consecutive half-edges of one boundary loop share a vertex. A node holds one
// contiguous chain of a loop (from s to e; `open` when s != e) or a set of whole loops (open = 0).
struct BNode {
  double lo[3], hi[3];  // bounding box of the node's half-edges (world)
  double area;          // area of a surface inside the box spanning the chain closed by its chord
  int32_t first, count; // leaf: walk[first, first + count)
  double s[3], e[3];    // chord of an open chain
  int32_t left, right;  // children, or -1 for a leaf
  int32_t open, pad;
};

// Per-mesh header. Per axis a: a (side_u x side_v) grid over the (u, v) lattice square with cells
// of 2^shift_u x 2^shift_v lattice units (shaped like the mesh, not the square); cell (cu, cv) at
// index cv * side_u + cu lists entries[cells[m.cells[a] + c], cells[m.cells[a] + c + 1]) (the
// offsets index the packed entries array directly), sorted by key; the axis' faces (one Tri per
// face, degenerate ones never listed) start at tris[m.tris[a]].
struct MeshMeta {
  double origin[3], scale[3];  // lattice = rint((x - origin) * scale)
  int32_t shift_u[3], shift_v[3], side_u[3], side_v[3];
  int64_t cells[3], tris[3];
  int64_t bedges, n_bedges;  // open-boundary edges
  int64_t nodes, walk;       // their hierarchy (when n_bedges > 0), root at nodes[m.nodes]
  double slack;              // rounding allowance (turns) of a decision by the hierarchy
  double near2;              // squared world distance within which the hierarchy bounds no node
};

NP_HD int axis_u(int a) { return a == 0 ? 1 : 0; }   // x -> (y, z), y -> (x, z), z -> (x, y)
NP_HD int axis_v(int a) { return a == 2 ? 1 : 2; }
NP_HD int axis_hand(int a) { return a == 1 ? -1 : 1; }  // (u, v, a) right-handed?

NP_HD int sign64(int64_t x) { return (x > 0) - (x < 0); }
// min / max of finite doubles (fmin / fmax are library calls on the host)
NP_HD double dmin(double x, double y) { return y < x ? y : x; }
NP_HD double dmax(double x, double y) { return y > x ? y : x; }

// Lattice coordinate of a world coordinate, clamped to [-1, kLattice + 1] (outside the mesh box
// every predicate gives the same answer as for the true coordinate).
NP_HD int64_t quantize(double x, double origin, double scale) {
  double t = (x - origin) * scale;
  t = dmin(dmax(t, -1.0), (double)(kLattice + 1));
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
// (qu, qv, qa) along +a, scanning one cell list (keys ascending: amax descending).
NP_HD int count_crossings(const uint64_t* keys, int64_t begin, int64_t end, const Tri* tris, int64_t qu,
                          int64_t qv, int64_t qa, int hand, bool parity) {
  int count = 0;
  for (int64_t k = begin; k < end; ++k) {
    const uint64_t key = keys[k];
    if (entry_amax(key) < qa) break;  // this face and every later one lie strictly below the point
    const Tri& t = tris[entry_face(key)];
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

// Crossing count of world point p along the axis whose cell holds the fewest faces (every axis
// gives the same count); writes the point's lattice coordinates l and the axis.
NP_HD int point_crossings(const MeshMeta& m, const int64_t* cells, const uint64_t* keys, const Tri* tris,
                          const double p[3], bool parity, int64_t l[3], int* axis) {
  for (int j = 0; j < 3; ++j) l[j] = quantize(p[j], m.origin[j], m.scale[j]);
  int best = 2;
  int64_t best_begin = 0, best_n = INT64_MAX;
  for (int a = 2; a >= 0; --a) {
    const int64_t u = l[axis_u(a)], v = l[axis_v(a)];
    int64_t begin = 0, n = 0;
    if (u >= 0 && u <= kLattice && v >= 0 && v <= kLattice) {
      const int64_t cu = u >> m.shift_u[a] < m.side_u[a] ? u >> m.shift_u[a] : m.side_u[a] - 1;
      const int64_t cv = v >> m.shift_v[a] < m.side_v[a] ? v >> m.shift_v[a] : m.side_v[a] - 1;
      const int64_t* c = cells + m.cells[a] + cv * m.side_u[a] + cu;
      begin = c[0];
      n = c[1] - c[0];
    }
    if (n < best_n) {
      best = a;
      best_n = n;
      best_begin = begin;
    }
  }
  *axis = best;
  if (best_n == 0) return 0;
  return count_crossings(keys, best_begin, best_begin + best_n, tris + m.tris[best], l[axis_u(best)],
                         l[axis_v(best)], l[best], axis_hand(best), parity);
}

// ---------------------------------------------------------------- open-boundary correction

// Outside the mesh box in (u, v) the lattice point is clamped, so the exact predicate does not
// describe the point; there the ray passes no edge and the floating-point sign is safe.
NP_HD bool lattice_inside_uv(const int64_t l[3], int a) {
  const int64_t u = l[axis_u(a)], v = l[axis_v(a)];
  return u >= 0 && u <= kLattice && v >= 0 && v <= kLattice;
}

// atan2(num, den) for the edge P -> Q seen from p (radians, half the solid angle of the spherical
// triangle (x1, P - p, Q - p)); s: the exact sign of the edge predicate, or 0 for the float sign.
// The exact sign is taken only where den <= 0, at the branch cut, where it must agree with the
// crossing count; elsewhere atan2 is continuous in num and the floating-point sign (the true one
// up to rounding) keeps the term a smooth function of p, as boundary_decide assumes.
NP_HD double half_solid_angle(const double P[3], const double Q[3], const double p[3], int a, int s) {
  const double x0 = P[0] - p[0], x1 = P[1] - p[1], x2 = P[2] - p[2];
  const double y0 = Q[0] - p[0], y1 = Q[1] - p[1], y2 = Q[2] - p[2];
  // components (u, v, a) without indexing (which would keep x and y in memory)
  const double xu = a == 0 ? x1 : x0, xv = a == 2 ? x1 : x2, xa = a == 0 ? x0 : (a == 1 ? x1 : x2);
  const double yu = a == 0 ? y1 : y0, yv = a == 2 ? y1 : y2, ya = a == 0 ? y0 : (a == 1 ? y1 : y2);
  const double nx = sqrt(x0 * x0 + x1 * x1 + x2 * x2);
  const double ny = sqrt(y0 * y0 + y1 * y1 + y2 * y2);
  const double cross = xu * yv - xv * yu;
  const int hand = axis_hand(a);
  const double den = nx * ny - ny * xa - nx * ya + (x0 * y0 + x1 * y1 + x2 * y2);
  const double num = s != 0 && den <= 0.0 ? copysign(fabs(cross), (double)(-hand * s)) : -hand * cross;
  return atan2(num, den);
}

// Term of boundary edge e (radians, without its multiplicity) for the ray along +a from world
// point p / lattice point l; `exact`: lattice_inside_uv(l, a). At the atan2 branch cut the sign of
// the numerator comes from the exact edge predicate, so the cut agrees with the crossing count; an
// edge parallel to the ray (its spherical triangle has zero area) gives 0.
NP_HD double edge_angle(const BEdge& e, const double p[3], const int64_t l[3], int a, bool exact) {
  int s = 0;
  if (exact) {
    const int iu = axis_u(a), iv = axis_v(a);
    const int64_t det = orient2d(e.lp[iu], e.lp[iv], e.lq[iu], e.lq[iv], l[iu], l[iv]);
    s = perturbed_sign(det, e.lp[iu], e.lp[iv], e.lq[iu], e.lq[iv]);
    if (s == 0) return 0.0;
  }
  return half_solid_angle(e.p, e.q, p, a, s);
}

// Boundary-edge correction (in turns) for the ray along +a: the sum over all edges, in order.
NP_HD double boundary_term(const BEdge* be, int64_t n, const double p[3], const int64_t l[3], int a) {
  const bool exact = lattice_inside_uv(l, a);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += be[i].k * edge_angle(be[i], p, l, a, exact);
  return sum / (2.0 * 3.14159265358979323846);
}

constexpr int kTreeStack = 64;         // traversal stack; build_boundary_tree keeps the depth below it
constexpr double kFarCone = 1.0 / 64;  // far: the ray's cone of this slope misses the node's box
// Remainder (radians) up to which a far node is bounded rather than opened: a coarse pass, then a
// fine one for the points it leaves undecided (about 1 % near holes), then the full sum.
constexpr double kAcceptCoarse = 0.5, kAcceptFine = 1.0 / 32;

// Decides |w| > 0.5 for w = crossings + boundary term without summing every edge. A node whose box
// the ray (widened to a cone of slope kFarCone) misses, at distance d from p, adds its chord's term
// and a remainder of at most area / (2 d^2) radians: by the antipodal identity applied to a
// surface spanning the chain closed by its chord (the ray crosses none of it), the remainder is
// half that surface's solid angle, at most area / d^2. Nodes whose remainder bound exceeds
// `accept` are opened, and so are nodes within sqrt(m.near2) (2^10 lattice units) of p: there an
// edge's term could take its exact sign at den <= 0 where the true sign differs. Leaves add their
// half-edges' exact terms. Returns 1 (inside), 0 (outside), or -1 when the total remainder plus
// m.slack straddles 0.5.
NP_HD int boundary_decide(const MeshMeta& m, const BNode* nodes, const int32_t* walk, const BEdge* be,
                          int crossings, const double p[3], const int64_t l[3], int a, double accept) {
  const bool exact = lattice_inside_uv(l, a);
  double sum = 0.0, rest = 0.0;  // radians
  int32_t stack[kTreeStack];
  int top = 0;
  stack[top++] = 0;
  while (top > 0) {
    const BNode& nd = nodes[stack[--top]];
    const double g0 = dmax(dmax(nd.lo[0] - p[0], p[0] - nd.hi[0]), 0.0);
    const double g1 = dmax(dmax(nd.lo[1] - p[1], p[1] - nd.hi[1]), 0.0);
    const double g2 = dmax(dmax(nd.lo[2] - p[2], p[2] - nd.hi[2]), 0.0);
    const double ga = a == 0 ? g0 : (a == 1 ? g1 : g2);
    const double d2 = g0 * g0 + g1 * g1 + g2 * g2, side2 = d2 - ga * ga;  // side2 == 0 iff the (u, v) gaps are 0
    const double reach = (a == 0 ? nd.hi[0] : (a == 1 ? nd.hi[1] : nd.hi[2])) - p[a];  // box above p along the ray
    if ((reach < 0.0 || side2 > kFarCone * kFarCone * reach * reach) && d2 >= m.near2 &&
        nd.area <= 2.0 * accept * d2) {
      rest += nd.area / (2.0 * d2);
      if (nd.open) sum += half_solid_angle(nd.s, nd.e, p, a, 0);
      continue;
    }
    if (nd.left < 0) {
      for (int32_t i = nd.first; i < nd.first + nd.count; ++i) {
        const double t = edge_angle(be[walk[i] >> 1], p, l, a, exact);
        sum += (walk[i] & 1) ? -t : t;
      }
      continue;
    }
    stack[top++] = nd.right;
    stack[top++] = nd.left;
  }
  const double turn = 2.0 * 3.14159265358979323846;
  const double w = fabs(crossings + sum / turn), r = rest / turn + m.slack;
  if (w - r > 0.5) return 1;
  if (w + r < 0.5) return 0;
  return -1;
}

// Label of world point p: |w| > 0.5 (winding) or an odd crossing count (parity). With `winding`
// non-null, w is also written: the full boundary sum (w is the crossing count in parity mode).
NP_HD bool label_point(const MeshMeta& m, const int64_t* cells, const uint64_t* keys, const Tri* tris,
                       const BEdge* bedges, const BNode* nodes, const int32_t* walk, const double p[3],
                       bool parity, double* winding) {
  int64_t l[3];
  int a;
  const int crossings = point_crossings(m, cells, keys, tris, p, parity, l, &a);
  if (parity || m.n_bedges == 0) {
    if (winding) *winding = crossings;
    return parity ? (crossings & 1) != 0 : crossings != 0;
  }
  const BEdge* be = bedges + m.bedges;
  if (!winding) {
    const double accepts[2] = {kAcceptCoarse, kAcceptFine};
    for (int pass = 0; pass < 2; ++pass) {
      const int decided = boundary_decide(m, nodes + m.nodes, walk + m.walk, be, crossings, p, l, a, accepts[pass]);
      if (decided >= 0) return decided != 0;
    }
  }
  const double w = crossings + boundary_term(be, m.n_bedges, p, l, a);
  if (winding) *winding = w;
  return fabs(w) > 0.5;
}

}  // namespace npk
