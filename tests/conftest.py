"""Shared fixtures: small demo worlds generated once per test session; and a guard that no test
leaves threads or processes behind for the tests after it."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def save_random_model(out: Path, seed: int) -> Path:
    """The demo's tiny UNITER with its seeded random initialisation, in UNITER's released layout
    (the path ``make pretrain`` writes a pre-trained one to)."""
    import torch
    import yaml

    from lightning_vl.model.uniter import UniterConfig, UniterModel

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


def _live_children() -> list[int]:
    """This process's children that still run (zombies excluded)."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(autouse=True)
def leaves_nothing_running():
    """A test must not change what later tests see: no W&B threads in the pytest process (a later
    fork — a DataLoader worker — would copy their locks; W&B runs in commands of their own, see
    tests/processes.py) and no child process still running a few seconds after it ended (killed)."""
    yield
    wandb_threads = [t.name for t in threading.enumerate() if t.name.startswith(("wandb", "Otel"))]
    deadline = time.time() + 5
    while (children := _live_children()) and time.time() < deadline:
        time.sleep(0.1)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    problems = []
    if wandb_threads:
        problems.append(f"W&B threads left running in the pytest process: {wandb_threads}")
    if children:
        problems.append(f"child processes still running after the test (killed): {children}")
    assert not problems, "; ".join(problems)


@pytest.fixture
def commands():
    """Start commands bounded and cleaned up: see tests/processes.py."""
    from .processes import Commands

    started = Commands()
    try:
        yield started
    finally:
        started.close()
