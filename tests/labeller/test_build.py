"""Build plumbing of the labeller: nvcc compile check, lazy import, loader fallback, build helpers."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_python(code: str, env_update: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_update)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_kernel_compiles_with_plain_nvcc(tmp_path):
    """CI check: the .cu (device build and point kernel) builds for sm_90 with nvcc alone (no
    ATen/torch headers) and the project's nvcc flags, without warnings; it defines every launcher
    that inside_mesh_cuda.h declares for the glue, and its point, count and fill kernels do not
    spill registers (ptxas -v)."""
    from npkernels import _build

    out = tmp_path / "inside_mesh_cuda.o"
    cu = [s for s in _build.sources(str(REPO), True) if s.endswith(".cu")]
    cmd = ["nvcc", "-arch=sm_90", "-std=c++17", *_build.flags(True)["nvcc"], "-Xptxas", "-v", "-c", *cu, "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    report = result.stdout + result.stderr
    assert "warning" not in report.lower(), report
    assert out.stat().st_size > 0
    launchers = re.findall(r"\b(np_inside_mesh_cuda_\w+)\(", (REPO / "csrc" / "cuda" / "inside_mesh_cuda.h").read_text())
    assert len(launchers) == 5
    symbols = subprocess.run(["nm", "-g", "--defined-only", str(out)], capture_output=True, text=True,
                             check=True).stdout
    for name in launchers:
        assert re.search(rf" T {name}$", symbols, re.MULTILINE), f"{name} not defined by the .cu"
    for kernel in ("inside_mesh_kernel", "count_kernel", "fill_kernel"):
        spills = re.findall(rf"Compiling entry function '\w*{kernel}\w*' for 'sm_90'.*?(\d+) bytes spill stores",
                            report, re.DOTALL)
        assert spills and all(n == "0" for n in spills), f"{kernel}: spill stores {spills}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_glue_compiles(tmp_path):
    """The ATen glue compiles (syntax only) against torch's headers, as torch builds it (C++20), with
    nvcc's host compiler and CUDA include paths: glue errors show up on machines without a CUDA
    torch. A CPU torch wheel lacks the generated c10/cuda/impl/cuda_cmake_macros.h; an empty one
    stands in for it."""
    import torch.utils.cpp_extension as cpp

    from npkernels import _build

    includes = [Path(d) for d in cpp.include_paths()]
    if not any((d / "c10" / "cuda" / "CUDAGuard.h").is_file() for d in includes):
        pytest.skip("torch's c10/cuda headers are not installed")
    if not any((d / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file() for d in includes):
        stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
        stub.mkdir(parents=True)
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
        includes.append(tmp_path / "stub")
    glue = [s for s in _build.sources(str(REPO), True) if s.endswith("_glue.cpp")]
    cmd = ["nvcc", "-std=c++20", "-x", "c++", "-DNP_WITH_CUDA", "-Xcompiler", "-fsyntax-only",
           *[f"-I{d}" for d in includes], f"-I{_build.csrc_dir(str(REPO))}", "-c", *glue, "-o", str(tmp_path / "glue.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr


def test_import_compiles_nothing(tmp_path):
    """Importing the packages builds and loads no extension (the cache directory stays empty)."""
    cache = tmp_path / "torch_extensions"
    cache.mkdir()
    code = ("import sys, npkernels, neural_parts, npkernels.inside_mesh, npkernels._ext\n"
            "assert not npkernels._ext._state['tried']\n"
            "assert not any(m.startswith('npkernels_C') or m == 'npkernels._C' for m in sys.modules)\n")
    result = _run_python(code, {"TORCH_EXTENSIONS_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    assert list(cache.iterdir()) == []


def test_fallback_to_reference_without_extension(tmp_path):
    """NPKERNELS_JIT=0 and no prebuilt module: the reference runs, announced by log lines, and gives labels.

    A meta-path hook hides any prebuilt ``npkernels._C`` (in the tree or mapped by an editable
    install), so the fallback path is exercised in every environment.
    """
    code = ("import sys, importlib.abc\n"
            "class Hide(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'npkernels._C':\n"
            "            raise ImportError('hidden by the test')\n"
            "sys.meta_path.insert(0, Hide())\n"
            "import logging; logging.basicConfig(level=logging.INFO)\n"
            "import numpy as np\n"
            "from npkernels.inside_mesh import inside_mesh\n"
            "from npkernels._ext import ext_status\n"
            "v = np.array([[0,0,0],[1,0,0],[0,1,0],[0,0,1]], float)\n"
            "f = np.array([[0,2,1],[0,1,3],[0,3,2],[1,2,3]])\n"
            "print(inside_mesh(v, f, np.array([[.1,.1,.1],[1,1,1]])).tolist(), ext_status())\n")
    result = _run_python(code, {"NPKERNELS_JIT": "0", "TORCH_EXTENSIONS_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "[True, False] none (no prebuilt npkernels._C; NPKERNELS_JIT=0)" in result.stdout
    assert "backend 'reference'" in result.stderr and "unavailable" in result.stderr


def test_setup_extensions_respects_no_extension(monkeypatch, capsys):
    from npkernels import _build

    monkeypatch.setenv("NPKERNELS_NO_EXTENSION", "1")
    assert _build.setup_extensions(str(REPO)) == ([], {})
    assert "NOT built" in capsys.readouterr().out


def test_build_module_runs_before_the_package_is_importable(tmp_path):
    """setup.py runs _build.py (and _settings.py) with runpy: they must work without importing npkernels."""
    code = ("import runpy, sys\n"
            "build = runpy.run_path('npkernels/_build.py')\n"
            "assert build['setup_extensions']('.') == ([], {})\n"
            "assert not any(m == 'npkernels' or m.startswith('npkernels.') for m in sys.modules)\n"
            "print(runpy.run_path('npkernels/_settings.py')['MIN_TRITON'])\n")
    result = _run_python(code, {"NPKERNELS_NO_EXTENSION": "1"})
    assert result.returncode == 0, result.stderr
    from npkernels import _settings

    assert "NPKERNELS_NO_EXTENSION=1" in result.stdout
    assert result.stdout.strip().endswith(str(_settings.MIN_TRITON))


def test_setup_extensions_cpu(monkeypatch):
    from npkernels import _build

    monkeypatch.delenv("NPKERNELS_NO_EXTENSION", raising=False)
    monkeypatch.setenv("NPKERNELS_FORCE_CPU", "1")
    if not _build.has_cxx_compiler():
        assert _build.setup_extensions(str(REPO)) == ([], {})
        return
    (ext,), cmdclass = _build.setup_extensions(str(REPO))
    assert ext.name == "npkernels._C" and "build_ext" in cmdclass
    assert all((REPO / s).is_file() for s in ext.sources)
    assert not any(s.endswith(".cu") for s in ext.sources)


def test_jit_name_tracks_flags(monkeypatch):
    from npkernels import _build

    monkeypatch.delenv("NPKERNELS_DEBUG", raising=False)
    release = _build.jit_name(False)
    monkeypatch.setenv("NPKERNELS_DEBUG", "1")
    assert _build.jit_name(False) != release
    assert all(os.path.isfile(s) for s in _build.sources(str(REPO), True))


def test_stale_build_lock_removed(tmp_path):
    from npkernels import _ext

    lock = tmp_path / "lock"
    lock.touch()
    _ext._remove_stale_lock(str(tmp_path))
    assert lock.exists()  # a fresh lock belongs to a running build
    old = time.time() - 2 * _ext._STALE_LOCK_S
    os.utime(lock, (old, old))
    _ext._remove_stale_lock(str(tmp_path))
    assert not lock.exists()
