"""Multi-process runs that tests/test_ddp.py starts as commands of their own
(``python -m tests.ddp_scripts <scenario> <out>``), bounded by tests/processes.py — never inside the
pytest process, whose threads (and whatever earlier tests left running) a launcher must not inherit.

Scenarios:
    broadcast OUT          a fit under Lightning's real ``ddp`` launcher (it re-runs this command as
                           rank 1) whose ranks start from different random masks
    lottery STRATEGY OUT   two lottery levels on UNITER, every level's fit on 2 ranks started by STRATEGY
    masked-fit STRATEGY OUT BACKBONE
                           one masked fit (a random half of the prunable weights) on 2 ranks started by
                           STRATEGY, e.g. LXMERT with NLVR2's pooled-only paired-mlp head; the ranks'
                           checksums go to OUT/ranks.json, whether the weights honour the mask to
                           OUT/result.json
    held-lock WHAT OUT     a thread of this process holds a lock when the ranks are forked, and each
                           rank takes that lock: WHAT=trainer is a plain ``Trainer(strategy="ddp_fork")``
                           fit (the ranks wait for ever), WHAT=lottery the same through the lottery
                           runner (refused before any fork)
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from callbacks import MaskedTraining
from lightning_vl.lottery import ImpConfig, LotteryRunner, RunFolder
from lightning_vl.training.module import VLModule
from lightning_vl.pruning import Mask, random_prune
from tests.synthetic import TINY, RandomPairsDataModule, tiny_trainer


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
        self.dense, self.out_dir = dense, Path(out_dir)

    def setup(self, trainer, pl_module, stage):
        own = random_prune(self.dense, 0.5, torch.Generator().manual_seed(100 + trainer.global_rank))
        (self.out_dir / f"own{trainer.global_rank}.txt").write_text(digest(own))
        self.mask = own
        super().setup(trainer, pl_module, stage)

    def on_train_end(self, trainer, pl_module):
        zero = all(bool((pl_module.get_parameter(n).detach()[~self.mask[n]] == 0).all()) for n in self.mask.keys())
        weights = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        (self.out_dir / f"rank{trainer.global_rank}.txt").write_text(
            f"{digest(self.mask)} {zero} {hashlib.sha1(weights.numpy().tobytes()).hexdigest()}")


def broadcast(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    names = model.prunable_parameter_names()
    cb = RankSpecificMask({n: model.get_parameter(n).shape for n in names}, out)
    trainer = tiny_trainer(4, devices=2, strategy="ddp", callbacks=[cb], deterministic=False)
    trainer.fit(model, datamodule=RandomPairsDataModule())


def tiny_model(backbone: str = "uniter") -> VLModule:
    if backbone == "uniter":
        return VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    from lightning_vl.model.lxmert import LxmertBackbone, LxmertBackboneConfig

    cfg = LxmertBackboneConfig(vocab_size=TINY.vocab_size, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                               l_layers=2, x_layers=2, r_layers=1, visual_feat_dim=TINY.img_dim,
                               max_position_embeddings=TINY.max_position_embeddings)
    return VLModule(backbone=LxmertBackbone(cfg), head="paired-mlp", lr=1e-3, warmup_steps=1)


def lottery(strategy: str, out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = tiny_model("uniter")
    cfg = ImpConfig(method="random", target_sparsity=0.1, wandb="disabled")

    def make_trainer(round_dir, callbacks):
        return tiny_trainer(3, devices=2, strategy=strategy, callbacks=callbacks, deterministic=False)

    runner = LotteryRunner(cfg, model, RandomPairsDataModule(), make_trainer, RunFolder(out / "run"), seed=1)
    results = runner.run()
    mask = Mask.load(runner.folder.mask_path(1))
    honoured = all(bool((model.get_parameter(n).detach()[~mask[n]] == 0).all()) for n in mask.keys())
    (out / "result.json").write_text(json.dumps({"rounds": [r["round"] for r in results], "honoured": honoured}))


def masked_fit(strategy: str, out: Path, backbone: str) -> None:
    pl.seed_everything(0, verbose=False)
    model = tiny_model(backbone)
    dense = Mask.ones_like({n: model.get_parameter(n).detach() for n in model.prunable_parameter_names()})
    mask = random_prune(dense, 0.5, torch.Generator().manual_seed(1))
    cb = MaskedTraining(mask, checksum_path=out / "ranks.json")
    tiny_trainer(3, devices=2, strategy=strategy, callbacks=[cb], deterministic=False).fit(
        model, datamodule=RandomPairsDataModule())
    honoured = all(bool((model.get_parameter(n).detach()[~mask[n]] == 0).all()) for n in mask.keys())
    (out / "result.json").write_text(json.dumps({"honoured": honoured, "digest": digest(mask)}))


# ---- a lock held by another thread at fork time ------------------------------------------------
HELD = threading.Lock()


class TakesTheHeldLock(pl.Callback):
    """What a forked rank does when it needs a lock another thread of the parent held at the
    fork (a logging or I/O lock, a W&B client lock, an allocator's): it waits for ever."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def setup(self, trainer, pl_module, stage):
        (self.out / f"waiting-{os.getpid()}").write_text("")
        with HELD:
            pass


def hold_forever() -> None:
    started = threading.Event()

    def holder():
        with HELD:
            started.set()
            time.sleep(3600)

    threading.Thread(target=holder, name="holds-a-lock", daemon=True).start()
    started.wait()


def held_lock(what: str, out: Path) -> None:
    hold_forever()
    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    if what == "trainer":
        trainer = tiny_trainer(2, devices=2, strategy="ddp_fork", callbacks=[TakesTheHeldLock(out)],
                               deterministic=False)
        trainer.fit(model, datamodule=RandomPairsDataModule())
        return
    cfg = ImpConfig(method="random", target_sparsity=0.1, wandb="disabled")

    def make_trainer(round_dir, callbacks):
        return tiny_trainer(2, devices=2, strategy="ddp_fork", callbacks=[*callbacks, TakesTheHeldLock(out)],
                            deterministic=False)

    LotteryRunner(cfg, model, RandomPairsDataModule(), make_trainer, RunFolder(out / "run"), seed=1).run()


if __name__ == "__main__":
    torch.set_num_threads(1)
    scenario, *args = sys.argv[1:]
    {"broadcast": lambda out: broadcast(Path(out)),
     "lottery": lambda strategy, out: lottery(strategy, Path(out)),
     "masked-fit": lambda strategy, out, backbone: masked_fit(strategy, Path(out), backbone),
     "held-lock": lambda what, out: held_lock(what, Path(out))}[scenario](*args)
