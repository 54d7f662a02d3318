"""`python -m neural_parts.reconstruct`: meshes, coloured mesh, preview; record and image inputs; union."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh
from command_helpers import run_cli
from PIL import Image

from neural_parts.data import H5Records
from neural_parts.preview import TITLE_HEIGHT


def test_reconstruct_record_writes_parts_and_preview(tmp_path, trained_run, dataset, env):
    out = tmp_path / "rec"
    proc = run_cli("reconstruct", trained_run, f"{dataset / 'test.h5'}:1", "--output", out, "--min-vertices", 600,
                   "--union", "--resolution", 8, "--levels", 1, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = sorted(out.glob("part_*.obj"))
    assert [p.name for p in parts] == ["part_000.obj", "part_001.obj"]
    for p in parts:
        mesh = trimesh.load(p, process=True)
        assert len(mesh.vertices) >= 600 and mesh.is_watertight
    coloured = trimesh.load(out / "parts.ply", process=False)
    assert len(np.unique(coloured.visual.vertex_colors[:, :3], axis=0)) == 2
    with Image.open(out / "preview.png") as im:
        assert im.size == (4 * 256, 256 + TITLE_HEIGHT)  # input, two views of the primitives, the target
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels[:, 256:768] != 255).any(), "the primitives are not visible in the preview"
    assert (pixels[TITLE_HEIGHT:, 768:] != 255).any(), "the target's points are not visible in the preview"
    assert (out / "view.html").stat().st_size > 0
    assert "union mesh" in proc.stdout


def test_reconstruct_image_file(tmp_path, trained_run, dataset, env):
    image = tmp_path / "input.png"
    Image.fromarray(H5Records(dataset / "val.h5").read(0)["images"][0]).save(image)
    proc = run_cli("reconstruct", trained_run / "best.pt", image, "--output", tmp_path / "img", "--format", "glb",
                   "--min-vertices", 100, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "img" / "parts.glb").stat().st_size > 0 and (tmp_path / "img" / "preview.png").exists()
    with Image.open(tmp_path / "img" / "preview.png") as im:
        assert im.size == (3 * 256, 256 + TITLE_HEIGHT)  # no target column for an image file
    assert '"target":null' in (tmp_path / "img" / "view.html").read_text()


@pytest.mark.parametrize("make_input, message", [
    (lambda d, t: t / "missing.png", "input image not found"),
    (lambda d, t: f"{d / 'test.h5'}:99", "out of range"),
    (lambda d, t: d / "test.h5", "FILE.h5:INDEX"),
])
def test_reconstruct_input_errors(tmp_path, trained_run, dataset, env, make_input, message):
    proc = run_cli("reconstruct", trained_run, make_input(dataset, tmp_path), "--output", tmp_path / "x", env=env)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_union_mesh_is_watertight_and_matches_the_implicit():
    import torch

    from neural_parts.config import load_config
    from neural_parts.meshing import union_mesh
    from neural_parts.models import NeuralParts

    torch.manual_seed(0)
    cfg = load_config("fit", ["network.n_primitives=2", "invertible_network.hidden_size=16",
                              "projection_layer.proj_dims=8", "feature_extractor.feature_size=8"])
    model = NeuralParts.from_config(cfg, n_shapes=1)
    prims = model.predict(torch.zeros(1, dtype=torch.long))
    verts, faces = union_mesh(prims, resolution=16, levels=1)
    mesh = trimesh.Trimesh(verts, faces, process=True)
    assert mesh.is_watertight and mesh.volume > 0
    interior = np.abs(verts).max(1) < 0.54  # away from the box faces, where the padding closes the mesh
    with torch.no_grad():
        g = prims.implicit(torch.as_tensor(verts[interior], dtype=torch.float32)[None]).value
    assert g.abs().max() < 0.02  # on G = 0 up to the grid's interpolation error
    full_v, _ = union_mesh(prims, resolution=32, levels=0)  # refining only near the surface loses nothing
    assert len(full_v) == len(verts) and np.allclose(np.sort(full_v, 0), np.sort(verts, 0), atol=2e-3)
