// Launchers of the CUDA inside-mesh labeller (inside_mesh_cuda.cu), called by the ATen glue
// (inside_mesh_glue.cpp). Raw device pointers and a stream; each returns a cudaError_t. A launcher
// with a `work` argument carves its scratch from that device buffer; with work == nullptr it only
// writes the size the buffer needs to *work_bytes. Declared here once, so that the compiler
// checks the definitions against what the glue calls.
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>

#include "../inside_mesh.h"

extern "C" {

// Phase A of one mesh: vertices (nv, 3) float64 and faces (nf, 3) int64; meta: the mesh's header,
// its cells/tris offsets set by the host (the frame and grid shape are written here); lat (nv, 3)
// int32 and tris (3 nf) out; counts: the batch's zeroed count slots (count pass); n_bedges: one
// int64 out (open-boundary edges). The scratch must live until build_b.
int np_inside_mesh_cuda_build_a(void* work, size_t* work_bytes, const double* vertices, int64_t nv,
                                const int64_t* faces, int64_t nf, npk::MeshMeta* meta, int32_t* lat, npk::Tri* tris,
                                int64_t* counts, int64_t* n_bedges, cudaStream_t stream);

// Inclusive scan of the batch's n count slots into cell offsets (the entry total in the last).
int np_inside_mesh_cuda_scan(void* work, size_t* work_bytes, const int64_t* counts, int64_t* cells, int64_t n,
                             cudaStream_t stream);

// Phase B of one mesh, on build_a's scratch: the fill pass (cursor: a copy of the batch's cell
// offsets; keys: the batch's entries) and the mesh's boundary edges into bedges.
int np_inside_mesh_cuda_build_b(void* work, const double* vertices, int64_t nv, int64_t nf, const npk::MeshMeta* meta,
                                const int32_t* lat, const npk::Tri* tris, int64_t* cursor, uint64_t* keys,
                                npk::BEdge* bedges, cudaStream_t stream);

// Sorts every cell list of the batch (n_cells segments [cells[c], cells[c + 1])) from keys_in into
// keys_out: amax descending, then face index, as on the CPU.
int np_inside_mesh_cuda_sort(void* work, size_t* work_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                             int64_t n_keys, const int64_t* cells, int64_t n_cells, cudaStream_t stream);

// Labels the packed points (points_double: float64, else float32; point i against the mesh m with
// offsets[m] <= i < offsets[m + 1]); every pointer is device memory (winding may be null).
int np_inside_mesh_cuda_launch(const void* points, int points_double, int64_t n, const int64_t* offsets, int n_meshes,
                               const npk::MeshMeta* metas, const int64_t* cells, const uint64_t* keys,
                               const npk::Tri* tris, const npk::BEdge* bedges, const npk::BNode* nodes,
                               const int32_t* walk, int parity, bool* inside, double* winding, cudaStream_t stream);
}
