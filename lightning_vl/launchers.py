"""Which of Lightning's multi-process launchers lightning-vl runs on.

Every command of the project — ``fit``, ``prune``, ``branch`` and a study's cells — starts its ranks
with Lightning's ``ddp`` launcher (each rank a fresh process running the same command; the one
``torchrun`` and cluster schedulers use) or ``ddp_spawn`` (fresh interpreters started by
``multiprocessing``). The **fork-based launchers are refused**: ``ddp_fork`` / ``ddp_notebook``
(and their ``find_unused_parameters`` variants) start each rank with ``fork()`` from the process
that calls ``Trainer.fit``. In this project that process already runs other threads before the
first fork — PyTorch's intra-op thread pool once any tensor work has run, W&B's service threads once
a run has logged (``wandb-AsyncioManager-main``, ``wandb-ServiceFinalizer`` and OpenTelemetry
exporters, alive until the process ends) — and a lottery run forks again at every level. ``fork()``
copies only the calling thread: a lock that another thread holds at that moment stays held in the
child for ever, and a rank that needs it waits without end (``futex_do_wait``, no CPU). Python
documents this (since 3.12 ``os.fork`` warns "This process is multi-threaded, use of fork() may
lead to deadlocks in the child"), and Lightning offers ``ddp_fork`` for interactive notebooks, where
``ddp`` cannot re-run the command. It hung ``make test`` on a fresh clone; it is not made safe
here, it is refused before anything starts.
"""
from __future__ import annotations

import pytorch_lightning as pl


class ForkedRanksRefused(ValueError):
    """A Trainer whose launcher would fork its ranks from this (multi-threaded) process."""


def check_launcher(trainer: pl.Trainer) -> None:
    """Refuse a Trainer whose ranks would be started with ``fork()``.

    Lightning marks exactly its fork-based launchers (``ddp_fork``, ``ddp_notebook``, XLA's) as
    ``is_interactive_compatible``; single-device runs have no launcher.

    Example::

        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn")
        check_launcher(trainer)  # fine: ranks are fresh interpreters

    Raises:
        ForkedRanksRefused: the strategy forks its ranks; the message names ``ddp`` and ``ddp_spawn``.
    """
    launcher = trainer.strategy.launcher
    if launcher is None or not launcher.is_interactive_compatible:
        return
    name = type(trainer.strategy).__name__
    start = getattr(trainer.strategy, "_start_method", "fork")
    raise ForkedRanksRefused(
        f"{name} with start_method {start!r} (--trainer.strategy ddp_fork / ddp_notebook) is refused: it starts "
        "each rank with fork() from a process that already runs other threads (PyTorch's thread pools, W&B's "
        "service threads), and a forked rank can inherit a lock one of them holds and wait for ever. Use "
        "--trainer.strategy ddp (each rank a fresh process running this command; also what torchrun and "
        "cluster schedulers use) or --trainer.strategy ddp_spawn.")
