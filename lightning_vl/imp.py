"""The IMP driver: iterative magnitude pruning with weight rewinding (Algorithm 1 of Gan et al.),
and the same loop with random pruning as the baseline.

Every round is a fresh ``Trainer.fit`` (new optimizer, scheduler and step counter) that starts
from the rewind weights θ_i with the round's fixed mask; pruning happens *between* fits, by the
pure functions of ``callbacks.pruning``. A run folder holds everything needed to resume and to
read the results without the code::

    runs/<task>/<method>-<hash>/
      config.yaml  init.pt (θ_0, φ_0)  rewind.pt (θ_i, φ_i; only when rewind_step > 0)
      summary.csv  summary.json
      round_00/ mask.pt  metrics.json  logs/metrics.csv
      round_01/ ...

A round is complete when its ``metrics.json`` exists; the next round's ``mask.pt`` is written
before it, so re-running the same command resumes after the last completed round and gives the
same result as an uninterrupted run (every fit is seeded identically). Under DDP only rank 0
writes files; the masked-training callback broadcasts rank 0's mask at every fit.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from callbacks import Mask, MaskedTraining, magnitude_prune, random_prune, sparsity_schedule
from callbacks.mask import atomic_torch_save

from .module import VLModule

METHODS = ("imp", "random", "random-layerwise")


@dataclass
class ImpConfig:
    """What an IMP experiment does (the *how* is ``ImpRunner``).

    Args:
        method: ``imp`` (global magnitude), ``random`` (global random) or ``random-layerwise``
            (random, every tensor at the same sparsity).
        target_sparsity: stop once the mask reaches this fraction of pruned prunable weights.
        schedule: ``linear`` (10%, 20%, … of the original count: the paper's tables) or
            ``geometric`` (prune ``rate`` of what remains each round: Algorithm 1's wording).
        rate: the per-round pruning fraction of the schedule.
        rewind_step: rewind to θ_i, the weights after this many optimizer steps of the dense
            round (0 = the initial weights θ_0).
        head_reset: the head at the start of each round: ``init`` (φ_0, i.e. re-initialised with
            the same seed), ``rewind`` (φ_i) or ``keep`` (the previous round's trained head,
            BERT-Tickets' behaviour).
        prunable: parts of the core to prune: ``encoder`` (72 Linear weights at base size),
            ``pooler``, ``img_linear``.
        root: folder that holds ``<task>/<method>-<hash>`` run folders.
        name: run folder name instead of ``<method>-<hash>``.
        wandb: W&B mode for the experiment run: ``offline`` (default), ``online`` or ``disabled``.
        wandb_project: W&B project name.
    """

    method: Literal["imp", "random", "random-layerwise"] = "imp"
    target_sparsity: float = 0.7
    schedule: Literal["linear", "geometric"] = "linear"
    rate: float = 0.1
    rewind_step: int = 0
    head_reset: Literal["init", "rewind", "keep"] = "init"
    prunable: list[str] = field(default_factory=lambda: ["encoder"])
    root: str = "runs"
    name: Optional[str] = None
    wandb: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "lightning-vl"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"imp.method must be one of {METHODS}, got {self.method!r}")
        sparsity_schedule(self.target_sparsity, self.schedule, self.rate)  # validates
        if self.rewind_step < 0:
            raise ValueError(f"imp.rewind_step must be >= 0, got {self.rewind_step}")
        if self.head_reset == "rewind" and self.rewind_step == 0:
            self.head_reset = "init"  # φ_0 and φ_i coincide


# keys that change where or how results are shown, not what is computed
NON_SEMANTIC_KEYS = {
    ("imp", "root"), ("imp", "name"), ("imp", "wandb"), ("imp", "wandb_project"),
    ("trainer", "enable_progress_bar"), ("trainer", "default_root_dir"), ("trainer", "logger"),
    ("trainer", "enable_model_summary"), ("data", "init_args", "num_workers"), ("config",),
}


def config_hash(config: dict) -> str:
    """Short, stable hash of everything that determines the results (open_lth's idea)."""

    def strip(node, path=()):
        if isinstance(node, dict):
            return {k: strip(v, path + (k,)) for k, v in sorted(node.items()) if path + (k,) not in NON_SEMANTIC_KEYS}
        if isinstance(node, list):
            return [strip(v, path) for v in node]
        return node

    blob = json.dumps(strip(config), sort_keys=True, default=str)
    return hashlib.md5(blob.encode()).hexdigest()[:8]


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class LastValidation(pl.Callback):
    """Keeps the ``val/*`` metrics of a fit's latest validation and the step it ran at, so a round
    whose fit ended on a validation reuses it instead of scoring the same weights again (a full
    VQA or retrieval evaluation is minutes on real data)."""

    def __init__(self) -> None:
        self.step = -1
        self.metrics: dict[str, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.step = trainer.global_step
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def metrics_at(self, step: int) -> dict[str, float]:
        """The latest validation's metrics if it ran at ``step``, else nothing."""
        return dict(self.metrics) if self.step == step else {}


class ImpRunner:
    """Runs the rounds of one experiment in ``run_dir``.

    Args:
        make_trainer: builds a fresh Trainer for a round, given its folder and the callbacks to add.
        config: the full resolved configuration, written to ``config.yaml`` and logged to W&B.
        config_yaml: the same configuration as YAML text.
        seed: every round's fit is seeded with it, so a resumed run equals an uninterrupted one.
    """

    def __init__(
        self,
        cfg: ImpConfig,
        module: VLModule,
        datamodule: pl.LightningDataModule,
        make_trainer: Callable[[Path, list[pl.Callback]], pl.Trainer],
        run_dir: Path,
        config: dict | None = None,
        config_yaml: str = "",
        seed: int = 0,
    ):
        self.cfg = cfg
        self.module = module
        self.datamodule = datamodule
        self.make_trainer = make_trainer
        self.run_dir = Path(run_dir)
        self.config = config or {}
        self.config_yaml = config_yaml
        self.seed = seed
        self.levels = sparsity_schedule(cfg.target_sparsity, cfg.schedule, cfg.rate)
        self.names = module.prunable_parameter_names(tuple(cfg.prunable))
        self._wandb = None

    # files ------------------------------------------------------------------------------------
    def round_dir(self, r: int) -> Path:
        return self.run_dir / f"round_{r:02d}"

    @property
    def is_rank_zero(self) -> bool:
        return rank_zero_only.rank == 0

    def _load(self, name: str) -> dict[str, torch.Tensor]:
        return torch.load(self.run_dir / name, map_location="cpu", weights_only=True)

    # the loop ---------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_rank_zero and self.config_yaml:
            atomic_write_text(self.run_dir / "config.yaml", self.config_yaml)
        init_path = self.run_dir / "init.pt"
        if init_path.exists():
            self.module.load_state_dict(self._load("init.pt"))
        elif self.is_rank_zero:
            atomic_torch_save(self._state(), init_path)
        init_state = self._state()

        rank_zero_info(
            f"{self.cfg.method} on {self.module.spec.name}: {len(self.levels)} rounds to sparsity "
            f"{self.cfg.target_sparsity:.0%} ({self.cfg.schedule}), {len(self.names)} prunable tensors, "
            f"{sum(self.module.get_parameter(n).numel() for n in self.names):,} weights · {self.run_dir}"
        )
        results = []
        for r, target in enumerate(self.levels):
            done = self.round_dir(r) / "metrics.json"
            if done.exists():
                results.append(json.loads(done.read_text()))
                rank_zero_info(self._line(results[-1]) + " (done earlier)")
                continue
            results.append(self._run_round(r, target, init_state))
            self._write_summary(results)
        self._finish_wandb(results)
        return results

    def _run_round(self, r: int, target: float, init_state: dict[str, torch.Tensor]) -> dict:
        start = time.time()
        rdir = self.round_dir(r)
        params = {n: self.module.get_parameter(n) for n in self.names}
        if r == 0:
            mask = Mask.ones_like({n: p.detach().cpu() for n, p in params.items()})
            if self.is_rank_zero:
                mask.save(rdir / "mask.pt")
        else:
            if not (rdir / "mask.pt").exists():
                raise FileNotFoundError(
                    f"{rdir / 'mask.pt'} is missing although round {r - 1} is complete; the run folder "
                    f"{self.run_dir} was modified by hand — delete round_{r - 1:02d}/metrics.json to redo it"
                )
            mask = Mask.load(rdir / "mask.pt")
        mask.validate(params, str(rdir / "mask.pt"))
        self._set_round_weights(r, init_state)

        pl.seed_everything(self.seed, workers=True, verbose=False)
        capture = r == 0 and self.cfg.rewind_step > 0
        masking = MaskedTraining(
            mask,
            rewind_step=self.cfg.rewind_step if capture else None,
            rewind_path=self.run_dir / "rewind.pt" if capture else None,
        )
        last_val = LastValidation()
        trainer = self.make_trainer(rdir, [masking, last_val])
        trainer.fit(self.module, datamodule=self.datamodule)
        metrics = last_val.metrics_at(trainer.global_step)
        if self.module.monitor not in metrics:  # the fit did not end on a validation: score the final weights
            val = trainer.validate(self.module, datamodule=self.datamodule, verbose=False)
            metrics = {k: float(v) for k, v in (val[0] if val else {}).items()}

        achieved = self._check_sparsity(mask)
        if self.cfg.head_reset == "keep" and self.is_rank_zero:
            head = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items() if k.startswith("head.")}
            atomic_torch_save(head, rdir / "head.pt")
        if r + 1 < len(self.levels):
            nxt = self._next_mask(mask, r + 1)
            if self.is_rank_zero:
                nxt.save(self.round_dir(r + 1) / "mask.pt")
        result = {
            "round": r,
            "rounds": len(self.levels),
            "target_sparsity": target,
            "sparsity": achieved,
            "kept": mask.num_kept,
            "total": mask.num_total,
            "monitor": self.module.monitor,
            "metric": metrics.get(self.module.monitor),
            "metrics": metrics,
            "steps": int(trainer.global_step),
            "seconds": round(time.time() - start, 2),
        }
        if self.is_rank_zero:
            atomic_write_text(rdir / "sparsity.json", json.dumps(mask.report(), indent=1))
            atomic_write_text(rdir / "metrics.json", json.dumps(result, indent=1))
            self._log_wandb(result)
        rank_zero_info(self._line(result))
        return result

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def _set_round_weights(self, r: int, init_state: dict[str, torch.Tensor]) -> None:
        """Core → θ_i (θ_0 when rewind_step is 0); head → φ_0, φ_i or last round's, as configured."""
        if r == 0:
            self.module.load_state_dict(init_state)
            return
        rewind = self._load("rewind.pt") if self.cfg.rewind_step > 0 else init_state
        state = {k: v for k, v in rewind.items() if not k.startswith("head.")}
        if self.cfg.head_reset == "init":
            head = init_state
        elif self.cfg.head_reset == "rewind":
            head = rewind
        else:
            head = torch.load(self.round_dir(r - 1) / "head.pt", map_location="cpu", weights_only=True)
        state.update({k: v for k, v in head.items() if k.startswith("head.")})
        self.module.load_state_dict(state)

    def _next_mask(self, mask: Mask, r: int) -> Mask:
        target = self.levels[r]
        if self.cfg.method == "imp":
            weights = {n: self.module.get_parameter(n).detach().cpu() for n in self.names}
            return magnitude_prune(weights, mask, target)
        generator = torch.Generator().manual_seed(self.seed * 1000 + r)
        return random_prune(mask, target, generator, layerwise=self.cfg.method == "random-layerwise")

    def _check_sparsity(self, mask: Mask) -> float:
        """The mask's sparsity, after checking the trained weights honour it exactly."""
        for n in self.names:
            w = self.module.get_parameter(n).detach().cpu()
            if (w[~mask[n]] != 0).any():
                raise RuntimeError(f"pruned weights of {n} are non-zero after training")
        return mask.sparsity

    # reporting --------------------------------------------------------------------------------
    def _line(self, res: dict) -> str:
        metric = res["monitor"].split("/")[-1]
        value = res["metric"]
        shown = f"{value:.4f}" if value is not None else "n/a"
        return (
            f"round {res['round']}/{res['rounds'] - 1} · sparsity {res['sparsity']:.1%} · "
            f"val {metric} {shown} · {res['steps']} steps in {res['seconds']:.0f}s"
        )

    def _write_summary(self, results: list[dict]) -> None:
        if not self.is_rank_zero:
            return
        metric_keys = sorted({k for r in results for k in r["metrics"]})
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["round", "target_sparsity", "sparsity", "kept", "total", "steps", "seconds", *metric_keys])
        for r in results:
            writer.writerow(
                [r["round"], f"{r['target_sparsity']:.6f}", f"{r['sparsity']:.6f}", r["kept"], r["total"],
                 r["steps"], r["seconds"], *[r["metrics"].get(k, "") for k in metric_keys]]
            )
        atomic_write_text(self.run_dir / "summary.csv", buf.getvalue())
        atomic_write_text(self.run_dir / "summary.json", json.dumps(results, indent=1))

    def _log_wandb(self, result: dict) -> None:
        if self.cfg.wandb == "disabled":
            return
        import wandb

        if self._wandb is None:
            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=self.cfg.wandb_project,
                group=self.module.spec.name,
                name=f"{self.module.spec.name}/{self.run_dir.name}",
                id=f"{self.module.spec.name}-{self.run_dir.name}".replace("/", "-"),
                job_type=self.cfg.method,
                tags=[self.cfg.method, self.cfg.schedule],
                dir=str(self.run_dir),
                mode=self.cfg.wandb,
                resume="allow",
                config=self.config,
            )
            self._wandb.define_metric("sparsity")
            self._wandb.define_metric("*", step_metric="sparsity")
        self._wandb.log(
            {"sparsity": 100 * result["sparsity"], "round": result["round"], **result["metrics"]}
        )

    def _finish_wandb(self, results: list[dict]) -> None:
        if self._wandb is not None:
            self._wandb.summary["rounds_completed"] = len(results)
            self._wandb.finish()
            self._wandb = None
