"""Turn meshes into training records: ``python -m neural_parts.prepare {synthetic,dfaust,shapenet,meshes}``.

    python -m neural_parts.prepare synthetic [--n-train 256 --n-val 32 --n-test 32]
    python -m neural_parts.prepare humans [--subjects 12 --frames 6 --frame-step 6 --test-motions punching,...]
    python -m neural_parts.prepare meshes DIR [--splits CSV] [--up z]
    python -m neural_parts.prepare dfaust registrations_m.hdf5 registrations_f.hdf5 --splits SPLITS.csv
    python -m neural_parts.prepare shapenet ONET_DIR [--splits all.csv] [--classes 02691156,03001627]

Writes ``OUTPUT/{train,val,test}.h5`` and ``OUTPUT/summary.json``; OUTPUT defaults to
``$NEURAL_PARTS_DATA/<name>``. Re-running resumes (finished shards are kept) and is a no-op when done.

Several machines sharing OUTPUT: ``--shard I/N`` on machine I builds every N-th shard file and assembles
nothing; once all N have finished, one run without --shard builds what is missing and assembles (the files
are byte-identical to a one-machine build).
"""

from __future__ import annotations

import argparse
import logging
import sys

from neural_parts.cli import run_command
from neural_parts.data import build, render, sources, synthetic
from neural_parts.data.process import NORMALISATIONS, UNIT_BOX, RecordConfig


def _box(text: str):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6:
        raise argparse.ArgumentTypeError("--box needs 6 numbers: xmin,ymin,zmin,xmax,ymax,zmax")
    return (tuple(values[:3]), tuple(values[3:]))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"{text}: need 0 <= i < n")
    return i, n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m neural_parts.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=("synthetic", "humans", "dfaust", "shapenet", "meshes"))
    p.add_argument(
        "source", nargs="*", help="meshes: a folder; dfaust: registrations_*.hdf5; shapenet: ONet folder"
    )
    p.add_argument("--output", help="output folder (default $NEURAL_PARTS_DATA/<name>)")
    p.add_argument(
        "--splits", help="split CSV (dfaust: id,model_id,split; shapenet: all.csv; meshes: path,split)"
    )
    p.add_argument("--workers", type=_positive, default=None, help="parallel processes (default: all cores)")
    p.add_argument("--shard-size", type=_positive, default=64, help="records per shard file")
    p.add_argument("--limit", type=_positive, default=None, help="at most this many records per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", type=_part, default=(0, 1), metavar="I/N",
                   help="build only shard files I, I+N, ... and assemble nothing (N machines sharing --output); "
                   "a final run without --shard builds what is missing and assembles")
    p.add_argument("--n-volume", type=_positive, default=100_000, help="volume points per record")
    p.add_argument("--n-surface", type=_positive, default=100_000, help="surface points per record")
    p.add_argument("--image-size", type=_positive, default=224)
    p.add_argument("--views", type=_positive, default=1, help="views per record: view 0 fixed, the others random")
    p.add_argument("--normalisation", choices=NORMALISATIONS, default="unit_box")
    p.add_argument(
        "--box",
        type=_box,
        default=None,
        help="volume box xmin,ymin,zmin,xmax,ymax,zmax "
        "(default -0.55..0.55; humans: -0.5,-0.55,-0.3,0.5,0.55,0.3; metre-scale humans with --normalisation none: -0.5,-0.75,-0.5,0.5,1.25,0.5)",
    )
    p.add_argument("--up", choices=("y", "z"), default="y", help="up axis of the source meshes")
    p.add_argument(
        "--non-watertight",
        choices=("flag", "skip"),
        default="flag",
        help="flag: label in winding mode and flag the record; skip: leave the mesh out",
    )
    p.add_argument(
        "--allow-slow-labeller",
        action="store_true",
        help="run even when only the O(N*F) reference labeller is available and the job is large",
    )
    g = p.add_argument_group("synthetic")
    g.add_argument("--n-train", type=int, default=sources.SYNTHETIC_COUNTS["train"])
    g.add_argument("--n-val", type=int, default=sources.SYNTHETIC_COUNTS["val"])
    g.add_argument("--n-test", type=int, default=sources.SYNTHETIC_COUNTS["test"])
    g.add_argument("--categories", default=",".join(synthetic.CATEGORIES))
    g = p.add_argument_group("humans (the Anny body model: pip install anny)")
    h = sources.HUMAN_DEFAULTS
    g.add_argument("--subjects", type=_positive, default=h["subjects"], help="body shapes (alternating gender)")
    g.add_argument("--val-subjects", type=int, default=h["val_subjects"], help="the subjects before the test ones")
    g.add_argument("--test-subjects", type=int, default=h["test_subjects"], help="the last subjects")
    g.add_argument("--motions", help="comma-separated motions (default: all)")
    g.add_argument("--test-motions", default=",".join(h["test_motions"]),
                   help="motions only the test split performs (empty: none)")
    g.add_argument("--frames", type=_positive, default=h["frames"], help="frames per subject and motion")
    g.add_argument("--frame-step", type=_positive, default=h["frame_step"], help="use every k-th frame (30 fps)")
    g = p.add_argument_group("dfaust / shapenet")
    g.add_argument("--drop-first", type=int, default=20, help="dfaust: frames skipped at each sequence start")
    g.add_argument("--classes", help="shapenet: comma-separated synset ids (default: all)")
    g.add_argument(
        "--mesh-file", default="model_watertight.off", help="shapenet: mesh file of a model folder"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _prepare(args) -> dict:
    """Jobs of the chosen source kind -> ``build.build``; returns the summary."""
    if args.kind == "synthetic":
        jobs, source = sources.synthetic_jobs(
            args.n_train, args.n_val, args.n_test, args.seed, tuple(args.categories.split(","))
        )
        name = f"synthetic-v{synthetic.GENERATOR_VERSION}"
    elif args.kind == "humans":
        jobs, source = sources.humans_jobs(
            args.subjects, args.motions.split(",") if args.motions else None, args.frames, args.frame_step,
            args.seed, args.val_subjects, args.test_subjects, tuple(m for m in args.test_motions.split(",") if m))
        name = sources.HUMANS_NAME
    elif args.kind == "meshes":
        jobs, source = sources.mesh_jobs(args.source[0], args.splits)
        name = f"meshes-{source['root'].rstrip('/').split('/')[-1]}"
    elif args.kind == "dfaust":
        jobs, source = sources.dfaust_jobs(args.source, args.splits, args.drop_first)
        name = "dfaust"
    else:
        classes = args.classes.split(",") if args.classes else None
        jobs, source = sources.shapenet_jobs(args.source[0], args.splits, classes, args.mesh_file)
        name = "shapenet"
    if args.limit is not None:
        jobs = {s: j[: args.limit] for s, j in jobs.items()}
    cfg = RecordConfig(
        n_volume=args.n_volume,
        n_surface=args.n_surface,
        image_size=args.image_size,
        n_views=args.views,
        normalisation=args.normalisation,
        box=args.box or (sources.HUMAN_BOX if args.kind == "humans" else UNIT_BOX),
        up=args.up,
        non_watertight=args.non_watertight,
        view=sources.HUMAN_VIEW if args.kind == "humans" else render.FIXED_VIEW,
    )
    output = args.output or build.default_data_dir(name)
    return build.build(
        jobs,
        output,
        cfg,
        source=source,
        seed=args.seed,
        workers=args.workers,
        shard_size=args.shard_size,
        allow_slow_labeller=args.allow_slow_labeller,
        progress=not args.quiet,
        part=args.shard,
    )


def _check_sources(args) -> None:
    needs = {"synthetic": 0, "humans": 0, "meshes": 1, "shapenet": 1}.get(args.kind)
    if needs is not None and len(args.source) != needs:
        parser().error(f"{args.kind} takes {needs or 'no'} SOURCE argument{'s' if needs != 1 else ''}")
    if args.kind == "dfaust" and (not args.source or not args.splits):
        parser().error("dfaust needs registrations_*.hdf5 file(s) and --splits CSV")


def prepare(argv=None) -> dict:
    """Run the command on ``argv`` and return the build summary (errors raise; ``main`` reports them)."""
    args = parser().parse_args(argv)
    _check_sources(args)
    return _prepare(args)


def _run(args) -> int:
    _check_sources(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = _prepare(args)
    print(build.format_summary(summary) if "part" not in summary else
          f"shard {summary['part']}: built {summary['built_records']} records in {summary['seconds']:.1f} s; "
          f"{summary['shards_left']} shard files still missing; run without --shard to assemble")
    return 0


def main(argv=None) -> int:
    return run_command("prepare", parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
