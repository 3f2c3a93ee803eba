"""Branches of a trained round, end to end through ``lightning-vl branch`` on a small demo world:
every kind runs, lands under its source round with its own hash, is idempotent, and trains the mask
it should."""
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lightning_vl.pruning import Mask
from lightning_vl.cli import main
from lightning_vl.lottery.branches import transfer_core
from lightning_vl.training.module import VLModule

from .synthetic import TINY
from .test_tasks_demo import demo_config

ROOT = Path(__file__).resolve().parents[1]


def task_args(task: str, world: Path, tmp_path: Path) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "task" / f"{task}.yaml"),
        "--config", str(ROOT / "configs" / "model" / "uniter-tiny.yaml"),
        "--config", str(ROOT / "configs" / "demo.yaml"),
        "--config", str(demo_config(task, world, tmp_path)),
        "--model.init", str(world / "uniter-tiny.pt"),
        "--data.init_args.batch_size", "4",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
        "--trainer.enable_progress_bar", "false",
    ]


@pytest.fixture(scope="module")
def source_round(demo_all, tmp_path_factory):
    """Round 2 (20%) of an NLVR2 IMP run on the small demo world (its demo configs in one folder,
    as configs/demo/ holds them)."""
    tmp = tmp_path_factory.mktemp("branches")
    demo_config("refcoco+", demo_all, tmp)
    main(["prune", *task_args("nlvr2", demo_all, tmp), "--imp.target_sparsity", "0.2",
          "--imp.root", str(tmp / "runs"), "--imp.wandb", "disabled"])
    (run,) = list((tmp / "runs" / "nlvr2").iterdir())
    return run / "round_02"


def branch(source: Path, *extra: str) -> dict:
    main(["branch", "--from", str(source), "--branch.wandb", "disabled", "--trainer.enable_progress_bar", "false",
          *extra])


def only_branch(source: Path, prefix: str) -> Path:
    found = [p for p in (source / "branches").iterdir() if p.name.startswith(prefix + "-")]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind, extra", [("random", []), ("random", ["--branch.strategy", "layerwise"]),
                                         ("shuffle", [])])
def test_mask_controls_keep_the_sparsity_and_change_the_mask(source_round, kind, extra, caplog, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-vl", "branch", "--from", str(source_round), "--kind", kind, *extra])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        branch(source_round, "--kind", kind, *extra)
    # from a shell, sys.argv holds the command too: Lightning's both-given warning (with the whole
    # resolved config) is not printed
    assert not [w for w in caught if "args parameter" in str(w.message)]
    folders = [p for p in (source_round / "branches").iterdir() if p.name.startswith(kind + "-")]
    folder = max(folders, key=lambda p: p.stat().st_mtime)
    result = json.loads((folder / "metrics.json").read_text())
    source_mask, mask = Mask.load(source_round / "mask.pt"), Mask.load(folder / "mask.pt")
    assert result["kind"] == kind and result["source_round"] == 2 and result["metric"] is not None
    assert f"done: {kind} branch of {source_round}" in caplog.text and f"branch folder  {folder}" in caplog.text
    assert mask != source_mask
    assert abs(mask.num_kept - source_mask.num_kept) <= (len(mask) if extra else 0)  # layer-wise: per-tensor rounding
    if kind == "shuffle":
        assert mask.layer_sparsity() == pytest.approx(source_mask.layer_sparsity())
    if extra:
        assert set(round(v, 2) for v in mask.layer_sparsity().values()) == {0.2}
    ranks = json.loads((folder / "ranks.json").read_text())
    assert ranks["pruned_nonzero"] == [[]]
    caplog.clear()
    branch(source_round, "--kind", kind, *extra)  # idempotent
    assert "(done earlier)" in caplog.text


@pytest.mark.slow
def test_reinit_trains_the_same_mask_on_another_init(source_round, demo_all):
    init = f"shuffled:{demo_all / 'uniter-tiny.pt'}"
    branch(source_round, "--kind", "reinit", "--model.init", init)
    folder = only_branch(source_round, "reinit")
    result = json.loads((folder / "metrics.json").read_text())
    assert result["init"] == init
    assert Mask.load(folder / "mask.pt") == Mask.load(source_round / "mask.pt")
    with pytest.raises(ValueError, match="reinit needs another --model.init"):
        branch(source_round, "--kind", "reinit")


@pytest.mark.slow
def test_ticket_trains_the_rounds_own_ticket_again(source_round):
    """``ticket``: the round's mask and start weights; with the round's settings it is the round
    itself, trained again (the same result); with adversarial training it is Table 3's Adv. row."""
    from lightning_vl.study.index import records

    branch(source_round, "--kind", "ticket")
    plain = json.loads((only_branch(source_round, "ticket") / "metrics.json").read_text())
    round_result = json.loads((source_round / "metrics.json").read_text())
    assert plain["metric"] == pytest.approx(round_result["metric"], abs=1e-6)
    assert plain["sparsity"] == pytest.approx(round_result["sparsity"])
    branch(source_round, "--kind", "ticket", "--model.adversarial.enabled", "true", "--branch.name", "ticket-adv")
    folder = source_round / "branches" / "ticket-adv"
    assert Mask.load(folder / "mask.pt") == Mask.load(source_round / "mask.pt")
    assert json.loads((folder / "ranks.json").read_text())["pruned_nonzero"] == [[]]
    found = {(r["row"], r["training"]) for r in records(source_round.parents[2]) if r["path"].startswith(str(folder))}
    assert found == {("ticket", "adversarial")}


@pytest.mark.slow
def test_transfer_trains_the_ticket_on_another_task(source_round, demo_all, tmp_path):
    main(["branch", *task_args("refcoco+", demo_all, tmp_path), "--from", str(source_round), "--kind", "transfer",
          "--branch.wandb", "disabled"])
    folder = only_branch(source_round, "transfer-refcoco+")
    result = json.loads((folder / "metrics.json").read_text())
    assert result["task"] == "refcoco+" and result["monitor"] == "val/acc" and result["metric"] is not None
    assert Mask.load(folder / "mask.pt") == Mask.load(source_round / "mask.pt")
    # NLVR2's 3-row type table: the target takes the 2 rows it has
    assert result["partial_transfer"] == ["uniter.embeddings.token_type_embeddings.weight (2 of 2 rows)"]
    with pytest.raises(SystemExit, match="name the target task with --task"):
        main(["branch", "--from", str(source_round), "--kind", "transfer"])


@pytest.mark.slow
def test_transfer_by_task_name_swaps_the_source_runs_config_files(source_round, caplog):
    """``--task refcoco+``: the source's own stack, nlvr2.yaml files swapped for refcoco+'s."""
    command = json.loads((source_round.parent / "command.json").read_text())
    assert [Path(f).name for f in command["config_files"]] == ["nlvr2.yaml", "uniter-tiny.yaml", "demo.yaml",
                                                               "nlvr2.yaml"]
    main(["branch", "--from", str(source_round), "--kind", "transfer", "--task", "refcoco+",
          "--data.init_args.batch_size", "4", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
          "--branch.wandb", "disabled", "--trainer.enable_progress_bar", "false"])
    assert "(done earlier)" in caplog.text  # the same branch as the one given the configs by hand above
    with pytest.raises(SystemExit, match="--task is for --kind transfer"):
        main(["branch", "--from", str(source_round), "--kind", "shuffle", "--task", "vqa"])


def test_transfer_core_copies_the_core_and_the_rows_both_tables_have():
    torch.manual_seed(0)
    target = VLModule(task="vcr", uniter=TINY)  # 4 type rows, TINY.vocab_size + 81 word rows
    source_model = VLModule(task="nlvr2", uniter=TINY)  # 3 type rows
    source = {k: v.clone() for k, v in source_model.state_dict().items()}
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("head.")}
    words_before = target.uniter.embeddings.word_embeddings.weight.detach().clone()
    notes = transfer_core(target, source)
    state = target.state_dict()
    assert torch.equal(state["uniter.encoder.layer.0.attention.self.query.weight"],
                       source["uniter.encoder.layer.0.attention.self.query.weight"])
    assert all(torch.equal(state[k], v) for k, v in head_before.items())  # the head stays fresh
    types = state["uniter.embeddings.token_type_embeddings.weight"]
    assert torch.equal(types[:3], source["uniter.embeddings.token_type_embeddings.weight"])
    words = state["uniter.embeddings.word_embeddings.weight"]
    assert torch.equal(words[:TINY.vocab_size], source["uniter.embeddings.word_embeddings.weight"])
    assert torch.equal(words[TINY.vocab_size:], words_before[TINY.vocab_size:])
    assert sorted(notes) == [f"uniter.embeddings.token_type_embeddings.weight (3 of 4 rows)",
                             f"uniter.embeddings.word_embeddings.weight ({TINY.vocab_size} of {TINY.vocab_size + 81} rows)"]


@pytest.mark.slow
def test_the_index_labels_every_round_and_branch_and_the_report_is_written(source_round, tmp_path):
    """After the branches above: records for the run's rounds and each branch, and `lightning-vl
    report` writes the tables and figures with one index.md."""
    from lightning_vl.study.index import records

    runs = source_round.parents[2]
    found = records(runs)
    rows = {(r["task"], r["row"]) for r in found}
    assert {("nlvr2", "imp"), ("nlvr2", "random"), ("nlvr2", "random-layerwise"), ("nlvr2", "shuffle"),
            ("nlvr2", "shuffled"), ("refcoco+", "transfer")} <= rows
    transfer = next(r for r in found if r["row"] == "transfer")
    assert transfer["source_task"] == "nlvr2" and transfer["level"] == 2
    imp = sorted((r for r in found if r["row"] == "imp"), key=lambda r: r["level"])
    assert [r["level"] for r in imp] == [0, 1, 2] and all(r["seed"] == 0 for r in imp)
    main(["report", "--runs", str(runs), "--out", str(tmp_path / "reports"),
          "--mask", f"r2={source_round / 'mask.pt'}", f"r1={source_round.parent / 'round_01' / 'mask.pt'}"])
    index = (tmp_path / "reports" / "index.md").read_text()
    assert "Table 1" in index and ".png" in index
    for link in [line.split("](")[1].split(")")[0] for line in index.splitlines() if "](" in line]:
        assert (tmp_path / "reports" / link).exists(), link
    assert json.loads((tmp_path / "reports" / "records.json").read_text()) == found
