"""DDP on 2 CPU processes (gloo, forked inside pytest): every rank trains rank 0's mask, even when
the ranks start from different random masks, and pruned weights stay zero on every rank."""
import hashlib

import pytest
import pytorch_lightning as pl
import torch

from callbacks import Mask, MaskedTraining, random_prune
from lightning_vl.module import VLModule

from .synthetic import TINY, RandomPairsDataModule, tiny_trainer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def digest(mask: Mask) -> str:
    h = hashlib.sha1()
    for k in sorted(mask.keys()):
        h.update(k.encode())
        h.update(mask[k].cpu().numpy().tobytes())
    return h.hexdigest()


class RankSpecificMask(MaskedTraining):
    """Each rank starts with a *different* random mask; the broadcast must make them agree."""

    def __init__(self, names_shapes, out_dir):
        dense = Mask({n: torch.ones(s, dtype=torch.bool) for n, s in names_shapes.items()})
        super().__init__(dense)
        self.dense, self.out_dir = dense, out_dir

    def setup(self, trainer, pl_module, stage):
        torch.set_num_threads(1)
        own = random_prune(self.dense, 0.5, torch.Generator().manual_seed(100 + trainer.global_rank))
        (self.out_dir / f"own{trainer.global_rank}.txt").write_text(digest(own))
        self.mask = own
        super().setup(trainer, pl_module, stage)

    def on_train_end(self, trainer, pl_module):
        zero = all(bool((pl_module.get_parameter(n).detach()[~self.mask[n]] == 0).all()) for n in self.mask.keys())
        weights = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        (self.out_dir / f"rank{trainer.global_rank}.txt").write_text(
            f"{digest(self.mask)} {zero} {hashlib.sha1(weights.numpy().tobytes()).hexdigest()}"
        )


def test_ddp_ranks_train_the_same_broadcast_mask(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    names = model.prunable_parameter_names()
    cb = RankSpecificMask({n: model.get_parameter(n).shape for n in names}, tmp_path)
    trainer = tiny_trainer(4, devices=2, strategy="ddp_fork", callbacks=[cb], deterministic=False)
    trainer.fit(model, datamodule=RandomPairsDataModule())
    own = [(tmp_path / f"own{r}.txt").read_text() for r in range(2)]
    assert own[0] != own[1]  # the ranks really did start from different masks
    results = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    mask0, mask1 = results[0][0], results[1][0]
    assert mask0 == mask1 == own[0]  # everyone trains rank 0's mask
    assert results[0][1] == results[1][1] == "True"  # pruned weights zero on every rank
    assert results[0][2] == results[1][2]  # and the ranks' weights agree after training


def test_imp_rounds_under_ddp_write_one_set_of_files(tmp_path):
    """Two random-pruning rounds on 2 forked ranks: the driver runs once, the ranks agree, the
    weights that come back honour the mask (the driver checks) and files are written once."""
    from lightning_vl.imp import ImpConfig, ImpRunner

    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    cfg = ImpConfig(method="random", target_sparsity=0.1, wandb="disabled")

    def make_trainer(round_dir, callbacks):
        return tiny_trainer(3, devices=2, strategy="ddp_fork", callbacks=callbacks, deterministic=False)

    runner = ImpRunner(cfg, model, RandomPairsDataModule(), make_trainer, tmp_path / "run", seed=1)
    results = runner.run()
    assert [r["round"] for r in results] == [0, 1]
    mask = Mask.load(runner.round_dir(1) / "mask.pt")
    for n in mask.keys():
        assert bool((model.get_parameter(n).detach()[~mask[n]] == 0).all())
    assert sorted(p.name for p in runner.run_dir.iterdir()) == [
        "init.pt", "round_00", "round_01", "summary.csv", "summary.json"]
