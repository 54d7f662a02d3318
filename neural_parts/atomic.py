"""Atomic file writes: write a temp file beside the target, then rename it over the target."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder to write to; on success it replaces ``path``.

    The temp name keeps the suffix (writers that pick a format from it still work) and the
    process id. On an error the temp file is removed, so a crash or a failed writer never leaves a
    partial file under ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
