"""Atomic file writes: readers (and a crash mid-write) never see half a file.

``mkstemp``/``mkdtemp`` create owner-only (0600/0700) entries; every temporary here is given the mode a plain
``open()``/``mkdir()`` would give under the caller's umask before it is renamed into place, so another user
can read a dataset, a sample or an exported adapter exactly as if it had been written directly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is renamed onto ``path``, on failure
    removed. The suffix is kept, so writers that pick a format by extension (meshes, safetensors) work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    os.chmod(temporary, 0o666 & ~current_umask())
    try:
        yield Path(temporary)
        if fsync:
            with open(temporary, "rb") as file:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


def make_temporary_dir(parent: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """``tempfile.mkdtemp`` in ``parent`` with the mode ``mkdir`` would give (not 0700)."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    os.chmod(folder, 0o777 & ~current_umask())
    return folder


def apply_umask(tree: str | os.PathLike) -> None:
    """Give every folder and file under ``tree`` the mode ``mkdir``/``open`` would give under the umask:
    some writers (safetensors) create owner-only files, which a staged folder must not keep."""
    mask = current_umask()
    for folder, _names, files in os.walk(tree):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)
