// Host-side construction of the inside-mesh acceleration structure (see inside_mesh.h).
#pragma once

#include <vector>

#include "inside_mesh.h"

namespace npk {

// Structure of one mesh; the offsets in `meta` index this mesh's own arrays.
struct HostMesh {
  MeshMeta meta;
  std::vector<int32_t> cells;
  std::vector<Entry> entries;
  std::vector<Tri> tris;
  std::vector<BEdge> bedges;
};

// Build from vertices (nv, 3) float64 and faces (nf, 3) int64 (indices already validated).
// Per axis: faces with non-zero projected area rasterised conservatively (exact edge tests, not
// bounding boxes) into a power-of-two grid shaped like the mesh's projection, about four faces per
// cell, cell lists sorted by amax descending; open-boundary edges from the signed count of
// directed edges between vertices merged by lattice position. Parallel over the three axes.
HostMesh build_mesh(const double* vertices, int64_t nv, const int64_t* faces, int64_t nf);

}  // namespace npk
