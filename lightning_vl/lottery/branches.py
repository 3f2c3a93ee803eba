"""Branches of a trained level (open_lth's lottery branches): controls and transfers that reuse a
level's ticket, each one masked fine-tune stored under the level it hangs off::

    runs/<task>/<run>/round_NN/branches/<kind>[-<task>]-<hash>/
      config.yaml  identity.json  mask.pt  metrics.json  ranks.json  logs/

=============  =========================================  ===========================================
kind           mask                                        weights
=============  =========================================  ===========================================
``random``     random at the level's sparsity (global,     the level's start: θ_i and φ of the source
               or ``layerwise``: every tensor at it)       (Table 1, row 5)
``shuffle``    the level's mask shuffled within each       same; keeps each tensor's sparsity
               tensor
``reinit``     the level's mask                            the model's own ``init``: a BERT folder
                                                           (θ'_0, row 6), ``shuffled:<θ_0>`` (θ''_0,
                                                           row 7) or none (fresh random)
``ticket``     the level's mask                            the level's start: the ticket itself,
                                                           trained again (with other settings, e.g.
                                                           ``--model.adversarial.enabled true``)
``transfer``   the level's mask                            the source's θ_i in the core, the target
                                                           task's head fresh (another task's config)
=============  =========================================  ===========================================

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

from lightning_vl.pruning import Mask, random_prune, shuffle_mask
from lightning_vl.pruning.distributed import barrier

from .config import BranchConfig
from .fitting import MakeTrainer, check_sparsity, fit_and_score, state_of
from .folder import RunFolder, read_json
from .prunable import Prunable
from .report import WandbRun

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
    if cfg.kind == "random":
        dense = Mask.ones_like({k: t for k, t in source.mask.items()})
        return random_prune(dense, source.mask.sparsity, torch.Generator().manual_seed(cfg.seed),
                            layerwise=cfg.strategy == "layerwise")
    if cfg.kind == "shuffle":
        return shuffle_mask(source.mask, torch.Generator().manual_seed(cfg.seed), layerwise=True)
    return source.mask


def transfer_core(module: Prunable, source: dict[str, torch.Tensor]) -> list[str]:
    """Load the source's core weights into ``module`` (not its head). A table that grew or shrank
    between tasks (token types, VCR's extra words) gets the rows both have; the rest keeps the
    module's own init. Returns what was only partly copied."""
    own = module.state_dict()
    partial, state = [], {}
    for k, v in own.items():
        if module.is_head_parameter(k) or k not in source:
            continue
        src = source[k]
        if src.shape == v.shape:
            state[k] = src
        elif src.dim() == v.dim() and src.shape[1:] == v.shape[1:]:
            rows = min(src.shape[0], v.shape[0])
            merged = v.detach().cpu().clone()
            merged[:rows] = src[:rows]
            state[k] = merged
            partial.append(f"{k} ({rows} of {v.shape[0]} rows)")
        else:
            raise ValueError(f"transfer: {k} has shape {tuple(src.shape)} in the source, {tuple(v.shape)} here: "
                             "the two tasks do not share a core")
    module.load_state_dict(state, strict=False)
    return partial


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
        if cfg.kind == "reinit" and self.module_init() == source.config.get("model", {}).get("init"):
            raise ValueError(f"branch kind reinit needs another --model.init than the source's "
                             f"({self.module_init()!r}): a BERT folder, shuffled:<file> or null (fresh random init)")
        mask = branch_mask(cfg, source)
        notes = []
        if cfg.kind in ("random", "shuffle", "ticket"):
            self.module.load_state_dict(source.start_weights())
        elif cfg.kind == "transfer":
            notes = transfer_core(self.module, source.start_weights())
        if self.is_zero:
            mask.save(self.folder.path / "mask.pt")
        fit = fit_and_score(self.module, self.datamodule, self.make_trainer, self.folder.path, mask, self.seed,
                            checksum_path=self.folder.path / "ranks.json", label=f"branch {self.folder.path}")
        result = {
            "kind": cfg.kind, "strategy": cfg.strategy if cfg.kind == "random" else None, "seed": cfg.seed,
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
