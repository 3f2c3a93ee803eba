"""Sparsity schedules: the sparsity of every level (round) of a lottery run, starting with 0 (the
dense level):

* ``linear``    — each level removes ``rate`` of the *original* count: 0, 10%, 20%, … (the
  paper's tables, BERT-Tickets' loop);
* ``geometric`` — each level removes ``rate`` of what *remains*: 0, 10%, 19%, 27.1%, …
  (Algorithm 1's wording, open_lth).

A level's sparsity depends only on the schedule and its index, never on how far a run goes: the
target sparsity only says how many levels to run (up to the first level at or past it), so a run
taken further later continues the same levels. Counts are exact integers: a mask at sparsity
``s`` keeps ``total - round(s * total)`` weights.
"""
from __future__ import annotations

from typing import Literal, get_args

Schedule = Literal["linear", "geometric"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def schedule_level(level: int, schedule: str = "linear", rate: float = 0.1) -> float:
    """The sparsity of level ``level`` (0 = dense)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"pruning rate must be in (0, 1), got {rate}")
    value = level * rate if schedule == "linear" else 1.0 - (1.0 - rate) ** level
    return round(value, 12)


def sparsity_schedule(target: float, schedule: str = "linear", rate: float = 0.1) -> list[float]:
    """Sparsity of every level up to the first one at or past ``target``, the dense level included."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    levels = [schedule_level(0, schedule, rate)]
    while levels[-1] < target - 1e-9:
        nxt = schedule_level(len(levels), schedule, rate)
        if nxt >= 1.0 - 1e-9:
            raise ValueError(f"target sparsity {target} is past the last level of the {schedule} schedule with rate "
                             f"{rate} ({levels[-1]:.0%}); choose a target of at most {levels[-1]:g}")
        levels.append(nxt)
    return levels


def prune_count(total: int, sparsity: float) -> int:
    """How many of ``total`` weights are pruned at ``sparsity`` (the one rounding rule used)."""
    return int(round(sparsity * total))
