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
        logs/metrics.csv   the fit's training curves
        branches/<kind>-<hash>/   branches of this level (``branches``)

Every write is atomic (temporary file, fsync, rename); JSON is strict (no bare NaN).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from callbacks import Mask
from callbacks.files import atomic_torch_save, atomic_write_text


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


def read_json(path: Path, what: str) -> Any:
    """A JSON file this project wrote, with an error naming it when it is unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError("the file is empty")
        return json.loads(text)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the {what} ({err}); delete it to redo that step") from None


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

    # reading -----------------------------------------------------------------------------------
    def completed_levels(self) -> int:
        """How many levels are done, counting from 0 (a level is done when its metrics.json exists)."""
        n = 0
        while self.metrics_path(n).exists():
            n += 1
        return n

    def result(self, level: int) -> dict:
        return read_json(self.metrics_path(level), f"result of round {level}")

    def results(self) -> list[dict]:
        return [self.result(r) for r in range(self.completed_levels())]

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
        return torch.load(path, map_location="cpu", weights_only=True)

    # writing -----------------------------------------------------------------------------------
    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_text(path, strict_json(obj))

    def write_text(self, path: Path, text: str) -> None:
        atomic_write_text(path, text)

    def save_tensors(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        atomic_torch_save(tensors, path)
