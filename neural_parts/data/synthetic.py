"""Procedural shapes for the built-in dataset: soups of closed parts (capsules, boxes, ellipsoids).

World frame: Y up, objects face +Z, lengths in arbitrary units (records are normalised afterwards).
Every shape is deterministic from ``(seed, split, index)``. Categories: articulated humanoids in varied
poses and proportions (a mini D-FAUST), chairs, tables and planes. Parts may overlap; the soup is labelled
in winding mode, so a point inside any part is inside the shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np

from ..geometry import orient_outward, unit_icosphere

GENERATOR_VERSION = 1
CATEGORIES = ("humanoid", "chair", "table", "plane")
# index % 6 -> category: half humanoids, one sixth each of the object classes
_CATEGORY_CYCLE = ("humanoid", "chair", "humanoid", "table", "humanoid", "plane")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_CAPSULE_SEGMENTS, _CAPSULE_RINGS = 16, 5  # around the axis; latitude rings per hemisphere
_SPHERE_SUBDIVISIONS = 2  # icosphere: 320 faces


class Part(NamedTuple):
    """A closed triangle mesh: vertices (V, 3) float64, faces (F, 3) int64 with outward normals."""

    vertices: np.ndarray
    faces: np.ndarray


@dataclass
class Shape:
    """A part soup: ``parts`` are closed ``Part`` meshes that may overlap."""

    category: str
    parts: list

    def soup(self):
        """Concatenated ``(vertices (V, 3) float64, faces (F, 3) int64, face_part (F,) int64)``."""
        verts, faces, part, offset = [], [], [], 0
        for k, m in enumerate(self.parts):
            verts.append(m.vertices)
            faces.append(m.faces + offset)
            part.append(np.full(len(m.faces), k))
            offset += len(m.vertices)
        return np.concatenate(verts), np.concatenate(faces).astype(np.int64), np.concatenate(part)


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _uniform_radians(rng: np.random.Generator, degrees_range) -> float:
    return float(np.radians(rng.uniform(*degrees_range)))


def rotation(axis, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` radians about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _outward(vertices: np.ndarray, faces: np.ndarray, R=None, t=(0.0, 0.0, 0.0)) -> Part:
    """Rotate by ``R``, translate by ``t`` and orient the faces outward (positive signed volume)."""
    v = vertices if R is None else vertices @ np.asarray(R).T
    return Part(v + np.asarray(t, dtype=np.float64), orient_outward(v, faces))


def _axis_rotation(d: np.ndarray) -> np.ndarray:
    """A rotation taking +Z to the direction of ``d``."""
    z = np.array([0.0, 0.0, 1.0])
    n = float(np.linalg.norm(d))
    axis = np.cross(z, d)
    if np.linalg.norm(axis) < 1e-9 * max(n, 1e-12):
        return np.eye(3) if d[2] >= 0 else rotation([1, 0, 0], np.pi)
    return rotation(axis, np.arccos(np.clip(d[2] / n, -1, 1)))


def capsule(p0, p1, radius: float) -> Part:
    """Capsule whose cap centres are ``p0`` and ``p1``."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    half = max(float(np.linalg.norm(p1 - p0)), 1e-6) / 2
    n, r = _CAPSULE_SEGMENTS, _CAPSULE_RINGS
    theta = np.concatenate([np.linspace(0, np.pi / 2, r + 1)[1:], np.linspace(np.pi / 2, np.pi, r + 1)[:-1]])
    shift = np.where(np.arange(2 * r) < r, half, -half)  # upper hemisphere at +half, lower at -half
    phi = 2 * np.pi * np.arange(n) / n
    rings = (
        np.stack(
            [
                np.outer(np.sin(theta), np.cos(phi)),
                np.outer(np.sin(theta), np.sin(phi)),
                np.repeat((np.cos(theta) + shift / radius)[:, None], n, axis=1),
            ],
            axis=-1,
        )
        * radius
    )
    v = np.concatenate([[[0, 0, half + radius]], rings.reshape(-1, 3), [[0, 0, -half - radius]]])
    k = np.arange(n)
    faces = [np.stack([np.zeros(n, int), 1 + k, 1 + (k + 1) % n], axis=1)]  # top fan
    for i in range(2 * r - 1):
        a, b = 1 + i * n + k, 1 + (i + 1) * n + k
        a1, b1 = 1 + i * n + (k + 1) % n, 1 + (i + 1) * n + (k + 1) % n
        faces += [np.stack([a, b, b1], axis=1), np.stack([a, b1, a1], axis=1)]
    last = 1 + (2 * r - 1) * n
    faces.append(np.stack([np.full(n, len(v) - 1), last + (k + 1) % n, last + k], axis=1))  # bottom fan
    return _outward(v, np.concatenate(faces).astype(np.int64), _axis_rotation(p1 - p0), (p0 + p1) / 2)


def box(extents, centre, R=None) -> Part:
    """Box with side lengths ``extents`` centred at ``centre``, rotated by ``R``."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    faces = np.array(
        [
            [0, 1, 3],
            [0, 3, 2],
            [4, 6, 7],
            [4, 7, 5],
            [0, 4, 5],
            [0, 5, 1],
            [2, 3, 7],
            [2, 7, 6],
            [0, 2, 6],
            [0, 6, 4],
            [1, 5, 7],
            [1, 7, 3],
        ],
        dtype=np.int64,
    )
    return _outward(corners * np.asarray(extents, dtype=np.float64), faces, R, centre)


def ellipsoid(radii, centre, R=None) -> Part:
    """Ellipsoid with semi-axes ``radii`` centred at ``centre``, rotated by ``R``."""
    v, f = unit_icosphere(_SPHERE_SUBDIVISIONS)
    return _outward(v * np.asarray(radii, dtype=np.float64), f, R, centre)


# ----------------------------------------------------------------------------------------------- humans
class _Pose(NamedTuple):
    """Ranges in degrees (per side (left, right) where paired) of one pose family."""

    abd: tuple  # shoulder abduction
    flex: tuple  # shoulder flexion (left, right)
    elbow: tuple  # elbow flexion
    hip: tuple  # hip flexion (left, right)
    hip_abd: tuple  # hip abduction
    knee: tuple  # knee flexion (left, right)


# fmt: off
_POSES = {
    "stand": _Pose((10, 20), ((-10, 10), (-10, 10)), (5, 25),
                   ((-5, 5), (-5, 5)), (2, 8), ((0, 10), (0, 10))),
    "walk": _Pose((5, 15), ((20, 40), (-40, -20)), (15, 40),
                  ((-25, -15), (15, 30)), (2, 6), ((5, 20), (20, 45))),
    "run": _Pose((10, 25), ((40, 70), (-60, -30)), (80, 110),
                 ((-35, -15), (40, 70)), (2, 8), ((30, 70), (60, 100))),
    "arms_up": _Pose((140, 175), ((-10, 20), (-10, 20)), (0, 30),
                     ((-5, 5), (-5, 5)), (3, 10), ((0, 10), (0, 10))),
    "t_pose": _Pose((80, 100), ((-10, 10), (-10, 10)), (0, 15),
                    ((-5, 5), (-5, 5)), (2, 8), ((0, 5), (0, 5))),
    "jumping_jack": _Pose((110, 150), ((-10, 10), (-10, 10)), (0, 20),
                          ((-5, 5), (-5, 5)), (18, 30), ((0, 15), (0, 15))),
    "sit": _Pose((5, 20), ((20, 50), (20, 50)), (40, 80),
                 ((75, 95), (75, 95)), (5, 12), ((80, 100), (80, 100))),
    "kick": _Pose((30, 60), ((-20, 20), (-20, 20)), (20, 60),
                  ((-5, 5), (60, 95)), (2, 8), ((0, 15), (0, 40))),
    "squat": _Pose((5, 20), ((60, 90), (60, 90)), (0, 30),
                   ((60, 90), (60, 90)), (10, 20), ((90, 120), (90, 120))),
}
# fmt: on


def humanoid(rng: np.random.Generator) -> Shape:
    """An articulated human figure: 17 parts, pose from one of ``_POSES`` plus jitter, random build."""
    u = partial(_uniform, rng)
    rad = partial(_uniform_radians, rng)
    pose = _POSES[list(_POSES)[rng.integers(len(_POSES))]]
    build = u(0.8, 1.3)  # limb thickness factor
    thigh, shin = u(0.40, 0.48), u(0.38, 0.46)
    upper_arm, forearm = u(0.27, 0.33), u(0.24, 0.30)
    spine, shoulder_w, hip_w = u(0.45, 0.55), u(0.34, 0.44), u(0.17, 0.24)
    head_r = u(0.10, 0.125)
    down = np.array([0.0, -1.0, 0.0])
    pelvis = np.array([0.0, thigh + shin + 0.08, 0.0])
    lean = rotation([1, 0, 0], rad((-10, 15))) @ rotation([0, 0, 1], rad((-8, 8)))
    up = lean @ np.array([0.0, 1.0, 0.0])
    chest = pelvis + spine * up
    neck = chest + 0.09 * up
    parts = [
        ellipsoid(np.array([hip_w * 0.85, 0.11, 0.11]) * [1, 1, build], pelvis + 0.03 * up, lean),
        ellipsoid(np.array([shoulder_w * 0.46, spine * 0.55, 0.11 * build]), pelvis + 0.5 * spine * up, lean),
        capsule(chest, neck, 0.05 * build),
        ellipsoid([head_r * 0.85, head_r * 1.1, head_r], neck + head_r * 1.1 * up, lean),
    ]
    side_axis = lean @ np.array([1.0, 0.0, 0.0])
    for s in (-1.0, 1.0):  # s = +1: figure's left (+X)
        i = int(s > 0)
        shoulder = chest + s * 0.42 * shoulder_w * side_axis - 0.08 * up  # inside the torso
        R_arm = lean @ rotation([1, 0, 0], -rad(pose.flex[i])) @ rotation([0, 0, 1], s * rad(pose.abd))
        elbow = shoulder + upper_arm * (R_arm @ down)
        R_fore = R_arm @ rotation([1, 0, 0], -rad(pose.elbow))
        wrist = elbow + forearm * (R_fore @ down)
        parts += [
            capsule(shoulder, elbow, 0.045 * build),
            capsule(elbow, wrist, 0.037 * build),
            ellipsoid([0.035, 0.07, 0.045], wrist + 0.05 * (R_fore @ down), R_fore),
        ]
        hip = pelvis + np.array([s * 0.5 * hip_w, -0.04, 0.0])
        R_leg = rotation([1, 0, 0], -rad(pose.hip[i])) @ rotation([0, 0, 1], s * rad(pose.hip_abd))
        knee = hip + thigh * (R_leg @ down)
        R_shin = R_leg @ rotation([1, 0, 0], rad(pose.knee[i]))
        ankle = knee + shin * (R_shin @ down)
        parts += [
            capsule(hip, knee, 0.07 * build),
            capsule(knee, ankle, 0.05 * build),
            box([0.09, 0.07, 0.24], ankle + R_shin @ np.array([0.0, -0.03, 0.07]), R_shin),
        ]
    yaw = rotation([0, 1, 0], rad((-40, 40)))
    return Shape("humanoid", [Part(m.vertices @ yaw.T, m.faces) for m in parts])


# ---------------------------------------------------------------------------------------------- objects
def chair(rng: np.random.Generator) -> Shape:
    """Seat, four legs, a (tilted) back and optional arm rests."""
    u = partial(_uniform, rng)
    w, d, h, t = u(0.40, 0.60), u(0.40, 0.55), u(0.40, 0.50), u(0.04, 0.08)
    leg, round_legs = u(0.03, 0.05), rng.random() < 0.4
    parts = [box([w, t, d], [0, h, 0])]
    for sx in (-1, 1):
        for sz in (-1, 1):
            x, z = sx * (w / 2 - leg), sz * (d / 2 - leg)
            parts.append(
                capsule([x, leg, z], [x, h, z], leg)  # legs reach into the seat: no coplanar contact
                if round_legs
                else box([2 * leg, h, 2 * leg], [x, h / 2, z])
            )
    back_h, tilt = u(0.35, 0.60), np.radians(u(0, 15))
    R = rotation([1, 0, 0], -tilt)
    parts.append(box([w, back_h, t], np.array([0, h, -d / 2 + t / 2]) + R @ [0, back_h / 2, 0], R))
    if rng.random() < 0.4:
        for sx in (-1, 1):
            x = sx * (w / 2 - 0.02)
            parts += [
                box([0.04, 0.22, 0.04], [x, h + 0.11, d / 2 - 0.05]),
                box([0.06, 0.04, d], [x, h + 0.23, 0]),
            ]
    return Shape("chair", parts)


def table(rng: np.random.Generator) -> Shape:
    """A rectangular top on four legs, or a round top on a pedestal."""
    u = partial(_uniform, rng)
    h, t = u(0.65, 0.80), u(0.03, 0.07)
    if rng.random() < 0.6:
        w, d, leg = u(0.8, 1.6), u(0.6, 0.9), u(0.03, 0.05)
        parts = [box([w, t, d], [0, h, 0])]
        inset = u(0.02, 0.12)
        for sx in (-1, 1):
            for sz in (-1, 1):
                x, z = sx * (w / 2 - leg - inset), sz * (d / 2 - leg - inset)
                parts.append(box([2 * leg, h, 2 * leg], [x, h / 2, z]))
        return Shape("table", parts)
    r = u(0.35, 0.6)
    return Shape(
        "table",
        [
            ellipsoid([r, t, r], [0, h, 0]),
            capsule([0, 0.05, 0], [0, h, 0], u(0.04, 0.08)),
            ellipsoid([r * 0.55, 0.03, r * 0.55], [0, 0.03, 0]),
        ],
    )


def plane(rng: np.random.Generator) -> Shape:
    """Fuselage, swept wings with dihedral, tail fin, stabilisers and 0, 2 or 4 engines (nose to +Z)."""
    u = partial(_uniform, rng)
    length, radius = u(1.6, 2.2), u(0.09, 0.14)
    span, chord, sweep, dihedral = u(1.4, 2.2), u(0.22, 0.38), np.radians(u(5, 35)), np.radians(u(0, 8))
    wing_z = u(-0.15, 0.1)
    parts = [ellipsoid([radius, radius, length / 2], [0, 0, 0])]
    for s in (-1, 1):
        R = rotation([0, 1, 0], s * sweep) @ rotation([0, 0, 1], s * dihedral)
        parts.append(
            box([span / 2, 0.03, chord], np.array([0, -0.3 * radius, wing_z]) + R @ [s * span / 4, 0, 0], R)
        )
        Rs = rotation([0, 1, 0], s * sweep)
        parts.append(
            box(
                [span / 6, 0.02, chord * 0.5],
                np.array([0, 0.2 * radius, -0.42 * length]) + Rs @ [s * span / 12, 0, 0],
                Rs,
            )
        )
    fin_h = u(0.25, 0.4)
    R = rotation([1, 0, 0], -np.radians(u(20, 40)))
    parts.append(
        box(
            [0.025, fin_h, chord * 0.7],
            np.array([0, radius * 0.6, -0.42 * length]) + R @ [0, fin_h / 2, 0],
            R,
        )
    )
    n_eng = int(rng.choice([0, 2, 4]))
    for k in range(n_eng // 2):
        for s in (-1, 1):
            x = s * span * (0.18 + 0.14 * k)
            z = wing_z + chord * 0.3 - np.tan(sweep) * abs(x)
            parts.append(
                capsule([x, -0.3 * radius - 0.05, z - 0.12], [x, -0.3 * radius - 0.05, z + 0.12], 0.06)
            )
    return Shape("plane", parts)


_BUILDERS = {"humanoid": humanoid, "chair": chair, "table": table, "plane": plane}


def category_of(index: int, categories=CATEGORIES) -> str:
    """Category of the ``index``-th shape of a split drawn from ``categories`` (humanoids weigh 3x)."""
    unknown = set(categories) - set(CATEGORIES)
    if unknown or not categories:
        raise ValueError(f"unknown synthetic categories {sorted(unknown)}; choose from {CATEGORIES}")
    cycle = [c for c in _CATEGORY_CYCLE if c in categories]
    return cycle[index % len(cycle)]


def make_shape(seed: int, split: str, index: int, categories=CATEGORIES) -> Shape:
    """The ``index``-th shape of ``split`` for ``seed`` (deterministic)."""
    category = category_of(index, categories)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index, GENERATOR_VERSION])
    return _BUILDERS[category](rng)
