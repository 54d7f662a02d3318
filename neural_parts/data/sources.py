"""Job lists of each source kind: ``{split: [job, ...]}`` plus a provenance dict (see ``build.build``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from . import readers, synthetic
from .build import SPLITS

SYNTHETIC_COUNTS = {"train": 256, "val": 32, "test": 32}  # records per split of the default dataset


def synthetic_jobs(n_train: int, n_val: int, n_test: int, seed: int = 0, categories=synthetic.CATEGORIES):
    """The built-in procedural dataset."""
    counts = {"train": n_train, "val": n_val, "test": n_test}
    jobs = {
        split: [
            {
                "kind": "synthetic",
                "seed": seed,
                "split": split,
                "index": i,
                "categories": list(categories),
                "name": f"{split}_{i:05d}_{synthetic.category_of(i, categories)}",
            }
            for i in range(n)
        ]
        for split, n in counts.items()
        if n > 0
    }
    return jobs, {
        "kind": "synthetic",
        "generator_version": synthetic.GENERATOR_VERSION,
        "seed": seed,
        "categories": list(categories),
        "counts": counts,
    }


def hash_split(key: str) -> str:
    """80/10/10 train/val/test by a stable hash of ``key``."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


MESH_SPLIT_KEYS = ("path", "id", "name")  # accepted key columns of a meshes split CSV, first found wins


def mesh_split_table(split_csv) -> dict:
    """``{key: split}`` of a meshes split CSV with a header ``path,split`` (``id`` or ``name`` instead of
    ``path`` also work), or two columns without a header; the key is a path relative to the folder or a
    file stem. Splits must be train, val or test."""
    rows = readers.read_split_csv(split_csv)
    key = next((k for k in MESH_SPLIT_KEYS if k in rows[0]), None) if rows else None
    if key is None:
        raise ValueError(f"{split_csv}: a meshes split CSV needs a column named one of {MESH_SPLIT_KEYS} "
                         f"and one named split (found {sorted(rows[0]) if rows else 'no rows'})")
    bad = sorted({r["split"] for r in rows} - set(SPLITS))
    if bad:
        raise ValueError(f"{split_csv}: unknown split names {bad}; expected {SPLITS}")
    return {r[key]: r["split"] for r in rows}


def mesh_jobs(root, split_csv=None):
    """Every mesh file under ``root``; split by ``split_csv`` (see ``mesh_split_table``) or by hash."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"meshes folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in readers.MESH_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(readers.MESH_SUFFIXES)} files under {root}")
    table = None if split_csv is None else mesh_split_table(split_csv)
    jobs = {s: [] for s in SPLITS}
    for p in files:
        rel = p.relative_to(root).as_posix()
        split = hash_split(rel) if table is None else table.get(rel, table.get(p.stem))
        if split in jobs:
            jobs[split].append({"kind": "mesh", "path": str(p), "name": rel, "category": p.parent.name})
    if not any(jobs.values()):
        raise ValueError(f"{split_csv}: no mesh under {root} matches a row (keys are paths relative to the "
                         "folder, e.g. chairs/a.obj, or file stems)")
    return {s: j for s, j in jobs.items() if j}, {
        "kind": "meshes",
        "root": str(root.resolve()),
        "split_csv": str(split_csv) if split_csv else None,
    }


def dfaust_jobs(registrations: list, split_csv, drop_first: int = 20):
    """Frames of D-FAUST registration files listed in an authors'-format split CSV (id,model_id,split).

    Frames ``< drop_first`` are dropped (the authors skip the first 20 of each sequence)."""
    where = {}
    for path in registrations:
        for seq, n in readers.dfaust_sequences(path).items():
            where[seq] = (str(path), n)
    jobs = {s: [] for s in SPLITS}
    for row in readers.read_split_csv(split_csv):
        seq, frame, split = row["id"], int(row["model_id"]), row["split"]
        if frame < drop_first or seq not in where or frame >= where[seq][1] or split not in jobs:
            continue
        jobs[split].append(
            {
                "kind": "dfaust",
                "path": where[seq][0],
                "sequence": seq,
                "frame": frame,
                "name": f"{seq}:{frame:05d}",
                "category": "human",
            }
        )
    if not any(jobs.values()):
        raise ValueError(f"{split_csv}: no frames >= {drop_first} of the sequences in {registrations}")
    return {s: j for s, j in jobs.items() if j}, {
        "kind": "dfaust",
        "registrations": [str(p) for p in registrations],
        "split_csv": str(split_csv),
        "drop_first": drop_first,
    }


def shapenet_jobs(root, split_csv=None, classes=None, mesh_file: str = "model_watertight.off"):
    """Models of an ONet folder (imported with their labels) or of meshes ``<model>/<mesh_file>``."""
    root = Path(root)
    jobs = {}
    for split in SPLITS:
        for synset, model in readers.shapenet_models(root, split, classes, split_csv):
            d = root / synset / model
            name = f"{synset}:{model}"
            if (d / "points.npz").exists() and (d / "pointcloud.npz").exists():
                job = {"kind": "onet", "path": str(d), "name": name, "category": synset}
            else:
                job = {"kind": "mesh", "path": str(d / mesh_file), "name": name, "category": synset}
            jobs.setdefault(split, []).append(job)
    if not jobs:
        raise FileNotFoundError(f"{root}: no models listed in <synset>/<split>.lst or {split_csv}")
    kinds = {j["kind"] for js in jobs.values() for j in js}
    return jobs, {
        "kind": "shapenet_onet" if kinds == {"onet"} else "shapenet",
        "root": str(root.resolve()),
        "split_csv": str(split_csv) if split_csv else None,
        "classes": classes,
        "mesh_file": mesh_file,
    }


HUMANS_NAME = "humans-v1"
# The volume box of human records (normalised: height 1 along Y): the body's own proportions with a margin,
# as the authors' 1 x 2 x 1 box for D-FAUST; inside the unit cube a body fills ~1% of the labelled points, here ~2%.
HUMAN_BOX = ((-0.5, -0.55, -0.3), (0.5, 0.55, 0.3))
HUMAN_VIEW = (0.0, 5.0)  # view 0 of human records: frontal, slightly from above, like the authors' D-FAUST renders
HUMAN_DEFAULTS = {"subjects": 12, "val_subjects": 2, "test_subjects": 2, "test_motions": ("punching", "one_leg_balance"),
                  "frames": 6, "frame_step": 6}  # 384 / 96 / 120 records, 0.2 s apart; ~2 minutes on 2 cores


def humans_jobs(subjects: int = HUMAN_DEFAULTS["subjects"], motions=None, frames: int = HUMAN_DEFAULTS["frames"],
                frame_step: int = HUMAN_DEFAULTS["frame_step"], seed: int = 0,
                val_subjects: int = HUMAN_DEFAULTS["val_subjects"], test_subjects: int = HUMAN_DEFAULTS["test_subjects"],
                test_motions=HUMAN_DEFAULTS["test_motions"]):
    """Anny humans (``humans.py``) split by subject and by motion, so that test people and test motions never
    appear in training: the last ``test_subjects`` subjects are test, the ``val_subjects`` before them val,
    the rest train; train and val use the motions not in ``test_motions``, test uses every motion.
    Each subject performs ``frames`` frames of each motion, every ``frame_step``-th frame at 30 fps."""
    from . import humans

    motions = tuple(humans.MOTIONS if motions is None else motions)
    unknown = sorted((set(motions) | set(test_motions)) - set(humans.MOTIONS))
    if unknown:
        raise ValueError(f"unknown motions {unknown}; motions are {', '.join(humans.MOTIONS)}")
    n_train = subjects - val_subjects - test_subjects
    if min(frames, frame_step, n_train) < 1 or min(val_subjects, test_subjects) < 0:
        raise ValueError(f"humans: need frames, frame step >= 1 and at least one training subject (got {subjects} "
                         f"subjects, {val_subjects} val, {test_subjects} test, {frames} frames, step {frame_step})")
    seen = tuple(m for m in motions if m not in test_motions)
    if not seen:
        raise ValueError(f"humans: every motion is a test motion ({', '.join(test_motions)}); nothing to train on")
    groups = {"train": (range(n_train), seen), "val": (range(n_train, n_train + val_subjects), seen),
              "test": (range(n_train + val_subjects, subjects), motions)}
    jobs = {}
    for split, (people, moves) in groups.items():
        specs = [humans.FrameSpec(seed, s, m, f * frame_step) for s in people for m in moves for f in range(frames)]
        if specs:
            jobs[split] = [{"kind": "humans", "spec": [sp.seed, sp.subject, sp.motion, sp.frame], "name": sp.name,
                            "category": "human"} for sp in specs]
    return jobs, {"kind": "humans", "generator_version": humans.GENERATOR_VERSION, "seed": seed,
                  "subjects": subjects, "val_subjects": val_subjects, "test_subjects": test_subjects,
                  "motions": list(motions), "test_motions": list(test_motions), "frames": frames,
                  "frame_step": frame_step}


def prepare_humans(output_dir=None, workers: int | None = None, progress: bool = True, seed: int = 0,
                   image_size: int = 224, n_views: int = 1, **options) -> dict:
    """Build the built-in Anny humans dataset into ``output_dir`` (default ``default_data_dir("humans-v1")``);
    ``options`` go to ``humans_jobs`` (subjects, frames, ...) or ``RecordConfig`` (n_volume, n_surface, ...).
    Returns the summary."""
    import inspect

    from .build import build, default_data_dir
    from .process import RecordConfig

    job_keys = set(inspect.signature(humans_jobs).parameters)
    jobs, source = humans_jobs(seed=seed, **{k: v for k, v in options.items() if k in job_keys})
    cfg = RecordConfig(**{"image_size": image_size, "n_views": n_views, "view": HUMAN_VIEW, "box": HUMAN_BOX,
                          **{k: v for k, v in options.items() if k not in job_keys}})
    output = Path(output_dir) if output_dir is not None else default_data_dir(HUMANS_NAME)
    return build(jobs, output, cfg, source=source, seed=seed, workers=workers, progress=progress)


def prepare_synthetic(
    output_dir=None,
    n_train: int = SYNTHETIC_COUNTS["train"],
    n_val: int = SYNTHETIC_COUNTS["val"],
    n_test: int = SYNTHETIC_COUNTS["test"],
    seed: int = 0,
    image_size: int = 224,
    workers: int | None = None,
    categories=synthetic.CATEGORIES,
    progress: bool = True,
    **record_options,
) -> dict:
    """Build the built-in dataset into ``output_dir`` (default ``default_data_dir("synthetic-v1")``); the
    default counts take about 2 minutes on 2 CPU cores.

    ``record_options`` go to ``RecordConfig`` (n_volume, n_surface, n_views, box, ...). Returns the summary.
    """
    from .build import build, default_data_dir
    from .process import RecordConfig

    jobs, source = synthetic_jobs(n_train, n_val, n_test, seed, categories)
    output = (
        Path(output_dir)
        if output_dir is not None
        else default_data_dir(f"synthetic-v{synthetic.GENERATOR_VERSION}")
    )
    cfg = RecordConfig(image_size=image_size, **record_options)
    return build(jobs, output, cfg, source=source, seed=seed, workers=workers, progress=progress)
