"""Dataset builds: jobs -> shards ``<split>.parts/NNNN.h5`` (parallel, resumable) -> ``<split>.h5``.

A job is one source mesh (or ONet model); its record depends only on the job and the seed, so a resumed or
re-run build writes identical records. A shard is finished when its ``NNNN.json`` (records written, skips
with reasons) exists; both files are written to a temp name and renamed. ``<split>.h5`` is assembled once all
its shards are done; a split whose file already carries this build's config hash is left alone.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_path, check_writable, remove_stale_temps
from ..errors import UserError
from . import readers, storage, synthetic
from .process import RecordConfig, SkipRecord, label, make_record

log = logging.getLogger("neural_parts.prepare")


class PrepareError(UserError, RuntimeError):
    """A build that cannot run as asked (refused slow labelling, foreign shards, nothing usable)."""
SPLITS = ("train", "val", "test")
SLOW_LABELLER_LIMIT = 1e8  # point-triangle tests allowed with the O(N F) reference labeller
_REFERENCE_TESTS_PER_S = 2e8  # rough CPU throughput of the reference labeller, for the ETA


def default_data_dir(name: str) -> Path:
    """``$NEURAL_PARTS_DATA/<name>``; NEURAL_PARTS_DATA defaults to ``$XDG_CACHE_HOME/neural_parts``,
    else ``~/.cache/neural_parts``."""
    root = os.environ.get("NEURAL_PARTS_DATA")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(cache, "neural_parts")
    return Path(root) / name


def job_seed(seed: int, name: str) -> np.random.Generator:
    """The random generator of one record: depends only on the build seed and the record's name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def build_record(job: dict, cfg: RecordConfig, seed: int) -> dict:
    """Make the record of one job (raises ``SkipRecord`` with a reason)."""
    rng = job_seed(seed, job["name"])
    kind = job["kind"]
    if kind == "synthetic":
        shape = synthetic.make_shape(job["seed"], job["split"], job["index"], job["categories"])
        v, f, part = shape.soup()
        return make_record(
            v,
            f,
            cfg,
            rng,
            name=job["name"],
            source=f"synthetic-v{synthetic.GENERATOR_VERSION}",
            category=shape.category,
            face_part=part,
        )
    if kind == "humans":
        from . import humans

        spec = humans.FrameSpec(*job["spec"])
        generator = _human_generator(spec.seed)
        vertices = generator.vertices([spec])[0]
        overlap = humans.self_intersection(vertices, generator.faces)
        if overlap > humans.MAX_SELF_INTERSECTION:
            raise SkipRecord(f"the body overlaps itself in {overlap:.2%} of its volume "
                             f"(more than {humans.MAX_SELF_INTERSECTION:.2%})")
        return make_record(vertices, generator.faces, cfg, rng, name=job["name"],
                           source=f"anny-humans-v{humans.GENERATOR_VERSION}", category=job["category"])
    if kind == "onet":
        return readers.onet_record(job["path"], cfg, rng, name=job["name"], category=job["category"])
    if kind == "mesh":
        v, f = readers.load_mesh(job["path"])
    elif kind == "dfaust":
        v, f = readers.dfaust_frame(job["path"], job["sequence"], job["frame"])
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    return make_record(v, f, cfg, rng, name=job["name"], source=str(job["path"]), category=job["category"])


@functools.lru_cache(maxsize=1)
def _human_generator(seed: int):
    from . import humans

    return humans.HumanGenerator(seed, threads=1)


def _run_shard(shard: Path, jobs: list, cfg: RecordConfig, seed: int, attrs: dict) -> dict:
    """Build and write one shard; returns its summary (also written to ``shard.json``).

    A job that fails in any way (an unusable mesh, a damaged file, a reader error) is skipped with its
    file and the reason in the summary; the other records are built.
    """
    t0 = time.perf_counter()
    records, skipped = [], []
    for job in jobs:
        try:
            records.append(build_record(job, cfg, seed))
        except Exception as e:  # noqa: BLE001 (one bad input must not stop the build)
            reason = str(e) if isinstance(e, SkipRecord) else f"{type(e).__name__}: {e}"
            skipped.append({"name": job["name"], "file": str(job.get("path", "")), "reason": reason})
            log.warning("skipped %s%s: %s", job["name"], f" ({job['path']})" if "path" in job else "", reason)
    if records:
        storage.write_records(shard, records, attrs)
    summary = {
        "records": len(records),
        "skipped": skipped,
        "flagged": {r["name"]: r["flags"] for r in records if r["flags"]},
        "seconds": time.perf_counter() - t0,
    }
    _write_json(shard.with_suffix(".json"), summary)
    return summary


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def _load_body_model() -> None:
    """Load (and on a new machine build and cache) Anny's model here, before workers start: Anny writes its
    cache without a temp file, so concurrent first loads could read a partial one."""
    from . import humans

    t0 = time.perf_counter()
    try:
        humans.load_model()
    except humans.AnnyUnavailableError as e:
        raise PrepareError(str(e)) from None
    log.info("Anny body model ready in %.1f s", time.perf_counter() - t0)


def labeller_status() -> tuple:
    """``(uses_extension, description)`` of npkernels' inside-mesh labeller; builds or loads the extension."""
    from npkernels import _ext

    return _ext.get_ext() is not None, _ext.ext_status()


def _check_labeller(jobs: list, cfg: RecordConfig, allow_slow: bool) -> str:
    """Build or load the labeller here (before workers start); refuse huge jobs on the reference tier."""
    fast, tier = labeller_status()
    tet = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    label(tet, np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]), np.zeros((1, 3)))  # fail early
    if not fast:
        faces = {"synthetic": 3500, "dfaust": 13776}.get(jobs[0]["kind"], 20000) if jobs else 0
        tests = len(jobs) * faces * (cfg.n_volume + 2.5 * cfg.n_surface * (jobs[0]["kind"] == "synthetic"))
        eta = tests / _REFERENCE_TESTS_PER_S
        log.warning(
            "only the pure-PyTorch reference labeller is available: about %.1e point-triangle tests, "
            "ETA %.0f s",
            tests,
            eta,
        )
        if tests > SLOW_LABELLER_LIMIT and not allow_slow:
            raise PrepareError(
                f"refusing to label about {tests:.1e} point-triangle tests with the O(N*F) reference "
                f"labeller (estimated {eta / 60:.0f} min): build the npkernels extension (see "
                "`python -m npkernels.env`) "
                "or pass --allow-slow-labeller"
            )
    return tier


def build(
    jobs: dict,
    output,
    cfg: RecordConfig,
    *,
    source: dict,
    seed: int = 0,
    workers: int | None = None,
    shard_size: int = 64,
    allow_slow_labeller: bool = False,
    progress: bool = True,
    part: tuple[int, int] = (0, 1),
) -> dict:
    """Build ``output/<split>.h5`` for ``jobs`` ({split: [job, ...]}); returns the summary (also saved as
    ``output/summary.json``). ``source`` describes the input (stored as provenance and hashed).

    ``part=(i, n)`` with n > 1 builds only the shards k with k % n == i and assembles nothing, so that n
    machines sharing the output folder can split a build; a run with the default part (0, 1) then builds
    whatever is still missing and assembles the splits.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    t0 = time.perf_counter()
    output = Path(output)
    check_writable(output)
    for folder in [output, *output.glob("*.parts")]:
        for path in remove_stale_temps(folder):
            log.info("removed %s, left by a killed build", path)
    names = {split: [j["name"] for j in js] for split, js in jobs.items()}
    digest = cfg.digest({"source": source, "seed": seed, "shard_size": shard_size, "jobs": names,
                         "format_version": storage.FORMAT_VERSION})
    todo, done = _plan(jobs, output, cfg, source, digest, shard_size)
    index, count = part
    tasks = [(split, p, js) for split, shards in todo.items() for k, (p, js) in enumerate(shards)
             if k % count == index and not _finished(p)]
    attrs = {
        "box": np.asarray(cfg.box),
        "normalisation": cfg.normalisation,
        "up_source": cfg.up,
        "config_hash": digest,
        "config": json.dumps({"record": cfg.to_dict(), "seed": seed}),
        "source": json.dumps(source, default=str),
        "camera_convention": _camera_convention(source),
        "neural_parts_version": __version__,
    }
    pending = [job for _, _, js in tasks for job in js]
    tier = _check_labeller(pending, cfg, allow_slow_labeller) if pending else "not needed"
    if any(job["kind"] == "humans" for job in pending):
        _load_body_model()
    attrs["labeller"] = f"npkernels.inside_mesh winding ({tier})"
    _run(tasks, cfg, seed, attrs, workers, progress)
    summary = {"output": str(output), "config_hash": digest, "labeller": attrs["labeller"], "splits": {},
               "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if count > 1:
        paths = [p for split_shards in todo.values() for p, _ in split_shards]
        left = sum(not _finished(p) for p in paths)
        summary.update(part=f"{index}/{count}", built_records=len(pending), shards_left=left,
                       seconds=round(time.perf_counter() - t0, 2))
        log.info("part %d/%d done: %d of %d shards still missing; run without --shard to finish and assemble",
                 index, count, left, len(paths))
        return summary
    for split, shards in todo.items():
        summary["splits"][split] = _assemble(output, split, shards, attrs)
    if not any(s["records"] for s in summary["splits"].values()) and not done:
        reasons = [s for v in summary["splits"].values() for s in v["skipped"]][:3]
        raise PrepareError(f"every record was skipped; first reasons: {reasons}")
    previous = _read_json(output / "summary.json").get("splits", {})
    for split in done:  # keep the earlier build's skips and flags
        path = output / f"{split}.h5"
        summary["splits"][split] = {
            **previous.get(split, {}),
            "state": "up to date",
            "records": len(storage.H5Records(path)),
            "bytes": path.stat().st_size,
        }
    elapsed = time.perf_counter() - t0
    summary["built_records"] = len(pending)
    summary["seconds"] = round(elapsed, 2)
    summary["records_per_s"] = round(len(pending) / elapsed, 3) if pending else None
    _write_json(output / "summary.json", summary)
    return summary


def _plan(jobs: dict, output: Path, cfg: RecordConfig, source: dict, digest: str, shard_size: int):
    """Shards ``{split: [(shard path, jobs), ...]}`` still to assemble, and the splits already up to date."""
    todo, done = {}, []
    for split, split_jobs in jobs.items():
        final = output / f"{split}.h5"
        if final.exists():
            if _digest_of(final) == digest:
                done.append(split)
                continue
            log.warning("%s was built with another configuration or input; it will be replaced", final)
        parts = output / f"{split}.parts"
        recorded = _read_json(parts / "config.json").get("digest")
        # no config.json yet: a concurrent build (--shard) has just created the folder, or nothing was built
        if recorded not in (None, digest) or (recorded is None and any(parts.glob("[0-9]*.json"))):
            raise PrepareError(
                f"{parts} holds shards of a different configuration; delete it or choose another --output"
            )
        parts.mkdir(exist_ok=True)
        _write_json(parts / "config.json", {"digest": digest, "config": cfg.to_dict(), "source": source})
        starts = range(0, len(split_jobs), shard_size)
        todo[split] = [(parts / f"{k:04d}.h5", split_jobs[s : s + shard_size]) for k, s in enumerate(starts)]
    return todo, done


def _finished(shard: Path) -> bool:
    return shard.with_suffix(".json").exists()


def _run(tasks: list, cfg: RecordConfig, seed: int, attrs: dict, workers: int | None, progress: bool) -> None:
    """Build the shards of ``tasks`` [(split, shard path, jobs)], in worker processes when more than one."""
    from tqdm import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    bar = tqdm(total=sum(len(js) for _, _, js in tasks), unit="rec", desc="prepare", disable=not progress)
    if workers == 1:
        for split, shard, js in tasks:
            _run_shard(shard, js, cfg, seed, {**attrs, "split": split})
            bar.update(len(js))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
            futures = {
                pool.submit(_run_shard, shard, js, cfg, seed, {**attrs, "split": split}): len(js)
                for split, shard, js in tasks
            }
            for fut in as_completed(futures):
                fut.result()
                bar.update(futures[fut])
    bar.close()


def _assemble(output: Path, split: str, shards: list, attrs: dict) -> dict:
    """Assemble ``<split>.h5`` from finished shards, remove the shards; returns the split's summary."""
    parts = [_read_json(p.with_suffix(".json")) for p, _ in shards]
    files = [p for (p, _), s in zip(shards, parts, strict=True) if s["records"]]
    final = output / f"{split}.h5"
    if files:  # the labeller of the processes that built the shards (this one may have built none)
        labellers = sorted({storage.H5Records(f).attrs["labeller"] for f in files})
        storage.assemble(files, final, {**attrs, "split": split, "labeller": "; ".join(labellers)})
    else:
        log.warning("split %s: every record was skipped; no %s written", split, final.name)
    shutil.rmtree(output / f"{split}.parts")
    return {
        "records": sum(p["records"] for p in parts),
        "skipped": [s for p in parts for s in p["skipped"]],
        "flagged": {k: v for p in parts for k, v in p["flagged"].items()},
        "worker_seconds": round(sum(p["seconds"] for p in parts), 2),
        "bytes": final.stat().st_size if files else 0,
    }


def _digest_of(path: Path) -> str | None:
    try:
        return storage.H5Records(path).attrs.get("config_hash")
    except storage.CorruptFileError:
        return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _camera_convention(source: dict) -> str:
    if source.get("kind") == "shapenet_onet":
        return "onet: camera_K = camera_mat, camera_Rt = world_mat from img_choy2016/cameras.npz"
    return "opencv: x_cam = Rt @ [x, 1] (x right, y down, z forward); pixels = K @ x_cam / z; see render.py"


def format_summary(summary: dict) -> str:
    """Human-readable lines of a build summary."""
    lines = [f"output: {summary['output']}  labeller: {summary['labeller']}"]
    for split, s in summary["splits"].items():
        extra = f"{len(s.get('skipped', []))} skipped, {len(s.get('flagged', {}))} flagged" + (
            f", {s['state']}" if "state" in s else ""
        )
        lines.append(f"  {split:5s} {s['records']:6d} records  {s['bytes'] / 2**20:8.1f} MiB  ({extra})")
        for item in s.get("skipped", [])[:10]:
            lines.append(f"        skipped {item['name']}: {item['reason']}")
    rate = summary["records_per_s"]
    lines.append(
        f"built {summary['built_records']} records in {summary['seconds']:.1f} s"
        + (f" ({rate:.2f} records/s)" if rate else "")
    )
    return "\n".join(lines)
