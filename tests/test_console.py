"""A quiet console: Lightning's per-Trainer notices once per command, its adverts never; the
project's own lines, other warnings and the prune summary untouched."""
import logging
import warnings
from pathlib import Path

import pytest

from lightning_vl.console import OncePerCommand, quiet_console
from lightning_vl.lottery.report import prune_summary, ticket_round

RANK_ZERO = logging.getLogger("pytorch_lightning.utilities.rank_zero")


def rows(*metrics, monitor="val/acc"):
    return [{"round": i, "sparsity": i / 10, "metric": m, "monitor": monitor} for i, m in enumerate(metrics)]


def test_notices_once_adverts_never_and_the_filter_is_removed_afterwards(caplog):
    caplog.set_level(logging.INFO, logger="pytorch_lightning")
    caplog.set_level(logging.INFO, logger="lightning_fabric")
    with quiet_console():
        for _ in range(3):
            RANK_ZERO.info("GPU available: True (cuda), used: True")
            RANK_ZERO.info("TPU available: False, using: 0 TPU cores")
            RANK_ZERO.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
            RANK_ZERO.info("`Trainer.fit` stopped: `max_steps=300` reached.")
            logging.getLogger("lightning_fabric.utilities.seed").info("Seed set to 0")  # Fabric's own logger
            RANK_ZERO.info("round 1/7 · sparsity 10.0% · val acc 0.6")
    assert caplog.text.count("GPU available: True") == 1  # an accelerator's banner, once
    assert "TPU available" not in caplog.text and "max_steps=300" not in caplog.text and "Seed set" not in caplog.text
    assert "💡" not in caplog.text and caplog.text.count("round 1/7") == 3
    assert not [f for f in RANK_ZERO.filters if isinstance(f, OncePerCommand)]
    caplog.clear()
    RANK_ZERO.info("GPU available: False, used: False")  # outside a command: Lightning's own behaviour
    assert "GPU available" in caplog.text


def test_only_the_named_warnings_are_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_console():
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use …", FutureWarning)
            warnings.warn("Starting from v1.9.0, `tensorboardX` has been removed as a dependency of the …", UserWarning)
            warnings.warn("The number of training batches (1) is smaller than the logging interval", UserWarning)
            warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message)[:20] for w in caught] == ["The number of traini", "something else is de"]


def test_ticket_round_is_the_sparsest_round_that_kept_99_percent():
    assert ticket_round(rows(0.80, 0.80, 0.75, 0.795, 0.60))["round"] == 3  # a dip in between does not stop it
    assert ticket_round(rows(0.80, 0.70))["round"] == 0
    assert ticket_round(rows(None, 0.70)) is None and ticket_round([]) is None
    assert ticket_round(rows(0.80, float("nan"), 0.793))["round"] == 2


def test_prune_summary_names_the_ticket_the_folder_and_the_next_commands():
    run = Path("runs/vqa/imp-1234")
    text = "\n".join(prune_summary(rows(0.6, 0.61, 0.594, 0.5, monitor="val/score"), run, "vqa", "imp"))
    assert "done: imp on vqa · dense (round 0) val score 0.6000" in text
    assert "≥ 99% of it up to sparsity 20.0% (round 2, val score 0.5940)" in text
    assert f"run folder  {run}  (summary.csv, summary.json)" in text
    assert "make prune TASK=vqa PRUNE=random   (the random-pruning baseline)" in text
    assert "make report   (" in text
    worse = "\n".join(prune_summary(rows(0.6, 0.5, 0.55), run, "vqa", "random", "SPARSITY=0.2 RUNS=/tmp/r"))
    assert "no pruned round kept ≥ 99% of it (best: round 2, val acc 0.5500)" in worse
    assert "make prune TASK=vqa PRUNE=imp SPARSITY=0.2 RUNS=/tmp/r" in worse and "make report RUNS=/tmp/r" in worse
    assert len(prune_summary(rows(0.6, 0.5), run, "vqa", "imp")) == 4 == len(prune_summary([], run, "vqa", "imp"))


@pytest.mark.parametrize("imp, expected", [({}, ""), ({"target_sparsity": 0.2, "root": "/tmp/r"}, "SPARSITY=0.2 RUNS=/tmp/r"),
                                           ({"schedule": "geometric", "rewind_step": 50}, "SCHEDULE=geometric REWIND=50")])
def test_the_next_make_command_repeats_the_runs_settings(imp, expected):
    from lightning_vl.cli import _make_settings
    from lightning_vl.lottery import ImpConfig

    assert _make_settings(ImpConfig(**imp)) == expected


def test_a_pruned_round_far_above_dense_flags_the_dense_fine_tune_as_unconverged():
    """The demo's symptom before its budgets were measured: every ticket far above an under-trained dense."""
    run = Path("runs/refcoco+/imp-1")
    flagged = prune_summary([{**r, "steps": 300} for r in rows(0.735, 0.88, 0.922)], run, "refcoco+", "imp")
    assert len(flagged) == 5
    assert flagged[1] == ("  check       round 2 (20.0%) scores 0.1870 above the dense round after 300 steps: the dense "
                          "fine-tune has likely not converged (raise --trainer.max_steps; docs/troubleshooting.md)")
    assert len(prune_summary(rows(0.80, 0.815, 0.79), run, "vqa", "imp")) == 4  # within 2 points: noise, no check
    assert len(prune_summary(rows(0.80, float("nan"), 0.81), run, "vqa", "random")) == 4  # a NaN round is skipped
    assert len(prune_summary(rows(0.80, float("nan"), 0.83), run, "vqa", "random")) == 5
