"""Import hygiene and the dependency direction neural_parts -> npkernels -> csrc."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_compiles_nothing_and_touches_no_gpu_or_triton(tmp_path):
    code = ("import sys, neural_parts, npkernels, neural_parts.models, neural_parts.objective, neural_parts.metrics\n"
            "print('triton' in sys.modules, 'torch.cuda' in sys.modules and __import__('torch').cuda.is_initialized())")
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").iterdir())


def test_npkernels_never_imports_neural_parts():
    offenders = []
    for path in (ROOT / "npkernels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "neural_parts"]
    assert offenders == []
