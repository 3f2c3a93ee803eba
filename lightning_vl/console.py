"""A quiet console for one ``lightning-vl`` command.

``lightning-vl prune`` builds a fresh Trainer per round, and Lightning 2.6 prints the same notices
for every Trainer it builds. What is silenced, and where it comes from in ``pytorch_lightning``:

- the device banner, "GPU available: …" / "TPU available: …" (``trainer/setup.py:_log_device_info``,
  ``rank_zero_info``): shown once per command when it reports an accelerator, never when it says
  there is none ("GPU available: False, used: False", "TPU available: False, using: 0 TPU cores");
- "`Trainer.fit` stopped: `max_steps=N` reached." (``loops/fit_loop.py``, ``rank_zero_info``), the
  normal end of every fit counted in steps (each round's line says its steps): never shown;
- "Seed set to N" (``lightning_fabric/utilities/seed.py``), printed at every seeding: never shown
  (the seed is in the run's ``config.yaml``);
- the "💡 Tip: … litlogger / litmodels" adverts (``trainer/connectors/logger_connector/`` and
  ``callback_connector.py``, ``rank_zero_info``): never shown;
- the notice that ``tensorboardX`` is not installed and ``logger=True`` falls back to ``CSVLogger``
  (``logger_connector.py``, a ``UserWarning``): the project logs with ``CSVLogger`` on purpose;
- torch's ``FutureWarning`` that ``isinstance(treespec, LeafSpec)`` is deprecated, raised by
  Lightning 2.6's own ``utilities/_pytree.py`` under torch ≥ 2.10: nothing a user can act on.

Each is matched by its own message on its own logger or category; every other log line and
warning is left as it is. The three notices go through the ``pytorch_lightning.utilities.rank_zero``
logger (``lightning_fabric.utilities.rank_zero`` for Fabric's copies).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                     "lightning_fabric.utilities.seed")  # the last logs "Seed set to N" itself

ONCE_PREFIXES = ("GPU available:", "TPU available:", "HPU available:")
NEVER_PREFIXES = ("💡 Tip:", "`Trainer.fit` stopped:", "Seed set to ", "GPU available: False, used: False",
                  "TPU available: False, using: 0 TPU cores", "HPU available: False, using: 0 HPUs")
IGNORED_WARNINGS = (  # (message regex, category)
    (r"Starting from v1\.9\.0, `tensorboardX` has been removed as a dependency", UserWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)


class OncePerCommand(logging.Filter):
    """Drops Lightning's adverts and the repeats of its per-Trainer notices.

    Example:
        >>> f = OncePerCommand()
        >>> record = lambda msg: logging.LogRecord("x", logging.INFO, "", 0, msg, None, None)
        >>> [f.filter(record(m)) for m in ("GPU available: False, used: False",) * 2]
        [True, False]
        >>> f.filter(record("💡 Tip: try litlogger")), f.filter(record("round 1/7 · sparsity 10.0%"))
        (False, True)
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(NEVER_PREFIXES):
            return False
        if message.startswith(ONCE_PREFIXES):
            if message in self.seen:
                return False
            self.seen.add(message)
        return True


@contextlib.contextmanager
def quiet_console() -> Iterator[OncePerCommand]:
    """Within the block, Lightning's notices are shown once and its adverts never (see the module).

    The filters are removed (and the warning filters restored) when the block ends, so a caller
    that runs several commands in one process (the tests) sees each command's banner once.

    Example:
        >>> with quiet_console():
        ...     pass  # build Trainers and fit: one device banner, no adverts
    """
    once = OncePerCommand()
    loggers = [logging.getLogger(name) for name in RANK_ZERO_LOGGERS]
    for logger in loggers:
        logger.addFilter(once)
    try:
        with warnings.catch_warnings():
            for message, category in IGNORED_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield once
    finally:
        for logger in loggers:
            logger.removeFilter(once)
