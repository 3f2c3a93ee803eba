"""Training health: a fit whose loss or weights stop being finite is an error, never a result.

A diverged run (say ``--model.lr 1000``) used to finish every round with exit status 0: magnitude
pruning of NaN weights removes nothing, so "10%, 20%" rounds were reported at 0% sparsity.
``TrainingHealth`` checks the loss the step already computed (one scalar read per step — the
progress bar reads it too; Lightning's ``detect_anomaly`` re-checks every operation and costs
several times a step) and stops the fit at the first non-finite one, naming where, the step and
the last finite loss. ``check_finite`` checks a model's weights before they are pruned or scored.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import pytorch_lightning as pl
import torch


class NonFiniteError(RuntimeError):
    """Training produced NaN or infinite values."""


class TrainingHealth(pl.Callback):
    """Raise ``NonFiniteError`` at the first non-finite training loss.

    Args:
        where: what is training, for the message (e.g. ``round 3 of runs/nlvr2/imp-1f3a9c2e``);
            a LightningModule's ``run_label`` attribute, when set, is used instead.
    """

    def __init__(self, where: str = "the fit"):
        self.where = where
        self.last: float | None = None
        self.last_step = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        self.last, self.last_step = None, -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            self.last, self.last_step = value, trainer.global_step
            return
        where = getattr(pl_module, "run_label", None) or self.where
        last = (f"the last finite loss was {self.last:.4g} at step {self.last_step}" if self.last is not None
                else "no step had a finite loss")
        raise NonFiniteError(
            f"{where}: the training loss is {value} at step {trainer.global_step} (batch {batch_idx}); {last}. "
            "The model diverged: lower the learning rate (model.lr), or check the data (lightning-vl check-store)."
        )


def check_finite(named: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """Raise ``NonFiniteError`` naming the tensors that hold NaN or infinite values."""
    bad = [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all())]
    if bad:
        raise NonFiniteError(
            f"{where}: {len(bad)} tensors hold NaN or infinite values ({', '.join(bad[:4])}"
            f"{', …' if len(bad) > 4 else ''}); the model diverged, so it is neither pruned nor scored"
        )
