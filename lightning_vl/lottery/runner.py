"""The lottery runner: levels of masked fine-tuning and pruning (Algorithm 1 of Gan et al.), in the
shape of open_lth's ``LotteryRunner``.

Every level is a fresh ``Trainer.fit`` (new optimizer, scheduler and step counter) from the rewind
weights θ_i with the level's fixed mask; the next mask is computed *between* fits by the level's
pruning strategy (``lightning_vl.pruning.strategies``). Each step is idempotent: a level whose ``metrics.json``
exists is not run again, so re-running a command resumes after the last finished level with the
same result as an uninterrupted run (every fit is seeded identically), and a larger target
sparsity continues the same folder.

Under Lightning's ``ddp`` launcher every rank runs this loop. Before the first fit the ranks read
the same files (rank 0 waits in the process-group rendezvous while the others start); after it,
nothing is read back: rank 0 computes each mask and broadcasts it, only rank 0 writes, and the
ranks meet at a barrier once a level's files are written. Under ``ddp_spawn``/``ddp_fork`` the loop
runs in the launching process alone.
"""
from __future__ import annotations

import contextlib
import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from lightning_vl.pruning import Mask, PruningInputs, schedule_level
from lightning_vl.pruning.distributed import barrier, broadcast_mask

from .config import ImpConfig
from .fitting import MakeTrainer, calibrate, check_sparsity, fit_and_score, state_of
from .folder import RunFolder, RunSettingsChanged
from .prunable import Prunable, prunable_groups
from .report import WandbRun, progress_line, write_summary

log = logging.getLogger(__name__)


class LotteryRunner:
    """Runs the levels of one experiment in ``folder``.

    Args:
        make_trainer: builds a fresh Trainer for a level, given its folder and the callbacks to add.
        config_yaml: the resolved configuration, written to ``config.yaml``.
        identity: the settings the folder's name hashes (``identity.json``).
        seed: every level's fit is seeded with it, so a resumed run equals an uninterrupted one.
        wandb_config: the configuration logged with the W&B run.
    """

    def __init__(self, cfg: ImpConfig, module: Prunable, datamodule: pl.LightningDataModule,
                 make_trainer: MakeTrainer, folder: RunFolder, config_yaml: str = "", identity: dict | None = None,
                 command: dict | None = None, seed: int = 0, wandb_config: dict | None = None):
        self.cfg, self.module, self.datamodule, self.make_trainer = cfg, module, datamodule, make_trainer
        self.folder, self.config_yaml, self.identity, self.seed = folder, config_yaml, identity, seed
        self.command = command
        self.strategy = cfg.strategy()
        self.levels = cfg.levels
        self.groups = prunable_groups(module, tuple(cfg.prunable))  # recorded in every mask saved
        self.names = list(self.groups) if self.groups is not None else module.prunable_parameter_names(
            tuple(cfg.prunable))
        self.is_zero = rank_zero_only.rank == 0  # the global rank once a Trainer exists
        self.wandb = WandbRun(cfg.wandb, cfg.wandb_project, module.task_name, f"{module.task_name}/{folder.path.name}",
                              f"{module.task_name}-{folder.path.name}", cfg.method, [cfg.method, cfg.schedule],
                              str(folder.path), wandb_config)
        self.rewind_state: dict | None = None
        self.kept_head: dict | None = None
        self.dense_weights: dict | None = None

    def run(self) -> list[dict]:
        """All levels up to the target; the results of those levels. Global rank 0 holds the
        folder's lock for the whole run."""
        with self.folder.exclusive() if self.is_zero else contextlib.nullcontext():
            return self._run()

    def _run(self) -> list[dict]:
        if self.is_zero:
            self.folder.adopt(self.identity, self.config_yaml, self.command)
        self.init_state = self._establish_initial_weights()
        done = self.folder.completed_levels()
        while 0 < done < len(self.levels) and not self.folder.readable_mask(done):
            log.warning("%s is missing or unreadable: round %d is redone", self.folder.mask_path(done), done - 1)
            done -= 1
        rank_zero_info(
            f"{self.cfg.method} on {self.module.task_name}: {len(self.levels)} rounds to sparsity "
            f"{self.levels[-1]:.1%} ({self.cfg.schedule}), {len(self.names)} prunable tensors, "
            f"{sum(self.module.get_parameter(n).numel() for n in self.names):,} weights · {self.folder.path}"
        )
        earlier = self.folder.results(done)
        for result in earlier[: len(self.levels)]:
            rank_zero_info(progress_line(result, len(self.levels)) + " (done earlier)")
        if self.is_zero:  # rebuilt from the round files on every run
            write_summary(self.folder, earlier)
            self.wandb.sync(earlier, self.folder.wandb_marker)
        mask = (self.folder.mask(done) if done else self._dense_mask()) if done < len(self.levels) else None
        for level in range(done, len(self.levels)):
            mask = self._run_level(level, mask)
        results = self.folder.results()
        self.wandb.finish({"rounds_completed": len(results)})
        return results[: len(self.levels)]

    def _establish_initial_weights(self) -> dict[str, torch.Tensor]:
        """θ_0 and φ_0: read back when the folder has them (every rank reads the same file), else
        the module's own weights, saved by rank 0."""
        if self.folder.init.exists():
            saved = self.folder.tensors(self.folder.init)
            self._check_same_start(saved)
            self.module.load_state_dict(saved)
        elif self.is_zero:
            self.folder.save_tensors(self.folder.init, state_of(self.module))
        return state_of(self.module)

    def _check_same_start(self, saved: dict[str, torch.Tensor]) -> None:
        """The pruned weights this command starts from must be the folder's θ_0. The name hashes
        the *path* of ``--model.init``, not its content, so a checkpoint rebuilt at the same path
        (``make pretrain`` after a new demo world, a re-exported model) would otherwise resume —
        and report — rounds trained from other weights."""
        changed = [n for n in self.names
                   if n not in saved or not torch.equal(saved[n], self.module.get_parameter(n).detach().cpu())]
        if changed:
            raise RunSettingsChanged(
                f"{self.folder.init} is not the start this command loads: {len(changed)} of {len(self.names)} "
                f"prunable tensors differ (e.g. {changed[0]}); the initial checkpoint (--model.init) changed since "
                f"this run began. Move {self.folder.path} aside (or give --imp.name) to start a new run.")

    def _dense_mask(self) -> Mask:
        mask = Mask.ones_like({n: self.module.get_parameter(n).detach().cpu() for n in self.names})
        mask = mask.with_groups(self.groups)
        if self.is_zero:
            mask.save(self.folder.mask_path(0))
        return mask

    def _run_level(self, level: int, mask: Mask) -> Mask:
        mask.validate(dict(self.module.named_parameters()), str(self.folder.mask_path(level)))
        self.module.load_state_dict(self._level_weights(level))
        capture = level == 0 and self.cfg.rewind_step > 0
        fit = fit_and_score(self.module, self.datamodule, self.make_trainer, self.folder.round_dir(level), mask,
                            self.seed, rewind_step=self.cfg.rewind_step if capture else None,
                            rewind_path=self.folder.rewind if capture else None,
                            checksum_path=self.folder.ranks_path(level),
                            label=f"round {level} of {self.folder.path}")
        sparsity = check_sparsity(self.module, mask)
        if capture:
            self.rewind_state = fit.masking.rewind_state or self.folder.tensors(self.folder.rewind)
        if self.cfg.head_reset == "keep":
            self.kept_head = state_of(self.module, [k for k in self.module.state_dict()
                                                    if self.module.is_head_parameter(k)])
        if level == 0 and self.strategy.keeps_dense_weights:
            self.dense_weights = state_of(self.module, self.names)
            if self.is_zero:
                self.folder.save_tensors(self.folder.weights_path(0), self.dense_weights)
        nxt = self._next_mask(level + 1, mask)
        result = {
            "round": level, "task": self.module.task_name, "method": self.cfg.method,
            "target_sparsity": self.levels[level], "sparsity": sparsity, "kept": mask.num_kept,
            "total": mask.num_total, "monitor": self.module.monitor, "metric": fit.metrics.get(self.module.monitor),
            "metrics": fit.metrics, "steps": fit.steps, "seconds": fit.seconds,
        }
        if self.is_zero:
            if self.kept_head is not None:
                self.folder.save_tensors(self.folder.head_path(level), self.kept_head)
            if self.cfg.save_trained:  # before metrics.json: a level marked done has its weights
                self.folder.save_tensors(self.folder.trained_path(level), state_of(self.module))
            if nxt is not None:
                nxt.save(self.folder.mask_path(level + 1))
            self.folder.write_json(self.folder.round_dir(level) / "sparsity.json", mask.report())
            self.folder.write_json(self.folder.metrics_path(level), result)  # last: marks the level done
            for stale in self.folder.round_dir(level).glob("hpc_ckpt_*.ckpt"):  # a SLURM requeue's mid-round state
                stale.unlink()
            results = self.folder.results(level + 1)
            write_summary(self.folder, results)
            self.wandb.sync(results, self.folder.wandb_marker)
        barrier()
        rank_zero_info(progress_line(result, len(self.levels)))
        return nxt

    def _level_weights(self, level: int) -> dict[str, torch.Tensor]:
        """Core → θ_i (θ_0 when rewind_step is 0); head → φ_0, φ_i or the last level's, as configured."""
        if level == 0:
            return self.init_state
        if self.cfg.rewind_step > 0 and self.rewind_state is None:
            self.rewind_state = self.folder.tensors(self.folder.rewind)
        rewind = self.rewind_state if self.cfg.rewind_step > 0 else self.init_state
        head = {"init": self.init_state, "rewind": rewind}.get(self.cfg.head_reset)
        if head is None:
            head = self.kept_head if self.kept_head is not None else self.folder.tensors(self.folder.head_path(level - 1))
        is_head = self.module.is_head_parameter
        return {k: (head[k] if is_head(k) else v) for k, v in rewind.items()}

    def _next_mask(self, level: int, mask: Mask) -> Mask | None:
        """Rank 0 prunes to the next level's sparsity (past 100%: none); every rank gets its mask."""
        sparsity = schedule_level(level, self.cfg.schedule, self.cfg.rate)
        if sparsity >= 1.0 - 1e-9:
            return None
        nxt = mask
        if self.is_zero:
            nxt = self.strategy.prune(self._pruning_inputs(level), mask, sparsity)
        return broadcast_mask(nxt).with_groups(self.groups)

    def _pruning_inputs(self, level: int) -> PruningInputs:
        """The strategy computes its inputs from what the run offers (``LevelRun``)."""
        return self.strategy.inputs(LevelRun(self, level))


class LevelRun:
    """What a run offers a strategy when it prunes for ``level`` (``lightning_vl.pruning.PruningRun``)."""

    def __init__(self, runner: LotteryRunner, level: int):
        self.runner, self.level, self.seed, self.names = runner, level, runner.seed, runner.names

    def trained_weights(self) -> dict[str, torch.Tensor]:
        return {n: self.runner.module.get_parameter(n).detach().cpu() for n in self.names}

    def dense_weights(self) -> dict[str, torch.Tensor]:
        runner = self.runner
        if runner.dense_weights is None:
            runner.dense_weights = runner.folder.tensors(runner.folder.weights_path(0))
        return runner.dense_weights

    def initial_state(self) -> dict[str, torch.Tensor]:
        return self.runner.init_state

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1000 + self.level)

    def calibrate(self, step, finish, batches: int, state=None, label: str = "calibration"):
        return calibrate(self.runner.module, self.runner.datamodule, state, batches, self.seed, step, finish, label)
