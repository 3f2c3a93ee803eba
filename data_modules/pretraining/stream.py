"""The pre-training objective stream: which objective each optimizer step trains, which captions
each micro-batch takes, and the seeded per-row randomness (``PretrainStream`` for training,
``PretrainEvalBatches`` for validation).

Scheduling (UNITER's MetaLoader, made deterministic, worker- and DDP-safe)
--------------------------------------------------------------------------
Micro-batch ``g`` (global index, counted from the start of training) belongs to optimizer step
``g // accumulate_grad_batches``; each step's objective is drawn with probability ∝ its ratio
from an RNG seeded by ``seed`` alone (the same on every rank), so all micro-batches of a step
share it. Each objective has its own stream of example indices: seeded shuffles of the training
captions, reshuffled every pass; the c-th micro-batch of objective o takes, on rank r of W, the
stream positions ``[(c·W + r)·B, (c·W + r + 1)·B)`` — disjoint shards of the same stream.
Masking and negatives of row j of micro-batch g are drawn from ``(seed, rank, g, j)``. DataLoader
worker w of K produces the micro-batches ``start + w, start + w + K, ...`` and the loader yields
them in order, so the sequence is the same with any number of workers. Training runs as long as
the trainer's ``max_steps × accumulate_grad_batches`` (the loader's length; a resumed fit starts
at its ``global_step``); without ``max_steps`` an epoch is one pass over the captions.

Validation runs, for every objective with ratio > 0, one objective after another, batches over
the first ``val_examples`` validation captions; masking and negatives are seeded by (seed,
objective, example index), so every evaluation sees the same batches.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .batches import PretrainBatchMaker, merge_batches

# seeds of the independent random streams (with the run's seed)
_SCHEDULE, _STREAM, _TRAIN_ROW, _VAL_ROW = 0x5C4E, 0x57EA, 0x7A11, 0x7A12
_BLOCK = 4096  # optimizer steps per block of the objective schedule


def objective_code(name: str) -> int:
    """A stable number per objective name (seeds its example stream; ``hash()`` is salted)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


class ObjectiveSchedule:
    """The objective of every optimizer step, drawn with probability ∝ ratio from an RNG seeded by
    ``seed`` (blocks of ``_BLOCK`` steps, each from its own seed: any step is cheap to look up)."""

    def __init__(self, names: tuple[str, ...], ratios: tuple[float, ...], seed: int):
        total = float(sum(ratios))
        self.names, self.seed = tuple(names), int(seed)
        self.probs = np.asarray(ratios, dtype=np.float64) / total
        self._cache: dict[int, np.ndarray] = {}

    def _block(self, b: int) -> np.ndarray:
        if b not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            rng = np.random.default_rng([self.seed, _SCHEDULE, b])
            self._cache[b] = rng.choice(len(self.names), size=_BLOCK, p=self.probs).astype(np.int64)
        return self._cache[b]

    def steps(self, lo: int, hi: int) -> np.ndarray:
        """Objective indices of the steps ``lo .. hi - 1``."""
        if hi <= lo:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self._block(b)[max(lo - b * _BLOCK, 0):min(hi - b * _BLOCK, _BLOCK)]
                               for b in range(lo // _BLOCK, (hi - 1) // _BLOCK + 1)])

    def of_step(self, step: int) -> str:
        return self.names[int(self.steps(step, step + 1)[0])]

    def micro_batches_before(self, g: int, accumulate: int) -> np.ndarray:
        """How many of the micro-batches ``0 .. g - 1`` each objective has."""
        counts = np.zeros(len(self.names), dtype=np.int64)
        step, within = divmod(g, accumulate)
        for lo in range(0, step, _BLOCK):
            counts += np.bincount(self.steps(lo, min(step, lo + _BLOCK)), minlength=len(self.names)) * accumulate
        if within:
            counts[self.steps(step, step + 1)[0]] += within
        return counts


class ExampleStream:
    """An objective's example indices: pass p is a permutation seeded by (seed, objective, p)."""

    def __init__(self, num_examples: int, seed: int, code: int):
        self.n, self.seed, self.code = int(num_examples), int(seed), int(code)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, p: int) -> np.ndarray:
        if p not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[p] = np.random.default_rng([self.seed, _STREAM, self.code, p]).permutation(self.n)
        return self._perms[p]

    def at(self, positions: np.ndarray) -> np.ndarray:
        passes, within = np.divmod(np.asarray(positions, dtype=np.int64), self.n)
        out = np.empty(len(within), dtype=np.int64)
        for p in np.unique(passes):
            hit = passes == p
            out[hit] = self._perm(int(p))[within[hit]]
        return out


class PretrainStream(IterableDataset):
    """Training micro-batches, collated (use with ``DataLoader(batch_size=None)``); see the module
    docstring. ``total``: the micro-batches of the whole training (``max_steps × accumulate``),
    the loader's length; the first pass yields ``start .. total - 1`` (``start`` > 0 when a fit
    resumes). Without ``total`` a pass is one epoch over the captions, counted from ``start``."""

    def __init__(self, maker: PretrainBatchMaker, schedule: ObjectiveSchedule, batch_size: int, accumulate: int = 1,
                 rank: int = 0, world_size: int = 1, seed: int = 0, total: Optional[int] = None, start: int = 0,
                 row_mix: Optional[list[int]] = None):
        if batch_size <= 0 or accumulate <= 0 or world_size <= 0 or not 0 <= rank < world_size or start < 0:
            raise ValueError(f"need batch_size, accumulate, world_size > 0, 0 <= rank < world_size and start >= 0, got "
                             f"{batch_size}, {accumulate}, {world_size}, {rank}, {start}")
        n = len(maker.captions)
        if n == 0:
            raise ValueError(f"{maker.captions.source}: no training captions")
        self.maker, self.schedule = maker, schedule
        self.batch_size, self.accumulate, self.rank, self.world_size = batch_size, accumulate, rank, world_size
        self.seed = int(seed)
        self.streams = [ExampleStream(n, self.seed, objective_code(o)) for o in schedule.names]
        if total is not None:
            self.length, self._first_end = int(total), max(int(start), int(total))
        else:  # one pass over the captions (all objectives together), in whole optimizer steps
            self.length = max(accumulate, (n // (batch_size * world_size)) // accumulate * accumulate)
            self._first_end = int(start) + self.length
        self.start = int(start)
        self.row_mix = None if row_mix is None else [int(c) for c in row_mix]
        if self.row_mix is not None and (len(self.row_mix) != len(schedule.names) or sum(self.row_mix) != batch_size):
            raise ValueError(f"row_mix {row_mix}: expected one row count per objective of {schedule.names}, "
                             f"summing to the batch size {batch_size}")
        self.every_row = tuple(o for o in schedule.names if o in maker.every_row)
        self._passes = 0  # completed passes (each worker counts its own copy's)

    def __len__(self) -> int:
        return self.length

    def micro_batch_range(self, passes: int) -> tuple[int, int]:
        """The global micro-batch indices ``[begin, end)`` of pass ``passes`` (0 = the first)."""
        if passes == 0:
            return self.start, self._first_end
        begin = self._first_end + (passes - 1) * self.length
        return begin, begin + self.length

    def objectives(self, begin: int, end: int) -> list[str]:
        """The objective of each micro-batch ``begin .. end - 1``."""
        acc = self.accumulate
        steps = self.schedule.steps(begin // acc, (end - 1) // acc + 1) if end > begin else []
        return [self.schedule.names[int(steps[g // acc - begin // acc])] for g in range(begin, end)]

    def examples(self, objective: int, count: int) -> np.ndarray:
        """Example indices of this rank's ``count``-th micro-batch of an objective."""
        b, w = self.batch_size, self.world_size
        return self.streams[objective].at(((count * w + self.rank) * b) + np.arange(b))

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        begin, end = self.micro_batch_range(self._passes)
        if self.row_mix is not None:
            yield from self._joint(begin, end, worker, workers)
            self._passes += 1
            return
        counts = self.schedule.micro_batches_before(begin, self.accumulate)
        acc = self.accumulate
        steps = self.schedule.steps(begin // acc, (end - 1) // acc + 1) if end > begin else np.zeros(0, np.int64)
        for g in range(begin, end):
            o = int(steps[g // acc - begin // acc])
            count = int(counts[o])
            counts[o] += 1
            if (g - begin) % workers != worker:
                continue
            rngs = [np.random.default_rng([self.seed, _TRAIN_ROW, self.rank, g, j]) for j in range(self.batch_size)]
            yield self.maker.build(self.schedule.names[o], self.examples(o, count), rngs)
        self._passes += 1  # only a pass run to its end counts (an abandoned iterator does not)

    def _joint(self, begin: int, end: int, worker: int, workers: int):
        """``mix: row``: micro-batch g holds ``row_mix[o]`` rows of every objective o (its own
        stream's positions g·rows ..), merged into one joint batch."""
        for g in range(begin, end):
            if (g - begin) % workers == worker:
                yield merge_batches(self.joint_parts(g), self.every_row)

    def joint_parts(self, g: int) -> dict[str, dict]:
        """The single-objective batches micro-batch ``g`` of ``mix: row`` is merged from."""
        parts, w = {}, self.world_size
        for o, (name, c) in enumerate(zip(self.schedule.names, self.row_mix)):
            if name in self.every_row:
                continue
            indices = self.streams[o].at(((g * w + self.rank) * c) + np.arange(c))
            rngs = [np.random.default_rng([self.seed, _TRAIN_ROW, self.rank, g, o, j]) for j in range(c)]
            parts[name] = self.maker.build(name, indices, rngs)
        return parts


class PretrainEvalBatches(Dataset):
    """Validation: for each objective in turn, batches over the captions in order, masking and
    negatives seeded by (seed, objective, example index). Item k is a whole batch (use
    ``DataLoader(batch_size=None)``; a distributed sampler splits batches across ranks)."""

    def __init__(self, maker: PretrainBatchMaker, objectives: tuple[str, ...], batch_size: int, seed: int = 0):
        n = len(maker.captions)
        self.maker, self.seed = maker, int(seed)
        self.items = [(o, list(range(lo, min(n, lo + batch_size)))) for o in objectives for lo in range(0, n, batch_size)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        objective, indices = self.items[k]
        code = objective_code(objective)
        rngs = [np.random.default_rng([self.seed, _VAL_ROW, code, i]) for i in indices]
        return self.maker.build(objective, indices, rngs)
