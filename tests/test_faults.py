"""Fault injection: every way a run can go wrong ends with a clear error or a non-zero exit status,
names what is wrong, and loses nothing that finished (issue: "Nothing silently wrong")."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lightning_vl.io import atomic_torch_save
from callbacks.health import NonFiniteError
from lightning_vl.cli import main
from lightning_vl.lottery import ImpConfig, LotteryRunner, RunFolder
from lightning_vl.lottery.folder import RunFolderBusy, RunSettingsChanged
from lightning_vl.training.module import VLModule

from .conftest import save_random_model
from .synthetic import TINY, RandomPairsDataModule, tiny_trainer
from .test_cli import cli_args
from .test_ddp import CLI, clean_env, prune_command

ROOT = Path(__file__).resolve().parents[1]


def prune(world, tmp_path, *extra):
    main(["prune", *cli_args(world, tmp_path), "--imp.root", str(tmp_path / "runs"), "--imp.wandb", "disabled",
          "--imp.target_sparsity", "0.1", *extra])
    return list((tmp_path / "runs" / "nlvr2").iterdir())


# ---- training health ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_diverging_run_stops_with_the_round_step_and_last_finite_loss(demo_world, tmp_path):
    with pytest.raises(NonFiniteError, match=r"round 0 of .*: the training loss is (nan|inf) at step \d+ .*last "
                                             r"finite loss was .* at step"):
        prune(demo_world, tmp_path, "--model.lr", "1e12", "--trainer.gradient_clip_val", "null")
    (run,) = list((tmp_path / "runs" / "nlvr2").iterdir())
    assert not (run / "round_00" / "metrics.json").exists() and not (run / "round_01").exists()


class PoisonWeights(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        with torch.no_grad():
            pl_module.uniter.encoder.layer[0].output.dense.weight[0, 0] = float("nan")


def test_non_finite_weights_are_neither_pruned_nor_reported(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)

    def make_trainer(round_dir, callbacks):
        return tiny_trainer(2, callbacks=callbacks + [PoisonWeights()])

    runner = LotteryRunner(ImpConfig(wandb="disabled", target_sparsity=0.1), model, RandomPairsDataModule(),
                           make_trainer, RunFolder(tmp_path / "run"))
    with pytest.raises(NonFiniteError, match=r"round 0 of .*after training: 1 tensors hold NaN.*"
                                             r"encoder.layer.0.output.dense.weight"):
        runner.run()
    assert not runner.folder.metrics_path(0).exists() and not runner.folder.mask_path(1).exists()


def test_data_and_model_feature_sizes_are_checked_once_with_both_settings(demo_world, tmp_path):
    with pytest.raises(ValueError, match=r"data.init_args.img_dim.*model.uniter.img_dim"):
        main(["fit", *cli_args(demo_world, tmp_path), "--model.uniter.img_dim", "64", "--model.init", "null",
              "--trainer.max_steps", "1"])


# ---- run folders --------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_named_run_refuses_other_settings_and_keeps_its_config(demo_world, tmp_path):
    (run,) = prune(demo_world, tmp_path, "--imp.name", "mine", "--trainer.max_steps", "2")
    config = (run / "config.yaml").read_bytes()
    with pytest.raises(RunSettingsChanged, match=r"mine was made with other settings: model.lr"):
        prune(demo_world, tmp_path, "--imp.name", "mine", "--trainer.max_steps", "2", "--model.lr", "1e-3")
    assert (run / "config.yaml").read_bytes() == config
    prune(demo_world, tmp_path, "--imp.name", "mine", "--trainer.max_steps", "2", "--imp.target_sparsity", "0.2",
          "--trainer.log_every_n_steps", "1")  # reach and display settings are fine
    assert RunFolder(run).completed_levels() == 3 and (run / "config.yaml").read_bytes() == config


def test_a_run_refuses_to_resume_from_a_checkpoint_rebuilt_at_the_same_path(demo_world, tmp_path):
    """The folder name hashes --model.init's path: a θ_0 rebuilt there (a new demo world) must not
    silently reuse rounds trained from the old one."""
    theta = tmp_path / "theta"
    theta.mkdir()
    shutil.copy(demo_world / "uniter-tiny.pt", theta / "uniter-tiny.pt")
    (run,) = prune(demo_world, tmp_path, "--model.init", str(theta / "uniter-tiny.pt"), "--trainer.max_steps", "2")
    prune(demo_world, tmp_path, "--model.init", str(theta / "uniter-tiny.pt"), "--trainer.max_steps", "2")  # same θ_0: resumes
    save_random_model(theta, seed=4)  # the same path, other weights
    with pytest.raises(RunSettingsChanged, match=r"init.pt is not the start this command loads: \d+ of 24 prunable"):
        prune(demo_world, tmp_path, "--model.init", str(theta / "uniter-tiny.pt"), "--trainer.max_steps", "2")
    assert RunFolder(run).completed_levels() == 2


@pytest.mark.slow
def test_summary_is_rebuilt_after_a_crash_between_a_rounds_files(demo_world, tmp_path):
    (run,) = prune(demo_world, tmp_path, "--trainer.max_steps", "2")
    rows = (run / "summary.csv").read_text().splitlines()
    (run / "summary.csv").write_text("\n".join(rows[:2]) + "\n")  # as if the crash came before the rewrite
    (run / "summary.json").unlink()
    prune(demo_world, tmp_path, "--trainer.max_steps", "2")
    assert (run / "summary.csv").read_text().splitlines() == rows
    assert len(json.loads((run / "summary.json").read_text())) == 2


@pytest.mark.slow
def test_an_empty_result_file_redoes_its_round(demo_world, tmp_path):
    (run,) = prune(demo_world, tmp_path, "--trainer.max_steps", "2")
    before = json.loads((run / "round_01" / "metrics.json").read_text())
    (run / "round_01" / "metrics.json").write_text("")
    prune(demo_world, tmp_path, "--trainer.max_steps", "2")
    after = json.loads((run / "round_01" / "metrics.json").read_text())
    assert {k: v for k, v in after.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}


def test_a_damaged_weights_file_is_named(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.init.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"init.pt: cannot read it .*damaged"):
        folder.tensors(folder.init)


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "init.pt"
    atomic_torch_save({"a": torch.ones(2)}, target)

    def no_space(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OSError, match=r"cannot write .*init.pt: No space left on device"):
        atomic_torch_save({"a": torch.zeros(2)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["init.pt"]  # no temporary file left


def test_json_results_are_strict(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_json(tmp_path / "x.json", {"metric": float("nan"), "v": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"metric": None, "v": [None, 1.0]}
    assert "NaN" not in (tmp_path / "x.json").read_text()


# ---- processes and signals ---------------------------------------------------------------------
def start(commands, world, runs, tmp_path, name, *extra):
    cmd = prune_command(world, runs, "--trainer.devices", "1", "--trainer.strategy", "auto",
                        "--trainer.max_steps", "40", "--trainer.val_check_interval", "40", *extra)
    return commands.start(cmd, tmp_path / f"{name}.log", cwd=tmp_path, env=clean_env(OMP_NUM_THREADS="1"),
                          preexec_fn=default_sigint), cmd


def default_sigint() -> None:
    """A shell's background job (`make test &`, nohup) ignores SIGINT, and the command would
    inherit that: give it Ctrl-C's default, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(pattern, runs, proc, log, timeout=180):
    deadline = time.time() + timeout
    while not list(runs.glob(pattern)):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"{pattern} did not appear"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 1)])
def test_a_signal_mid_round_exits_non_zero_and_leaves_a_resumable_run(demo_world, tmp_path, sig, status, commands):
    runs = tmp_path / "runs"
    proc, cmd = start(commands, demo_world, runs, tmp_path, "first")
    wait_for("nlvr2/*/round_01/logs/metrics.csv", runs, proc, tmp_path / "first.log")
    os.kill(proc.pid, sig)
    stopped = commands.wait(proc, tmp_path / "first.log", 120)
    assert stopped.returncode == status, stopped.output[-3000:]
    (run,) = list((runs / "nlvr2").iterdir())
    assert RunFolder(run).completed_levels() == 1  # round 1 was not recorded as done
    if sig == signal.SIGTERM:
        assert "stopped by SIGTERM" in (tmp_path / "first.log").read_text()
    done = commands.run(cmd, tmp_path / "second.log", 240, cwd=tmp_path, env=clean_env(OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.output[-3000:]
    assert RunFolder(run).completed_levels() == 3


HOLD = """
import sys, time
from lightning_vl.lottery import RunFolder
with RunFolder(sys.argv[1]).exclusive():
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_one_process_at_a_time_per_run_folder_and_a_dead_holder_is_taken_over(demo_world, tmp_path, commands):
    runs = tmp_path / "runs"
    env = clean_env(OMP_NUM_THREADS="1")
    first = commands.run(prune_command(demo_world, runs, "--trainer.devices", "1", "--trainer.strategy", "auto",
                                       "--imp.target_sparsity", "0.0"), tmp_path / "first.log", 180, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.output[-3000:]
    (run,) = list((runs / "nlvr2").iterdir())
    holder = commands.adopt(subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                                             text=True, env=clean_env(), start_new_session=True))
    assert holder.stdout.readline().strip() == "held"
    cmd = prune_command(demo_world, runs, "--trainer.devices", "1", "--trainer.strategy", "auto")
    second = commands.run(cmd, tmp_path / "second.log", 180, cwd=tmp_path, env=env)
    assert second.returncode != 0
    assert f"{run} is in use by pid {holder.pid} on " in second.output, second.output[-2000:]
    assert RunFolder(run).completed_levels() == 1  # the refused process ran nothing
    holder.kill()  # a holder that dies releases the folder
    holder.wait()
    third = commands.run(cmd, tmp_path / "third.log", 240, cwd=tmp_path, env=env)
    assert third.returncode == 0, third.output[-3000:]
    assert RunFolder(run).completed_levels() == 3
    rows = (run / "round_01" / "logs" / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(set(rows))  # one process wrote the round's log


# ---- data health through the command ------------------------------------------------------------
def poisoned_store(world: Path, tmp_path: Path) -> tuple[Path, str]:
    import shutil

    import h5py

    store = tmp_path / "features.h5"
    shutil.copy(world / "features.h5", store)
    with h5py.File(store, "r+") as f:
        keys = [k.decode() if isinstance(k, bytes) else k for k in f["img_ids"][:]]
        i = keys.index(next(k for k in keys if k.startswith("train-")))
        f["features"][int(f["offsets"][i])] = float("nan")
    return store, keys[i]


@pytest.mark.slow
def test_nan_region_features_stop_the_run_naming_store_and_image(demo_world, tmp_path):
    store, key = poisoned_store(demo_world, tmp_path)
    with pytest.raises(ValueError, match=rf"{store}.*{key}"):
        prune(demo_world, tmp_path, "--data.init_args.features", str(store), "--trainer.max_steps", "40")
    (run,) = list((tmp_path / "runs" / "nlvr2").iterdir())
    assert not RunFolder(run).metrics_path(0).exists()
    report = subprocess.run([str(CLI), "check-store", str(store), "--no-progress"], capture_output=True, text=True)
    assert report.returncode == 1 and key in report.stdout + report.stderr


@pytest.mark.slow
def test_a_truncated_store_is_named(demo_world, tmp_path):
    import shutil

    store = tmp_path / "features.h5"
    shutil.copy(demo_world / "features.h5", store)
    os.truncate(store, store.stat().st_size // 2)
    with pytest.raises(ValueError, match=rf"{store}.*truncated"):
        prune(demo_world, tmp_path, "--data.init_args.features", str(store))


class Preempt(pl.Callback):
    """What SLURM's requeue signal does to a round: Lightning saves an ``hpc_ckpt_N.ckpt`` in the
    round's folder, then the job is stopped."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            trainer.save_checkpoint(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
            raise KeyboardInterrupt  # the job ends mid-round


class FirstStep(pl.Callback):
    def __init__(self, steps):
        self.steps = steps

    def on_train_start(self, trainer, pl_module):
        self.steps.append(trainer.global_step)


def test_a_slurm_requeue_resumes_the_round_from_lightnings_hpc_checkpoint(tmp_path, monkeypatch):
    starts = []

    def runner(preempt_round=None):
        pl.seed_everything(0, verbose=False)
        model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)

        def make_trainer(round_dir, callbacks):
            extra = [FirstStep(starts)] + ([Preempt()] if round_dir.name == preempt_round else [])
            return tiny_trainer(6, callbacks=callbacks + extra, default_root_dir=str(round_dir))

        return LotteryRunner(ImpConfig(wandb="disabled", target_sparsity=0.2, rewind_step=2), model,
                             RandomPairsDataModule(), make_trainer, RunFolder(tmp_path / "run"), seed=3)

    with pytest.raises(SystemExit):  # Lightning turns the interrupt into exit status 1
        runner("round_01").run()
    assert list((tmp_path / "run" / "round_01").glob("hpc_ckpt_*.ckpt"))
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "lottery", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(key, value)
    results = runner().run()
    assert starts == [0, 0, 3, 0]  # round 1 resumed at step 3, round 2 started fresh
    assert [r["round"] for r in results] == [0, 1, 2] and results[1]["steps"] == 6
    assert not list((tmp_path / "run" / "round_01").glob("hpc_ckpt_*.ckpt"))  # cleaned up once the round is done
