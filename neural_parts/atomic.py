"""Atomic file writes: write a temp file beside the target, then rename it over the target."""
from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMP = re.compile(r"^\.(?P<stem>.*)\.tmp-(?P<host>[^.]+)-(?P<pid>\d+)(?P<suffix>\.[^.]*)?$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def temp_path(path: str | Path, pid: int | None = None) -> Path:
    """The temp name ``atomic_path`` writes ``path`` under: ``.<stem>.tmp-<host>-<pid><suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{_host()}-{os.getpid() if pid is None else pid}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder to write to; on success it replaces ``path``.

    The temp name ``.<stem>.tmp-<host>-<pid><suffix>`` keeps the suffix (writers that pick a format from
    it still work). On an error the temp file is removed, so a crash or a failed writer never leaves a
    partial file under ``path``; a killed process can leave its temp file, which ``remove_stale_temps``
    deletes later.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temp files of ``atomic_path`` in ``folder`` left by killed processes of this host.

    Temp files of live processes and of other hosts (a shared filesystem) are kept. Returns the removed paths.
    """
    removed = []
    host = _host()
    for p in Path(folder).glob(".*.tmp-*"):
        match = _TEMP.match(p.name)
        if match and match["host"] == host and not _alive(int(match["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and make sure files can be written there (before any work is done)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{_host()}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"{what} {folder} is not writable ({e.strerror or e})") from None
    return folder
