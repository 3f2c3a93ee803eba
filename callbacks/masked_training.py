"""Training with a fixed pruning mask, and capturing the rewind weights θ_i.

No ``torch.nn.utils.prune`` re-parametrisation and no per-forward hooks: parameters stay plain
dense tensors with UNITER's names. The sub-network is trained exactly as if the pruned weights
did not exist:

* the pruned entries are zeroed in place once at fit start;
* their gradients are zeroed before gradient clipping and the optimizer step
  (``on_before_optimizer_step``, which Lightning calls after unscaling mixed-precision gradients
  and before clipping), so the clipping norm and AdamW's moments only see the kept weights;
* nothing more per step: a weight that is zero, with a zero gradient and zero AdamW moments, stays
  exactly zero through the update (decoupled weight decay scales 0; the step adds
  ``0 / (sqrt(0) + eps) = 0``), so re-zeroing the weights after each step, as this callback did
  before, changed no bit and cost 2–3% of a base-size step. That rests on the optimizer, so it is
  *checked*: the pruned weights are read after the first optimizer step and at the end of every
  fit, and a fit whose optimizer moved one stops with the tensor named (``PrunedWeightMoved``).

Masks are bool tensors (1 byte per weight), applied with one fused multiply per step. Under
DDP the mask of global rank 0 is broadcast at setup, so every rank trains the same sub-network
even if the ranks computed different (e.g. random) masks; every rank's mask checksum is gathered
and, with ``checksum_path``, written by rank 0 with each rank's weight checksum at the fit's end.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_vl.io import atomic_torch_save, atomic_write_text
from lightning_vl.pruning.distributed import broadcast_mask, destroy_at_exit, gather_strings, tensor_digest
from lightning_vl.pruning.mask import Mask, named_parameters_by


class PrunedWeightMoved(RuntimeError):
    """The optimizer changed a pruned weight although its gradient was zeroed."""


class MaskedTraining(pl.Callback):
    """Train only ``mask``'s kept weights for a whole fit: pruned weights stay exactly zero and
    receive no gradient.

    Args:
        mask: the round's mask, keyed by the LightningModule's parameter names.
        rewind_step: if given, keep the module's weights after this many optimizer steps
            (``rewind_state``, on every rank) and save them to ``rewind_path`` (global rank 0,
            atomically): the θ_i later rounds rewind to (0 = before the first step).
        rewind_path: where θ_i is written.
        checksum_path: where global rank 0 writes every rank's mask and weight checksums (JSON)
            at the end of the fit, after checking they agree.

    Example:
        >>> trainer = pl.Trainer(callbacks=[MaskedTraining(mask)])  # doctest: +SKIP

    Raises:
        PrunedWeightMoved: after the first optimizer step or at the fit's end, a pruned weight is
            not zero (an optimizer that updates weights whose gradient is zero, which AdamW and SGD
            do not); the message names the tensors.
        RuntimeError: the ranks train different masks, or ``rewind_step`` was never reached.
    """

    def __init__(self, mask: Mask, rewind_step: int | None = None, rewind_path: str | Path | None = None,
                 checksum_path: str | Path | None = None):
        super().__init__()
        if (rewind_step is None) != (rewind_path is None):
            raise ValueError("rewind_step and rewind_path go together")
        self.mask = mask
        self.rewind_step = rewind_step
        self.rewind_path = Path(rewind_path) if rewind_path is not None else None
        self.checksum_path = Path(checksum_path) if checksum_path is not None else None
        self.rewind_state: dict[str, torch.Tensor] | None = None
        self.mask_digests: list[str] = []
        self._params: dict[str, torch.Tensor] = {}
        self._checked_first_step = False

    @property
    def rewind_saved(self) -> bool:
        return self.rewind_state is not None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.mask.validate(dict(pl_module.named_parameters()), "MaskedTraining")
        destroy_at_exit()
        self.mask = broadcast_mask(self.mask, pl_module.device)
        self.mask_digests = gather_strings(tensor_digest(dict(self.mask.items())))
        if len(set(self.mask_digests)) != 1:
            raise RuntimeError(f"ranks train different masks after the broadcast: {self.mask_digests}")
        self._params = named_parameters_by(pl_module, self.mask.keys())

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # parameters may have moved device (strategy setup) since `setup`
        self.mask = self.mask.to(pl_module.device)
        self._params = named_parameters_by(pl_module, self.mask.keys())
        self.mask.apply_(self._params)
        if self.rewind_step is not None and trainer.global_step > self.rewind_step and self.rewind_path.exists():
            # resumed past the rewind step (e.g. a SLURM requeue restored a mid-round checkpoint)
            self.rewind_state = torch.load(self.rewind_path, map_location="cpu", weights_only=True)
        elif self.rewind_step == 0 and trainer.global_step == 0:
            self._keep_rewind(trainer, pl_module)

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.mask.mask_grads_(self._params)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 and not self._checked_first_step:
            self._check_pruned_are_zero(trainer, "after the first optimizer step")
            self._checked_first_step = True
        if self.rewind_step and trainer.global_step == self.rewind_step and not self.rewind_saved:
            self._keep_rewind(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._check_pruned_are_zero(trainer, f"at the end of the fit (step {trainer.global_step})")

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.rewind_step is not None and not self.rewind_saved:
            raise RuntimeError(
                f"rewind step {self.rewind_step} was never reached: the fit ended after "
                f"{trainer.global_step} optimizer steps"
            )
        if self.checksum_path is not None:
            self._write_checksums(trainer, pl_module)

    def _check_pruned_are_zero(self, trainer, when: str) -> None:
        moved = self.mask.pruned_nonzero(self._params)
        if moved:
            optimizer = type(trainer.optimizers[0]).__qualname__ if trainer.optimizers else "the optimizer"
            raise PrunedWeightMoved(
                f"MaskedTraining: {len(moved)} tensor(s) have non-zero pruned weights {when}, e.g. {moved[:3]}: "
                f"{optimizer} changed weights whose gradient was zeroed (it must leave a zero weight with a zero "
                "gradient at zero, as AdamW and SGD do); the sub-network was not trained alone. Use AdamW "
                "(VLModule's optimizer) or an optimizer with that property.")

    def _keep_rewind(self, trainer, pl_module) -> None:
        self.rewind_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        if trainer.is_global_zero:
            atomic_torch_save(self.rewind_state, self.rewind_path)

    def _write_checksums(self, trainer, pl_module) -> None:
        pruned_nonzero = self.mask.pruned_nonzero(self._params)
        weights = gather_strings(tensor_digest(dict(pl_module.state_dict())))
        nonzero = gather_strings(",".join(pruned_nonzero))
        if trainer.is_global_zero:
            record = {"world_size": len(weights), "mask_sha1": self.mask_digests, "weights_sha1": weights,
                      "pruned_nonzero": [n.split(",") if n else [] for n in nonzero]}
            atomic_write_text(self.checksum_path, json.dumps(record, indent=1) + "\n")

    # the mask travels inside Lightning checkpoints, bit-packed
    def state_dict(self) -> dict:
        return {"mask": self.mask.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.mask = Mask.from_state_dict(state_dict["mask"], "checkpoint callback state")
