"""Constants and helpers of the command tests (a uniquely named module: conftest names collide across folders)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MESHES = REPO.parent / "shared" / "data" / "meshes"
# A small network and few points: the commands' plumbing is under test, not learning.
TINY = ["data.image_size=64", "data.n_points_in_mesh=256", "data.n_points_on_mesh=64", "data.categories=null",
        "loss.n_points_on_sphere=16", "network.n_primitives=2", "feature_extractor.feature_size=16",
        "invertible_network.hidden_size=16", "projection_layer.proj_dims=8", "training.batch_size=2",
        "validation.every_seconds=0", "validation.n_shapes=2", "validation.n_points_in_mesh=256",
        "validation.preview_shapes=1", "training.log_every=1"]


def sets(*items: str) -> list[str]:
    """``--set`` arguments for each item."""
    return [a for item in items for a in ("--set", item)]


def run_cli(module: str, *args, env: dict, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m neural_parts.<module> args`` and return the completed process (text output)."""
    return subprocess.run([sys.executable, "-m", f"neural_parts.{module}", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


def ellipsoid_parts(n=5, min_vertices=5000):
    """n separated ellipsoids along x, in [-0.5, 0.5]: (vertices, faces) pairs sharing one face array."""
    import torch

    from neural_parts.geometry import icosphere

    v, f = icosphere(min_vertices, 1.0, device="cpu", dtype=torch.float64)
    v, f = v.numpy(), f.numpy()
    return [(v * [0.07, 0.2, 0.1] + [-0.4 + 0.2 * k, 0.05 * (k % 2), 0.0], f) for k in range(n)]


def embedded_data(page: str) -> dict:
    """The JSON a viewer page embeds (neural_parts.viewer)."""
    import json
    import re

    match = re.search(r'<script type="application/json" id="np-data">(.*?)</script>', page, re.DOTALL)
    return json.loads(match.group(1).replace("<\\/", "</"))
