"""Backend selection shared by every npkernels op family: one ``select_backend``.

Vocabulary: every op takes ``backend="auto"`` (the default), ``"reference"`` (the pure-PyTorch
reference, always available) or the name of one of its family's kernels (``KERNELS``):
``"triton"`` (coupling, implicit, knn), ``"pytorch3d"`` (knn) and ``"extension"`` (inside_mesh:
the C++/CUDA ``npkernels._C``).
- An explicit kernel name runs that kernel or raises ``RuntimeError`` naming the unmet condition
  (not installed, too old, tensors not on CUDA while TRITON_INTERPRET is not 1, no float64 kernel,
  a failed first-use check); it never falls back.
- ``"auto"`` picks Triton for tensors on a CUDA device (``AUTO_KERNEL_DEVICES``) in a dtype it has a
  kernel for, once the first-use check (``_selfcheck``) of that family passed there; the extension for
  inside_mesh when it loads; the reference otherwise, with one log line where a kernel was expected.
  It never picks PyTorch3D: its tie-breaking differs from ours and cannot be checked here.
- ``NPKERNELS_BACKEND`` replaces ``"auto"`` process-wide: ``reference`` for every op, or a kernel
  name for the families that have that kernel (the others stay on auto).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging

import torch

from . import _settings

log = logging.getLogger("npkernels")

KERNELS = {"coupling": ("triton",), "implicit": ("triton",), "knn": ("triton", "pytorch3d"),
           "inside_mesh": ("extension",)}
"""The kernel backends of each op family, besides "auto" and "reference"."""
BACKENDS = ("auto", "reference", *sorted({k for names in KERNELS.values() for k in names}))
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
AUTO_KERNEL_DEVICES = ("cuda",)
"""Device types on which "auto" runs Triton kernels (and their first-use check); tests add "cpu"
under the interpreter to exercise that path without a GPU."""
_warned: set[str] = set()


def log_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        log.log(level, message)


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is requested (``TRITON_INTERPRET=1``)."""
    return _settings.flag("TRITON_INTERPRET")


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
    if parts < _settings.MIN_TRITON:
        floor = ".".join(map(str, _settings.MIN_TRITON))
        return False, f"triton {text} is older than the required {floor}"
    return True, f"triton {text}"


def kernel_module(family: str):
    """Import ``npkernels.<family>._triton`` (the op's Triton kernels) or return None."""
    name = f"npkernels.{family}._triton"
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _env_backend(family: str) -> str:
    """What ``NPKERNELS_BACKEND`` makes of ``backend="auto"`` for ``family``."""
    value = _settings.get("NPKERNELS_BACKEND").lower()
    if value not in BACKENDS:
        raise ValueError(f"NPKERNELS_BACKEND must be one of {BACKENDS}, got {value!r}")
    return value if value in ("auto", "reference", *KERNELS[family]) else "auto"


def _floating_dtype(tensors: list[torch.Tensor]) -> torch.dtype | None:
    return next((t.dtype for t in tensors if t.is_floating_point()), None)


def _triton_unusable(family: str) -> str | None:
    """Why Triton cannot run ``family`` at all (None when it can)."""
    usable, why = triton_status()
    if not usable:
        return why
    if importlib.util.find_spec(f"npkernels.{family}._triton") is None:
        return f"npkernels has no Triton kernel for {family}"
    return None


def _extension_unusable() -> str | None:
    from . import _ext

    if _ext.get_ext() is not None:
        return None
    return f"the npkernels._C extension is unavailable ({_ext.ext_status()})"


def _explicit(family: str, backend: str, tensors: list[torch.Tensor], source: str) -> str:
    """Validate an explicit kernel request; return it or raise RuntimeError naming the unmet condition."""
    where = f"{source}={backend!r} for {family}"
    if backend == "pytorch3d":
        if importlib.util.find_spec("pytorch3d") is None:
            raise RuntimeError(f"{where}, but pytorch3d is not installed")
        return backend
    if backend == "extension":
        why = _extension_unusable()
        if why:
            raise RuntimeError(f"{where}, but {why}")
        return backend
    why = _triton_unusable(family)
    if why:
        raise RuntimeError(f"{where}, but {why}")
    devices = sorted({str(t.device) for t in tensors})
    if not (tensors and all(t.is_cuda for t in tensors)) and not interpreter_enabled():
        raise RuntimeError(f"{where} with tensors on {devices}; Triton needs CUDA tensors "
                           "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    dtype = _floating_dtype(tensors)
    if dtype is not None and dtype not in TRITON_DTYPES:
        raise RuntimeError(f"{where}: the Triton kernels take {[str(d) for d in TRITON_DTYPES]}, got {dtype} "
                           "(backend='reference' runs it)")
    if tensors and tensors[0].device.type in AUTO_KERNEL_DEVICES:
        from . import _selfcheck

        _selfcheck.require(family, tensors[0].device, dtype or torch.float32)
    return backend


def _auto(family: str, tensors: list[torch.Tensor]) -> str:
    """The backend "auto" picks (see the module docstring); logs once where it falls back."""
    if family == "inside_mesh":
        return "extension" if _extension_unusable() is None else "reference"
    if not tensors or tensors[0].device.type not in AUTO_KERNEL_DEVICES:
        return "reference"
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        return "reference"
    why = _triton_unusable(family)
    dtype = _floating_dtype(tensors) or torch.float32
    if why is None and dtype not in TRITON_DTYPES:
        why = f"no {dtype} kernel"
    if why is None:
        from . import _selfcheck

        return "triton" if _selfcheck.passed(family, device, dtype) else "reference"  # a failure logs itself
    level = logging.INFO if dtype not in TRITON_DTYPES else logging.WARNING
    log_once(f"fallback:{family}:{device.type}:{dtype}",
             f"npkernels: {family} runs the PyTorch reference on {device.type} for {dtype} ({why})", level)
    return "reference"


def select_backend(family: str, *tensors: torch.Tensor | None, backend: str = "auto") -> str:
    """The backend to run an op of ``family`` on ``tensors``: "reference" or one of ``KERNELS[family]``.

    Args:
        family: op family, a key of ``KERNELS``.
        tensors: the op's tensor arguments (None entries are ignored); the first one's device and the
            first floating one's dtype decide.
        backend: "auto", "reference" or a kernel name of the family.
    Raises:
        ValueError: an unknown backend name; RuntimeError: an explicit kernel that cannot run.
    """
    names = ("auto", "reference", *KERNELS[family])
    if backend not in names:
        raise ValueError(f"backend for {family} must be one of {names}, got {backend!r}")
    source = "backend"
    if backend == "auto":
        backend, source = _env_backend(family), "NPKERNELS_BACKEND"
    if backend == "reference":
        return "reference"
    present = [t for t in tensors if t is not None]
    if backend == "auto":
        return _auto(family, present)
    return _explicit(family, backend, present, source)


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
        "env_override": _settings.get("NPKERNELS_BACKEND"),
    }
