// Host construction of the boundary-edge hierarchy (BNode, inside_mesh.h), shared by the CPU path
// and the CUDA glue (which downloads the boundary edges of open meshes, a short list).
//
// The boundary of the oriented face set is a 1-cycle: at every vertex (merged by lattice position)
// the half-edges in and out balance. So the unit half-edges (edge e, |e.k| times, along sign(k))
// split into closed walks by following unused outgoing half-edges until the walk returns to its
// start. Every vertex id has one world position (the BEdges take it from the merged vertex), so
// consecutive half-edges of a walk share their end point exactly, and any contiguous run of a walk
// is a chain from its first tail s to its last head e. boundary_decide relies on that: a far
// chain's terms sum to its chord's term plus half the solid angle of a surface spanning the chain
// closed by the chord, whose area the node stores.
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <tuple>

#include "../inside_mesh_build.h"

namespace npk {
namespace {

constexpr int32_t kLeafHalfEdges = 4;

using Vec3 = std::array<double, 3>;

double triangle_area(const double* a, const double* b, const double* c) {
  const double x[3] = {b[0] - a[0], b[1] - a[1], b[2] - a[2]}, y[3] = {c[0] - a[0], c[1] - a[1], c[2] - a[2]};
  const double n[3] = {x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0]};
  return 0.5 * std::sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
}

struct Builder {
  const BEdge* edges;
  std::vector<int32_t> id_p, id_q;  // merged vertex id of each edge's ends
  std::vector<BNode> nodes;
  std::vector<int32_t> walk;

  const double* tail(int32_t h) const { return (h & 1) ? edges[h >> 1].q : edges[h >> 1].p; }
  const double* head(int32_t h) const { return (h & 1) ? edges[h >> 1].p : edges[h >> 1].q; }
  int32_t tail_id(int32_t h) const { return (h & 1) ? id_q[h >> 1] : id_p[h >> 1]; }
  int32_t head_id(int32_t h) const { return (h & 1) ? id_p[h >> 1] : id_q[h >> 1]; }

  // Vertex ids by lattice position; the walk as closed loops; returns each loop's [begin, end).
  std::vector<std::pair<int32_t, int32_t>> loops(int64_t n) {
    std::vector<std::array<int32_t, 3>> keys;
    keys.reserve(2 * n);
    for (int64_t i = 0; i < n; ++i) {
      keys.push_back({edges[i].lp[0], edges[i].lp[1], edges[i].lp[2]});
      keys.push_back({edges[i].lq[0], edges[i].lq[1], edges[i].lq[2]});
    }
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    auto id_of = [&](const int32_t* l) {
      const std::array<int32_t, 3> key{l[0], l[1], l[2]};
      return int32_t(std::lower_bound(keys.begin(), keys.end(), key) - keys.begin());
    };
    id_p.resize(n);
    id_q.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      id_p[i] = id_of(edges[i].lp);
      id_q[i] = id_of(edges[i].lq);
    }
    const int32_t nv = int32_t(keys.size());
    // outgoing half-edges per vertex (counting sort by tail)
    std::vector<int32_t> start(nv + 1, 0);
    for (int64_t i = 0; i < n; ++i) start[(edges[i].k > 0 ? id_p[i] : id_q[i]) + 1] += std::abs(edges[i].k);
    std::partial_sum(start.begin(), start.end(), start.begin());
    std::vector<int32_t> out(start[nv]), next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) {
      const int32_t h = int32_t(i << 1) | (edges[i].k < 0);
      for (int32_t c = 0; c < std::abs(edges[i].k); ++c) out[next[tail_id(h)]++] = h;
    }
    std::copy(start.begin(), start.end() - 1, next.begin());
    std::vector<std::pair<int32_t, int32_t>> result;
    walk.reserve(out.size());
    for (int32_t v = 0; v < nv; ++v) {
      while (next[v] < start[v + 1]) {
        const int32_t begin = int32_t(walk.size());
        int32_t cur = v;
        do {
          TORCH_CHECK(next[cur] < start[cur + 1], "inside_mesh: the open-boundary edges do not close into loops");
          const int32_t h = out[next[cur]++];
          walk.push_back(h);
          cur = head_id(h);
        } while (cur != v);
        result.push_back({begin, int32_t(walk.size())});
      }
    }
    return result;
  }

  // Node over walk[begin, end), a chain of one loop; children split the run in halves.
  int32_t chain(int32_t begin, int32_t end) {
    const int32_t index = int32_t(nodes.size());
    nodes.emplace_back();
    BNode nd{};
    const double* s = tail(walk[begin]);
    const double* e = head(walk[end - 1]);
    for (int j = 0; j < 3; ++j) {
      nd.lo[j] = nd.hi[j] = s[j];
      nd.s[j] = s[j];
      nd.e[j] = e[j];
    }
    double fan = 0.0;  // the fan from s spans the chain closed by its chord
    for (int32_t i = begin; i < end; ++i) {
      const double* b = head(walk[i]);
      for (int j = 0; j < 3; ++j) {
        nd.lo[j] = std::min(nd.lo[j], b[j]);
        nd.hi[j] = std::max(nd.hi[j], b[j]);
      }
      fan += triangle_area(s, tail(walk[i]), b);
    }
    nd.open = tail_id(walk[begin]) != head_id(walk[end - 1]);
    nd.area = fan;
    if (end - begin <= kLeafHalfEdges) {
      nd.first = begin;
      nd.count = end - begin;
      nd.left = nd.right = -1;
    } else {
      const int32_t mid = begin + (end - begin) / 2;
      nd.left = chain(begin, mid);
      nd.right = chain(mid, end);
      // or: both halves' surfaces and the triangle (s, m, e) joining their chords
      const double joined = nodes[nd.left].area + nodes[nd.right].area + triangle_area(s, tail(walk[mid]), e);
      nd.area = std::min(fan, joined);
    }
    nodes[index] = nd;
    return index;
  }

  // Node over whole loops roots[begin, end): median split of their box centres along the widest axis.
  int32_t loop_set(std::vector<int32_t>& roots, int32_t begin, int32_t end) {
    if (end - begin == 1) return roots[begin];
    auto centre = [&](int32_t r, int j) { return nodes[r].lo[j] + nodes[r].hi[j]; };
    double lo[3], hi[3];
    for (int j = 0; j < 3; ++j) {
      lo[j] = hi[j] = centre(roots[begin], j);
      for (int32_t i = begin + 1; i < end; ++i) {
        lo[j] = std::min(lo[j], centre(roots[i], j));
        hi[j] = std::max(hi[j], centre(roots[i], j));
      }
    }
    int axis = 0;
    for (int j = 1; j < 3; ++j)
      if (hi[j] - lo[j] > hi[axis] - lo[axis]) axis = j;
    const int32_t mid = begin + (end - begin) / 2;
    std::nth_element(roots.begin() + begin, roots.begin() + mid, roots.begin() + end,
                     [&](int32_t x, int32_t y) { return std::make_pair(centre(x, axis), x) < std::make_pair(centre(y, axis), y); });
    BNode nd{};
    nd.left = loop_set(roots, begin, mid);
    nd.right = loop_set(roots, mid, end);
    const BNode &l = nodes[nd.left], &r = nodes[nd.right];
    for (int j = 0; j < 3; ++j) {
      nd.lo[j] = std::min(l.lo[j], r.lo[j]);
      nd.hi[j] = std::max(l.hi[j], r.hi[j]);
    }
    nd.area = l.area + r.area;
    nd.open = 0;
    nodes.push_back(nd);
    return int32_t(nodes.size() - 1);
  }

  // Copies the tree under `node` in pre-order (root first); returns the new index, tracks the depth.
  int32_t emit(int32_t node, int depth, std::vector<BNode>& out, int* max_depth) const {
    *max_depth = std::max(*max_depth, depth);
    const int32_t index = int32_t(out.size());
    out.push_back(nodes[node]);
    if (nodes[node].left >= 0) {
      const int32_t left = emit(nodes[node].left, depth + 1, out, max_depth);
      const int32_t right = emit(nodes[node].right, depth + 1, out, max_depth);
      out[index].left = left;
      out[index].right = right;
    }
    return index;
  }
};

}  // namespace

BoundaryTree build_boundary_tree(const BEdge* edges, int64_t n) {
  TORCH_CHECK(n > 0 && n < (int64_t(1) << 29), "inside_mesh: boundary tree needs 1 to 2^29 edges, got ", n);
  Builder b;
  b.edges = edges;
  std::vector<int32_t> roots;
  for (const auto& [begin, end] : b.loops(n)) roots.push_back(b.chain(begin, end));
  const int32_t root = b.loop_set(roots, 0, int32_t(roots.size()));
  BoundaryTree tree;
  int depth = 0;
  b.emit(root, 0, tree.nodes, &depth);
  // boundary_decide's stack holds at most depth + 1 nodes
  TORCH_CHECK(depth + 1 <= kTreeStack, "inside_mesh: boundary tree too deep (", depth, ")");
  tree.walk = std::move(b.walk);
  // Rounding: each far term as the full sum computes it is within 1e-12 turns of the true term
  // (the cone keeps den away from 0), and summing m terms of at most 1/2 turn in any order errs
  // by at most m^2 2^-53 turns (for both sums).
  const double m = double(tree.walk.size());
  tree.slack = 1e-9 + 1e-12 * m + std::ldexp(m * m, -52);
  return tree;
}

}  // namespace npk
