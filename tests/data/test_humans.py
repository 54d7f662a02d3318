"""The Anny human generator: determinism, closed outward meshes, self-intersection, phenotypes, naming."""

import hashlib
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from neural_parts.data import human_motions as hm
from neural_parts.data import humans

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _anny_installed() -> bool:
    try:
        import anny  # noqa: F401
    except ImportError:
        return False
    return True


needs_anny = pytest.mark.skipif(not _anny_installed(),
                                reason="the Anny body model is not installed (pip install anny)")


@pytest.fixture(scope="module")
def gen():
    return humans.HumanGenerator(seed=0, threads=1)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_naming_and_plan():
    assert humans.FrameSpec(0, 3, "jumping_jacks", 7).name == "s03_jumping_jacks_0007"
    specs = humans.plan(3, motions=("walk", "hips"), frames_per_motion=4, seed=5)
    assert len(specs) == 3 * 2 * 4 and len({s.name for s in specs}) == len(specs)
    assert specs[0] == humans.FrameSpec(5, 0, "walk", 0) and specs[-1] == humans.FrameSpec(5, 2, "hips", 3)
    assert humans.plan(0) == [] and len(humans.plan(1, frames_per_motion=1)) == len(hm.MOTIONS)
    with pytest.raises(ValueError, match="unknown motions"):
        humans.plan(1, motions=("moonwalk",))


def test_adult_phenotypes_spread_and_alternate_genders():
    lo_hi = {k: v for k, v in humans.PHENOTYPE_RANGES.items() if k != "gender"}
    for seed in (0, 1, 2):
        drawn = [humans.draw_phenotype(seed, s) for s in range(10)]
        assert drawn == [humans.draw_phenotype(seed, s) for s in range(10)]  # deterministic
        for s, p in enumerate(drawn):
            g = "male" if s % 2 == 0 else "female"
            assert humans.gender(s) == g
            lo, hi = humans.PHENOTYPE_RANGES["gender"][g]
            assert lo <= p["gender"] <= hi
            assert humans.STATURE_M[g][0] <= p["stature"] <= humans.STATURE_M[g][1]
            for k, (lo, hi) in lo_hi.items():
                assert lo <= p[k] <= hi, (seed, s, k, p[k])
        for k, (lo, hi) in lo_hi.items():  # 5 men and 5 women cover most of each range
            for gender_subjects in (drawn[0::2], drawn[1::2]):
                values = [p[k] for p in gender_subjects]
                assert max(values) - min(values) > 0.5 * (hi - lo), (seed, k, values)
    assert humans.draw_phenotype(0, 0) != humans.draw_phenotype(1, 0)


@needs_anny
def test_joint_angles_within_anatomical_limits(gen):
    """Every motion keeps every measured joint angle in JOINT_LIMITS_DEG."""
    for subject, motion in itertools.product(range(4), hm.MOTIONS):
        skel, style = gen.skeleton(subject), humans.motion_style(0, subject, motion)
        for frame in range(0, 90, 7):
            pose = hm.motion_pose(skel, motion, frame, style)
            G, P = hm.forward_kinematics(skel, *hm.compose(skel, pose))
            angles = hm.joint_angles(skel, G, P)
            for name, (lo, hi) in hm.JOINT_LIMITS_DEG.items():
                assert lo <= angles[name] <= hi, (subject, motion, frame, name, angles[name])


def test_import_without_anny_and_error_names_the_install():
    code = (
        "import sys; sys.modules['anny'] = None\n"
        "from neural_parts.data import humans\n"
        "g = humans.HumanGenerator(0)\n"
        "try:\n"
        "    g.vertices([humans.FrameSpec(0, 0, 'walk', 0)])\n"
        "except ImportError as e:\n"
        "    assert isinstance(e, humans.AnnyUnavailableError) and 'pip install anny' in str(e), e\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@needs_anny
def test_bad_specs_are_rejected(gen):
    with pytest.raises(ValueError, match="seed 1"):
        gen.vertices([humans.FrameSpec(1, 0, "walk", 0)])
    with pytest.raises(ValueError, match="motions are"):
        gen.vertices([humans.FrameSpec(0, 0, "moonwalk", 0)])


@needs_anny
def test_deterministic_across_batches_instances_and_processes(gen):
    specs = [humans.FrameSpec(0, 0, "walk", 3), humans.FrameSpec(0, 1, "jumping_jacks", 11),
             humans.FrameSpec(0, 0, "punching", 0), humans.FrameSpec(0, 2, "hips", 40),
             humans.FrameSpec(0, 1, "walk", 3)]
    batch = gen.vertices(specs)
    assert batch.shape == (5, gen.n_vertices, 3) and batch.dtype == np.float64
    singles = np.stack([gen.vertices([s])[0] for s in specs])
    assert np.array_equal(batch, singles)
    assert np.array_equal(gen.vertices(specs[:1])[0], batch[0])  # same spec twice
    # a new instance, another order; at the builder's one thread (torch's float64 reductions may round
    # differently with another thread count: ~1e-14 m between 1 and 2 threads on some CPUs)
    again = humans.HumanGenerator(seed=0, threads=1).vertices(specs[::-1])
    assert np.array_equal(again, batch[::-1])
    assert not np.array_equal(batch[0], batch[4])  # two subjects differ
    code = (
        "import hashlib, numpy as np\n"
        "from neural_parts.data import humans\n"
        "v = humans.HumanGenerator(0, threads=1).vertices([humans.FrameSpec(0, 1, 'jumping_jacks', 11)])[0]\n"
        "print(hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == _sha(batch[1])


@needs_anny
def test_meshes_closed_outward_one_topology(gen):
    faces = gen.faces
    assert faces.dtype == np.int64 and faces.shape == (26692, 3) and gen.n_vertices == 13348
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed)  # consistently oriented: directed edges once
    undirected, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    assert (counts == 2).all()  # closed: every edge in exactly two faces
    assert gen.n_vertices - len(undirected) + len(faces) == 2  # genus 0
    assert faces.min() == 0 and faces.max() == gen.n_vertices - 1
    for v in gen.vertices([humans.FrameSpec(0, 3, "knees_up", 9), humans.FrameSpec(0, 0, "walk", 20)]):
        a, b, c = (v[faces[:, k]] for k in range(3))
        assert np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6 > 0.03  # outward, m^3 of a body


@needs_anny
def test_units_frame_and_grounding(gen):
    """Metres, Y up, facing +Z, feet on y = 0 on the ground and lifted in flight."""
    skel = gen.skeleton(2)
    specs = [humans.FrameSpec(0, 2, "hips", 0), humans.FrameSpec(0, 2, "jumping_jacks", 0)]
    stand, flight = gen.vertices(specs)
    style = humans.motion_style(0, 2, "jumping_jacks")
    lift = hm.motion_pose(skel, "jumping_jacks", 0, style).lift
    assert stand[:, 1].min() == 0.0 and flight[:, 1].min() == pytest.approx(lift) and lift > 0.005
    assert abs(stand[:, 1].max() - humans.draw_phenotype(0, 2)["stature"]) < 0.05
    toes, ankles = (humans.to_y_up(skel.head(f"{b}.L")) for b in ("toe3-1", "foot"))
    assert toes[2] > ankles[2] + 0.05  # faces +Z
    assert skel.head("upperleg01.L")[0] > 0  # +X is the body's left


@needs_anny
def test_stature_matches_drawn(gen):
    for subject in (0, 1):
        phenotype = humans._phenotype_tensor(gen.model, gen.phenotype(subject))
        z = gen.model(phenotype_kwargs=phenotype)["rest_vertices"][0, humans._body_topology()[0], 2].numpy()
        assert abs(z.max() - z.min() - humans.draw_phenotype(0, subject)["stature"]) < 0.005


@needs_anny
def test_no_self_intersection_beyond_threshold_in_every_motion(gen):
    faces = gen.faces
    specs = []
    for subject in (0, 1):
        for motion in hm.MOTIONS:
            period = hm.PERIODS[motion] * humans.motion_style(0, subject, motion).tempo * hm.FRAME_RATE
            specs += [humans.FrameSpec(0, subject, motion, int(k * period / 3)) for k in (0, 1, 2)]
    for spec, v in zip(specs, gen.vertices(specs)):
        assert humans.self_intersection(v, faces, n_points=200_000) <= humans.MAX_SELF_INTERSECTION, spec.name


@needs_anny
def test_self_intersection_flags_an_arm_through_the_torso(gen):
    """The check can fail: the left arm swung through the chest measures far above the threshold."""
    import torch

    skel = gen.skeleton(0)
    legs = {s: hm.Limb(elevation=np.radians(4), plane=np.radians(90)) for s in hm.SIDES}
    arms = {1: hm.Limb(elevation=np.radians(50), plane=np.radians(-45), hinge=np.radians(10)),
            -1: hm.Limb(elevation=np.radians(25), plane=np.radians(80), hinge=np.radians(15))}
    D, root = hm.compose(skel, hm.Pose(legs, arms))
    T = np.repeat(np.eye(4)[None], len(D), axis=0)
    T[:, :3, :3], T[0, :3, 3] = D, root
    v = gen.model(pose_parameters=torch.from_numpy(T[None]),
                  phenotype_kwargs=humans._phenotype_tensor(gen.model, gen.phenotype(0)))["vertices"]
    v = v[0, humans._body_topology()[0]].numpy()
    assert humans.self_intersection(v, gen.faces) > 3 * humans.MAX_SELF_INTERSECTION
