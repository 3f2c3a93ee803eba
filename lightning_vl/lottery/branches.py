"""Branches of a trained level (open_lth's lottery branches): controls and transfers that reuse a
level's ticket, each one masked fine-tune stored under the level it hangs off::

    runs/<task>/<run>/round_NN/branches/<kind>[-<task>]-<hash>/
      config.yaml  identity.json  mask.pt  metrics.json  ranks.json  logs/

The kinds — ``random``, ``shuffle``, ``reinit``, ``ticket``, ``transfer`` — differ in the mask they
fine-tune and the weights they start from; each is a small object in ``kinds.py`` (``BRANCH_KINDS``)
whose docstring says both, and a new kind is one class there.

A branch is idempotent (its ``metrics.json`` marks it done) and has its own hash of what
determines its result (its model, data, training settings and ``kind``/``strategy``/``seed``).
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from lightning_vl.pruning import Mask
from lightning_vl.pruning.distributed import barrier

from .config import BranchConfig
from .fitting import MakeTrainer, check_sparsity, fit_and_score
from .folder import RunFolder, read_json
from .kinds import BRANCH_KINDS, transfer_core
from .prunable import Prunable
from .report import WandbRun

__all__ = ["BranchRunner", "SourceLevel", "branch_mask", "transfer_core"]

ROUND_DIR = re.compile(r"round_(\d+)$")


class SourceLevel:
    """A finished level of a lottery run: its folder, index, mask, result and start weights."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        match = ROUND_DIR.search(self.path.name)
        if not match or not self.path.is_dir():
            raise ValueError(f"branch.source {path} is not a round folder of a lottery run (runs/<task>/<run>/round_NN)")
        self.level = int(match.group(1))
        self.run = RunFolder(self.path.parent)
        if not self.run.metrics_path(self.level).exists():
            raise ValueError(f"branch.source {path}: round {self.level} has not finished (no metrics.json)")
        self.result = self.run.result(self.level)
        self.mask = Mask.load(self.run.mask_path(self.level))
        self.config = yaml.safe_load(self.run.config.read_text()) if self.run.config.exists() else {}

    def start_weights(self) -> dict[str, torch.Tensor]:
        """What the level started from: θ_i with its head (``rewind.pt``) or θ_0, φ_0 (``init.pt``)."""
        return self.run.tensors(self.run.rewind if self.run.rewind.exists() else self.run.init)


def branch_mask(cfg: BranchConfig, source: SourceLevel) -> Mask:
    """The mask a branch of kind ``cfg.kind`` fine-tunes."""
    return BRANCH_KINDS[cfg.kind].mask(cfg, source)


class BranchRunner:
    """Runs one branch of ``cfg.source`` (see the module docstring)."""

    def __init__(self, cfg: BranchConfig, module: Prunable, datamodule: pl.LightningDataModule,
                 make_trainer: MakeTrainer, name: str, config_yaml: str = "", identity: dict | None = None,
                 command: dict | None = None, seed: int = 0, wandb_config: dict | None = None):
        self.cfg, self.module, self.datamodule, self.make_trainer = cfg, module, datamodule, make_trainer
        self.source = SourceLevel(cfg.source)
        self.folder = RunFolder(self.source.path / "branches" / name)
        self.config_yaml, self.identity, self.seed = config_yaml, identity, seed
        self.command = command
        self.is_zero = rank_zero_only.rank == 0
        self.wandb = WandbRun(cfg.wandb, cfg.wandb_project, module.task_name,
                              f"{module.task_name}/{self.source.run.path.name}/round_{self.source.level:02d}/{name}",
                              f"{self.source.run.path.name}-r{self.source.level:02d}-{name}", cfg.kind,
                              ["branch", cfg.kind], str(self.folder.path), wandb_config)

    def run(self) -> dict:
        """The branch's result (run now, or read back when it is done). Global rank 0 holds the
        branch folder's lock while it runs."""
        with self.folder.exclusive() if self.is_zero else contextlib.nullcontext():
            return self._run()

    def _run(self) -> dict:
        done = self.folder.path / "metrics.json"
        cfg, source = self.cfg, self.source
        if self.is_zero:
            self.folder.adopt(self.identity, self.config_yaml, self.command)
        if done.exists():
            result = read_json(done, "branch result")
            rank_zero_info(self.line(result) + " (done earlier)")
            if self.is_zero:
                self.wandb.sync([result], self.folder.wandb_marker)
                self.wandb.finish()
            return result
        kind = BRANCH_KINDS[cfg.kind]
        kind.check(cfg, source, self.module_init())
        mask = kind.mask(cfg, source)
        if set(mask.keys()) == set(source.mask.keys()):  # a branch's mask records its source's groups
            mask = mask.with_groups(source.mask.recorded_groups)
        notes = kind.start(self.module, source)
        if self.is_zero:
            mask.save(self.folder.path / "mask.pt")
        fit = fit_and_score(self.module, self.datamodule, self.make_trainer, self.folder.path, mask, self.seed,
                            checksum_path=self.folder.path / "ranks.json", label=f"branch {self.folder.path}")
        result = {
            "kind": cfg.kind, "strategy": cfg.strategy if kind.uses_strategy else None, "seed": cfg.seed,
            "source": str(source.path), "source_round": source.level, "source_method": source.result.get("method"),
            "source_metric": source.result.get("metric"), "source_task": source.result.get("task"),
            "task": self.module.task_name,
            "init": self.module_init(), "sparsity": check_sparsity(self.module, mask), "kept": mask.num_kept,
            "total": mask.num_total, "monitor": self.module.monitor, "metric": fit.metrics.get(self.module.monitor),
            "metrics": fit.metrics, "steps": fit.steps, "seconds": fit.seconds, "partial_transfer": notes,
        }
        if self.is_zero:
            self.folder.write_json(done, result)
            self.wandb.sync([result], self.folder.wandb_marker)
            self.wandb.finish()
        barrier()
        rank_zero_info(self.line(result))
        return result

    def module_init(self):
        return getattr(getattr(self.module, "hparams", {}), "get", lambda *_: None)("init")

    @staticmethod
    def line(result: dict) -> str:
        metric = result["monitor"].split("/")[-1]
        value = "n/a" if result["metric"] is None else f"{result['metric']:.4f}"
        ref, source_task = result.get("source_metric"), result.get("source_task")
        on = f" on {source_task}" if source_task and source_task != result["task"] else ""
        ref = "" if ref is None else f" (source round{on}: {ref:.4f})"
        return (f"branch {result['kind']} of round {result['source_round']} on {result['task']} · sparsity "
                f"{result['sparsity']:.1%} · val {metric} {value}{ref} · {result['steps']} steps in {result['seconds']:.0f}s")
