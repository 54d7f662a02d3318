// Host-side construction of the inside-mesh structure (see inside_mesh.h and inside_mesh_grid.h).
#pragma once

#include <vector>

#include "inside_mesh.h"

namespace npk {

// Structure of one mesh; the offsets in `meta` index this mesh's own arrays.
struct HostMesh {
  MeshMeta meta;
  std::vector<int64_t> cells;  // three regions of grid_capacity(F) + 1 offsets, then the total
  std::vector<uint64_t> keys;  // cell lists (entry_key)
  std::vector<Tri> tris;       // 3 * F: axis a's faces at a * F
  std::vector<BEdge> bedges;
  std::vector<BNode> nodes;
  std::vector<int32_t> walk;
};

// Build from vertices (nv, 3) float64 and faces (nf, 3) int64 (indices already validated): the
// grid from the shared steps of inside_mesh_grid.h, either rasterised once per axis into (cell,
// key) pairs and counting-sorted (one task per axis; the faster on CPU) or, with three_pass, by
// the device's count / scan / fill / sort passes over all faces (for tests: the same structure);
// then the open-boundary edges (signed count of directed edges between vertices merged by lattice
// position) and their hierarchy.
HostMesh build_mesh(const double* vertices, int64_t nv, const int64_t* faces, int64_t nf, bool three_pass);

// Hierarchy of open-boundary edges (BNode): the edges' unit half-edges decomposed into closed
// loops, a balanced tree over each loop's chain, a median-split tree over the loops. Root first.
struct BoundaryTree {
  std::vector<BNode> nodes;
  std::vector<int32_t> walk;
  double slack;  // MeshMeta::slack for these edges
};
BoundaryTree build_boundary_tree(const BEdge* edges, int64_t n);

}  // namespace npk
