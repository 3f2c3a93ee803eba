"""Shared fixtures: small demo worlds generated once per test session."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def save_random_model(out: Path, seed: int) -> Path:
    """The demo's tiny UNITER with its seeded random initialisation, in UNITER's released layout
    (the path ``make pretrain`` writes a pre-trained one to)."""
    import torch
    import yaml

    from lightning_vl.uniter import UniterConfig, UniterModel

    sizes = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/model/uniter-tiny.yaml").read_text())
    torch.manual_seed(seed)
    model = UniterModel(UniterConfig(**sizes["model"]["uniter"]))
    path = out / "uniter-tiny.pt"
    torch.save({f"uniter.{k}": v for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory):
    """A small demo world (features, tokenizer, NLVR2 splits) and a random-init tiny UNITER."""
    from lightning_vl.cli import make_demo

    out = tmp_path_factory.mktemp("demo")
    make_demo(["--out", str(out), "--n-train", "240", "--n-dev", "80", "--n-test", "40", "--seed", "3",
               "--tasks", "nlvr2"])
    save_random_model(out, seed=3)
    return out


@pytest.fixture(scope="session")
def demo_all(tmp_path_factory):
    """All demo tasks, small: every split of every task capped at a few dozen examples."""
    from lightning_vl.cli import make_demo

    out = tmp_path_factory.mktemp("demo_all")
    make_demo(["--out", str(out), "--n-train", "48", "--n-dev", "16", "--n-test", "16", "--seed", "5"])
    save_random_model(out, seed=5)
    return out
