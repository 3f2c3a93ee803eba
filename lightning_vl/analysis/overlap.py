"""How much do two tickets agree? Overlap of the kept weights of masks over the same parameters.

For masks A and B (kept sets, ``True`` = kept) over N prunable weights:

* **IoU** (Jaccard) ``|A∩B| / |A∪B|`` — the paper's mask-similarity figure;
* **overlap coefficient** ``|A∩B| / min(|A|, |B|)`` — 1 when the sparser ticket lies inside the other;
* **normalised Hamming distance** ``|A⊕B| / N`` — the fraction of weights the masks disagree on;

each overall, per **layer type** (Q, K, V, attention-output, FFN-in, FFN-out: the ``part`` of each
tensor's group; anything else, e.g. the pooler or ``img_linear``, is ``other``) and per **layer**
(the group's layer index; ``text.3``-style for a two-stream backbone's streams),
each beside its **chance level**: what two independent random masks with the same densities
``pa = |A|/N``, ``pb = |B|/N`` (of that group of weights) would score. For uniformly random kept sets of
fixed sizes, ``E|A∩B| = |A|·|B| / N`` exactly (hypergeometric), so

* ``E[overlap] = |A|·|B| / (N·min(|A|,|B|)) = max(pa, pb)`` exactly (= p for equal densities);
* ``E[Hamming] = pa + pb − 2·pa·pb`` exactly;
* ``E[IoU] ≈ pa·pb / (pa + pb − pa·pb)`` (ratio of the expectations; exact as N → ∞, the error
  is O(1/N)); ``p / (2 − p)`` for equal densities: 0.176 at 70% sparsity.

Global magnitude pruning leaves layers at very different densities, and random masks that keep
each tensor's density (``random-layerwise``, ``shuffle``) agree more than globally random ones; the
CSVs also give that stronger baseline (``iou_chance_tensorwise``: ``E|A∩B| = Σ_t |A_t|·|B_t| / N_t``
over the group's tensors).

Memory: every count is taken tensor by tensor with bool operations and ``count_nonzero`` (one
tensor-sized bool temporary at a time, no float or int copy of a mask); masks read from files stay
bit-packed (``PackedMask``, 1 bit per weight) and are unpacked one tensor at a time: three
UNITER-base masks (85M weights each) compare in ~8 s on 2 cores, ~50 MB above the bare interpreter.

Groups come from the masks (``Mask.groups``: recorded by the run, or UNITER's derived from the names
for masks saved before groups existed, ``lightning_vl.pruning.mask.legacy_group``); nothing here reads
a parameter name.

``lightning-vl overlap A=runs/…/round_07/mask.pt B=… [--out reports/overlap]`` writes the CSVs,
a markdown summary and the IoU heat map (``main``).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from lightning_vl.pruning.mask import FORMAT as MASK_FORMAT  # noqa: F401 (re-exported)
from lightning_vl.pruning.mask import VERSION as MASK_VERSION  # noqa: F401 (re-exported)
from lightning_vl.pruning.mask import PackedMask, layer_key, legacy_group

from .common import csv_text, markdown_table, sparsity_text, write_text

PART_TYPES = {"query": "Q", "key": "K", "value": "V", "attn_out": "attention-output", "ffn_in": "FFN-in",
              "ffn_out": "FFN-out"}  # a group's part → its layer type
TYPE_ORDER = ("Q", "K", "V", "attention-output", "FFN-in", "FFN-out", "other")
OTHER = "other"
METRICS = ("iou", "overlap", "hamming")
METRIC_NAMES = {"iou": "IoU of kept weights", "overlap": "overlap coefficient", "hamming": "normalised Hamming distance"}


def group_type(group: tuple) -> str:
    """A group's layer type: ``("joint", 3, "query")`` → ``Q``; parts outside ``PART_TYPES`` → ``other``."""
    return PART_TYPES.get(group[2], OTHER)


def group_layer(group: tuple) -> Union[int, str]:
    """A group's layer: its index (``text.3`` for a stream other than ``joint``), else ``other``."""
    return layer_key(group)


def layer_type(name: str) -> str:
    """The layer type of a parameter of a mask without recorded groups (``legacy_group``):
    ``uniter.encoder.layer.3.attention.self.query.weight`` → ``Q``; pooler, biases … → ``other``."""
    return group_type(legacy_group(name))


def layer_index(name: str) -> Union[int, str]:
    """The layer of a parameter of a mask without recorded groups (``…encoder.layer.3.…`` → 3)."""
    m = legacy_group(name)
    return m[1] if m[1] >= 0 else OTHER


# chance levels -------------------------------------------------------------------------------------
def chance_iou(pa: float, pb: float) -> float:
    """Expected IoU of independent random masks with densities pa, pb: pa·pb/(pa+pb−pa·pb)."""
    denom = pa + pb - pa * pb
    return pa * pb / denom if denom > 0 else math.nan


def chance_overlap(pa: float, pb: float) -> float:
    """Expected overlap coefficient: E|A∩B| / min(|A|,|B|) = pa·pb/min(pa,pb) = max(pa, pb)."""
    return max(pa, pb) if min(pa, pb) > 0 else math.nan


def chance_hamming(pa: float, pb: float) -> float:
    """Expected normalised Hamming distance: P(kept in exactly one) = pa + pb − 2·pa·pb."""
    return pa + pb - 2 * pa * pb


CHANCE = {"iou": chance_iou, "overlap": chance_overlap, "hamming": chance_hamming}


@dataclass(frozen=True)
class Counts:
    """Counts of one pair of masks over a group of weights. ``both_chance`` is the expected
    intersection of random masks keeping each *tensor's* densities (Σ_t |A_t|·|B_t| / N_t)."""

    total: int
    kept_a: int
    kept_b: int
    both: int
    both_chance: float = 0.0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.total + other.total, self.kept_a + other.kept_a, self.kept_b + other.kept_b,
                      self.both + other.both, self.both_chance + other.both_chance)

    def swapped(self) -> "Counts":
        return Counts(self.total, self.kept_b, self.kept_a, self.both, self.both_chance)

    @property
    def union(self) -> int:
        return self.kept_a + self.kept_b - self.both

    @property
    def differ(self) -> int:
        return self.kept_a + self.kept_b - 2 * self.both

    @property
    def density_a(self) -> float:
        return self.kept_a / self.total if self.total else math.nan

    @property
    def density_b(self) -> float:
        return self.kept_b / self.total if self.total else math.nan

    @property
    def iou(self) -> float:
        """NaN when both masks keep nothing of the group (0/0)."""
        return self.both / self.union if self.union else math.nan

    @property
    def overlap(self) -> float:
        """NaN when one of the masks keeps nothing of the group."""
        smaller = min(self.kept_a, self.kept_b)
        return self.both / smaller if smaller else math.nan

    @property
    def hamming(self) -> float:
        return self.differ / self.total if self.total else math.nan

    def chance(self, metric: str) -> float:
        return CHANCE[metric](self.density_a, self.density_b)

    @property
    def iou_chance_tensorwise(self) -> float:
        union = self.kept_a + self.kept_b - self.both_chance
        return self.both_chance / union if union > 0 else math.nan

    def metrics(self) -> dict[str, float]:
        out = {"total": self.total, "kept_a": self.kept_a, "kept_b": self.kept_b, "intersection": self.both,
               "union": self.union, "density_a": self.density_a, "density_b": self.density_b}
        for m in METRICS:
            out[m] = getattr(self, m)
            out[f"{m}_chance"] = self.chance(m)
        out["iou_chance_tensorwise"] = self.iou_chance_tensorwise
        return out


class MaskMismatch(ValueError):
    """Masks over different parameter sets or shapes."""


# masks read from files -----------------------------------------------------------------------------
def _groups(mask) -> dict[str, tuple]:
    """The mask's groups (``Mask``/``PackedMask``), or UNITER's derived from a plain mapping's names."""
    groups = getattr(mask, "groups", None)
    if isinstance(groups, Mapping):
        return dict(groups)
    return {k: legacy_group(k) for k in mask.keys()}


def _shapes(mask) -> dict[str, tuple[int, ...]]:
    shapes = getattr(mask, "shapes", None)
    if isinstance(shapes, Mapping):
        return dict(shapes)
    return {k: tuple(mask[k].shape) for k in mask.keys()}


def check_compatible(masks: Mapping[str, object], sources: Optional[Mapping[str, str]] = None) -> None:
    """Raise ``MaskMismatch`` unless every mask covers the same parameter names with the same
    shapes; the message names both files (``sources``: label → file; the label otherwise)."""
    labels = list(masks)
    if not labels:
        return
    where = {lab: (sources or {}).get(lab, lab) for lab in labels}
    ref = labels[0]
    ref_shapes = _shapes(masks[ref])
    for lab in labels[1:]:
        shapes = _shapes(masks[lab])
        if shapes.keys() != ref_shapes.keys():
            only_ref = [k for k in ref_shapes if k not in shapes]
            only_lab = [k for k in shapes if k not in ref_shapes]
            parts = []
            if only_ref:
                parts.append(f"{len(only_ref)} only in {where[ref]} (e.g. {only_ref[0]})")
            if only_lab:
                parts.append(f"{len(only_lab)} only in {where[lab]} (e.g. {only_lab[0]})")
            raise MaskMismatch(f"{where[ref]} and {where[lab]} cover different parameters: " + "; ".join(parts)
                               + " — compare masks of the same model and prunable set")
        for k, shape in ref_shapes.items():
            if tuple(shapes[k]) != tuple(shape):
                raise MaskMismatch(f"{where[ref]} and {where[lab]} differ in shape: {k} is {tuple(shape)} in "
                                   f"{where[ref]} and {tuple(shapes[k])} in {where[lab]} — masks of different "
                                   "model sizes cannot be compared")


def _bool(t: torch.Tensor, label: str, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"mask {label!r}: {name!r} must be a bool tensor, got {got}")
    return t


# the analysis --------------------------------------------------------------------------------------
class OverlapAnalysis:
    """Pairwise overlap of a set of labelled masks over the same parameters. Holds only counts
    (per tensor: kept per mask, kept by both per pair), so it is small whatever the model size."""

    def __init__(self, labels: Sequence[str], shapes: Mapping[str, tuple[int, ...]],
                 kept: Mapping[str, Mapping[str, int]], both: Mapping[tuple[str, str], Mapping[str, int]],
                 sources: Optional[Mapping[str, str]] = None, groups: Optional[Mapping[str, tuple]] = None):
        self.labels = list(labels)
        self.shapes = dict(shapes)
        self.names = list(self.shapes)
        # name → (stream, layer, part), from the masks; UNITER's from the names when not given
        self.group_of = {n: tuple((groups or {}).get(n) or legacy_group(n)) for n in self.names}
        self.kept = {lab: dict(kept[lab]) for lab in self.labels}
        self._both = {k: dict(v) for k, v in both.items()}
        self.sources = dict(sources or {})

    @classmethod
    def compute(cls, masks: Mapping[str, object], sources: Optional[Mapping[str, str]] = None) -> "OverlapAnalysis":
        """``masks``: label → ``lightning_vl.pruning.Mask``, ``PackedMask`` or a mapping of bool tensors.
        Refuses masks over different parameters or shapes (``MaskMismatch``)."""
        labels = list(masks)
        if len(labels) < 1:
            raise ValueError("no masks to compare")
        check_compatible(masks, sources)
        shapes = _shapes(masks[labels[0]])
        kept = {lab: {} for lab in labels}
        both = {(a, b): {} for i, a in enumerate(labels) for b in labels[i + 1:]}
        with torch.no_grad():
            for name in shapes:  # one tensor of every mask at a time
                tensors = [_bool(masks[lab][name], lab, name) for lab in labels]
                for lab, t in zip(labels, tensors):
                    kept[lab][name] = int(torch.count_nonzero(t))  # (bool .sum() makes an int64 copy)
                for i, a in enumerate(labels):
                    for j in range(i + 1, len(labels)):
                        tb = tensors[j].to(tensors[i].device)
                        both[(a, labels[j])][name] = int(torch.count_nonzero(torch.logical_and(tensors[i], tb)))
                del tensors
        return cls(labels, shapes, kept, both, sources, _groups(masks[labels[0]]))

    # counts ----------------------------------------------------------------------------------------
    def _names(self, by: str = "overall", group=None) -> list[str]:
        if by == "overall":
            return self.names
        key = {"type": group_type, "layer": group_layer}[by]
        return [n for n in self.names if key(self.group_of[n]) == group]

    def groups(self, by: str) -> list:
        """The groups present: layer types in ``TYPE_ORDER`` or layer indices (then ``other``)."""
        if by == "type":
            present = {group_type(g) for g in self.group_of.values()}
            return [t for t in TYPE_ORDER if t in present]
        if by == "layer":
            present = {group_layer(g) for g in self.group_of.values()}
            ints = sorted(i for i in present if isinstance(i, int))
            streams = sorted((i for i in present if isinstance(i, str) and i != OTHER),
                             key=lambda k: (k.split(".")[0], int(k.split(".")[1])))
            return ints + streams + ([OTHER] if OTHER in present else [])
        if by == "overall":
            return [None]
        raise ValueError(f"by must be overall, type or layer, got {by!r}")

    def counts(self, a: str, b: str, by: str = "overall", group=None) -> Counts:
        names = self._names(by, group)
        if a == b:
            both = self.kept[a]
        elif (a, b) in self._both:
            both = self._both[(a, b)]
        elif (b, a) in self._both:
            both = self._both[(b, a)]
        else:
            raise KeyError(f"unknown pair {a!r}, {b!r}; labels: {self.labels}")
        total = Counts(0, 0, 0, 0, 0.0)
        for n in names:
            size = math.prod(self.shapes[n])
            ka, kb = self.kept[a][n], self.kept[b][n]
            total = total + Counts(size, ka, kb, both[n], ka * kb / size if size else 0.0)
        return total

    def total(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def sparsity(self, label: str) -> float:
        return 1.0 - sum(self.kept[label].values()) / self.total()

    def pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for i, a in enumerate(self.labels) for b in self.labels[i + 1:]]

    def rows(self, by: str = "overall") -> list[dict]:
        """One dict per pair (and group): labels, sparsities, counts, metrics and chance levels."""
        out = []
        for a, b in self.pairs():
            for g in self.groups(by):
                c = self.counts(a, b, by, g)
                row = {"a": a, "b": b}
                if by != "overall":
                    row[by] = g
                row.update({"sparsity_a": 1 - c.density_a, "sparsity_b": 1 - c.density_b, **c.metrics()})
                out.append(row)
        return out

    def matrix(self, metric: str = "iou", by: str = "overall", group=None) -> np.ndarray:
        """labels × labels of ``metric`` (diagonal: a mask with itself)."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        n = len(self.labels)
        out = np.full((n, n), np.nan)
        for i, a in enumerate(self.labels):
            for j, b in enumerate(self.labels):
                out[i, j] = getattr(self.counts(a, b, by, group), metric)
        return out

    def chance_range(self, metric: str = "iou") -> tuple[float, float]:
        """Smallest and largest chance level over the off-diagonal pairs (equal when all masks share a sparsity)."""
        values = [self.counts(a, b).chance(metric) for a, b in self.pairs()] or [math.nan]
        return min(values), max(values)

    # outputs ---------------------------------------------------------------------------------------
    def to_csv(self, by: str = "overall") -> str:
        rows = self.rows(by)
        if not rows:
            return ""
        header = list(rows[0])
        return csv_text(header, ([_csv_value(r[h]) for h in header] for r in rows))

    def to_markdown(self) -> str:
        f = _fmt
        lines = ["# Mask overlap\n",
                 f"{len(self.labels)} masks over {len(self.names)} tensors, {self.total():,} prunable weights. "
                 "Chance = two independent random masks with the same densities (see `lightning_vl/analysis/overlap.py`).\n",
                 markdown_table(["mask", "sparsity", "kept", "file"],
                                [[lab, sparsity_text(self.sparsity(lab)), f"{sum(self.kept[lab].values()):,}",
                                  self.sources.get(lab, "")] for lab in self.labels])]
        if len({round(self.sparsity(lab), 4) for lab in self.labels}) > 1:
            lines.append("\nThe masks have different sparsities: compare each value with its own chance level.\n")
        if len(self.labels) < 2:
            return "\n".join(lines)
        lo, hi = self.chance_range("iou")
        chance = f"{lo:.3f}" if abs(hi - lo) < 5e-4 else f"{lo:.3f}–{hi:.3f}"
        iou = self.matrix("iou")
        lines += [f"\n## IoU of kept weights (chance {chance})\n",
                  markdown_table(["", *self.labels], [[a, *[f(v) for v in iou[i]]] for i, a in enumerate(self.labels)])]
        lines += ["\n## Pairs\n", markdown_table(
            ["a", "b", "IoU", "chance", "IoU ÷ chance", "tensorwise chance", "overlap", "chance", "Hamming", "chance"],
            [[a, b, f(c.iou), f(c.chance("iou")), _ratio(c.iou, c.chance("iou")), f(c.iou_chance_tensorwise),
              f(c.overlap), f(c.chance("overlap")), f(c.hamming), f(c.chance("hamming"))]
             for a, b in self.pairs() for c in [self.counts(a, b)]])]
        for by, title in (("type", "IoU per layer type"), ("layer", "IoU per layer")):
            groups = self.groups(by)
            lines += [f"\n## {title} (chance in brackets)\n", markdown_table(
                ["a", "b", *[str(g) for g in groups]],
                [[a, b, *[f"{f(c.iou)} ({f(c.chance('iou'))})" for g in groups for c in [self.counts(a, b, by, g)]]]
                 for a, b in self.pairs()])]
        return "\n".join(lines)

    def heatmap(self, path: Union[str, Path], metric: str = "iou", title: Optional[str] = None) -> Path:
        """labels × labels heat map of ``metric``, cells annotated, chance level in the title."""
        from .figures import matrix_heatmap

        values = self.matrix(metric)
        lo, hi = self.chance_range(metric)
        chance = f"{lo:.3f}" if abs(hi - lo) < 5e-4 else f"{lo:.3f}–{hi:.3f}"
        sparsities = sorted({sparsity_text(self.sparsity(lab)) for lab in self.labels})
        at = sparsities[0] if len(sparsities) == 1 else "these sparsities"
        title = title or f"{METRIC_NAMES[metric]} of the masks\nchance (independent random masks at {at}): {chance}"
        return matrix_heatmap(values, self.labels, self.labels, path, title=title, vmin=0.0, vmax=1.0,
                              colorbar_label=METRIC_NAMES[metric], marks={"chance": lo} if lo == lo else None,
                              fmt="{:.3f}")

    def write(self, out_dir: Union[str, Path], metrics: Iterable[str] = ("iou",)) -> dict[str, Path]:
        """``pairwise.csv``, ``per_type.csv``, ``per_layer.csv``, ``overlap.md`` and a heat map per
        metric (``overlap_iou.png``…) in ``out_dir``."""
        out = Path(out_dir)
        paths = {"pairwise": write_text(out / "pairwise.csv", self.to_csv("overall")),
                 "per_type": write_text(out / "per_type.csv", self.to_csv("type")),
                 "per_layer": write_text(out / "per_layer.csv", self.to_csv("layer"))}
        md = self.to_markdown()
        if len(self.labels) >= 2:
            for m in metrics:
                paths[f"heatmap_{m}"] = self.heatmap(out / f"overlap_{m}.png", m)
                md += f"\n![{METRIC_NAMES[m]}](overlap_{m}.png)\n"
        paths["markdown"] = write_text(out / "overlap.md", md)
        return paths


def pair_overlap(a, b) -> dict[str, float]:
    """The overall metrics and chance levels of two masks (``Counts.metrics``)."""
    return OverlapAnalysis.compute({"a": a, "b": b}).counts("a", "b").metrics()


def _fmt(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _ratio(x: float, y: float) -> str:
    return "—" if not (math.isfinite(x) and math.isfinite(y)) or y == 0 else f"{x / y:.2f}×"


def _csv_value(v):
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return v


# labels and the command ----------------------------------------------------------------------------
_HASH = re.compile(r"-[0-9a-f]{8}$")
_ROUND = re.compile(r"^round_(\d+)$")


def _mask_file(path: Path) -> Path:
    return path / "mask.pt" if path.is_dir() else path


def _label_parts(path: Path) -> list[str]:
    """``runs/nlvr2/imp-3fa2…/round_07/mask.pt`` → [nlvr2, imp, r07]; a branch under it adds its
    kind (``shuffle``, ``transfer-vqa``); other paths: the file's folder (or the file's stem)."""
    parts = path.parts
    rounds = [i for i, p in enumerate(parts) if _ROUND.match(p)]
    if rounds and rounds[-1] >= 2:
        i = rounds[-1]
        out = [parts[i - 2], _HASH.sub("", parts[i - 1]), f"r{int(_ROUND.match(parts[i]).group(1)):02d}"]
        if i + 2 < len(parts) and parts[i + 1] == "branches":
            out.append(_HASH.sub("", parts[i + 2]))
        return out
    return [path.parent.name if path.stem == "mask" and path.parent.name else path.stem]


def derive_labels(paths: Sequence[Path]) -> list[str]:
    """Short distinct labels for mask files: the parts of the run-folder path that differ between
    them (nine tasks' ``imp/r07`` masks → the task names)."""
    parts = [_label_parts(p) for p in paths]
    if len({len(p) for p in parts}) == 1 and len(parts) > 1:
        keep = [k for k in range(len(parts[0])) if len({p[k] for p in parts}) > 1] or [0]
        labels = ["/".join(p[k] for k in keep) for p in parts]
    else:
        labels = ["/".join(p) for p in parts]
    if len(set(labels)) < len(labels):
        labels = ["/".join(p) for p in parts]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if labels.count(lab) == 1 else f"{lab}#{seen[lab]}")
    return out


def parse_mask_args(specs: Sequence[str]) -> list[tuple[Optional[str], Path]]:
    """``LABEL=path`` or a plain path (a mask file or a round/branch folder holding ``mask.pt``)."""
    out = []
    for spec in specs:
        label, eq, rest = spec.partition("=")
        if eq and label and "/" not in label and not Path(spec).exists():
            out.append((label, _mask_file(Path(rest))))
        else:
            out.append((None, _mask_file(Path(spec))))
    return out


def load_masks(specs: Sequence[str]) -> tuple[dict[str, PackedMask], dict[str, str]]:
    """Read masks named on the command line; returns label → mask and label → file."""
    parsed = parse_mask_args(specs)
    derived = derive_labels([p for _, p in parsed])
    labels = [lab if lab is not None else d for (lab, _), d in zip(parsed, derived)]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ValueError(f"the label {dupes[0]!r} names more than one mask; give each a distinct LABEL=path")
    masks, sources = {}, {}
    for lab, (_, path) in zip(labels, parsed):
        masks[lab] = PackedMask.load(path)
        sources[lab] = str(path)
    return masks, sources


def main(argv: Optional[Sequence[str]] = None, prog: str = "lightning-vl overlap") -> int:
    """``overlap MASK MASK [...]``: 0 when the reports are written, 2 when a mask is missing,
    unreadable or not comparable with the others."""
    ap = argparse.ArgumentParser(
        prog=prog, description="Overlap of the kept weights of lottery-ticket masks (IoU, overlap coefficient, "
        "Hamming distance; overall, per layer type and per layer; beside their chance levels).",
        epilog="Masks are LABEL=path (a mask.pt or a round/branch folder) or plain paths, labelled from their run "
               "folders. Writes pairwise.csv, per_type.csv, per_layer.csv, overlap.md and overlap_<metric>.png.")
    ap.add_argument("masks", nargs="+", metavar="MASK", help="LABEL=path/to/mask.pt, or a path")
    ap.add_argument("--out", default="reports/overlap", help="output folder (default reports/overlap)")
    ap.add_argument("--metric", action="append", choices=METRICS,
                    help="heat map(s) to draw (repeatable; default iou)")
    args = ap.parse_args(argv)
    if len(args.masks) < 2:
        ap.error("give at least two masks")
    try:
        masks, sources = load_masks(args.masks)
        analysis = OverlapAnalysis.compute(masks, sources)
    except (OSError, ValueError, TypeError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    paths = analysis.write(args.out, metrics=args.metric or ["iou"])
    iou = analysis.matrix("iou")
    lo, hi = analysis.chance_range("iou")
    print(f"IoU of kept weights (chance {lo:.3f}" + (f"–{hi:.3f}" if hi - lo >= 5e-4 else "") + "):")
    width = max(len(lab) for lab in analysis.labels)
    for i, lab in enumerate(analysis.labels):
        print(f"  {lab:<{width}}  " + "  ".join(_fmt(v) for v in iou[i]))
    print(f"written to {args.out}: " + ", ".join(Path(p).name for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
