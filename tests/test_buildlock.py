"""The Makefile's LOCK: two makes at once build a shared file once (two study workers on a fresh clone)."""
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shipped_lock_definition() -> str:
    """The LOCK variable exactly as the project's Makefile defines it (with its continuation line)."""
    match = re.search(r"^LOCK = .*?(?<!\\)\n", (ROOT / "Makefile").read_text(), re.S | re.M)
    assert match, "the Makefile defines LOCK"
    return match.group(0)


@pytest.fixture
def project(tmp_path):
    """A Makefile whose one target is built by a slow recipe under the shipped LOCK."""
    (tmp_path / "Makefile").write_text(
        f"SHELL := /bin/bash\nPYTHON := {sys.executable}\n{shipped_lock_definition()}"
        "out/target: dep\n"
        "\t@$(LOCK); echo $$$$ >> builds; sleep $(SLEEP); test -z '$(FAIL)' || exit 7; touch $@\n")
    (tmp_path / "dep").write_text("")
    return tmp_path


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_make_left_running():
    """Every make a test starts (in a session of its own) is killed with its recipe when the test ends."""
    yield
    while STARTED:
        proc = STARTED.pop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def make(folder: Path, **variables) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["make", "-s", "-C", str(folder)] + [f"{k}={v}" for k, v in variables.items()]
    STARTED.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True))
    return STARTED[-1]


def builds(folder: Path) -> int:
    path = folder / "builds"
    return len(path.read_text().split()) if path.exists() else 0


def test_two_makes_at_once_build_the_target_once(project):
    first = make(project, SLEEP=2)
    time.sleep(0.5)
    second = make(project, SLEEP=2)
    assert first.wait(30) == 0 and second.wait(30) == 0
    assert builds(project) == 1
    assert "another make is building it" in second.stdout.read()
    assert (project / "out" / "target").exists()


def test_a_target_older_than_a_prerequisite_is_rebuilt(project):
    assert make(project, SLEEP=0).wait(30) == 0
    assert make(project, SLEEP=0).wait(30) == 0          # up to date: make does not run the recipe
    assert builds(project) == 1
    time.sleep(0.05)
    (project / "dep").write_text("changed")
    assert make(project, SLEEP=0).wait(30) == 0
    assert builds(project) == 2


def test_a_failed_build_fails_and_the_waiting_make_builds_it_itself(project):
    first = make(project, SLEEP=1, FAIL=1)
    time.sleep(0.5)
    second = make(project, SLEEP=0)
    assert first.wait(30) != 0
    assert second.wait(30) == 0
    assert builds(project) == 2 and (project / "out" / "target").exists()


def test_a_killed_builder_does_not_hold_the_lock(project):
    first = make(project, SLEEP=60)
    deadline = time.time() + 20
    while builds(project) == 0 and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    started = time.time()
    assert make(project, SLEEP=0).wait(30) == 0
    assert time.time() - started < 20
    assert builds(project) == 2 and (project / "out" / "target").exists()
