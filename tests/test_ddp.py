"""DDP on 2 CPU processes (gloo), every multi-process run a bounded command of its own
(tests/processes.py): a rank that hangs fails its test in seconds, named, and is killed with its
whole process group; nothing a launcher starts inherits the pytest process's threads.

* Lightning's real ``ddp`` launcher (it re-runs the command on every rank): a fit whose ranks start
  from different random masks trains rank 0's; ``lightning-vl prune`` runs every round on every rank,
  is killed mid-run and resumed, trains with adversarial steps, and runs as two "nodes" started by hand.
* ``ddp_spawn``: the lottery loop runs in the launching process, each level's fit on 2 spawned ranks.
* ``ddp_fork`` / ``ddp_notebook`` are refused (lightning_vl/launchers.py): a rank forked while another
  thread of the parent holds a lock waits for ever — shown here with a lock held on purpose.
"""
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lightning_vl.launchers import ForkedRanksRefused, check_launcher
from lightning_vl.lottery import ImpConfig, LotteryRunner, RunFolder
from lightning_vl.training.module import VLModule
from lightning_vl.pruning import Mask

from . import processes
from .synthetic import TINY, RandomPairsDataModule, tiny_trainer
from .test_tasks_demo import nlvr2_world_args

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "lightning-vl"


def script(tmp_path: Path, *args: str, timeout: float) -> processes.Finished:
    """``python -m tests.ddp_scripts ARGS`` (one thread per rank), bounded."""
    return processes.run([sys.executable, "-m", "tests.ddp_scripts", *args], tmp_path / "script.log", timeout,
                         cwd=ROOT, env=clean_env(MASTER_PORT=str(free_port())))


def test_ddp_ranks_train_the_same_broadcast_mask(tmp_path):
    done = script(tmp_path, "broadcast", str(tmp_path), timeout=180)
    assert done.returncode == 0, done.output[-3000:]
    own = [(tmp_path / f"own{r}.txt").read_text() for r in range(2)]
    assert own[0] != own[1]  # the ranks really did start from different masks
    results = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    mask0, mask1 = results[0][0], results[1][0]
    assert mask0 == mask1 == own[0]  # everyone trains rank 0's mask
    assert results[0][1] == results[1][1] == "True"  # pruned weights zero on every rank
    assert results[0][2] == results[1][2]  # and the ranks' weights agree after training


def test_lottery_levels_under_ddp_spawn(tmp_path):
    """The loop runs in the launching process; every level's fit runs on 2 spawned ranks. Masks
    nest, the weights that come back honour them, each rank's checksums agree, files are written once."""
    done = script(tmp_path, "lottery", "ddp_spawn", str(tmp_path), timeout=240)
    assert done.returncode == 0, done.output[-3000:]
    assert json.loads((tmp_path / "result.json").read_text()) == {"rounds": [0, 1], "honoured": True}
    folder = RunFolder(tmp_path / "run")
    for r in range(2):
        ranks = json.loads(folder.ranks_path(r).read_text())
        assert ranks["world_size"] == 2 and len(set(ranks["mask_sha1"])) == 1 and len(set(ranks["weights_sha1"])) == 1
    assert sorted(p.name for p in folder.path.iterdir()) == [
        ".lock", "config.yaml", "init.pt", "round_00", "round_01", "round_02", "summary.csv", "summary.json"]


def test_a_masked_lxmert_fit_under_ddp_spawn_with_a_pooled_only_head(tmp_path):
    """LXMERT under a pooled-only head (NLVR2's paired-mlp) leaves its last cross-modality layer's
    vision side unused: it must be frozen, or DDP's gradient reduction fails at the second step. One
    masked fit on 2 spawned ranks (the lottery's levels are the UNITER test's): the ranks train the
    same mask to the same weights, and the weights that come back honour it."""
    done = script(tmp_path, "masked-fit", "ddp_spawn", str(tmp_path), "lxmert", timeout=180)
    assert done.returncode == 0, done.output[-3000:]
    assert json.loads((tmp_path / "result.json").read_text())["honoured"] is True
    ranks = json.loads((tmp_path / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["pruned_nonzero"] == [[], []]
    assert len(set(ranks["mask_sha1"])) == 1 and len(set(ranks["weights_sha1"])) == 1


# ---- fork-based launchers ------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["ddp_fork", "ddp_notebook", "ddp_fork_find_unused_parameters_true"])
def test_fork_based_launchers_are_refused_with_what_to_use_instead(strategy):
    with pytest.raises(ForkedRanksRefused, match=r"fork\(\).*--trainer.strategy ddp .*ddp_spawn"):
        check_launcher(tiny_trainer(1, devices=2, strategy=strategy))


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "auto"])
def test_other_launchers_pass(strategy):
    check_launcher(tiny_trainer(1, devices=2 if strategy != "auto" else 1, strategy=strategy))


def test_a_lottery_run_under_ddp_fork_is_refused_before_its_first_fit(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    fits = []

    def make_trainer(round_dir, callbacks):
        fits.append(round_dir)
        return tiny_trainer(2, devices=2, strategy="ddp_fork", callbacks=callbacks)

    runner = LotteryRunner(ImpConfig(method="random", target_sparsity=0.1, wandb="disabled"), model,
                           RandomPairsDataModule(), make_trainer, RunFolder(tmp_path / "run"), seed=1)
    with pytest.raises(ForkedRanksRefused):
        runner.run()
    assert len(fits) == 1 and not runner.folder.metrics_path(0).exists()


@pytest.mark.slow
def test_a_rank_forked_while_another_thread_holds_a_lock_hangs_and_is_killed_named(tmp_path):
    """The hang of a ``ddp_fork`` run, made deterministic: a thread of the launching process holds a
    lock when the ranks are forked, and each rank takes it. Without the refusal both ranks wait for
    ever; the bounded runner names them, prints their stacks and kills the whole group."""
    log = tmp_path / "script.log"
    cmd = [sys.executable, "-m", "tests.ddp_scripts", "held-lock", "trainer", str(tmp_path)]
    with processes.started(cmd, log, cwd=ROOT, env=clean_env(MASTER_PORT=str(free_port()))) as proc:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("waiting-*"))) < 2:  # both forked ranks reached the lock
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        with pytest.raises(processes.ProcessTimeout) as failed:
            processes.wait(proc, log, timeout=3)
        message = str(failed.value)
        assert message.count("waiting in futex") == 2, message  # each rank named, blocked on a lock
        assert message.count("--- Python stacks of pid") == 3, message  # the launcher's and each rank's
        assert message.count("in setup") == 2, message  # both stuck in the callback taking the lock (their stacks)
        assert not processes.group_members(proc.pid)  # nothing survives


@pytest.mark.slow
def test_the_same_lottery_run_is_refused_in_seconds(tmp_path):
    done = script(tmp_path, "held-lock", "lottery", str(tmp_path), timeout=60)
    assert done.returncode != 0 and "ForkedRanksRefused" in done.output, done.output[-3000:]
    assert "--trainer.strategy ddp" in done.output and not list(tmp_path.glob("waiting-*"))


def test_the_cli_refuses_ddp_fork_before_anything_runs(demo_world, tmp_path):
    from lightning_vl.cli import main

    with pytest.raises(SystemExit, match="lightning-vl: .*is refused.*ddp_spawn"):
        main(["prune", *[str(a) for a in prune_command(demo_world, tmp_path / "runs")[2:]],
              "--trainer.strategy", "ddp_fork", "--trainer.devices", "2"])
    assert not (tmp_path / "runs").exists()


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
    with processes.started(cmd, tmp_path / "first.log", cwd=tmp_path, env=clean_env()) as proc:
        deadline = time.time() + 240
        while not list(runs.glob("nlvr2/*/round_01/metrics.json")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "round 1 did not finish in time"
            time.sleep(0.1)
    # leaving the block killed both ranks, mid-run
    (run,) = list((runs / "nlvr2").iterdir())
    assert RunFolder(run).completed_levels() == 2, "killed too late to test the resume"
    done = processes.run(cmd, tmp_path / "second.log", 240, cwd=tmp_path, env=clean_env())
    assert done.returncode == 0, done.output[-3000:]
    assert done.output.count("(done earlier)") == 2 and "round 2/2 · sparsity 20.0%" in done.output
    check_run(runs)


@pytest.mark.slow
def test_real_ddp_launcher_runs_imp_with_adversarial_training(demo_world, tmp_path):
    """IMP with VILLA's adversarial steps under the real `ddp` launcher: every level's ranks end
    bit-identical (the δ steps leave DDP's gradient sync intact) and pruned weights stay zero."""
    runs = tmp_path / "runs"
    done = processes.run(prune_command(demo_world, runs, "--trainer.devices", "2", "--model.adversarial.enabled",
                                       "true"), tmp_path / "run.log", 300, cwd=tmp_path, env=clean_env())
    assert done.returncode == 0, done.output[-3000:]
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
    envs = [clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node), LOCAL_RANK="0",
                      OMP_NUM_THREADS="1") for node in (0, 1)]
    with processes.started(cmd, tmp_path / "node0.log", cwd=tmp_path, env=envs[0]) as node0, \
            processes.started(cmd, tmp_path / "node1.log", cwd=tmp_path, env=envs[1]) as node1:
        outs = [processes.wait(node, tmp_path / f"node{i}.log", 240) for i, node in enumerate((node0, node1))]
    assert [o.returncode for o in outs] == [0, 0], "\n".join(o.output[-2000:] for o in outs)
    check_run(runs)
