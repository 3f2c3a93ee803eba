"""A lottery on LXMERT through the CLI (`lightning-vl prune` on the demo NLVR2 world, LXMERT-tiny
from a random init): rounds, masks whose groups are LXMERT's text / image / cross streams, the
per-layer sparsity, resume; and the adversarial seam for one training step."""
import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_vl.cli import main
from lightning_vl.model.lxmert import LxmertBackboneConfig, prunable_groups_for
from lightning_vl.pruning import Mask

from .test_tasks_demo import nlvr2_world_args

ROOT = Path(__file__).resolve().parents[1]


def lxmert_args(world: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config", str(ROOT / "configs/task/nlvr2.yaml"), "--config", str(ROOT / "configs/model/lxmert-tiny.yaml"),
        "--config", str(ROOT / "configs/demo.yaml"), "--config", str(ROOT / "configs/demo/nlvr2.yaml"),
        *nlvr2_world_args(world), "--model.init", "null",  # a random LXMERT (the last --model.init wins)
        "--data.init_args.batch_size", "8",
        "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "logs"),
        *extra,
    ]


def test_a_lottery_on_lxmert_records_its_streams_and_resumes(demo_world, tmp_path, caplog):
    cmd = ["prune", *lxmert_args(demo_world, tmp_path), "--imp.target_sparsity", "0.2",
           "--imp.root", str(tmp_path / "runs"), "--imp.wandb", "disabled"]
    main(cmd)
    (run,) = list((tmp_path / "runs" / "nlvr2").iterdir())
    with open(run / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [round(float(r["sparsity"]), 3) for r in rows] == [0.0, 0.1, 0.2]
    # the masks: every Linear weight of the three encoders, each with its LXMERT group
    tiny = LxmertBackboneConfig(**yaml.safe_load(
        (ROOT / "configs/model/lxmert-tiny.yaml").read_text())["model"]["backbone"]["init_args"]["config"])
    expected = {f"lxmert.{k}": tuple(g) for k, g in prunable_groups_for(tiny).items()}
    mask = Mask.load(run / "round_02" / "mask.pt")
    assert mask.recorded_groups == expected and len(expected) == 3 * 6 + 2 * 6 + 2 * 16
    assert {g[0] for g in mask.recorded_groups.values()} == {"text", "image", "cross"}
    assert mask.sparsity == pytest.approx(0.2, abs=1e-3)
    sparsity = json.loads((run / "round_02" / "sparsity.json").read_text())
    assert sparsity["tensors"] == len(expected)
    assert sorted(sparsity["per_layer"]) == ["cross.0", "cross.1", "image.0", "image.1", "text.0", "text.1", "text.2"]
    # θ_0 of the run (the rewind point) holds LXMERT's prunable weights under their names
    init = torch.load(run / "init.pt", weights_only=True)
    init = init.get("state_dict", init)
    assert set(expected) <= set(init)
    # the same command again: every round done earlier, nothing retrained
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("mask.pt")}
    caplog.clear()
    with caplog.at_level("INFO"):
        main(cmd)
    assert sum("(done earlier)" in r.getMessage() for r in caplog.records) == 3
    assert {p: p.stat().st_mtime_ns for p in run.rglob("mask.pt")} == stamps


def test_adversarial_training_step_on_lxmert(demo_world, tmp_path):
    main(["fit", *lxmert_args(demo_world, tmp_path, "--trainer.max_steps", "1", "--trainer.val_check_interval", "1",
                              "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "csv"),
                              "--trainer.log_every_n_steps", "1",
                              "--model.adversarial.enabled", "true", "--model.adversarial.steps", "2")])
    (metrics,) = list((tmp_path / "csv").rglob("metrics.csv"))
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    kl = [float(r["train/adv_kl"]) for r in rows if r.get("train/adv_kl")]
    assert kl and all(v >= 0 and v == v for v in kl)
    assert any(r.get("train/adv_task_loss") for r in rows)
