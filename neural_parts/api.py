"""Python API used by the commands: build/load models, read inputs, export and preview primitives.

    import neural_parts.api as np_api
    model = np_api.load("runs/default-20250101-120000")        # run folder or .pt, eval mode
    inputs, _ = np_api.read_image("chair.png", model.config["data"]["image_size"])
    prims = model.predict(inputs)
    np_api.export_parts(prims, "out/")                          # part_000.obj ..., parts.ply

Lengths are in the records' normalised frame (longest side 1, volume box [-0.55, 0.55]^3).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import config as config_mod
from .atomic import atomic_path
from .checkpoint import CheckpointError, load_checkpoint, load_model_state
from .data.render import distinct_colours
from .geometry import orient_outward
from .models import NeuralParts
from .models.primitives import Primitives

UNIT_BOX = np.array([[-0.55, -0.55, -0.55], [0.55, 0.55, 0.55]])


def build_model(cfg: dict, n_shapes: int | None = None) -> NeuralParts:
    """A NeuralParts model from a config dict (``config.load_config``); random weights."""
    fe, inn = cfg["feature_extractor"], cfg["invertible_network"]
    model = NeuralParts(
        n_primitives=cfg["network"]["n_primitives"], feature_size=fe["feature_size"],
        hidden_size=inn["hidden_size"], proj_dims=cfg["projection_layer"]["proj_dims"],
        n_layers=inn["n_blocks"], radius=cfg["network"]["sphere_radius"],
        encoder=fe["type"], freeze_bn=fe["freeze_bn"], normalize=inn["normalize"],
        explicit_affine=inn["explicit_affine"], n_shapes=n_shapes, network=inn["type"])
    model.kernel_backend = cfg["runtime"]["kernel_backend"]
    return model


def load_encoder_weights(model: NeuralParts, cfg: dict) -> None:
    """Apply ``feature_extractor.weights`` (a torchvision resnet18 file, or "none")."""
    weights = cfg["feature_extractor"]["weights"]
    if cfg["feature_extractor"]["type"] != "resnet18" or (weights is not None and weights.lower() == "none"):
        return
    if weights is None:
        raise config_mod.ConfigError(
            f"config {cfg.get('name')!r} expects pretrained encoder weights: set feature_extractor.weights="
            "PATH (a torchvision resnet18 state dict) or feature_extractor.weights=none to train from scratch")
    try:
        model.feature_extractor.load_torchvision_weights(weights)
    except FileNotFoundError as e:
        raise config_mod.ConfigError(str(e)) from None
    except (ValueError, RuntimeError) as e:
        raise config_mod.ConfigError(f"feature_extractor.weights {weights}: {e}") from None


def load(checkpoint: str | Path, device: str | torch.device = "cpu") -> NeuralParts:
    """The trained model of a checkpoint file or run folder (best.pt, else last.pt), in eval mode.

    The model gets ``.config`` (the run's config dict) and ``.step``. Raises CheckpointError when the
    file is missing, unreadable or does not match the model its config describes.
    """
    data = load_checkpoint(checkpoint)
    try:
        cfg = config_mod.from_dict(data["config"])
    except config_mod.ConfigError as e:
        raise CheckpointError(f"{data['path']}: stored config is invalid: {e}") from None
    n_shapes = None
    if cfg["feature_extractor"]["type"] == "latent":
        n_shapes = int(data["model"]["feature_extractor.codes.weight"].shape[0])
    model = build_model(cfg, n_shapes)
    load_model_state(model, data["model"], source=data["path"])
    model.config, model.step = cfg, int(data["step"])
    return model.to(device).eval()


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; otherwise torch.device(name) (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise config_mod.ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def read_image(path: str | Path, image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """An image file -> (model input (1, 3, S, S) ImageNet-normalised, RGB uint8 (H, W, 3) as read).

    Transparent pixels are composited on white (the renderer's background).
    """
    from PIL import Image, UnidentifiedImageError

    from .data.dataset import normalise_image

    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"input image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    if img.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    rgb = np.asarray(img.convert("RGB"))
    return normalise_image(rgb, image_size)[None], rgb


def primitive_meshes(primitives: Primitives, min_vertices: int = 5000) -> list[tuple[np.ndarray, np.ndarray]]:
    """Meshes of batch element 0: M pairs (vertices (V, 3) float64, faces (F, 3) int64)."""
    with torch.no_grad():
        verts, faces = primitives.select(0).meshes(min_vertices)
    f = faces.cpu().numpy()
    return [(v.double().cpu().numpy(), f) for v in verts[0]]


def export_parts(primitives: Primitives, out_dir: str | Path, min_vertices: int = 5000,
                 coloured: str = "ply") -> list[Path]:
    """Write part_000.obj ... (one closed mesh per primitive) and one coloured mesh ``parts.<ply|glb>``.

    ``primitives`` must hold one shape (batch size 1). Returns the written paths.
    """
    import trimesh

    if coloured not in ("ply", "glb"):
        raise ValueError(f"coloured mesh format must be 'ply' or 'glb', got {coloured!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, parts = [], []
    for k, ((v, f), rgb) in enumerate(zip(primitive_meshes(primitives, min_vertices), distinct_colours(primitives.n_primitives))):
        mesh = trimesh.Trimesh(v, f, process=False)
        mesh.visual.vertex_colors = np.array([*rgb, 255], dtype=np.uint8)
        parts.append(mesh)
        written.append(export_mesh(mesh, out / f"part_{k:03d}.obj"))
    written.append(export_mesh(trimesh.util.concatenate(parts), out / f"parts.{coloured}"))
    return written


def export_mesh(mesh, path: Path) -> Path:
    """Write a trimesh mesh (format from the suffix) through a temp name then rename (a crash never leaves a half-written mesh)."""
    with atomic_path(path) as tmp:
        mesh.export(tmp)
    return path


def render_primitives(primitives: Primitives, camera, size: int, min_vertices: int = 1000) -> np.ndarray:
    """(size, size, 3) uint8 view of the primitives (distinct colours) from a data ``render.Camera``."""
    from .data.render import render_meshes

    meshes = [(v, f, rgb) for (v, f), rgb in zip(primitive_meshes(primitives, min_vertices),
                                                   distinct_colours(primitives.n_primitives))]
    return render_meshes(meshes, camera, size=size)


def default_camera(size: int = 224):
    """The data's fixed view 0 around the unit volume box (used for inputs without a camera)."""
    from .data.render import FIXED_VIEW, orbit_camera

    return orbit_camera(*FIXED_VIEW, UNIT_BOX, size)


def side_by_side(images: list[np.ndarray], size: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 images to size x size and place them in a row."""
    from PIL import Image

    tiles = [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) if im.shape[:2] != (size, size)
             else im for im in images]
    return np.concatenate(tiles, axis=1)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 image atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp)
    return path


@torch.no_grad()
def union_mesh(primitives: Primitives, box: np.ndarray = UNIT_BOX, resolution: int = 32, levels: int = 2,
               chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """One watertight mesh of the union {G(x) < 0} by marching cubes (batch element 0).

    Multiresolution like Occupancy Networks' MISE: G is evaluated on a ``resolution``^3-cell grid over
    ``box``; each of ``levels`` refinements halves the cell size, interpolates G trilinearly and
    re-evaluates exactly only the points of cells near the surface (sign change in a cell or a
    neighbour). Final grid: resolution * 2^levels cells per side. Returns vertices (V, 3), faces (F, 3)
    with outward orientation. G runs through npkernels.implicit_union (fused on GPU).
    """
    from scipy import ndimage
    from skimage.measure import marching_cubes

    prims = primitives.select(0)
    device, dtype = prims.cond.device, prims.cond.dtype
    lo, hi = np.asarray(box, dtype=np.float64)

    def evaluate(points: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(points), chunk):
            x = torch.as_tensor(points[s:s + chunk], device=device, dtype=dtype)[None]
            out.append(prims.implicit(x).value[0].double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def grid_points(n: int, index: np.ndarray) -> np.ndarray:
        return lo + index * ((hi - lo) / n)

    n = resolution
    idx = np.stack(np.meshgrid(*[np.arange(n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    values = evaluate(grid_points(n, idx)).reshape(n + 1, n + 1, n + 1)
    for _ in range(levels):
        inside = values < 0
        corners = [inside[i:i + n, j:j + n, k:k + n] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        mixed = np.logical_or.reduce(corners) & ~np.logical_and.reduce(corners)  # corners disagree
        mixed = ndimage.binary_dilation(mixed, iterations=1)
        fine = ndimage.zoom(values, (2 * n + 1) / (n + 1), order=1, grid_mode=False)
        active = np.zeros((2 * n + 1,) * 3, dtype=bool)
        for a in (0, 1, 2):
            for b in (0, 1, 2):
                for c in (0, 1, 2):
                    active[a:2 * n + a:2, b:2 * n + b:2, c:2 * n + c:2] |= mixed
        n = 2 * n
        where = np.argwhere(active)
        fine[active] = evaluate(grid_points(n, where))
        values = fine
    padded = np.pad(values, 1, constant_values=max(1.0, float(values.max())))  # closes the surface at the box
    step = (hi - lo) / n
    verts, faces, _, _ = marching_cubes(padded, level=0.0, spacing=tuple(step))
    verts = verts - step + lo
    return verts, orient_outward(verts, faces.astype(np.int64))
