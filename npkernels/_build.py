"""The one source of sources and flags of the ``npkernels._C`` extension (setup.py and JIT).

setup.py runs this file with ``runpy`` (so the unbuilt package is never imported) and calls
``setup_extensions(repo_root)``; ``npkernels._ext`` imports it for the just-in-time build.

Environment variables (declared in ``_settings``): NPKERNELS_NO_EXTENSION=1 builds nothing (the
JIT build on first use is still possible), NPKERNELS_FORCE_CPU=1 the CPU extension only,
NPKERNELS_NVCC_FLAGS extra nvcc flags, NPKERNELS_DEBUG=1 -O0 -g (and -lineinfo for nvcc);
TORCH_CUDA_ARCH_LIST (torch's own) defaults to "9.0" here when no GPU is visible.
"""
from __future__ import annotations

import hashlib
import os
import runpy
import shutil
import types

if __package__:  # imported as npkernels._build (the JIT build)
    from . import _settings
else:  # run by setup.py with runpy, before the package is importable
    _settings = types.SimpleNamespace(
        **runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_settings.py")))

EXT_NAME = "npkernels._C"


def csrc_dir(repo_root: str) -> str:
    """Directory of the C++/CUDA sources: ``<repo_root>/csrc``."""
    return os.path.join(os.path.abspath(repo_root), "csrc")


def sources(repo_root: str, with_cuda: bool) -> list[str]:
    """Absolute source paths; the .cu and its ATen glue only with CUDA."""
    root = csrc_dir(repo_root)
    files = ["ext.cpp", os.path.join("cpu", "inside_mesh_cpu.cpp"), os.path.join("cpu", "boundary_tree.cpp")]
    if with_cuda:
        files += [os.path.join("cuda", "inside_mesh_cuda.cu"), os.path.join("cuda", "inside_mesh_glue.cpp")]
    return [os.path.join(root, f) for f in files]


def has_cxx_compiler() -> bool:
    """True when a C++ compiler is on PATH (``$CXX``, c++, g++ or clang++)."""
    candidates = [_settings.get("CXX"), "c++", "g++", "clang++"]
    return any(c and shutil.which(c.split()[0]) for c in candidates)


def nvcc_path() -> str | None:
    """nvcc from CUDA_HOME / CUDA_PATH, else from PATH."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = _settings.get(var)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def want_cuda() -> bool:
    """Build the CUDA kernel: torch is a CUDA build and nvcc is found (a GPU need not be visible)."""
    import torch

    if _settings.flag("NPKERNELS_FORCE_CPU"):
        return False
    return torch.version.cuda is not None and nvcc_path() is not None


def flags(with_cuda: bool) -> dict:
    """Compiler/linker flags: {"cxx": [...], "nvcc": [...], "ldflags": [...]}."""
    import torch

    debug = _settings.flag("NPKERNELS_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = list(opt)  # no -std: torch's build helpers add the standard its headers need
    ldflags = []
    if "OpenMP" in torch.__config__.parallel_info():  # at::parallel_for is inline OpenMP code
        cxx.append("-fopenmp")
        ldflags.append("-fopenmp")
    nvcc = []
    if with_cuda:
        cxx.append("-DNP_WITH_CUDA")
        # -fmad=false: no FMA contraction, so the float part (open-boundary term) rounds as on the CPU.
        nvcc = opt + ["--expt-relaxed-constexpr", "-fmad=false"] + (["-lineinfo"] if debug else [])
        nvcc += _settings.get("NPKERNELS_NVCC_FLAGS").split()
    return {"cxx": cxx, "nvcc": nvcc, "ldflags": ldflags}


def default_arch_list() -> None:
    """Set TORCH_CUDA_ARCH_LIST=9.0 when unset and no GPU is visible (the project's H100s)."""
    import torch

    if not _settings.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"


def jit_name(with_cuda: bool) -> str:
    """JIT module name: the flags (and CUDA arch list) hashed into it, so a change rebuilds."""
    f = flags(with_cuda)
    key = repr((f, with_cuda, _settings.get("TORCH_CUDA_ARCH_LIST") if with_cuda else ""))
    return "npkernels_C_" + hashlib.sha1(key.encode()).hexdigest()[:10]


def setup_extensions(repo_root: str) -> tuple[list, dict]:
    """(ext_modules, cmdclass) for setup.py; ([], {}) when nothing can or should be built."""
    if _settings.flag("NPKERNELS_NO_EXTENSION"):
        print("*" * 72 + "\nnpkernels: NPKERNELS_NO_EXTENSION=1 -> the inside-mesh extension is NOT built;\n"
              "it will be compiled on first use (JIT) unless NPKERNELS_JIT=0.\n" + "*" * 72)
        return [], {}
    if not has_cxx_compiler():
        print("npkernels: no C++ compiler found; the extension is not built (pure-PyTorch labeller)")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda = want_cuda()
    if with_cuda:
        default_arch_list()
    f = flags(with_cuda)
    kwargs = {
        "name": EXT_NAME,
        "sources": [os.path.relpath(s, repo_root) for s in sources(repo_root, with_cuda)],
        "include_dirs": [csrc_dir(repo_root)],
        "extra_compile_args": {"cxx": f["cxx"], "nvcc": f["nvcc"]} if with_cuda else f["cxx"],
        "extra_link_args": f["ldflags"],
    }
    ext = CUDAExtension(**kwargs) if with_cuda else CppExtension(**kwargs)
    print(f"npkernels: building {EXT_NAME} ({'CPU + CUDA' if with_cuda else 'CPU'})")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}
