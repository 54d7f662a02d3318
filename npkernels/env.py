"""``python -m npkernels.env [--check]``: what npkernels can use in this environment.

Prints torch / Triton versions, CUDA, which backend each op family picks for CUDA and CPU tensors,
whether PyTorch3D (an explicit knn backend) is importable, the inside-mesh labeller tier from
``npkernels._ext.ext_status()`` and every environment variable npkernels reads (``_settings``).
Imports no Triton and compiles nothing. ``--check`` also runs the first-use check of every Triton
kernel family (``_selfcheck.run_all``) on every CUDA device (and on the CPU interpreter when
``TRITON_INTERPRET=1``), prints one table row per check and exits with 1 if any failed. ``--json PATH``
also writes the report (and the checks) as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import torch

from . import _settings
from ._dispatch import KERNELS, backend_info, interpreter_enabled, triton_status
from ._ext import ext_status

FAMILIES = ("coupling", "implicit", "knn")


def _labeller_status() -> object:
    try:
        return ext_status()
    except Exception as err:  # noqa: BLE001 - a broken extension must not hide the rest of the report
        return f"error: {type(err).__name__}: {err}"


def report() -> dict[str, object]:
    """The environment as an ordered dict of printable values."""
    info: dict[str, object] = dict(backend_info())
    usable, _ = triton_status()
    for family in FAMILIES:
        has_kernel = usable and importlib.util.find_spec(f"npkernels.{family}._triton") is not None
        cpu = (
            "triton (interpreter, explicit backend='triton' only)"
            if has_kernel and interpreter_enabled()
            else "reference"
        )
        info[f"{family}: cuda / cpu"] = f"{'triton' if has_kernel else 'reference'} / {cpu}"
    info["pytorch3d"] = (
        "importable (knn with backend='pytorch3d' only; auto never picks it)"
        if importlib.util.find_spec("pytorch3d")
        else "not installed (optional, knn backend='pytorch3d')"
    )
    info["backends"] = {family: ", ".join(("auto", "reference", *names)) for family, names in KERNELS.items()}
    info["labeller"] = _labeller_status()
    set_vars = [f"{n}={os.environ[n]}" for n in _settings.VARIABLES if os.environ.get(n, "").strip()]
    info["variables set"] = ", ".join(set_vars) or "none"
    return info


def variables_table() -> str:
    """Every environment variable npkernels reads: name, when, default, what it does."""
    rows = [(v.name, v.when, v.default or "-", v.description) for v in _settings.VARIABLES.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)


def check_devices() -> list[torch.device]:
    """The devices ``--check`` covers: every CUDA device, and the CPU under the Triton interpreter."""
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devices + ([torch.device("cpu")] if interpreter_enabled() else [])


def check_table(rows) -> str:
    """The results of ``_selfcheck.run_all`` as a fixed-width table."""
    head = ("op", "device", "dtype", "precision", "result", "max error", "tolerance", "seconds")
    lines = [head] + [(r.op, r.device, r.dtype, r.precision, "ok" if r.ok else "FAILED", f"{r.max_error:.2e}",
                       f"{r.tolerance:.1e}", f"{r.seconds:.2f}") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
    out += [f"{r.op} on {r.device} ({r.dtype}, {r.precision}): {r.detail}" for r in rows if not r.ok]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npkernels.env", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="run every Triton kernel once against its reference on each device")
    parser.add_argument("--json", metavar="PATH", help="also write the report (and the checks) as JSON")
    args = parser.parse_args(argv)
    rows = report()
    width = max(map(len, rows))
    for key, value in rows.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key.ljust(width)}  {value}")
    print("environment variables (name, when read, default, effect):\n" + variables_table())
    code, results = 0, []
    if args.check:
        devices = check_devices()
        if not devices:
            print("\n--check: no CUDA device (TRITON_INTERPRET=1 checks the CPU interpreter)")
        elif not triton_status()[0]:
            print(f"\n--check: {triton_status()[1]}")
            code = 1
        else:
            from . import _selfcheck

            results = _selfcheck.run_all(devices)
            print("\n" + check_table(results))
            code = 0 if all(r.ok for r in results) else 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"report": rows, "checks": [r._asdict() for r in results]}, f, indent=1, default=str)
    return code


if __name__ == "__main__":
    sys.exit(main())
