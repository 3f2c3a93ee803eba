"""One masked fine-tune and its score — what a level of a lottery run and a branch both do."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn, TrainerStatus

from callbacks import MaskedTraining
from lightning_vl.pruning import Mask
from lightning_vl.pruning.strategies.builtin import snip_finish, snip_step
from callbacks.health import NonFiniteError, check_finite

from ..launchers import check_launcher
from .prunable import Prunable

T = TypeVar("T")
MakeTrainer = Callable[[Path, list[pl.Callback]], pl.Trainer]

# keys LastValidation adds to ``trainer.callback_metrics``: under ddp_spawn/ddp_fork the launcher
# sends callback metrics (not callback objects) back to the main process
_VAL_STEP, _FIT_STEPS = "lightning_vl/last_val_step", "lightning_vl/fit_steps"


class LastValidation(pl.Callback):
    """Marks the step of a fit's latest validation and the fit's length, so a fit that ended on a
    validation is not scored a second time (a full VQA or retrieval evaluation is minutes on real
    data)."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        trainer.callback_metrics[_VAL_STEP] = torch.tensor(trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.callback_metrics[_FIT_STEPS] = torch.tensor(trainer.global_step)


@dataclass
class FitResult:
    metrics: dict[str, float]
    steps: int
    seconds: float
    masking: MaskedTraining = field(repr=False)


def fit_and_score(module: Prunable, datamodule: pl.LightningDataModule, make_trainer: MakeTrainer, folder: Path,
                  mask: Mask, seed: int, rewind_step: Optional[int] = None, rewind_path: Optional[Path] = None,
                  checksum_path: Optional[Path] = None, label: str = "the fit") -> FitResult:
    """Fine-tune ``module`` with ``mask`` (seeded), then score its final weights on the
    validation split: the fit's own last validation when it ran at the last step, else one more.

    A fit that did not finish (interrupted) or that ends with non-finite weights or score is an
    error naming ``label``: it is never pruned, scored or reported."""
    start = time.time()
    pl.seed_everything(seed, workers=True, verbose=False)
    masking = MaskedTraining(mask, rewind_step=rewind_step, rewind_path=rewind_path, checksum_path=checksum_path)
    trainer = make_trainer(folder, [masking, LastValidation()])
    check_launcher(trainer)  # a trainer made outside the CLI too
    module.run_label = label  # TrainingHealth names it
    trainer.fit(module, datamodule=datamodule)
    if trainer.state.status != TrainerStatus.FINISHED:
        raise RuntimeError(f"{label}: the fit did not finish (status {trainer.state.status.value}); nothing was "
                           "recorded, re-run the command to redo it")
    check_finite(module.named_parameters(), f"{label}, after training")
    found = dict(trainer.callback_metrics)
    steps = int(found.pop(_FIT_STEPS, torch.tensor(trainer.global_step)))
    val_step = int(found.pop(_VAL_STEP, torch.tensor(-1)))
    metrics = {k: float(v) for k, v in found.items() if k.startswith("val/")}
    if val_step != steps or module.monitor not in metrics:
        scored = trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in (scored[0] if scored else {}).items()}
    if module.monitor not in metrics:
        raise RuntimeError(f"{label}: validation logged no {module.monitor} (got {sorted(metrics)})")
    if not math.isfinite(metrics[module.monitor]):
        raise NonFiniteError(f"{label}: the validation score {module.monitor} is {metrics[module.monitor]} "
                             "(non-finite model outputs: check the data with lightning-vl check-store)")
    return FitResult(metrics, steps, round(time.time() - start, 2), masking)


def check_sparsity(module: Prunable, mask: Mask) -> float:
    """The mask's sparsity, after checking the trained weights honour it exactly."""
    moved = mask.pruned_nonzero({n: module.get_parameter(n) for n in mask.keys()})
    if moved:
        raise RuntimeError(f"pruned weights of {moved[0]} are non-zero after training")
    return mask.sparsity


def state_of(module: torch.nn.Module, keys: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
    """A CPU copy of the module's state (or of ``keys`` of it)."""
    state = module.state_dict()
    return {k: state[k].detach().cpu().clone() for k in (keys if keys is not None else state)}


def calibrate(module: Prunable, datamodule: pl.LightningDataModule, state: Optional[Mapping[str, torch.Tensor]],
              batches: int, seed: int, step: Callable[[torch.nn.Module, Any], None],
              finish: Callable[[torch.nn.Module], T], label: str = "calibration") -> T:
    """``step(module, batch)`` on the first ``batches`` training batches (seeded with ``seed``), with
    the module at ``state`` (None: its current weights) in eval mode (no dropout noise) on the GPU
    if there is one; ``finish(module)``'s result. The module's own weights, device, gradients and
    train mode are restored afterwards — also when ``step`` fails."""
    saved = state_of(module)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    was_training = module.training
    try:
        if state is not None:
            module.load_state_dict(state)
        module.to(device).eval()
        datamodule.setup("fit")
        pl.seed_everything(seed, workers=True, verbose=False)
        loader = datamodule.train_dataloader()
        module.zero_grad(set_to_none=True)
        seen = 0
        for batch in loader:
            if seen == batches:
                break
            batch = module.transfer_batch_to_device(batch, device, 0)
            step(module, batch)
            seen += 1
        if seen == 0:
            raise ValueError(f"{label} needs at least one training batch; the training split is empty")
        return finish(module)
    finally:
        module.zero_grad(set_to_none=True)
        module.cpu().load_state_dict(saved)
        module.train(was_training)


def init_gradients(module: Prunable, datamodule: pl.LightningDataModule, state: dict[str, torch.Tensor],
                   names: list[str], batches: int, seed: int) -> tuple[dict, dict]:
    """θ_0 and ∂L/∂w at θ_0 for ``names``, summed over the first ``batches`` training batches
    (SNIP's connection sensitivity, ``lightning_vl.pruning.strategies.builtin.Snip``)."""
    return calibrate(module, datamodule, state, batches, seed, snip_step, snip_finish(names), label="SNIP")
