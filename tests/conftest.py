"""Shared fixtures: a small demo world generated once per test session."""
import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory):
    """A small demo world (features, tokenizer, NLVR2 splits, tiny UNITER checkpoint)."""
    from lightning_vl.cli import make_demo

    out = tmp_path_factory.mktemp("demo")
    make_demo(["--out", str(out), "--n-train", "240", "--n-dev", "80", "--n-test", "40", "--seed", "3", "--tasks", "nlvr2",
               "--pretrain-steps", "0"])
    return out


@pytest.fixture(scope="session")
def demo_all(tmp_path_factory):
    """All demo tasks, small: every split of every task capped at a few dozen examples; the model
    is pre-trained for a few steps (the path ``make demo`` takes, at a fraction of the cost)."""
    from lightning_vl.cli import make_demo

    out = tmp_path_factory.mktemp("demo_all")
    make_demo(["--out", str(out), "--n-train", "48", "--n-dev", "16", "--n-test", "16", "--seed", "5",
               "--pretrain-steps", "4", "--pretrain-scenes", "64", "--pretrain-batch-size", "8"])
    return out
