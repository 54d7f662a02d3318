"""Backend selection shared by every npkernels op.

Rules (one function for all ops):
- ``backend="reference"`` always runs the pure-PyTorch reference.
- ``backend="triton"`` runs the Triton kernel or raises ``RuntimeError`` naming the unmet
  condition (Triton missing or too old, the op has no kernel, tensors not on CUDA while
  ``TRITON_INTERPRET`` is not 1).
- ``backend="auto"`` picks Triton only when every tensor is on CUDA and Triton is usable;
  otherwise the reference. Falling back for CUDA tensors logs one line per op and process.
- ``NPKERNELS_BACKEND`` (auto | triton | reference) overrides ``"auto"`` process-wide.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os

import torch

log = logging.getLogger("npkernels")

BACKENDS = ("auto", "triton", "reference")
MIN_TRITON = (3, 2)
_warned: set[str] = set()


def log_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        log.log(level, message)


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_status() -> tuple[bool, str]:
    """Return (usable, description) of the installed Triton, without importing it."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("triton")
    except PackageNotFoundError:
        return False, "triton is importable but has no package metadata"
    parts = tuple(int(p) for p in text.split("+")[0].split(".")[:2] if p.isdigit())
    if parts < MIN_TRITON:
        return False, f"triton {text} is older than the required {'.'.join(map(str, MIN_TRITON))}"
    return True, f"triton {text}"


def kernel_module(family: str):
    """Import ``npkernels.<family>._triton`` (the op's Triton kernels) or return None."""
    name = f"npkernels.{family}._triton"
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _env_backend() -> str:
    value = os.environ.get("NPKERNELS_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"NPKERNELS_BACKEND must be one of {BACKENDS}, got {value!r}")
    return value


def select_backend(family: str, *tensors: torch.Tensor | None, backend: str = "auto") -> str:
    """Return "triton" or "reference" for an op of ``family`` on ``tensors``.

    Args:
        family: kernel family (``coupling``, ``implicit``, ``knn``).
        tensors: the op's tensor arguments (None entries are ignored).
        backend: "auto", "triton" or "reference".
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = _env_backend()
    if backend == "reference":
        return "reference"
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    usable, why = triton_status()
    has_kernel = usable and importlib.util.find_spec(f"npkernels.{family}._triton") is not None
    if backend == "triton":
        if not usable:
            raise RuntimeError(f"backend='triton' requested for {family} but {why}")
        if not has_kernel:
            raise RuntimeError(f"backend='triton' requested but npkernels has no Triton kernel for {family}")
        if not (on_cuda or interpreter_enabled()):
            raise RuntimeError(
                f"backend='triton' requested for {family} with tensors on "
                f"{sorted({str(t.device) for t in present})}; Triton needs CUDA tensors "
                "(or TRITON_INTERPRET=1 for the CPU interpreter)"
            )
        return "triton"
    if on_cuda and has_kernel:
        return "triton"
    if on_cuda:
        reason = why if not usable else f"no Triton kernel for {family}"
        log_once(f"fallback:{family}", f"npkernels: {family} runs the PyTorch reference on CUDA ({reason})",
                 logging.WARNING)
    return "reference"


def backend_info() -> dict[str, str]:
    """Describe the environment: torch, Triton, CUDA and which backend ``auto`` picks."""
    usable, why = triton_status()
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "triton": why,
        "cuda": torch.version.cuda or "none (CPU build)",
        "gpu": torch.cuda.get_device_name() if cuda else "none",
        "triton_interpreter": str(interpreter_enabled()),
        "auto_backend_on_cuda": "triton" if usable else "reference",
        "env_override": os.environ.get("NPKERNELS_BACKEND", "auto"),
    }
