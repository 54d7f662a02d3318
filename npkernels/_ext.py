"""Lazy loader of the ``npkernels._C`` extension (the inside-mesh labeller's CPU/CUDA kernels).

Tiers, tried once per process on first use (never at import):
  1. the prebuilt ``npkernels._C`` (``pip install --no-build-isolation -e .``);
  2. a just-in-time build with ``torch.utils.cpp_extension.load`` and ninja, from the same sources
     and flags as setup.py (``npkernels/_build.py``), cached under ``TORCH_EXTENSIONS_DIR`` in a
     directory whose name carries a hash of the flags; CUDA is compiled in when torch is a CUDA
     build and nvcc is found;
  3. ``None``: callers fall back to the pure-PyTorch reference.
The outcome (module or failure) is cached and logged once. Runtime environment variables:
``NPKERNELS_JIT=0`` disables tier 2, ``NPKERNELS_VERBOSE=1`` shows the compiler output, ``MAX_JOBS``
limits ninja (all declared in ``_settings``). In a multi-process program call ``get_ext()`` in the parent before starting workers.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from . import _settings

logger = logging.getLogger("npkernels")

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STALE_LOCK_S = 600.0  # a build holding the lock longer than this was killed
_lock = threading.Lock()
_state: dict = {"tried": False, "module": None, "tier": None}


def _remove_stale_lock(build_dir: str) -> None:
    """Delete torch's build lock left by a killed build (it would make every later build wait)."""
    lock = os.path.join(build_dir, "lock")
    try:
        age = time.time() - os.path.getmtime(lock)
    except OSError:
        return
    if age > _STALE_LOCK_S:
        logger.warning("npkernels: removing stale build lock %s (%.0f s old)", lock, age)
        try:
            os.remove(lock)
        except OSError:
            pass


def _build_root() -> str:
    """TORCH_EXTENSIONS_DIR, else torch's default cache (get_default_build_root ignores the variable)."""
    import torch.utils.cpp_extension as cpp

    return _settings.get("TORCH_EXTENSIONS_DIR") or cpp.get_default_build_root()


def _jit_build():
    """Compile and import the extension with torch.utils.cpp_extension.load."""
    import torch.utils.cpp_extension as cpp

    from . import _build

    if not os.path.isdir(_build.csrc_dir(_REPO_ROOT)):
        raise RuntimeError(
            f"extension sources not found at {_build.csrc_dir(_REPO_ROOT)}: the JIT build needs the "
            "source tree (install with `pip install --no-build-isolation -e .`)")
    if not cpp.is_ninja_available():
        raise RuntimeError("ninja is not available (pip install ninja)")
    if not _build.has_cxx_compiler():
        raise RuntimeError("no C++ compiler found")
    if _build.want_cuda():
        try:
            return _load(with_cuda=True)
        except Exception as exc:  # noqa: BLE001 - a failed CUDA build still leaves the CPU kernel
            logger.warning("npkernels: CUDA build of the extension failed (%s); building the CPU kernel only",
                           _summary(exc))
    return _load(with_cuda=False)


def _load(with_cuda: bool):
    """Compile (or reuse the cached build of) the extension with the flags of ``_build``."""
    import torch.utils.cpp_extension as cpp

    from . import _build

    if with_cuda:
        _build.default_arch_list()
    f = _build.flags(with_cuda)
    name = _build.jit_name(with_cuda)
    build_dir = os.path.join(_build_root(), name)
    os.makedirs(build_dir, exist_ok=True)
    _remove_stale_lock(build_dir)
    logger.info("npkernels: compiling the inside-mesh extension (%s) in %s; this happens once",
                "CPU + CUDA" if with_cuda else "CPU", build_dir)
    module = cpp.load(
        name=name, sources=_build.sources(_REPO_ROOT, with_cuda), extra_cflags=f["cxx"],
        extra_cuda_cflags=f["nvcc"], extra_ldflags=f["ldflags"],
        extra_include_paths=[_build.csrc_dir(_REPO_ROOT)], build_directory=build_dir,
        with_cuda=with_cuda, verbose=_settings.flag("NPKERNELS_VERBOSE"))
    return module, f"jit ({'cpu+cuda' if with_cuda else 'cpu'}) in {build_dir}"


def _summary(exc: Exception) -> str:
    """The compiler's error lines (or the last line) of a failed build, shortened."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    errors = [ln for ln in lines if "error" in ln.lower()][:3] or lines[-1:]
    return " | ".join(errors)[:500]


def get_ext():
    """The extension module, or None when neither tier 1 nor tier 2 is available (cached)."""
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if _state["tried"]:
            return _state["module"]
        module, tier = None, None
        try:
            from . import _C as module

            tier = "prebuilt npkernels._C"
        except ImportError:
            if not _settings.flag("NPKERNELS_JIT"):
                tier = "none (no prebuilt npkernels._C; NPKERNELS_JIT=0)"
            else:
                try:
                    module, tier = _jit_build()
                except Exception as exc:  # noqa: BLE001 - any build failure means "fall back"
                    module, tier = None, (f"none (JIT build failed: {_summary(exc)}; "
                                          "NPKERNELS_VERBOSE=1 shows the compiler output)")
        if module is not None:
            tier += " with CUDA" if module.has_cuda() else " (CPU only)"
            logger.info("npkernels: inside-mesh extension: %s", tier)
        else:
            logger.warning("npkernels: inside-mesh extension unavailable, using the PyTorch reference: %s", tier)
        _state.update(tried=True, module=module, tier=tier)
        return module


def ext_status() -> str:
    """The labeller's extension tier, without compiling anything (for ``python -m npkernels.env``)."""
    if _state["tried"]:
        return _state["tier"]
    try:
        from . import _C  # noqa: F401

        return "prebuilt npkernels._C (not loaded yet)"
    except ImportError:
        if not _settings.flag("NPKERNELS_JIT"):
            return "none (no prebuilt npkernels._C; NPKERNELS_JIT=0): PyTorch reference"
        from . import _build

        name = _build.jit_name(_build.want_cuda())
        if os.path.isfile(os.path.join(_build_root(), name, name + ".so")):
            return f"JIT-built module cached in {os.path.join(_build_root(), name)} (loaded on first use)"
        return f"JIT build on first use (cache: {_build_root()})"
