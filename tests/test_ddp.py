"""DDP on 2 CPU processes (gloo).

* Inside pytest (``ddp_fork``, ``ddp_spawn``): every rank trains rank 0's mask, even when the
  ranks start from different random masks, and the lottery loop — which then runs in the launching
  process alone — writes one set of files.
* Through Lightning's real ``ddp`` launcher, as users run it: ``lightning-vl prune`` as a
  subprocess that re-runs itself on rank 1, so the round loop runs on every rank; killed mid-run
  and resumed, and as two "nodes" (``num_nodes 2``) started by hand.
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from callbacks import MaskedTraining
from lightning_vl.pruning import Mask, random_prune
from lightning_vl.lottery import ImpConfig, LotteryRunner, RunFolder
from lightning_vl.module import VLModule

from .synthetic import TINY, RandomPairsDataModule, tiny_trainer
from .test_tasks_demo import nlvr2_world_args

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "lightning-vl"


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


@pytest.mark.parametrize("strategy", ["ddp_fork", "ddp_spawn"])
def test_lottery_levels_under_multiprocessing_launchers(tmp_path, strategy, monkeypatch):
    """The loop runs in this process; every level's fit runs on 2 launched ranks. Masks nest,
    the weights that come back honour them, each rank's checksums agree, files are written once."""
    # Lightning writes MASTER_PORT into this process's environment: a port of its own, removed
    # afterwards, so a launch that died here (a timeout) cannot leave the next test its busy port.
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    cfg = ImpConfig(method="random", target_sparsity=0.1, wandb="disabled")

    def make_trainer(round_dir, callbacks):
        return tiny_trainer(3, devices=2, strategy=strategy, callbacks=callbacks, deterministic=False)

    runner = LotteryRunner(cfg, model, RandomPairsDataModule(), make_trainer, RunFolder(tmp_path / "run"), seed=1)
    results = runner.run()
    assert [r["round"] for r in results] == [0, 1]
    mask = Mask.load(runner.folder.mask_path(1))
    for n in mask.keys():
        assert bool((model.get_parameter(n).detach()[~mask[n]] == 0).all())
    for r in range(2):
        ranks = json.loads(runner.folder.ranks_path(r).read_text())
        assert ranks["world_size"] == 2 and len(set(ranks["mask_sha1"])) == 1 and len(set(ranks["weights_sha1"])) == 1
    assert sorted(p.name for p in runner.folder.path.iterdir()) == [
        ".lock", "config.yaml", "init.pt", "round_00", "round_01", "round_02", "summary.csv", "summary.json"]


# ---- the real launcher, as a user runs it -------------------------------------------------------
def prune_command(world: Path, runs: Path, *extra: str) -> list[str]:
    return [
        str(CLI), "prune",
        "--config", str(ROOT / "configs/task/nlvr2.yaml"), "--config", str(ROOT / "configs/model/uniter-tiny.yaml"),
        "--config", str(ROOT / "configs/demo.yaml"), "--config", str(ROOT / "configs/demo/nlvr2.yaml"),
        *nlvr2_world_args(world),
        "--data.init_args.batch_size", "8", "--trainer.max_steps", "12", "--trainer.val_check_interval", "12",
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
        "--imp.target_sparsity", "0.2", "--imp.root", str(runs), "--imp.wandb", "disabled", *extra,
    ]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK",
                        "PL_GLOBAL_SEED", "OMP_NUM_THREADS")}
    return {**env, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **extra}


def check_run(runs: Path) -> Path:
    """One run folder, all three levels finished, every level's ranks bit-identical."""
    (run,) = list((runs / "nlvr2").iterdir())
    folder = RunFolder(run)
    assert folder.completed_levels() == 3
    rows = (run / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and [round(float(r.split(",")[2]), 2) for r in rows[1:]] == [0.0, 0.1, 0.2]
    for r in range(3):
        ranks = json.loads(folder.ranks_path(r).read_text())
        assert ranks["world_size"] == 2
        assert len(set(ranks["mask_sha1"])) == 1, ranks  # both ranks trained the same mask
        assert len(set(ranks["weights_sha1"])) == 1, ranks  # and ended with the same weights
        assert ranks["pruned_nonzero"] == [[], []]
        assert Mask.load(folder.mask_path(r)).sparsity == pytest.approx(0.1 * r, abs=1e-3)
    return run


@pytest.mark.slow
def test_real_ddp_launcher_runs_every_round_and_resumes_after_a_kill(demo_world, tmp_path):
    runs = tmp_path / "runs"
    cmd = prune_command(demo_world, runs, "--trainer.devices", "2")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 300
    try:
        while not list(runs.glob("nlvr2/*/round_01/metrics.json")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "round 1 did not finish in time"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks, mid-run
        proc.wait()
    (run,) = list((runs / "nlvr2").iterdir())
    assert RunFolder(run).completed_levels() == 2, "killed too late to test the resume"
    done = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert out.count("(done earlier)") == 2 and "round 2/2 · sparsity 20.0%" in out
    check_run(runs)


@pytest.mark.slow
def test_real_ddp_launcher_runs_imp_with_adversarial_training(demo_world, tmp_path):
    """IMP with VILLA's adversarial steps under the real `ddp` launcher: every level's ranks end
    bit-identical (the δ steps leave DDP's gradient sync intact) and pruned weights stay zero."""
    runs = tmp_path / "runs"
    done = subprocess.run(prune_command(demo_world, runs, "--trainer.devices", "2", "--model.adversarial.enabled",
                                        "true"), cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = check_run(runs)
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["adversarial"]["enabled"] is True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_started_by_hand_run_one_experiment(demo_world, tmp_path):
    """``num_nodes 2`` as a cluster starts it: one process per node, each told its NODE_RANK;
    only global rank 0 writes, and both run every round."""
    runs, port = tmp_path / "runs", str(free_port())
    cmd = prune_command(demo_world, runs, "--trainer.devices", "1", "--trainer.num_nodes", "2")
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node),
                                            LOCAL_RANK="0", OMP_NUM_THREADS="1"))
             for node in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    check_run(runs)
