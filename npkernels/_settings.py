"""The one home of npkernels' environment variables and of the Triton version floor.

Standard library only: setup.py reads ``MIN_TRITON`` and ``_build.py`` (which setup.py runs with runpy,
before the package is importable) reads the build variables, so nothing here may import torch.
``python -m npkernels.env`` prints ``VARIABLES``. npkernels' own variables carry the ``NPKERNELS_``
prefix; the others are Triton's, torch's and the toolchain's own, listed because they change what
npkernels does (npkernels reads every one of them through ``get`` / ``flag``, except MAX_JOBS).
"""

from __future__ import annotations

import os
from typing import NamedTuple

MIN_TRITON = (3, 2)
"""Oldest Triton the kernels run on (setup.py's ``[triton]`` extra and the runtime check)."""

TRUE = ("1", "true", "yes", "on", "y")  # what Triton's own flags accept as true


class Variable(NamedTuple):
    """An environment variable: name, value when unset or empty, when it is read, what it does."""

    name: str
    default: str
    when: str
    description: str


VARIABLES: dict[str, Variable] = {v.name: v for v in (
    Variable("NPKERNELS_BACKEND", "auto", "run",
             "replaces backend='auto' of every op: auto | reference | triton | pytorch3d | extension "
             "(a kernel name applies to the ops that have it)"),
    Variable("NPKERNELS_SELF_CHECK", "1", "run",
             "0: skip the first-use check of each Triton kernel against its reference on a device"),
    Variable("NPKERNELS_JIT", "1", "run",
             "0: never compile the inside-mesh extension on first use (the reference labeller runs)"),
    Variable("NPKERNELS_VERBOSE", "0", "JIT", "1: show the compiler output of the JIT build"),
    Variable("NPKERNELS_NO_EXTENSION", "0", "build",
             "1: setup.py builds no extension (loud notice; the JIT build on first use remains)"),
    Variable("NPKERNELS_FORCE_CPU", "0", "build, JIT", "1: build the extension without its CUDA kernel"),
    Variable("NPKERNELS_DEBUG", "0", "build, JIT", "1: build with -O0 -g (and nvcc -lineinfo)"),
    Variable("NPKERNELS_NVCC_FLAGS", "", "build, JIT", "extra nvcc flags, appended"),
    Variable("TRITON_INTERPRET", "0", "run", "Triton's own: 1 runs Triton kernels on CPU in its interpreter"),
    Variable("TORCH_CUDA_ARCH_LIST", "", "build, JIT",
             "torch's own: CUDA architectures (npkernels sets 9.0 when unset and no GPU is visible)"),
    Variable("TORCH_EXTENSIONS_DIR", "", "JIT", "torch's own: cache directory of the JIT build"),
    Variable("MAX_JOBS", "", "build, JIT", "torch's own: parallel compiler jobs"),
    Variable("CUDA_HOME", "", "build, JIT",
             "the CUDA toolkit whose nvcc builds the CUDA kernel (else CUDA_PATH, else PATH)"),
    Variable("CUDA_PATH", "", "build, JIT", "as CUDA_HOME, when CUDA_HOME is unset"),
    Variable("CXX", "", "build, JIT", "the C++ compiler (else c++, g++ or clang++ on PATH)"),
)}


def get(name: str) -> str:
    """The value of the declared variable ``name``, stripped; its default when unset or empty."""
    default = VARIABLES[name].default  # KeyError for an undeclared name
    return os.environ.get(name, "").strip() or default


def flag(name: str) -> bool:
    """True when the declared variable ``name`` is set to 1 / true / yes / on / y (Triton's rule)."""
    return get(name).lower() in TRUE
