"""``python -m npkernels.env``: what npkernels can use in this environment.

Prints torch / Triton versions, CUDA, which backend each op family picks for CUDA and CPU tensors,
whether PyTorch3D (optional knn backend) is importable, and the inside-mesh labeller tier from
``npkernels._ext.ext_status()``. Imports no Triton and compiles nothing.
"""

from __future__ import annotations

import importlib
import importlib.util

from ._dispatch import backend_info, interpreter_enabled, triton_status
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
        "importable (knn on CUDA without masks)"
        if importlib.util.find_spec("pytorch3d")
        else "not installed (optional)"
    )
    info["labeller"] = _labeller_status()
    return info


def main() -> None:
    rows = report()
    width = max(map(len, rows))
    for key, value in rows.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
