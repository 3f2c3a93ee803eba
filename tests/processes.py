"""Child processes a test can start without being able to hang the suite or leave a process behind.

Every command runs in a session (process group) of its own, so the group holds every process the
command starts — the ranks Lightning's launchers start included. A command still running at its
deadline is diagnosed and killed: each process of its group is named (its rank, from the
``LOCAL_RANK`` / ``NODE_RANK`` it was started with, its state and the kernel call it waits in),
Python prints every thread's stack (``PYTHONFAULTHANDLER`` and ``SIGABRT``, core dumps off), then
the whole group gets ``SIGKILL`` and the test fails with that description, the output's tail and
the start of each process's stacks (each cut from the output on its own, so none crowds out another).
A command that ends while processes of its group still run after a short grace has left orphans:
they are killed and the test fails too.
"""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ORPHAN_GRACE_S = 15.0  # a rank may finish a moment after the rank that started it


class ProcessTimeout(AssertionError):
    """A command ran past its deadline; the message describes each of its processes."""


class ProcessesLeftBehind(AssertionError):
    """A command ended but processes it started were still running."""


@dataclass
class Finished:
    returncode: int
    output: str
    seconds: float


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGABRT is only for the stacks


def _stat(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, session, …"""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = _stat(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


def describe(pid: int) -> str:
    """``pid 812 (LOCAL_RANK=1, parent 800) state S, waiting in futex_wait_queue: python -m …``"""
    def read(name: str) -> str:
        try:
            return Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace")
        except OSError:
            return ""

    env = dict(item.split("=", 1) for item in read("environ").split("\0") if "=" in item)
    rank = ", ".join(f"{k}={env[k]}" for k in ("NODE_RANK", "LOCAL_RANK") if k in env) or "no rank variable"
    try:
        fields = _stat(pid)
        state, parent = fields[0], fields[1]
    except (OSError, IndexError):
        return f"pid {pid}: gone"
    command = read("cmdline").replace("\0", " ").strip()
    return (f"pid {pid} ({rank}, parent {parent}) state {state}, waiting in {read('wchan') or '?'}: "
            f"{command[:160]}")


STACK_CHARS = 3000  # of each process's stacks in a timeout's message (innermost frames first)


def _stacks_text(raw: str) -> str:
    """One process's faulthandler dump, without the list of extension modules, its start kept."""
    kept = [line for line in raw.splitlines() if line.strip() and not line.startswith("Extension modules:")]
    text = "\n".join(kept)
    return text if len(text) <= STACK_CHARS else text[:STACK_CHARS] + "\n  […]"


def kill_group(pgid: int, log: Path | None = None) -> tuple[list[str], list[str]]:
    """Describe every process of the group, then SIGKILL them all; with ``log`` (the group's output
    file) each one first dumps its Python stacks there, read back one process at a time.

    Returns:
        The descriptions, and per process the start of its stacks (empty without ``log``).
    """
    members = group_members(pgid)
    described = [describe(pid) for pid in members]
    stacks: list[str] = []
    if log is not None:
        # all frozen first, so no launcher reacts to a rank's end by killing the others; then one at a
        # time, the launched processes before the one that started them, each dumping its stacks
        # alone (two dumps written at once into one log interleave). Each dump is cut from the log
        # on its own, so a long dump of one process cannot push another's out of the message.
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        for pid in sorted(members, key=lambda p: p == pgid):
            before = log.stat().st_size if log.exists() else 0
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGABRT)
                os.kill(pid, signal.SIGCONT)
            deadline = time.time() + 3
            while pid in group_members(pgid) and time.time() < deadline:
                time.sleep(0.02)
            with open(log, "rb") as out:
                out.seek(before)
                dump = out.read().decode(errors="replace")
            stacks.append(f"--- Python stacks of pid {pid} ---\n{_stacks_text(dump) or '(none printed)'}")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.time() + 10
    while group_members(pgid) and time.time() < deadline:
        time.sleep(0.05)
    return described, stacks


def _tail(log: Path, chars: int = 4000, end: int | None = None) -> str:
    if not log.exists():
        return ""
    text = log.read_bytes()[:end].decode(errors="replace")
    return text[-chars:]


@contextlib.contextmanager
def started(cmd: list[str], log: Path, *, cwd: str | Path | None = None,
            env: dict | None = None) -> Iterator[subprocess.Popen]:
    """``cmd`` running in a session of its own, its output in ``log``; on leaving the block,
    whatever of its group still runs is killed (a test that fails half-way leaves nothing)."""
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_no_core_dumps)
    try:
        yield proc
    finally:
        if proc.poll() is None or group_members(proc.pid):
            kill_group(proc.pid)
        proc.wait()


def wait(proc: subprocess.Popen, log: Path, timeout: float) -> Finished:
    """Wait for a command started with :func:`started`: its exit status and output.

    Raises:
        ProcessTimeout: still running after ``timeout`` seconds (its processes described, killed).
        ProcessesLeftBehind: it ended, but processes of its group outlived it by ``ORPHAN_GRACE_S``.
    """
    start = time.time()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        printed = log.stat().st_size if log.exists() else 0  # the output before the stacks
        described, stacks = kill_group(proc.pid, log)
        proc.wait()
        raise ProcessTimeout(
            f"still running after {timeout:.0f} s, killed: {len(described)} process(es)\n  " + "\n  ".join(described)
            + f"\n--- output (tail) ---\n{_tail(log, 3000, end=printed)}\n" + "\n".join(stacks)) from None
    deadline = time.time() + (ORPHAN_GRACE_S if code == 0 else 2.0)
    while group_members(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    left = kill_group(proc.pid)[0] if group_members(proc.pid) else []
    if left:
        raise ProcessesLeftBehind(f"exit status {code}, but {len(left)} of its processes were still running "
                                  "(killed):\n  " + "\n  ".join(left) + f"\n--- output (tail) ---\n{_tail(log)}")
    return Finished(code, log.read_text(errors="replace"), round(time.time() - start, 1))


def run(cmd: list[str], log: Path, timeout: float, *, cwd: str | Path | None = None,
        env: dict | None = None) -> Finished:
    """Run ``cmd`` to its end, bounded by ``timeout`` seconds (see :func:`wait`)."""
    with started(cmd, log, cwd=cwd, env=env) as proc:
        return wait(proc, log, timeout)


class Commands:
    """The commands one test starts (the ``commands`` fixture): each in a session of its own, and
    whatever of them still runs when the test ends is killed with its whole group.

    Example::

        def test_two_workers(commands, tmp_path):
            a = commands.start(cmd, tmp_path / "a.log")
            assert commands.wait(a, tmp_path / "a.log", 300).returncode == 0
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, *, cwd: str | Path | None = None, env: dict | None = None,
              preexec_fn=None) -> subprocess.Popen:
        env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}

        def prepare() -> None:
            _no_core_dumps()
            if preexec_fn is not None:
                preexec_fn()

        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=prepare)
        return self.adopt(proc)

    def adopt(self, proc: subprocess.Popen) -> subprocess.Popen:
        """Track a process the test started itself (in a session of its own) for the clean-up."""
        self.procs.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen, log: Path, timeout: float) -> Finished:
        """As :func:`wait`."""
        return wait(proc, log, timeout)

    def run(self, cmd: list[str], log: Path, timeout: float, **kwargs) -> Finished:
        """Start ``cmd`` and wait for it, bounded (see :func:`wait`)."""
        return wait(self.start(cmd, log, **kwargs), log, timeout)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None or group_members(proc.pid):
                kill_group(proc.pid)
            proc.wait()
