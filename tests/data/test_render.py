"""Headless renderer: silhouettes against projected surface samples, backend agreement, camera maths."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from neural_parts.data import render, synthetic
from neural_parts.data.process import normalise
from neural_parts.data.readers import load_mesh
from neural_parts.data.sampling import sample_surface
from neural_parts.data.synthetic import box, ellipsoid

BOX = np.array([[-0.55] * 3, [0.55] * 3])


def _mesh(shared_meshes, name="bunny.obj"):
    pytest.importorskip("trimesh")  # reads the .obj
    v, f = load_mesh(shared_meshes / name)
    return normalise(v, "unit_box")[0], f


def _silhouette_check(v, f, cam, backend):
    fg = render.face_ids(v, f, cam, backend) >= 0
    pts, _, _ = sample_surface(v, f, 200_000, np.random.default_rng(0))
    uv, depth = render.project(cam, pts)
    assert (depth > 0).all()
    col, row = np.floor(uv).astype(int).T
    inside = (row >= 0) & (row < cam.height) & (col >= 0) & (col < cam.width)
    assert inside.all(), "the orbit camera must frame the whole unit box"
    hit = np.zeros_like(fg)
    hit[row, col] = True
    # pixels are sampled at their centres, so a point may land one pixel off the silhouette's edge
    assert binary_dilation(fg)[row, col].mean() > 0.999  # every projected surface point is on the silhouette
    assert (fg & ~binary_dilation(hit)).sum() <= 0.002 * fg.sum()  # and the silhouette holds nothing else
    assert fg[row, col].mean() > 0.9
    return fg


@pytest.mark.parametrize("view", [render.FIXED_VIEW, (200.0, -10.0), (75.0, 45.0)])
def test_raster_silhouette_matches_projected_points(shared_meshes, view):
    v, f = _mesh(shared_meshes)
    _silhouette_check(v, f, render.orbit_camera(*view, BOX, 128), "raster")


def test_raster_silhouette_of_a_part_soup():
    v, f, _ = synthetic.make_shape(0, "train", 0).soup()  # overlapping closed parts, no file reading
    _silhouette_check(
        normalise(v, "unit_box")[0], f, render.orbit_camera(*render.FIXED_VIEW, BOX, 128), "raster"
    )


def test_embree_silhouette_matches_projected_points_and_raster(shared_meshes):
    pytest.importorskip("embreex")
    v, f = _mesh(shared_meshes, "human_anny_s1_run01.obj")
    cam = render.orbit_camera(*render.FIXED_VIEW, BOX, 128)
    fg = _silhouette_check(v, f, cam, "embree")
    raster = render.face_ids(v, f, cam, "raster") >= 0
    assert (fg != raster).sum() <= 0.002 * fg.sum()


def test_render_meshes_colours_background_and_depth_order():
    near = box([0.4, 0.4, 0.4], [0, 0, 0.3])
    far = box([0.8, 0.8, 0.2], [0, 0, -0.3])
    cam = render.orbit_camera(0.0, 0.0, BOX, 96)
    for backend in ("raster", "auto"):
        img = render.render_meshes(
            [(near.vertices, near.faces, (255, 0, 0)), (far.vertices, far.faces, (0, 0, 255))],
            cam,
            backend=backend,
        )
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert (img[0, 0] == 255).all()  # white background
        centre, edge = img[48, 48], img[48, 29]
        assert centre[0] > 0 and centre[2] == 0  # the near red box hides the far blue one
        assert edge[2] > 0 and edge[0] == 0
    assert render.render_meshes([], cam).min() == 255


def test_camera_projection_and_resize():
    cam = render.orbit_camera(30.0, 20.0, BOX, 224)
    R = cam.Rt[:, :3]
    assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1)
    uv, depth = render.project(cam, np.zeros((1, 3)))
    assert np.allclose(uv, 112) and depth[0] > 0  # the box centre is at the image centre
    up_uv, _ = render.project(cam, np.array([[0.0, 0.3, 0.0]]))
    assert up_uv[0, 1] < 112  # world up is image up
    right_uv, _ = render.project(render.orbit_camera(0.0, 0.0, BOX, 224), np.array([[0.3, 0.0, 0.0]]))
    assert right_uv[0, 0] > 112  # seen from +Z, world +X is image right
    small = cam.resized(112, 112)
    assert np.allclose(render.project(small, np.ones((1, 3)))[0], render.project(cam, np.ones((1, 3)))[0] / 2)
    with pytest.raises(ValueError, match="backend"):
        render.face_ids(np.zeros((3, 3)), np.array([[0, 1, 2]]), cam, "opengl")


def test_auto_ray_casts_when_the_near_plane_clips():
    pytest.importorskip("embreex")
    room = box([4.0, 4.0, 4.0], [0, 0, 0])  # the camera stands inside this box
    cam = render.look_at([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], size=48)  # into a corner: its walls cross z = 0
    auto = render.face_ids(room.vertices, room.faces, cam)
    assert (auto >= 0).all()  # every ray hits a wall
    assert np.array_equal(auto, render.face_ids(room.vertices, room.faces, cam, "embree"))
    assert (render.face_ids(room.vertices, room.faces, cam, "raster") < 0).any()  # clipped faces are dropped


def test_preview_of_primitives_in_distinct_colours():
    colours = render.distinct_colours(8)
    assert (
        colours.shape == (8, 3)
        and len({tuple(c) for c in colours}) == 8
        and (colours.min(axis=1) < 200).all()
    )
    spheres = [ellipsoid([0.15] * 3, [x, 0, 0]) for x in (-0.3, 0.0, 0.3)]
    cam = render.orbit_camera(0.0, 0.0, BOX, 64)
    img = render.render_meshes(
        [(s.vertices, s.faces, c) for s, c in zip(spheres, colours, strict=False)], cam
    )
    for col, c in zip((14, 32, 50), colours, strict=False):  # each sphere's centre pixel has its own hue
        rgb = img[32, col].astype(float)
        assert np.allclose(rgb / rgb.max(), c / c.max(), atol=0.05)


def test_render_points_covers_the_mesh_silhouette_and_shades_by_normals():
    sphere = ellipsoid([0.3] * 3, [0, 0, 0])
    cam = render.orbit_camera(*render.FIXED_VIEW, BOX, 96)
    mesh = render.render_meshes([(sphere.vertices, sphere.faces, None)], cam)
    points, normals, _ = sample_surface(sphere.vertices, sphere.faces, 60_000, np.random.default_rng(0))
    cloud = render.render_points(points, cam, normals=normals)
    flat = render.render_points(points, cam)
    mesh_fg, cloud_fg = (mesh != 255).any(-1), (cloud != 255).any(-1)
    assert (binary_dilation(mesh_fg, np.ones((5, 5))) >= cloud_fg).all()  # square splats: 1 + radius pixels past it
    assert (cloud_fg & mesh_fg).sum() > 0.97 * mesh_fg.sum()  # and dense points cover it
    assert len(np.unique(flat[cloud_fg], axis=0)) == 1  # no normals: one flat colour
    lit = cloud[cloud_fg].astype(float).sum(-1)
    assert lit.max() - lit.min() > 200  # with normals: shaded from dark to light, like the mesh
    empty = render.render_points(np.zeros((0, 3)), cam)
    assert (empty == 255).all()
