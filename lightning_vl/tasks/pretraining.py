"""UNITER's pre-training as a task: its heads, losses and validation metrics (ChenRocks/UNITER
``model/pretrain.py``).

The ``pretrain`` task (``lightning_vl.tasks.specs``) trains the UNITER core with one objective per batch,
drawn per optimizer step by the data module's mix ratios (``data_modules.pretrain``):

===========  =============================================  ===========================================
objective    head (UNITER's keys, under ``head.``)           loss
===========  =============================================  ===========================================
``mlm``      ``cls.predictions``: Linear–GELU–LN, decoder    cross-entropy at the masked word-pieces
             tied to the word embeddings, own bias
``mrfr``     ``feat_regress``: Linear–GELU–LN, then the      MSE to the masked regions' features
             transpose of ``img_linear.weight`` (tied) + bias
``mrc``      ``region_classifier``: Linear–GELU–LN–Linear    cross-entropy to the soft label's arg-max
``mrckl``    the same head                                   KL(soft label ‖ prediction), mean
``itm``      ``itm_output``: Linear(H→2) on the pooled        cross-entropy + 0.1 · WRA (optimal transport)
             [CLS]
===========  =============================================  ===========================================

A backbone without region features (ViLT reads pixels: ``HeadSizes.img_dim`` 0) gets no
``feat_regress`` and, its data having no soft labels, no ``region_classifier``: it pre-trains with
MLM and ITM (ViLT's own objectives, without its word-patch alignment), e.g.
``configs/demo/pretrain-vilt.yaml``; WRA needs region features and is skipped on pixel batches.

Two optional [CLS] objectives of the demo (head variant ``uniter+summaries``): ``bow`` — the
caption's bag of words — and ``summary`` — which region classes the image holds and how many
objects. Without them a small model's pooled output collapsed onto the matching decision and task
heads on top of it could not even learn their label priors (measured on the demo); UNITER's own
recipe does not have them, so real-data configs leave them out.

Keys are UNITER's, so a released ``uniter-base.pt`` (230 tensors) loads with its pre-training
heads, and ``VLModule.released_state_dict`` writes the same layout back (tied tensors twice, as
UNITER's files hold them); the retrieval head starts from the ITM head as with released files.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection

from lightning_vl.model.backbone import Backbone, BackboneOutput, HeadSizes

from .optimal_transport import ot_loss

OBJECTIVES = ("mlm", "mrfr", "mrc", "mrckl", "itm", "bow", "summary")
IGNORE = -1  # txt_labels at unmasked positions (UNITER's convention)
MAX_COUNT = 8  # the summary objective's count classes: 0..MAX_COUNT objects


def _transform(hidden: int, eps: float) -> nn.Sequential:
    """Linear–GELU–LayerNorm (keys ``.0`` and ``.2``), the trunk of UNITER's region heads."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps))


class PredictionTransform(nn.Module):
    """BERT's MLM transform: ``dense`` → GELU → ``LayerNorm``."""

    def __init__(self, config: HeadSizes):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class LanguagePredictions(nn.Module):
    """``cls.predictions``: transform, then the decoder (weight tied to the word embeddings, no
    bias of its own) plus a separate ``bias``."""

    def __init__(self, config: HeadSizes):
        super().__init__()
        self.transform = PredictionTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x)) + self.bias


class MaskedLanguageHead(nn.Module):
    """``cls`` (BERT's ``BertOnlyMLMHead``)."""

    def __init__(self, config: HeadSizes):
        super().__init__()
        self.predictions = LanguagePredictions(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class RegionFeatureRegression(nn.Module):
    """``feat_regress``: ``net`` then ``F.linear(·, weight.T, bias)``; ``weight`` is the image
    embedding's ``img_linear.weight`` (H, D), tied."""

    def __init__(self, config: HeadSizes):
        super().__init__()
        self.net = _transform(config.hidden_size, config.layer_norm_eps)
        self.weight = nn.Parameter(torch.zeros(config.hidden_size, config.img_dim))
        self.bias = nn.Parameter(torch.zeros(config.img_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.net(x), self.weight.t(), self.bias)


class RegionClassification(nn.Module):
    """``region_classifier``: Linear–GELU–LN–Linear(H→C) (keys ``net.0``, ``net.2``, ``net.3``)."""

    def __init__(self, config: HeadSizes, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(*_transform(config.hidden_size, config.layer_norm_eps),
                                 nn.Linear(config.hidden_size, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PretrainingHeads(nn.Module):
    """All pre-training heads; ``forward`` runs the one the batch's ``objective`` names.

    Args:
        num_labels: region classes of the store's soft labels (UNITER: 1,601); None = no region
            classifier (then ``mrc``/``mrckl``/``summary`` are unavailable).
        summaries: add the demo's [CLS] objectives (``bow``, ``summary``).
        ot_weight: weight of the WRA term in the ITM loss (UNITER: 0.1; 0 = none).
        summary_targets: ``summary`` predicts the region classes present (``classes``) or the
            word-pieces of their names (``words``, over the vocabulary), as the data module's option.
        tie_word_embeddings: the MLM decoder is the word-embedding matrix (UNITER, BERT). The
            demo unties it: with Adam at the demo's lr 1e-3, the tied rows of words MLM never
            predicts grow every step (the matrix's norm 3.7 → 21 in 1,000 steps) until the word
            embeddings drown the position embeddings, and the pre-trained core fine-tuned worse
            on RefCOCO+ (0.27 vs 0.75 from the same batches, measured).
    """

    uses_pooler = True
    uses_sequence = True  # MLM, MRFR, MRC and WRA read the sequence

    def __init__(self, config: HeadSizes, num_labels: Optional[int] = None, summaries: bool = False,
                 ot_weight: float = 0.1, tie_word_embeddings: bool = True, summary_targets: str = "classes"):
        super().__init__()
        h = config.hidden_size
        self.cls = MaskedLanguageHead(config)
        # no region features (a pixel backbone, ViLT: img_dim 0): no MRFR head, as no region classifier
        # without soft labels
        self.feat_regress = RegionFeatureRegression(config) if config.img_dim else None
        self.region_classifier = RegionClassification(config, num_labels) if num_labels else None
        self.itm_output = nn.Linear(h, 2)
        self.ot_weight = ot_weight
        self.tie_word_embeddings = tie_word_embeddings
        self.summaries = summaries
        if summaries:
            self.bow_output = nn.Linear(h, config.vocab_size)
            if summary_targets not in ("classes", "words"):
                raise ValueError(f"summary_targets {summary_targets!r}: expected 'classes' or 'words'")
            width = config.vocab_size if summary_targets == "words" else (num_labels or 0)
            self.summary_output = nn.Linear(h, width + MAX_COUNT + 1)
        self.num_labels = num_labels or 0
        self._region_mask: tuple[nn.Parameter, ...] = ()

    def tie_to(self, core: Backbone) -> None:
        """Share the MLM decoder with the word embeddings (unless ``tie_word_embeddings`` is off)
        and MRFR's weight with the backbone's region projection (UNITER: ``img_linear``), when it
        has one (``Backbone.pretraining_ties``)."""
        ties = core.pretraining_ties()
        if self.tie_word_embeddings:
            self.cls.predictions.decoder.weight = core.word_embeddings.weight
        if "img_projection" in ties and self.feat_regress is not None:
            self.feat_regress.weight = ties["img_projection"]
        if "region_mask" in ties:
            self._region_mask = (ties["region_mask"],)  # not a submodule's: the core is the task module's

    def forward(self, output: BackboneOutput, batch: dict) -> dict:
        sequence_output, pooled_output = output.sequence, output.pooled
        if batch["objective"] == "joint":  # mix: row — one forward pass, each objective on its rows
            parts = {}
            for name, part in batch["parts"].items():
                rows = part["rows"]
                sub = {**part, "objective": name, "img_feat": batch.get("img_feat")}
                parts[name] = self.objective_outputs(sequence_output[rows], pooled_output[rows], sub)
            return {"objective": "joint", "parts": parts, "unused": self._touch(pooled_output)}
        out = self.objective_outputs(sequence_output, pooled_output, batch)
        out["unused"] = self._touch(pooled_output)
        return out

    def objective_outputs(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor, batch: dict) -> dict:
        """The outputs (logits, targets) of the one objective ``batch`` is a batch of."""
        objective = batch["objective"]
        out: dict = {"objective": objective}
        if objective == "mlm":
            labels = batch["txt_labels"]
            masked = labels != IGNORE
            out["logits"] = self.cls(sequence_output[:, : labels.size(1)][masked])
            out["targets"] = labels[masked]
        elif objective == "mrfr":
            if self.feat_regress is None:
                raise ValueError("objective 'mrfr' regresses region features: this backbone reads none (img_dim 0, "
                                 "a pixel model such as ViLT); pre-train it with mlm and itm")
            out["logits"] = self.feat_regress(sequence_output[batch["img_mask_tgt"]])
            out["targets"] = batch["feat_targets"]
        elif objective in ("mrc", "mrckl"):
            if self.region_classifier is None:
                raise ValueError(f"objective {objective!r} needs region soft labels: the store has none "
                                 "(model.labels / the data's region classes are empty)")
            out["logits"] = self.region_classifier(sequence_output[batch["img_mask_tgt"]])
            out["targets"] = batch["label_targets"]
        elif objective == "itm":
            out["logits"] = self.itm_output(pooled_output)
            out["targets"], out["ot_weight"] = batch["targets"], self.ot_weight
            if self.ot_weight and batch.get("img_feat") is not None:
                out["ot_loss"], out["ot_pos"], out["ot_neg"] = ot_loss(sequence_output, batch, batch["targets"])
        elif objective in ("bow", "summary") and self.summaries:
            if objective == "bow":
                out["logits"], out["targets"] = self.bow_output(pooled_output), batch["bow_targets"]
            else:
                out["logits"] = self.summary_output(pooled_output)
                out["presence"], out["counts"] = batch["presence"], batch["counts"].clamp(max=MAX_COUNT)
                if "presence_mask" in batch:
                    out["presence_mask"] = batch["presence_mask"]
        else:
            raise ValueError(f"unknown pre-training objective {objective!r}; this head has "
                             f"{[o for o in OBJECTIVES if o not in ('bow', 'summary') or self.summaries]}")
        return out

    def _touch(self, pooled_output: torch.Tensor) -> torch.Tensor:
        """0 × every head parameter, the pooled output and the MRM mask embedding: each step uses
        one objective, so without this DDP would find parameters without gradients (and fail)."""
        params = list(self.parameters()) + list(self._region_mask)
        touched = sum(p.reshape(-1)[0] for p in params if p.requires_grad)
        return 0.0 * (touched + pooled_output.reshape(-1)[0])


# ---- losses -------------------------------------------------------------------------------------
def objective_loss(out: dict) -> torch.Tensor:
    """UNITER's loss of one objective's outputs (every term a plain mean, as ``pretrain.py``)."""
    if out["objective"] == "joint":  # mix: row — the sum of the parts' losses, each a mean over its rows
        return sum(objective_loss(part) for part in out["parts"].values())
    objective, logits = out["objective"], out["logits"]
    if objective in ("mlm", "mrfr", "mrc", "mrckl") and out["targets"].numel() == 0:
        return logits.sum() * 0.0  # nothing selected in this batch (e.g. mlm_words absent from every row)
    if objective == "mlm":
        return F.cross_entropy(logits, out["targets"])
    if objective == "mrfr":
        return F.mse_loss(logits, out["targets"].to(logits.dtype))
    if objective == "mrc":
        return F.cross_entropy(logits, hard_region_labels(out["targets"]), ignore_index=0)
    if objective == "mrckl":
        return mrc_kl(logits, out["targets"])
    if objective == "itm":
        loss = F.cross_entropy(logits, out["targets"])
        return loss + out["ot_weight"] * out["ot_loss"] if "ot_loss" in out else loss
    if objective == "bow":
        return F.binary_cross_entropy_with_logits(logits, out["targets"].to(logits.dtype))
    width = out["presence"].size(1)
    if logits.size(1) != width + MAX_COUNT + 1:
        raise ValueError(f"summary: the head predicts {logits.size(1)} values, expected {width} presence targets + "
                         f"{MAX_COUNT + 1} counts; the head's and the data's summary_targets must match")
    presence, counts = logits[:, :width], logits[:, width:]
    bce = F.binary_cross_entropy_with_logits(presence, out["presence"].to(logits.dtype), reduction="none")
    if "presence_mask" in out:  # words: only the word-pieces class names have
        mask = out["presence_mask"].to(bce.dtype)
        bce = (bce * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        bce = bce.mean()
    return bce + F.cross_entropy(counts, out["counts"])


def pretraining_loss(out: dict, batch: dict) -> torch.Tensor:
    return objective_loss(out) + out["unused"]


def hard_region_labels(soft: torch.Tensor) -> torch.Tensor:
    """UNITER's MRC target: the arg-max over the object classes 1.. (background 0 excluded)."""
    return soft[:, 1:].argmax(dim=-1) + 1


def mrc_kl(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """MRC-kl: ``kl_div(log_softmax(logits), soft)`` element-wise, then the global mean (i.e.
    KL(soft ‖ p) summed over classes, divided by classes × masked regions, as UNITER)."""
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), soft.float(), reduction="none").mean()


# ---- metrics ------------------------------------------------------------------------------------
class PretrainingMetrics(Metric):
    """Validation metrics of every objective the split has, synced across ranks: ``mlm_acc``
    (masked word-pieces), ``mrfr_loss``, ``mrc_acc`` (arg-max vs the soft label's, MRC and MRC-kl
    batches), ``mrckl_loss``, ``itm_acc``, ``ot_pos``/``ot_neg`` (mean WRA distances), and ``score``:
    the mean of the accuracies present (MLM, ITM, MRC) — the one number pre-training IMP is
    scored by, because each is in [0, 1] and pruning that hurts any objective lowers it."""

    full_state_update = False
    ACCURACIES = ("mlm", "itm", "mrc")
    MEANS = ("mrfr_loss", "mrckl_loss", "ot_pos", "ot_neg")

    def __init__(self):
        super().__init__()
        for name in self.ACCURACIES:
            self.add_state(f"{name}_correct", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in self.MEANS:
            self.add_state(f"{name}_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, name: str, correct, total) -> None:
        setattr(self, f"{name}_correct", getattr(self, f"{name}_correct") + float(correct))
        setattr(self, f"{name}_total", getattr(self, f"{name}_total") + float(total))

    def _mean(self, name: str, value, count) -> None:
        if torch.isfinite(torch.as_tensor(value)):
            setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + float(value) * count)
            setattr(self, f"{name}_count", getattr(self, f"{name}_count") + count)

    def update(self, out: dict, batch: dict) -> None:
        if out["objective"] == "joint":
            for part in out["parts"].values():
                self.update(part, batch)
            return
        objective, logits = out["objective"], out["logits"]
        if objective in ("mlm", "itm"):
            self._add(objective, (logits.argmax(-1) == out["targets"]).sum(), out["targets"].numel())
        elif objective in ("mrc", "mrckl"):
            soft = out["targets"]
            self._add("mrc", (logits.argmax(-1) == soft.argmax(-1)).sum(), len(soft))
            if objective == "mrckl":
                self._mean("mrckl_loss", mrc_kl(logits, soft), len(soft))
        elif objective == "mrfr":
            self._mean("mrfr_loss", F.mse_loss(logits, out["targets"].to(logits.dtype)), len(logits))
        if objective == "itm" and "ot_pos" in out:
            targets = out["targets"]
            self._mean("ot_pos", out["ot_pos"], int((targets == 1).sum()))
            self._mean("ot_neg", out["ot_neg"], int((targets == 0).sum()))

    def compute(self) -> dict[str, torch.Tensor]:
        values = {}
        for name in self.ACCURACIES:
            total = getattr(self, f"{name}_total")
            if total > 0:
                values[f"{name}_acc"] = (getattr(self, f"{name}_correct") / total).float()
        for name in self.MEANS:
            count = getattr(self, f"{name}_count")
            if count > 0:
                values[name] = (getattr(self, f"{name}_sum") / count).float()
        accuracies = [values[f"{n}_acc"] for n in self.ACCURACIES if f"{n}_acc" in values]
        if accuracies:
            values["score"] = torch.stack(accuracies).mean()
        return values


def pretraining_metrics(num_labels: Optional[int]) -> MetricCollection:
    return MetricCollection({"pretrain": PretrainingMetrics()})


def outputs_and_batch(out: dict, batch: dict) -> tuple:
    return out, batch


def summaries_head(config: HeadSizes, num_labels: Optional[int] = None, **options) -> PretrainingHeads:
    """The head variant ``uniter+summaries``: UNITER's heads plus the demo's [CLS] objectives."""
    return PretrainingHeads(config, num_labels, summaries=True, **options)
