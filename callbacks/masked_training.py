"""Training with a fixed pruning mask, and capturing the rewind weights θ_i.

No ``torch.nn.utils.prune`` re-parametrisation and no per-forward hooks: parameters stay plain
dense tensors with UNITER's names. The sub-network is trained exactly as if the pruned weights
did not exist:

* the pruned entries are zeroed in place once at fit start;
* their gradients are zeroed before gradient clipping and the optimizer step
  (``on_before_optimizer_step``, which Lightning calls after unscaling mixed-precision gradients
  and before clipping), so the clipping norm and AdamW's moments only see the kept weights;
* the weights are zeroed again after every step (weight decay and numerical noise cannot
  revive them).

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
        self.mask.apply_(self._params)
        if self.rewind_step and trainer.global_step == self.rewind_step and not self.rewind_saved:
            self._keep_rewind(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.rewind_step is not None and not self.rewind_saved:
            raise RuntimeError(
                f"rewind step {self.rewind_step} was never reached: the fit ended after "
                f"{trainer.global_step} optimizer steps"
            )
        if self.checksum_path is not None:
            self._write_checksums(trainer, pl_module)

    def _keep_rewind(self, trainer, pl_module) -> None:
        self.rewind_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        if trainer.is_global_zero:
            atomic_torch_save(self.rewind_state, self.rewind_path)

    def _write_checksums(self, trainer, pl_module) -> None:
        pruned_nonzero = [k for k, p in self._params.items() if bool((p.detach()[~self.mask[k]] != 0).any())]
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
