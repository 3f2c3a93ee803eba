"""Indexing run folders into *records*: one per measured result, in the shape the report's tables
and figures take (``lightning_vl.analysis``)::

    {"task", "row", "source_task", "sparsity", "level", "seed", "rewind_step", "training",
     "backbone", "metric", "monitor", "path"}

``row`` says what was measured: a lottery run's method (``imp``, ``random``, ``omp``…) for each
of its rounds, or a branch of a round: ``random`` / ``random-layerwise`` (a random mask),
``shuffle``, ``bert`` (the IMP mask on a BERT folder: θ'_0), ``shuffled`` (on ``shuffled:`` θ''_0),
``reinit`` (a fresh random init), ``transfer`` (another task's ticket; ``source_task`` names it)
and ``universal`` (a ticket of the pre-training task).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterator, Optional

import yaml

from lightning_vl.tasks.names import PRETRAINING_TASK

log = logging.getLogger(__name__)


def _json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("skipping unreadable %s", path)
        return None


def _config(run: Path) -> dict:
    path = run / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def _training(config: dict) -> str:
    adversarial = (config.get("model") or {}).get("adversarial")
    enabled = adversarial.get("enabled", True) if isinstance(adversarial, dict) else bool(adversarial)
    return "adversarial" if adversarial and enabled else "standard"


def backbone_name(config: dict) -> str:
    """The backbone a run's ``config.yaml`` names, short: ``lightning_vl.model.lxmert.LxmertBackbone``
    → ``lxmert``; ``uniter`` when it names none (runs from before the seam)."""
    backbone = (config.get("model") or {}).get("backbone")
    path = backbone.get("class_path") if isinstance(backbone, dict) else backbone
    if not path:
        return "uniter"
    name = str(path).rsplit(".", 1)[-1]
    return (name[:-len("Backbone")] if name.endswith("Backbone") and name != "Backbone" else name).lower()


def init_row(init: Optional[str]) -> str:
    """The Table 1 row of a reinit branch's init: ``bert`` (a BERT folder), ``shuffled`` or ``reinit``."""
    if not init:
        return "reinit"
    if str(init).startswith("shuffled:"):
        return "shuffled"
    if Path(init).is_dir() or "bert" in Path(str(init)).name.lower():
        return "bert"
    return "reinit"


def _finite(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def run_folders(root: str | Path) -> Iterator[Path]:
    """Every lottery run folder under ``root`` (``<task>/<run>/`` with a round_00)."""
    for round0 in sorted(Path(root).glob("*/*/round_00")):
        yield round0.parent


def records(root: str | Path) -> list[dict]:
    """The records of every run folder under ``root``."""
    return records_of(run_folders(root))


def records_of(runs) -> list[dict]:
    """The records of the given run folders: their rounds and the branches under them."""
    out = []
    for run in map(Path, runs):
        config = _config(run)
        imp = config.get("imp") or {}
        seed = config.get("seed_everything")
        training = _training(config)
        backbone = backbone_name(config)
        for metrics in sorted(run.glob("round_*/metrics.json")):
            result = _json(metrics)
            if not result:
                continue
            out.append({"task": result.get("task", run.parent.name), "row": result.get("method", imp.get("method")),
                        "source_task": None, "sparsity": result["sparsity"], "level": result["round"], "seed": seed,
                        "rewind_step": imp.get("rewind_step", 0), "training": training, "backbone": backbone,
                        "metric": _finite(result.get("metric")), "monitor": result.get("monitor"),
                        "path": str(metrics.parent)})
        for metrics in sorted(run.glob("round_*/branches/*/metrics.json")):
            result = _json(metrics)
            if not result:
                continue
            branch_config = _config(metrics.parent)
            kind = result["kind"]
            if kind == "random":
                row = "random-layerwise" if result.get("strategy") == "layerwise" else "random"
            elif kind == "reinit":
                row = init_row(result.get("init"))
            elif kind == "transfer":
                row = "universal" if result.get("source_task") == PRETRAINING_TASK else "transfer"
            else:
                row = kind
            out.append({"task": result["task"], "row": row,
                        "source_task": result.get("source_task") if kind == "transfer" else None,
                        "sparsity": result["sparsity"], "level": result["source_round"],
                        "seed": branch_config.get("seed_everything", seed), "rewind_step": imp.get("rewind_step", 0),
                        "training": _training(branch_config) if branch_config else training,
                        "backbone": backbone_name(branch_config) if branch_config else backbone,
                        "metric": _finite(result.get("metric")), "monitor": result.get("monitor"),
                        "path": str(metrics.parent)})
    return out
