"""End to end through the CLI on the demo world: `lightning-vl prune`, resume, `fit` with a ticket."""
import csv
import json
import os
import sys
from pathlib import Path

import pytest

from lightning_vl.pruning import Mask
from lightning_vl.cli import main

from . import processes
from .test_tasks_demo import nlvr2_world_args

ROOT = Path(__file__).resolve().parents[1]


def cli_args(world, tmp_path, *extra):
    return [
        "--config", "configs/task/nlvr2.yaml", "--config", "configs/model/uniter-tiny.yaml",
        "--config", "configs/demo.yaml", "--config", "configs/demo/nlvr2.yaml",
        *nlvr2_world_args(world),
        "--data.init_args.batch_size", "8",
        "--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "logs"),
        *extra,
    ]


@pytest.mark.slow
def test_prune_command_runs_rounds_writes_files_and_resumes(demo_world, tmp_path):
    """As a user runs it, W&B (offline) included: a command of its own, so W&B's threads never live
    in the pytest process (tests/conftest.py)."""
    cmd = [sys.executable, "-m", "lightning_vl.cli", "prune", *cli_args(demo_world, tmp_path),
           "--imp.target_sparsity", "0.2", "--imp.root", str(tmp_path / "runs"), "--imp.wandb", "offline"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = processes.run(cmd, tmp_path / "first.log", 300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.output[-3000:]
    runs = list((tmp_path / "runs" / "nlvr2").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("imp-")
    run = runs[0]
    with open(run / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [round(float(r["sparsity"]), 3) for r in rows] == [0.0, 0.1, 0.2]
    assert all(0.0 <= float(r["val/acc"]) <= 1.0 for r in rows)
    assert "round 2/2 · sparsity 20.0% · val acc" in done.output
    # a quiet console: no device banner without an accelerator (four Trainers), no adverts
    assert "GPU available:" not in done.output and "💡" not in done.output  # no accelerator, no banner; no adverts
    assert "tensorboardX" not in done.output and "LeafSpec" not in done.output
    # and a summary at the end: what was found, where, and what to run next
    summary = done.output[done.output.index("done: imp on nlvr2 · dense (round 0) val acc"):]
    assert "of it" in summary and f"run folder  {run}  (summary.csv, summary.json)" in summary
    assert f"make prune TASK=nlvr2 PRUNE=random SPARSITY=0.2 RUNS={tmp_path / 'runs'}" in summary
    assert f"make report RUNS={tmp_path / 'runs'}" in summary
    assert (run / "config.yaml").exists() and list((run / "wandb").glob("offline-run-*"))
    assert (run / "round_01" / "logs" / "metrics.csv").exists()
    assert json.loads((run / "round_02" / "metrics.json").read_text())["kept"] < json.loads(
        (run / "round_00" / "metrics.json").read_text())["kept"]
    # the same command again resumes: nothing left to train
    again = processes.run(cmd, tmp_path / "second.log", 300, cwd=ROOT, env=env)
    assert again.returncode == 0 and again.output.count("(done earlier)") == 3, again.output[-3000:]
    # fine-tune the 20% ticket through `fit --model.mask`
    main(["fit", *cli_args(demo_world, tmp_path), "--model.mask", str(run / "round_02" / "mask.pt")])
    assert Mask.load(run / "round_02" / "mask.pt").sparsity == pytest.approx(0.2, abs=1e-3)


@pytest.mark.parametrize("command", ["fit", "prune"])
def test_progress_bar_counts_epochs_without_a_negative_total(demo_world, tmp_path, capsys, command):
    """Training is counted in steps (max_epochs -1): Lightning 2.6's rich bar printed "Epoch 0/-2"."""
    args = [command, *cli_args(demo_world, tmp_path), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
            "--trainer.enable_progress_bar", "true"]
    if command == "prune":
        args += ["--imp.target_sparsity", "0.0", "--imp.root", str(tmp_path / "runs"), "--imp.wandb", "disabled"]
    main(args)
    out = capsys.readouterr().out
    assert "Epoch 0" in out and "/-2" not in out


def test_random_method_gets_its_own_run_folder(demo_world, tmp_path):
    args = ["prune", *cli_args(demo_world, tmp_path), "--imp.target_sparsity", "0.1",
            "--imp.root", str(tmp_path / "runs"), "--imp.wandb", "disabled", "--trainer.max_steps", "2"]
    main(args + ["--imp.method", "random"])
    main(args + ["--imp.method", "random-layerwise"])
    names = sorted(p.name.split("-")[0] + ("-layerwise" if "layerwise" in p.name else "")
                   for p in (tmp_path / "runs" / "nlvr2").iterdir())
    assert names == ["random", "random-layerwise"]


def test_bad_option_is_a_clear_error(demo_world, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prune", *cli_args(demo_world, tmp_path), "--imp.method", "magnitude"])
    assert "magnitude" in capsys.readouterr().err


@pytest.mark.parametrize("logger", [True, False])
def test_fit_saves_its_config_beside_the_logs_and_never_in_the_working_directory(
        demo_world, tmp_path, monkeypatch, logger):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = ["fit", *cli_args(demo_world, tmp_path), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
            "--trainer.logger", str(logger).lower()]
    args = [a if not a.startswith("configs/") else str(ROOT / a) for a in args]
    monkeypatch.chdir(cwd)
    main(args)
    assert list(cwd.iterdir()) == []
    saved = list((tmp_path / "logs").rglob("config.yaml"))
    assert len(saved) == (1 if logger else 0)
    if logger:
        assert "max_steps: 2" in saved[0].read_text()


def test_help_lists_every_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "prune", "branch", "demo", "data", "study", "report",
                    "overlap", "check-store"):
        assert f"\n  {command} " in out, command
    assert "Find lottery tickets" in out
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2 and "usage: lightning-vl COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("command, group", [("prune", "--imp.method"), ("branch", "--branch.kind")])
def test_lottery_command_help_shows_its_group(command, group, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and out.startswith(f"usage: lightning-vl {command}") and group in out
    assert "--trainer.max_steps" in out and "--model.init" in out


def test_a_lottery_command_is_parsed_without_lightnings_subcommands():
    from pytorch_lightning import LightningDataModule

    from lightning_vl.cli import VLCli
    from lightning_vl.training.module import VLModule

    with pytest.raises(ValueError, match="run=False"):
        VLCli(VLModule, LightningDataModule, command="prune", args=[])
    with pytest.raises(ValueError, match="must be one of"):
        VLCli(VLModule, LightningDataModule, command="fit", run=False, args=[])


def test_the_cli_overrides_only_public_lightningcli_methods():
    """The CLI → lottery hop is LightningCLI's public API: no private method of it is overridden."""
    from pytorch_lightning.cli import LightningCLI

    from lightning_vl.cli import VLCli

    overridden = {name for name in vars(VLCli) if name in vars(LightningCLI) or
                  any(name in vars(base) for base in LightningCLI.__mro__)}
    assert overridden and not {name for name in overridden if name.startswith("_") and not name.startswith("__")}
