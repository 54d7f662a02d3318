"""Headless renderer: flat-shaded meshes on a white background, no GL and no display.

Camera convention (stored with every rendered view): OpenCV pinhole. ``Rt`` (3, 4) maps world to camera
coordinates, ``x_cam = R @ x_world + t``, with x right, y down, z forward (into the scene); ``K`` (3, 3) maps
camera coordinates to pixels, ``u = K[0,0] x/z + K[0,2]``, ``v = K[1,1] y/z + K[1,2]``, where pixel (row i,
column j) covers u in [j, j+1) and v in [i, i+1) (its centre is at j + 0.5, i + 0.5).

Views are orbits around the volume box (world frame Y up, objects facing +Z): azimuth 0 looks from +Z,
positive azimuth turns the eye towards +X, positive elevation lifts it. The fixed view is ``FIXED_VIEW``.

Backends: ``raster`` (a vectorised NumPy z-buffer rasteriser, sampling pixel centres) and ``embree`` (embreex
ray casting, one ray per pixel centre; optional). Both return the visible face per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sampling import face_normals

FIXED_VIEW = (30.0, 20.0)  # (azimuth, elevation) in degrees of view 0
FOV_DEG = 40.0  # vertical field of view
RANDOM_ELEVATION = (-10.0, 45.0)  # range of random views' elevations, degrees
DEFAULT_RGB = (180, 190, 215)
AMBIENT = 0.3
_LIGHT_CAM = np.array([0.45, 0.65, 0.6])  # direction of travel of the key light, from the viewer's upper left
_BACKENDS = ("auto", "embree", "raster")
_NEAR = 1e-3  # near plane of the rasteriser (camera z)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: ``K`` (3, 3) intrinsics in pixels, ``Rt`` (3, 4) world->camera, image size."""

    K: np.ndarray
    Rt: np.ndarray
    height: int
    width: int

    @property
    def eye(self) -> np.ndarray:
        """Camera centre in world coordinates (3,)."""
        return -self.Rt[:, :3].T @ self.Rt[:, 3]

    def resized(self, height: int, width: int) -> Camera:
        """The same view rendered at another resolution."""
        K = self.K.copy()
        K[0] *= width / self.width
        K[1] *= height / self.height
        return Camera(K, self.Rt, height, width)


def look_at(eye, target, up=(0.0, 1.0, 0.0), fov_deg: float = FOV_DEG, size: int = 224) -> Camera:
    """A square ``size`` x ``size`` camera at ``eye`` looking at ``target`` with world ``up``."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)  # image x (right) = forward x up; image y (down) = forward x right
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: the view direction is parallel to the up vector")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    f = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return Camera(K, np.concatenate([R, (-R @ eye)[:, None]], axis=1), size, size)


def orbit_camera(
    azimuth_deg: float, elevation_deg: float, box, size: int = 224, fov_deg: float = FOV_DEG
) -> Camera:
    """A camera on an orbit around the centre of ``box`` (2, 3), framing its longest side."""
    box = np.asarray(box, dtype=np.float64)
    centre = box.mean(axis=0)
    half_view = 0.5 * float((box[1] - box[0]).max())
    dist = half_view / np.tan(np.radians(fov_deg) / 2) + 0.5 * float((box[1] - box[0]).max())
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    direction = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    return look_at(centre + dist * direction, centre, fov_deg=fov_deg, size=size)


def view_angles(n_views: int, rng: np.random.Generator, first=FIXED_VIEW) -> np.ndarray:
    """(n_views, 2) azimuth/elevation in degrees: the fixed view ``first`` first, then random views."""
    angles = [tuple(first)]
    for _ in range(n_views - 1):
        angles.append((float(rng.uniform(0, 360)), float(rng.uniform(*RANDOM_ELEVATION))))
    return np.asarray(angles, dtype=np.float64)


def project(camera: Camera, points: np.ndarray):
    """World points (N, 3) -> (pixel coordinates (N, 2) as (u, v), depth (N,))."""
    cam = np.asarray(points, dtype=np.float64) @ camera.Rt[:, :3].T + camera.Rt[:, 3]
    uv = cam @ camera.K.T
    return uv[:, :2] / uv[:, 2:3], cam[:, 2]


def embree_available() -> bool:
    """Whether the embreex ray caster can be imported."""
    try:
        import embreex  # noqa: F401
    except ImportError:
        return False
    return True


def face_ids(vertices: np.ndarray, faces: np.ndarray, camera: Camera, backend: str = "auto") -> np.ndarray:
    """Index of the visible face per pixel, (H, W) int64, -1 for background.

    ``auto`` rasterises (faster here: 8 ms vs 16 ms for 14k faces at 224x224) unless a face crosses the
    camera's near plane, which the rasteriser drops; then it ray casts when embreex is installed.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"render backend must be one of {_BACKENDS}, got {backend!r}")
    if len(faces) == 0:
        return np.full((camera.height, camera.width), -1, dtype=np.int64)
    if backend == "auto":
        _, depth = project(camera, vertices)
        clipped = (depth[faces] <= _NEAR).any()
        backend = "embree" if clipped and embree_available() else "raster"
    return _raycast(vertices, faces, camera) if backend == "embree" else _rasterise(vertices, faces, camera)


def distinct_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 saturated colours with hues spread by the golden angle (previews of primitives)."""
    import colorsys

    hues = (np.arange(n) * 0.618033988749895) % 1.0
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.65, 0.95) for h in hues]).reshape(-1, 3)
    return np.rint(255 * rgb).astype(np.uint8)


def render_meshes(meshes, camera: Camera, size: int | None = None, backend: str = "auto") -> np.ndarray:
    """Render a list of ``(vertices (V, 3), faces (F, 3), rgb)`` to an (H, W, 3) uint8 image.

    ``rgb`` is three 0-255 values (None: ``DEFAULT_RGB``). ``size`` re-renders the camera's view at
    ``size`` x ``size``. Flat Lambert shading, two-sided, with ambient light ``AMBIENT``.
    """
    if size is not None and (size, size) != (camera.height, camera.width):
        camera = camera.resized(size, size)
    verts, tris, colours, offset = [], [], [], 0
    for v, f, rgb in meshes:
        v, f = np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)
        verts.append(v)
        tris.append(f + offset)
        colours.append(np.broadcast_to(np.asarray(DEFAULT_RGB if rgb is None else rgb, float), (len(f), 3)))
        offset += len(v)
    image = np.full((camera.height, camera.width, 3), 255, dtype=np.uint8)
    if offset == 0:
        return image
    verts, tris, colours = np.concatenate(verts), np.concatenate(tris), np.concatenate(colours)
    ids = face_ids(verts, tris, camera, backend)
    hit = ids >= 0
    normals = face_normals(verts, tris)[ids[hit]]
    rays = verts[tris[ids[hit], 0]] - camera.eye
    normals *= -np.sign(np.einsum("ij,ij->i", normals, rays))[:, None]  # two-sided: face the viewer
    light = camera.Rt[:, :3].T @ (_LIGHT_CAM / np.linalg.norm(_LIGHT_CAM))
    shade = AMBIENT + (1 - AMBIENT) * np.clip(-(normals @ light), 0, 1)
    image[hit] = np.clip(colours[ids[hit]] * shade[:, None], 0, 254).astype(np.uint8)
    return image


def render_points(points, camera: Camera, size: int | None = None, rgb=None, normals=None,
                  radius: int = 1) -> np.ndarray:
    """Render a point cloud, ``points`` (N, 3), as square splats of ``2 * radius + 1`` pixels; (H, W, 3) uint8.

    With unit ``normals`` (N, 3) each point is shaded like a mesh face (two-sided Lambert, ``AMBIENT``);
    without, flat. ``rgb``: three 0-255 values (None: ``DEFAULT_RGB``). The nearest point wins each pixel.
    """
    if size is not None and (size, size) != (camera.height, camera.width):
        camera = camera.resized(size, size)
    H, W = camera.height, camera.width
    image = np.full((H, W, 3), 255, dtype=np.uint8)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    uv, depth = project(camera, points)
    keep = np.flatnonzero(depth > _NEAR)
    if len(keep) == 0:
        return image
    colour = np.asarray(DEFAULT_RGB if rgb is None else rgb, dtype=np.float64)
    shade = np.ones(len(keep))
    if normals is not None:
        n = np.asarray(normals, dtype=np.float64).reshape(-1, 3)[keep]
        n *= -np.sign(np.einsum("ij,ij->i", n, points[keep] - camera.eye))[:, None]  # face the viewer
        light = camera.Rt[:, :3].T @ (_LIGHT_CAM / np.linalg.norm(_LIGHT_CAM))
        shade = AMBIENT + (1 - AMBIENT) * np.clip(-(n @ light), 0, 1)
    offsets = np.arange(-radius, radius + 1)
    dx, dy = (a.ravel() for a in np.meshgrid(offsets, offsets))
    px = (np.floor(uv[keep, 0])[:, None] + dx).ravel().astype(np.int64)
    py = (np.floor(uv[keep, 1])[:, None] + dy).ravel().astype(np.int64)
    owner = np.repeat(np.arange(len(keep)), len(dx))
    inside = (px >= 0) & (px < W) & (py >= 0) & (py < H)
    pix, owner = (py * W + px)[inside], owner[inside]
    order = np.lexsort((depth[keep][owner], pix))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pix[order][1:] != pix[order][:-1]
    nearest = order[first]
    flat = image.reshape(-1, 3)
    flat[pix[nearest]] = np.clip(colour * shade[owner[nearest], None], 0, 254).astype(np.uint8)
    return image


def _pixel_rays(camera: Camera):
    j, i = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    pix = np.stack([j.ravel(), i.ravel(), np.ones(j.size)], axis=1)
    dirs = pix @ np.linalg.inv(camera.K).T @ camera.Rt[:, :3]  # rows: R^T K^-1 [u, v, 1]
    return np.broadcast_to(camera.eye, dirs.shape), dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def _raycast(vertices, faces, camera: Camera) -> np.ndarray:
    from embreex import rtcore_scene
    from embreex.mesh_construction import TriangleMesh

    scene = rtcore_scene.EmbreeScene()
    TriangleMesh(
        scene=scene,
        vertices=np.ascontiguousarray(vertices, dtype=np.float32),
        indices=np.ascontiguousarray(faces, dtype=np.int32),
    )
    origins, dirs = _pixel_rays(camera)
    ids = scene.run(np.ascontiguousarray(origins, dtype=np.float32), dirs.astype(np.float32), output=0)
    return np.asarray(ids, dtype=np.int64).reshape(camera.height, camera.width)


def _rasterise(vertices, faces, camera: Camera, chunk: int = 1 << 21) -> np.ndarray:
    """Z-buffer rasteriser; faces crossing the near plane are dropped (orbit cameras never need it)."""
    H, W = camera.height, camera.width
    uv, z = project(camera, vertices)
    keep = np.flatnonzero((z[faces] > _NEAR).all(axis=1))
    tri = uv[faces[keep]] - 0.5  # pixel-centre coordinates: column j has its centre at 0-based j
    tz = z[faces[keep]]
    lo = np.clip(np.ceil(tri.min(axis=1)), 0, [W, H]).astype(np.int64)
    hi = np.clip(np.floor(tri.max(axis=1)), -1, [W - 1, H - 1]).astype(np.int64)
    nx, ny = np.maximum(hi - lo + 1, 0).T
    area = (tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1]) - (tri[:, 2, 0] - tri[:, 0, 0]) * (
        tri[:, 1, 1] - tri[:, 0, 1]
    )
    count = np.where(area != 0, nx * ny, 0)
    depth_buf = np.full(H * W, np.inf)
    face_buf = np.full(H * W, -1, dtype=np.int64)
    ends = np.cumsum(count)
    start = 0
    while start < len(count):
        base = ends[start] - count[start]
        stop = max(int(np.searchsorted(ends, base + chunk, side="right")), start + 1)
        sel = np.arange(start, stop)
        sel = sel[count[sel] > 0]
        start = stop
        if len(sel) == 0:
            continue
        rep = np.repeat(sel, count[sel])
        k = np.arange(len(rep)) - np.repeat(np.cumsum(count[sel]) - count[sel], count[sel])
        px = lo[rep, 0] + k % nx[rep]
        py = lo[rep, 1] + k // nx[rep]
        t = tri[rep]
        w0 = (t[:, 1, 0] - px) * (t[:, 2, 1] - py) - (t[:, 2, 0] - px) * (t[:, 1, 1] - py)
        w1 = (t[:, 2, 0] - px) * (t[:, 0, 1] - py) - (t[:, 0, 0] - px) * (t[:, 2, 1] - py)
        w = np.stack([w0, w1, area[rep] - w0 - w1], axis=1) / area[rep, None]
        inside = (w >= -1e-9).all(axis=1)
        rep, pix, w = rep[inside], (py * W + px)[inside], w[inside]
        depth = 1.0 / (w / tz[rep]).sum(axis=1)  # perspective-correct: 1/z is affine in screen space
        order = np.lexsort((depth, pix))
        first = np.ones(len(order), dtype=bool)
        first[1:] = pix[order][1:] != pix[order][:-1]
        best = order[first]
        closer = depth[best] < depth_buf[pix[best]]
        depth_buf[pix[best[closer]]] = depth[best[closer]]
        face_buf[pix[best[closer]]] = keep[rep[best[closer]]]
    return face_buf.reshape(H, W)
