"""PNG previews of predicted primitives (headless renderer): tiles, rows with column titles, atomic PNGs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .data.process import UNIT_BOX
from .data.render import FIXED_VIEW, distinct_colours, orbit_camera, render_meshes, render_points
from .meshing import primitive_meshes

SIDE_VIEW = (120.0, 15.0)  # (azimuth, elevation) of the second view of every preview
TITLE_HEIGHT = 18  # pixels of the header row of ``titled_grid``
TARGET_POINTS = 30_000  # surface samples drawn in a target tile (a fixed subset)
RECORD_TITLES = ["input", "prediction (input view)", "prediction (side)", "target (side)"]


def coloured_meshes(primitives, min_vertices: int = 1000) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batch element 0's primitive meshes with their colours: (vertices, faces, rgb) for ``render_meshes``.
    Meshing runs the network on every vertex: compute them once for several views."""
    return [(v, f, rgb) for (v, f), rgb in zip(primitive_meshes(primitives, min_vertices),
                                               distinct_colours(primitives.n_primitives))]


def render_primitives(primitives, camera, size: int, min_vertices: int = 1000) -> np.ndarray:
    """(size, size, 3) uint8 view of batch element 0's primitives (distinct colours) from a ``render.Camera``."""
    return render_meshes(coloured_meshes(primitives, min_vertices), camera, size=size)


def render_target(record: dict, camera, size: int) -> np.ndarray:
    """(size, size, 3) uint8 view of a record's surface samples (shaded by their normals): the target."""
    points, normals = record["surface_points"], record["surface_normals"]
    if len(points) > TARGET_POINTS:
        keep = np.random.default_rng(0).choice(len(points), TARGET_POINTS, replace=False)
        points, normals = points[keep], normals[keep]
    return render_points(points, camera, size, normals=normals, radius=max(1, size // 160))


def record_preview(model, dataset, indices: list[int], device, min_size: int = 192) -> np.ndarray:
    """Rows of ``RECORD_TITLES`` for records ``indices`` of ``dataset`` (a NeuralPartsDataset): the input image,
    the predicted primitives from the input camera and from the side, and the target's surface points from the
    side; one titled (H, W, 3) uint8 grid with tiles of the records' image size, at least ``min_size``."""
    import torch

    from .data.render import Camera

    rows, size = [], 0
    for i in indices:
        rec, item = dataset.record(i), dataset[i]
        image = rec["images"][0]
        size = max(image.shape[0], min_size)
        with torch.no_grad():
            prims = model.predict(model.inputs({k: v[None].to(device) for k, v in item.items()}))
        side, meshes = view_camera(SIDE_VIEW, size), coloured_meshes(prims)
        camera = Camera(rec["camera_K"][0], rec["camera_Rt"][0], *image.shape[:2])
        rows.append([image, render_meshes(meshes, camera, size), render_meshes(meshes, side, size),
                     render_target(rec, side, size)])
    return titled_grid(rows, RECORD_TITLES, size)


def view_camera(view: tuple[float, float] = FIXED_VIEW, size: int = 224, box=UNIT_BOX):
    """An orbit camera around the volume box (``FIXED_VIEW`` is the data's view 0)."""
    return orbit_camera(*view, np.asarray(box), size)


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


def titled_grid(rows: list[list[np.ndarray]], titles: list[str], size: int) -> np.ndarray:
    """Rows of tiles (each resized to size x size) under a header naming every column; (H, W, 3) uint8."""
    from PIL import Image, ImageDraw

    body = np.concatenate([side_by_side(row, size) for row in rows], axis=0)
    header = Image.new("RGB", (body.shape[1], TITLE_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    for k, title in enumerate(titles):
        while len(title) > 1 and draw.textlength(title) > size - 4:  # tiny tiles: cut the title to fit
            title = title.rstrip("…")[:-1] + "…"
        width = draw.textlength(title)
        draw.text((k * size + max(2.0, (size - width) / 2), 3), title, fill=(40, 40, 40))
    return np.concatenate([np.asarray(header), body], axis=0)
