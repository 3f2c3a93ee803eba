"""Run folders: where every file of a lottery run lives, and reading/writing them safely.

::

    runs/<task>/<method>-<hash>/
      config.yaml          the resolved configuration (re-run with --config config.yaml)
      identity.json        the settings the folder's hash is made of
      command.json         the command line and config files that started it
      init.pt              θ_0, φ_0: the weights every level rewinds to
      rewind.pt            θ_i, φ_i (only when rewind_step > 0)
      summary.csv  summary.json
      round_NN/
        mask.pt            the level's mask (written after level NN-1 finished, before its metrics)
        metrics.json       the level's result: written last, so its presence marks the level done
        sparsity.json      per-tensor sparsity
        ranks.json         every rank's mask and weight checksums
        head.pt            the trained head (head_reset=keep)
        weights.pt         the trained prunable weights (only the dense level, for one-shot strategies)
        trained.pt         the whole trained model, pruned weights at zero (imp.save_trained)
        logs/metrics.csv   the fit's training curves
        branches/<kind>-<hash>/   branches of this level (``branches``)

Every write is atomic (temporary file, fsync, rename); JSON is strict (no bare NaN). One process
at a time works in a folder (``exclusive``: a lock that dies with its holder); a folder keeps the
settings it was made with (``adopt``: a re-run with other results-determining settings is refused,
naming them), and a round file that cannot be read is redone, or named in the error.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from lightning_vl.io import atomic_torch_save, atomic_write_text, strict_json
from lightning_vl.pruning import Mask

from .identity import differing_keys

log = logging.getLogger(__name__)


class RunFolderBusy(RuntimeError):
    """Another live process works in the run folder."""


class RunSettingsChanged(ValueError):
    """A run folder was made with other results-determining settings."""


def read_json(path: Path, what: str) -> Any:
    """A JSON file this project wrote, with an error naming it when it is unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError("the file is empty")
        return json.loads(text)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the {what} ({err}); delete it to redo that step") from None


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)}


class RunFolder:
    """Paths and safe I/O of one run folder (``path``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # paths -------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def identity(self) -> Path:
        return self.path / "identity.json"

    @property
    def command(self) -> Path:
        return self.path / "command.json"

    @property
    def wandb_marker(self) -> Path:
        return self.path / "wandb.json"

    @property
    def init(self) -> Path:
        return self.path / "init.pt"

    @property
    def rewind(self) -> Path:
        return self.path / "rewind.pt"

    def round_dir(self, level: int) -> Path:
        return self.path / f"round_{level:02d}"

    def mask_path(self, level: int) -> Path:
        return self.round_dir(level) / "mask.pt"

    def metrics_path(self, level: int) -> Path:
        return self.round_dir(level) / "metrics.json"

    def ranks_path(self, level: int) -> Path:
        return self.round_dir(level) / "ranks.json"

    def head_path(self, level: int) -> Path:
        return self.round_dir(level) / "head.pt"

    def weights_path(self, level: int) -> Path:
        return self.round_dir(level) / "weights.pt"

    def trained_path(self, level: int) -> Path:
        return self.round_dir(level) / "trained.pt"

    # one process at a time, with the settings the folder was made with -------------------------
    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the folder's lock while the block runs. The lock is an ``flock`` on ``.lock``, so
        it dies with its holder (a crashed or killed run never blocks the next one); a second
        process is refused with the holder's pid, host, start time and command."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / ".lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                try:
                    held = json.loads(lock.read_text() or "{}")
                except ValueError:
                    held = {}
                who = (f"pid {held.get('pid', '?')} on {held.get('host', '?')} since {held.get('since', '?')} "
                       f"({held.get('command', '?')})")
                raise RunFolderBusy(f"{self.path} is in use by {who}; wait for it to finish or stop it") from None
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_holder()).encode())
            yield
        finally:
            os.close(fd)  # releases the flock

    def adopt(self, identity: dict | None, config_yaml: str, command: dict | None) -> None:
        """Make the folder this experiment's, or check it already is.

        A new folder gets ``identity.json``, ``config.yaml`` and ``command.json``; an existing one
        keeps them (they are never rewritten) and is refused if its identity differs."""
        if identity is None:  # no identity to check (programmatic use): keep the first config
            if not self.config.exists():
                self.write_text(self.config, config_yaml)
            return
        if self.identity.exists():
            old = read_json(self.identity, "run identity")
            changed = differing_keys(old, identity)
            if changed:
                raise RunSettingsChanged(
                    f"{self.path} was made with other settings: {', '.join(changed[:8])}"
                    f"{' …' if len(changed) > 8 else ''} differ (its identity.json vs this command). Use the same "
                    "settings to resume it, or another --imp.name / --branch.name (or none) for a new run")
            return
        if self.init.exists() or self.metrics_path(0).exists() or (self.path / "metrics.json").exists():
            raise RunSettingsChanged(f"{self.path} holds results but no identity.json (made by an older version): "
                                     "its settings cannot be checked; give this run another name")
        self.write_json(self.identity, identity)
        self.write_text(self.config, config_yaml)
        if command is not None:
            self.write_json(self.command, command)

    # reading -----------------------------------------------------------------------------------
    def completed_levels(self) -> int:
        """How many levels are done, counting from 0 (a level is done when its metrics.json, written
        last, can be read). A level whose result file is torn or empty counts as not done, so it
        is redone."""
        n = 0
        while self.metrics_path(n).exists():
            try:
                read_json(self.metrics_path(n), f"result of round {n}")
            except ValueError as err:
                log.warning("%s — round %d will be redone", err, n)
                break
            n += 1
        return n

    def readable_mask(self, level: int) -> bool:
        try:
            Mask.load(self.mask_path(level))
            return True
        except (OSError, ValueError):
            return False

    def result(self, level: int) -> dict:
        return read_json(self.metrics_path(level), f"result of round {level}")

    def results(self, count: int | None = None) -> list[dict]:
        return [self.result(r) for r in range(self.completed_levels() if count is None else count)]

    def mask(self, level: int) -> Mask:
        path = self.mask_path(level)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing although round {level - 1} is complete; the run folder {self.path} was "
                f"modified by hand — delete round_{level - 1:02d}/metrics.json to redo that round"
            )
        return Mask.load(path)

    def tensors(self, path: Path) -> dict[str, torch.Tensor]:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; the run folder {self.path} is incomplete")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torn, empty or foreign file
            raise ValueError(f"{path}: cannot read it ({type(err).__name__}: {err}); it is damaged — delete "
                             f"the rounds that made it (their metrics.json) to redo them") from None

    # writing -----------------------------------------------------------------------------------
    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_text(path, strict_json(obj))

    def write_text(self, path: Path, text: str) -> None:
        atomic_write_text(path, text)

    def save_tensors(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        atomic_torch_save(tensors, path)
