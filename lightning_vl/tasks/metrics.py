"""Task metrics as torchmetrics ``Metric``s, so their states reduce correctly across DDP ranks.

Library metrics are used where they fit (``MulticlassAccuracy`` for NLVR2 / SNLI-VE); the rest
are the study's own definitions:

* ``SoftScore``: VQA accuracy of the arg-max answer = its soft target score (0, .3, .6, .9, 1);
  with one-hot targets (GQA) it is exact-match accuracy.
* ``VcrAccuracy``: Q→A, QA→R, or Q→AR (both right) from the 8 candidate rows per question.
* ``GroundingAccuracy``: the chosen region's box overlaps the referred box with IoU >= 0.5.
* ``RetrievalRecall``: R@1/5/10 in both directions from the full caption × image score matrix.
"""
from __future__ import annotations

import torch
from torchmetrics import Metric

from data_modules.boxes import box_iou  # noqa: F401  (re-exported: lightning_vl.tasks.metrics.box_iou)


class SoftScore(Metric):
    """Σ target[argmax logits] / N (UNITER's ``compute_score_with_logits``)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("score", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and soft targets {tuple(targets.shape)} differ")
        picked = targets.gather(1, logits.argmax(dim=1, keepdim=True))
        self.score = self.score + picked.sum().double()
        self.total = self.total + logits.size(0)

    def compute(self) -> torch.Tensor:
        return (self.score / self.total.clamp(min=1)).float()


class VcrAccuracy(Metric):
    """VCR accuracy from rows ``[4 × Q→A, 4 × QA→R]`` per question (class-1 logit = candidate score).

    ``part``: ``"qa"`` (Q→A), ``"qar"`` (QA→R given the right answer) or ``"both"`` (Q→AR: a
    question counts only when both choices are right — the study's VCR column)."""

    full_state_update = False
    higher_is_better = True
    PARTS = ("qa", "qar", "both")

    def __init__(self, part: str = "both", **kwargs):
        super().__init__(**kwargs)
        if part not in self.PARTS:
            raise ValueError(f"VcrAccuracy part must be one of {self.PARTS}, got {part!r}")
        self.part = part
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.size(0)
        if logits.shape != (8 * n, 2):
            raise ValueError(f"VCR expects 8 rows of 2 logits per question: got {tuple(logits.shape)} for {n} questions")
        right = logits[:, 1].reshape(n, 2, 4).argmax(dim=-1) == targets
        hit = {"qa": right[:, 0], "qar": right[:, 1], "both": right.all(dim=1)}[self.part]
        self.correct = self.correct + hit.sum()
        self.total = self.total + n

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class GroundingAccuracy(Metric):
    """Fraction of expressions whose highest-scoring region has IoU >= ``threshold`` with the
    referred box. Convention: continuous IoU and ``>=`` 0.5 (the common statement and MAttNet's);
    UNITER's evaluation uses inclusive-pixel IoU ("+1") and ``> 0.5`` — a difference only at the
    exact boundary."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, region_boxes: torch.Tensor, gt_boxes: torch.Tensor) -> None:
        if region_boxes.shape[:2] != scores.shape or gt_boxes.shape != (scores.size(0), 4):
            raise ValueError(f"scores {tuple(scores.shape)}, region_boxes {tuple(region_boxes.shape)} and gt_boxes "
                             f"{tuple(gt_boxes.shape)} do not describe the same (B, regions)")
        pick = scores.argmax(dim=1)
        chosen = region_boxes[torch.arange(len(pick), device=pick.device), pick]
        self.correct = self.correct + (box_iou(chosen.float(), gt_boxes.float()) >= self.threshold).sum()
        self.total = self.total + len(pick)

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class RetrievalRecall(Metric):
    """Image retrieval (query = caption, rank all images) and text retrieval (query = image, best
    rank among its captions) R@K from every (caption, image) pair's score, plus ``r_mean``.

    Ranks are pessimistic: a non-matching candidate scoring *equal to* the match ranks above it,
    so a model that gives every pair the same score gets chance-level recall, not 100%. Pairs seen
    twice (DDP padding) count once; a matrix with unscored pairs is an error, not a partial result.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: tuple[int, ...] = (1, 5, 10), **kwargs):
        super().__init__(**kwargs)
        self.ks = tuple(ks)
        for name in ("txt_index", "img_index", "scores", "matches"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("num_texts", torch.tensor(0, dtype=torch.long), dist_reduce_fx="max")
        self.add_state("num_images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="max")

    def update(self, scores: torch.Tensor, txt_index: torch.Tensor, img_index: torch.Tensor,
               matches: torch.Tensor, num_texts: int, num_images: int) -> None:
        self.txt_index.append(txt_index.long())
        self.img_index.append(img_index.long())
        self.scores.append(scores.float())
        self.matches.append(matches.bool())
        self.num_texts = torch.maximum(self.num_texts, torch.tensor(int(num_texts), device=self.num_texts.device))
        self.num_images = torch.maximum(self.num_images, torch.tensor(int(num_images), device=self.num_images.device))

    @staticmethod
    def _cat(x):
        return torch.cat(x) if isinstance(x, list) else x

    def compute(self) -> dict[str, torch.Tensor]:
        n_txt, n_img = int(self.num_texts), int(self.num_images)
        t, i = self._cat(self.txt_index), self._cat(self.img_index)
        device = t.device
        scores = torch.full((n_txt, n_img), float("nan"), device=device)
        match = torch.zeros((n_txt, n_img), dtype=torch.bool, device=device)
        scores[t, i] = self._cat(self.scores)
        match[t, i] = self._cat(self.matches)
        unscored = int(scores.isnan().sum())
        if unscored:
            raise ValueError(f"retrieval evaluation scored {n_txt * n_img - unscored} of {n_txt}×{n_img} caption-image "
                             "pairs; every pair must be scored (do not limit validation batches for retrieval)")
        if not bool(match.any(1).all()) or not bool(match.any(0).all()):
            raise ValueError("retrieval evaluation: some caption has no matching image or some image no caption")
        neg_inf = torch.tensor(float("-inf"), device=device)

        def best_rank(s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            """Per query row: how many non-matches score >= the best match."""
            best = torch.where(m, s, neg_inf).max(dim=1, keepdim=True).values
            return ((s >= best) & ~m).sum(dim=1)

        ranks = {"ir": best_rank(scores, match), "tr": best_rank(scores.t(), match.t())}
        out = {f"{d}_r{k}": (r < k).float().mean() for d, r in ranks.items() for k in self.ks}
        out["r_mean"] = torch.stack(list(out.values())).mean()
        return out
