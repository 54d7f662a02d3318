"""D-FAUST-like humans from the Anny body model (PyPI ``anny``; Apache-2.0 code, CC0 MakeHuman assets).

Each subject is a fixed adult body shape drawn from ``(seed, subject)``; each performs the motions of
``human_motions.MOTIONS`` (D-FAUST's exercises plus Anny's walk cycle) as consecutive frames at
``FRAME_RATE``. A frame is named ``s03_jumping_jacks_0007`` (``FrameSpec.name``) and is a pure function of
``(seed, subject, motion, frame)``: bit-identical across processes, batch compositions and generator
instances at one torch thread count (the phenotype part of Anny's forward pass runs at batch size 1 per
subject, the pose part is computed per body; tests/data/test_humans.py checks it). The dataset builder poses
with 1 thread: on some CPUs another count changes the last bits of torch's float64 reductions (~1e-14 m).

Output meshes: the outer body surface only, Anny's largest connected component (the eyes and the
teeth/tongue piece are separate components and are dropped; the mouth cavity is a pocket of the body
surface behind the lips and stays). 13,348 vertices and 26,692 triangles, closed (every edge in exactly two
faces), genus 0, outward-oriented, one topology for every frame (vertex i is the same body point). Units
metres; Y up, the body faces +Z, +X is its left (Anny's Z-up frame rotated: (x, y, z) -> (x, z, -y)); the
lowest point is at y = 0 while touching the ground, raised by the flight height during jumps and hops; x/z
keep Anny's origin (under the reference pelvis).

Body shapes (``PHENOTYPE_RANGES``; Anny parameters in [0, 1]): genders alternate (even subjects male,
odd female; Anny's gender 0 is male, 1 female); within each gender a low-discrepancy sequence, shifted by
the seed, spreads age, weight, muscle, proportions and stature over the ranges, so any first n subjects are
spread evenly. Stature is drawn in metres (A-pose, sole to crown) and converted to Anny's height
parameter per subject.

Model loading: ``anny.Anny()`` (rig "anny", 104 bones) with dense LBS skinning (``skinning_method="lbs"``,
pure PyTorch: no Warp kernel to compile). The first construction on a machine builds Anny's model data
from its assets and caches it under ``$ANNY_CACHE_DIR`` (default ``~/.cache/anny/v14``, ~830 MB written,
~75-110 s, 1.5 GB peak memory); later loads read only the 51 MB ``build_compact_model_data_*.safetensors``
(~0.2 s, after ~2.5 s to import anny and ~2 s for torch). Anny writes that cache without a temporary file,
so load the model once (``load_model()``) in the parent before starting workers.
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .human_motions import FRAME_RATE, MOTIONS, Skeleton, Style, compose, motion_pose

GENERATOR_VERSION = 1
CHUNK = 32  # bodies per Anny forward pass (one subject at a time)
MAX_SELF_INTERSECTION = 2e-3  # max fraction of body volume with |winding| > 1.5 (see ``self_intersection``)

PHENOTYPE_RANGES = {
    # Anny parameter ranges per gender; D-FAUST has 5 men and 5 women of normal to heavy, athletic to soft
    # builds; these span it and more, short of the caricatural extremes (0 and 1 of weight/muscle).
    "gender": {"male": (0.0, 0.1), "female": (0.9, 1.0)},
    # adults only: Anny's morphological-age calibration (data/shape_calibration/*.pth) maps 0.77 to 18 and
    # 0.83 to 64 years, 1.0 to 110; 0.86 is ~72
    "age": (0.77, 0.86),
    "weight": (0.15, 0.8),  # 0 emaciated, 1 obese
    "muscle": (0.15, 0.85),  # 0 no muscle tone, 1 bodybuilder
    "proportions": (0.15, 0.85),  # ideal (0) to uncommon (1) proportions
}
STATURE_M = {"male": (1.60, 1.95), "female": (1.50, 1.85)}  # adult 2nd-99th percentiles, roughly
_PHENOTYPE_DIMS = ("gender", "age", "weight", "muscle", "proportions", "stature")


class AnnyUnavailableError(ImportError):
    """The ``anny`` body model package is not installed."""


def _require_anny():
    try:
        import anny
    except ImportError as exc:
        raise AnnyUnavailableError(
            f"the human generator needs the Anny body model: pip install anny ({exc})") from exc
    return anny


@lru_cache(maxsize=1)
def load_model():
    """Anny's full-body model (float64, dense LBS), loaded once per process (see the module notes)."""
    anny = _require_anny()
    return anny.Anny(skinning_method="lbs")


def subject_id(subject: int) -> str:
    return f"s{subject:02d}"


@dataclass(frozen=True, order=True)
class FrameSpec:
    """One frame: ``frame`` (0-based, at FRAME_RATE) of ``motion`` by ``subject`` of the dataset ``seed``."""

    seed: int
    subject: int
    motion: str
    frame: int

    @property
    def name(self) -> str:
        """Stable record name, e.g. ``s03_jumping_jacks_0007``."""
        return f"{subject_id(self.subject)}_{self.motion}_{self.frame:04d}"


def plan(n_subjects: int, motions=MOTIONS, frames_per_motion: int = 32, seed: int = 0) -> list:
    """Every frame 0..frames_per_motion-1 of every motion of subjects 0..n_subjects-1, as FrameSpecs."""
    unknown = [m for m in motions if m not in MOTIONS]
    if unknown:
        raise ValueError(f"unknown motions {unknown}; motions are {MOTIONS}")
    if n_subjects < 0 or frames_per_motion < 0:
        raise ValueError(f"plan: n_subjects and frames_per_motion must be >= 0, got {n_subjects} and "
                         f"{frames_per_motion}")
    return [FrameSpec(seed, s, m, f)
            for s in range(n_subjects) for m in motions for f in range(frames_per_motion)]


def gender(subject: int) -> str:
    return "male" if subject % 2 == 0 else "female"


def _r_sequence(k: int, dims: int, shift: np.ndarray) -> np.ndarray:
    """Point k of Roberts' R_d low-discrepancy sequence in [0, 1)^dims, rotated by ``shift``."""
    phi = 2.0
    for _ in range(64):  # the root of x^(d+1) = x + 1
        phi = (1 + phi) ** (1.0 / (dims + 1))
    alpha = (1.0 / phi) ** np.arange(1, dims + 1)
    return (shift + (k + 1) * alpha) % 1.0


def draw_phenotype(seed: int, subject: int) -> dict:
    """Anny phenotype values (all but ``height``) and ``stature`` (metres) of a subject."""
    g = gender(subject)
    shift = np.random.default_rng([seed, 0 if g == "male" else 1, 7]).random(len(_PHENOTYPE_DIMS))
    u = dict(zip(_PHENOTYPE_DIMS, _r_sequence(subject // 2, len(_PHENOTYPE_DIMS), shift)))

    def lerp(lo_hi, t):
        return float(lo_hi[0] + (lo_hi[1] - lo_hi[0]) * t)

    out = {"gender": lerp(PHENOTYPE_RANGES["gender"][g], u["gender"])}
    out.update({k: lerp(PHENOTYPE_RANGES[k], u[k]) for k in ("age", "weight", "muscle", "proportions")})
    out["stature"] = lerp(STATURE_M[g], u["stature"])
    return out


def motion_style(seed: int, subject: int, motion: str) -> Style:
    """The seeded variation of ``motion`` for ``subject``."""
    rng = np.random.default_rng([seed, subject, zlib.crc32(motion.encode())])
    drawn = draw_phenotype(seed, subject)
    return Style.draw(rng, drawn["weight"], drawn["muscle"])


def to_y_up(vertices: np.ndarray) -> np.ndarray:
    """Anny's Z-up frame (faces -Y) -> ours (Y up, faces +Z): (x, y, z) -> (x, z, -y)."""
    return np.stack([vertices[..., 0], vertices[..., 2], -vertices[..., 1]], axis=-1)


def self_intersection(vertices: np.ndarray, faces: np.ndarray, n_points: int = 400_000,
                      seed: int = 0) -> float:
    """Fraction of the body's volume where the mesh overlaps itself: points with generalized winding number
    |w| > 1.5 over points with |w| > 0.5, among ``n_points`` uniform (seeded) points of the bounding box.

    A closed mesh without self-intersections has w in {0, 1} everywhere; w = 2 marks volume enclosed twice
    (an arm through the torso, a thigh into the other). ``MAX_SELF_INTERSECTION`` is the accepted maximum.
    """
    import npkernels

    vertices = np.asarray(vertices, dtype=np.float64)
    lo, hi = vertices.min(0), vertices.max(0)
    points = lo + (hi - lo) * np.random.default_rng(seed).random((n_points, 3))
    _, w = npkernels.inside_mesh(vertices, faces, points, return_winding=True)
    inside = int((np.abs(w) > 0.5).sum())
    return float((np.abs(w) > 1.5).sum() / max(inside, 1))


class HumanGenerator:
    """Posed Anny bodies of the dataset ``seed``. The model loads lazily, once per process.

    ``threads``: torch threads used while posing (the previous setting is restored); None leaves torch's.
    """

    def __init__(self, seed: int = 0, threads: int | None = None):
        self.seed = int(seed)
        self.threads = threads
        self._subjects = {}

    @property
    def model(self):
        return load_model()

    @property
    def faces(self) -> np.ndarray:
        """(F, 3) int64 triangles of the body surface, outward-oriented, shared by every frame."""
        return _body_topology()[1]

    @property
    def n_vertices(self) -> int:
        return len(_body_topology()[0])

    def phenotype(self, subject: int) -> dict:
        """Anny phenotype parameters of ``subject`` (``height`` solved from its stature)."""
        return self._subject(subject)[0]

    def skeleton(self, subject: int) -> Skeleton:
        """The subject's bones in its reference pose (Anny frame, metres)."""
        return self._subject(subject)[1]

    def vertices(self, specs) -> np.ndarray:
        """(len(specs), V, 3) float64 vertices (metres, Y up, grounded) of the body surface for FrameSpecs."""
        specs = list(specs)
        for s in specs:
            if s.seed != self.seed:
                raise ValueError(f"{s.name}: FrameSpec of seed {s.seed} given to the HumanGenerator of "
                                 f"seed {self.seed}")
            if s.motion not in MOTIONS or s.subject < 0 or s.frame < 0:
                raise ValueError(f"invalid FrameSpec {s}: motions are {MOTIONS}, subject and frame >= 0")
        keep = _body_topology()[0]
        out = np.empty((len(specs), len(keep), 3))
        rows_of = {}
        for i, s in enumerate(specs):
            rows_of.setdefault(s.subject, []).append(i)
        with self._torch_threads():
            for subject, rows in rows_of.items():
                for start in range(0, len(rows), CHUNK):
                    chunk = rows[start:start + CHUNK]
                    out[chunk] = self._pose(subject, [specs[i] for i in chunk], keep)
        return out

    @contextmanager
    def _torch_threads(self):
        """torch at ``self.threads`` threads inside (the previous count restored); everything computed from
        Anny runs in it, so a subject's cached body does not depend on which call built it."""
        import torch

        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _subject(self, subject: int):
        if subject not in self._subjects:
            with self._torch_threads():
                self._subjects[subject] = _build_subject(self.model, draw_phenotype(self.seed, subject))
        return self._subjects[subject]

    def _pose(self, subject: int, specs, keep) -> np.ndarray:
        import torch

        params, skel = self._subject(subject)
        deltas, lifts = [], []
        for s in specs:
            pose = motion_pose(skel, s.motion, s.frame, motion_style(self.seed, s.subject, s.motion))
            D, root = compose(skel, pose)
            T = np.repeat(np.eye(4)[None], len(D), axis=0)
            T[:, :3, :3] = D
            T[0, :3, 3] = root
            deltas.append(T)
            lifts.append(pose.lift)
        with torch.no_grad():
            v = self.model(pose_parameters=torch.from_numpy(np.stack(deltas)),
                           phenotype_kwargs=_phenotype_tensor(self.model, params))["vertices"]
        v = to_y_up(v.numpy()[:, keep])
        v[..., 1] -= v[..., 1].min(axis=1, keepdims=True) - np.asarray(lifts)[:, None]
        return v


def _phenotype_tensor(model, params: dict):
    import torch

    return torch.tensor([[params[k] for k in model.phenotype_labels]], dtype=torch.float64)


@lru_cache(maxsize=1)
def _body_topology():
    """(kept vertex indices (V,), faces (F, 3) re-indexed): Anny's largest connected component."""
    from ..geometry import mesh_components

    model = load_model()
    faces = model.faces.numpy().astype(np.int64)
    comp = mesh_components(model.template_vertices.numpy(), faces)
    faces = faces[comp == np.bincount(comp).argmax()]
    keep = np.unique(faces)
    remap = np.full(len(model.template_vertices), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    return keep, remap[faces]


def _build_subject(model, drawn: dict):
    """(Anny phenotype dict, Skeleton in the reference pose) of a drawn phenotype; height from stature."""
    import torch

    params = {k: drawn[k] for k in ("gender", "age", "weight", "muscle", "proportions")}
    keep = _body_topology()[0]

    def stature(height: float) -> float:
        with torch.no_grad():
            phenotype = _phenotype_tensor(model, {**params, "height": height})
            rest = model(phenotype_kwargs=phenotype)["rest_vertices"]
        z = rest[0, keep, 2].numpy()
        return float(z.max() - z.min())

    low, high = stature(0.0), stature(1.0)  # stature is affine in the height parameter
    params["height"] = float(np.clip((drawn["stature"] - low) / (high - low), 0.0, 1.0))
    with torch.no_grad():
        out = model(phenotype_kwargs=_phenotype_tensor(model, params))
        n = len(model.bone_labels)
        identity = torch.eye(4, dtype=torch.float64).repeat(1, n, 1, 1)
        identity[0, 0, :3, 3] = out["rest_bone_poses"][0, 0, :3, 3]
        ref = model(pose_parameters=identity, phenotype_kwargs=_phenotype_tensor(model, params))
    heads = ref["bone_poses"][0, :, :3, 3].numpy().copy()
    skel = Skeleton(tuple(model.bone_labels), np.asarray(model.bone_parents), heads)
    return params, skel


__all__ = ["FRAME_RATE", "GENERATOR_VERSION", "MAX_SELF_INTERSECTION", "MOTIONS", "PHENOTYPE_RANGES",
           "STATURE_M", "AnnyUnavailableError", "FrameSpec", "HumanGenerator", "draw_phenotype", "gender",
           "load_model", "motion_style", "plan", "self_intersection", "subject_id", "to_y_up"]
