"""Training with a fixed pruning mask, and capturing the rewind weights θ_i.

No ``torch.nn.utils.prune`` re-parametrisation and no per-forward hooks: parameters stay plain
dense tensors with UNITER's names, the pruned entries are zeroed in place once at fit start and
again after every optimizer step (``w *= m``, bool masks, 1 byte per weight). Under DDP the mask
of rank 0 is broadcast at setup, so every rank trains the same sub-network even if the ranks
computed different (e.g. random) masks.
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from .mask import Mask, atomic_torch_save, named_parameters_by


def broadcast_mask(mask: Mask, device: torch.device) -> Mask:
    """Rank 0's mask on every rank (identity without an initialised process group)."""
    mask = mask.to(device)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mask
    out = {}
    for name, t in mask.items():
        buf = t.to(torch.uint8).contiguous()
        dist.broadcast(buf, src=0)
        out[name] = buf.bool()
    return Mask(out)


class MaskedTraining(pl.Callback):
    """Keep ``mask``'s pruned weights exactly zero for a whole fit.

    Args:
        mask: the round's mask, keyed by the LightningModule's parameter names.
        rewind_step: if given, save the module's weights after this many optimizer steps to
            ``rewind_path`` (0 = before the first step): the θ_i later rounds rewind to.
        rewind_path: where θ_i is written (rank 0 only, atomically).
    """

    def __init__(self, mask: Mask, rewind_step: int | None = None, rewind_path: str | Path | None = None):
        super().__init__()
        if (rewind_step is None) != (rewind_path is None):
            raise ValueError("rewind_step and rewind_path go together")
        self.mask = mask
        self.rewind_step = rewind_step
        self.rewind_path = Path(rewind_path) if rewind_path is not None else None
        self._params: dict[str, torch.Tensor] = {}
        self.rewind_saved = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.mask = broadcast_mask(self.mask, pl_module.device)
        params = dict(pl_module.named_parameters())
        self.mask.validate(params, "MaskedTraining")
        self._params = named_parameters_by(pl_module, self.mask.keys())

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # parameters may have moved device (strategy setup) since `setup`
        self.mask = self.mask.to(pl_module.device)
        self._params = named_parameters_by(pl_module, self.mask.keys())
        self.mask.apply_(self._params)
        if self.rewind_step == 0:
            self._save_rewind(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.mask.apply_(self._params)
        if self.rewind_step and trainer.global_step == self.rewind_step and not self.rewind_saved:
            self._save_rewind(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.rewind_step is not None and not self.rewind_saved:
            raise RuntimeError(
                f"rewind step {self.rewind_step} was never reached: the fit ended after "
                f"{trainer.global_step} optimizer steps"
            )

    def _save_rewind(self, trainer, pl_module) -> None:
        self.rewind_saved = True
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        _write_rank_zero(state, self.rewind_path, trainer)

    # the mask travels inside Lightning checkpoints, bit-packed
    def state_dict(self) -> dict:
        return {"mask": self.mask.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.mask = Mask.from_state_dict(state_dict["mask"], "checkpoint callback state")


def _write_rank_zero(state: dict, path: Path, trainer: pl.Trainer) -> None:
    if trainer.is_global_zero:
        atomic_torch_save(state, path)
