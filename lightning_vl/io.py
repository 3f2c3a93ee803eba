"""Files the project writes: atomically, and JSON strictly.

Writing files so that a reader never sees half of one: write a temporary file in the same
folder, flush and fsync it, then rename it over the target (atomic on POSIX) and fsync the folder.
A failure at any point removes the temporary file and leaves the old target (if any) intact.

JSON is strict: non-finite floats are written as ``null`` (strict readers reject a bare ``NaN``).

Example::

    from lightning_vl.io import atomic_write_text, strict_json

    atomic_write_text("runs/x/metrics.json", strict_json({"acc": float("nan")}))  # {"acc": null}
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a quota, a read-only folder: name the file
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic write (temporary file, fsync, rename), parents made; returns the path."""
    path = Path(path)
    atomic_write_text(path, text)
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def strict_json(obj: Any) -> str:
    """JSON with non-finite floats written as null (strict readers reject bare NaN)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), indent=1, allow_nan=False) + "\n"
