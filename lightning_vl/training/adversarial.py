"""Adversarial training of a task model, as VILLA fine-tunes UNITER (zhegan27/VILLA
``train_vqa_adv.py`` and its ``model/model.py``; Gan et al., NeurIPS 2020).

Perturbations live at the backbone's embedding seam (``Backbone.forward(batch, txt_delta=,
img_delta=)``, ``lightning_vl.model.backbone``), so every backbone gets adversarial training: ``δ_txt``
(R, L_text, H) is added to the word embeddings (UNITER: before the position/type sum and LayerNorm),
``δ_img`` (R, N, D) to the raw region features (UNITER: before ``img_linear``) — in general to the
backbone's image input ``batch[Backbone.image_input_key]`` (ViLT: the pixels, (R, 3, H, W)), zero
where ``Backbone.image_delta_mask`` is 0 (padded regions or pixels). Per training batch
(FreeLB-style):

1. a clean forward with gradient (train mode: dropout on);
2. K adversarial steps from δ = 0: a forward with δ, loss_k = task loss on the perturbed
   inputs + ``kl_weight`` · symmetric KL(clean ‖ adversarial) (softmax over the classes; neither
   side detached), divided by K; between steps δ moves by ``lr`` times its gradient normalised
   per example (L2: by the gradient's norm over the example's δ; L∞: by its largest entry), then
   is projected back to ``max_norm`` when that is > 0;
3. one optimizer step on the parameters' gradients of Σ_k loss_k, i.e. accumulated over all K
   steps as FreeLB does.

Here step 3 is Lightning's own backward of the returned loss, so gradient accumulation, clipping,
mixed precision and DDP work unchanged, and masks stay exact (``MaskedTraining`` zeroes the
pruned gradients before the optimizer step). The δ updates take ``torch.autograd.grad`` of one
step's loss with respect to δ only (the parameters' gradients are untouched; under mixed
precision the loss is scaled first and δ's gradient unscaled). Cost per batch: 1 + K forward and
backward passes (1 + 2K for ``alter``, whose text-only and image-only passes alternate).

Modalities: ``text``, ``image``, ``image+text`` (both perturbed jointly) and ``alter``. Each
task's defaults are its ``TaskInfo.adversarial`` (``lightning_vl.tasks.names``); VILLA's
(``config/train-*-adv.json``): VQA / SNLI-VE / NLVR2 text, lr 1e-3, KL 1.5; VCR image+text,
lr 1e-2, KL 1.5. Not in VILLA, and chosen there: GQA as VQA; RefCOCO+ and the retrieval tasks
text, 1e-3, KL 1.5. The pre-training task has none: adversarial training is not for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from lightning_vl.tasks.names import task_info

MODALITIES = ("text", "image", "image+text", "alter")
NORMS = ("l2", "linf")



@dataclass
class AdversarialConfig:
    """VILLA's fine-tuning-stage adversarial training (``--model.adversarial.*``).

    Args:
        enabled: train adversarially (off: plain training, bit for bit).
        modality: ``text``, ``image``, ``image+text`` or ``alter``; None = the task's default.
        steps: adversarial steps K per batch (VILLA: 3; 0 = plain training).
        lr: step size of δ (VILLA's ``adv_lr_txt``/``adv_lr_img``); None = the task's default.
        kl_weight: weight of the symmetric KL term; None = the task's default.
        norm: ``l2`` (VILLA's configs) or ``linf``.
        max_norm: project δ back to this per-example norm after each step; 0 = unbounded (VILLA).
    """

    enabled: bool = False
    modality: Optional[str] = None
    steps: int = 3
    lr: Optional[float] = None
    kl_weight: Optional[float] = None
    norm: str = "l2"
    max_norm: float = 0.0

    def resolved(self, task: str) -> "AdversarialConfig":
        """With the task's defaults (``TaskInfo.adversarial``) filled in, validated.

        Raises:
            UnknownTaskError: (a ``ValueError``) for a task that is no task.
            ValueError: for a setting out of range, or adversarial training enabled on a task that
                has no defaults (pre-training).
        """
        defaults = task_info(task).adversarial
        if defaults is None:  # pre-training: nothing to fill; refused below when enabled
            if self.enabled:
                raise ValueError(f"adversarial training is VILLA's fine-tuning stage: not for the {task} task")
            out = AdversarialConfig(**vars(self))
            if out.modality is not None and out.modality not in MODALITIES:
                raise ValueError(f"model.adversarial.modality must be one of {MODALITIES}, got {out.modality!r}")
            if out.norm not in NORMS:
                raise ValueError(f"model.adversarial.norm must be one of {NORMS}, got {out.norm!r}")
            return out
        out = AdversarialConfig(self.enabled, self.modality or defaults.modality, self.steps,
                                defaults.lr if self.lr is None else self.lr,
                                defaults.kl_weight if self.kl_weight is None else self.kl_weight,
                                self.norm, self.max_norm)
        if out.modality not in MODALITIES:
            raise ValueError(f"model.adversarial.modality must be one of {MODALITIES}, got {out.modality!r}")
        if out.norm not in NORMS:
            raise ValueError(f"model.adversarial.norm must be one of {NORMS}, got {out.norm!r}")
        if out.steps < 0 or out.lr < 0 or out.kl_weight < 0 or out.max_norm < 0:
            raise ValueError(f"model.adversarial: steps, lr, kl_weight and max_norm must be >= 0, got {out}")
        return out

    @property
    def active(self) -> bool:
        return self.enabled and self.steps > 0


# Lightning checkpoints carry the module's hyper-parameters: allow this class in weights_only loads
torch.serialization.add_safe_globals([AdversarialConfig])


# ---- the symmetric KL of each task's outputs -----------------------------------------------------
def symmetric_kl(clean: torch.Tensor, adv: torch.Tensor, task: str) -> torch.Tensor:
    """KL(p_c ‖ p_a) + KL(p_a ‖ p_c) with VILLA's per-task reductions (``kl_reduction`` of the
    task's ``TaskInfo.adversarial``): ``sum-mean`` sums over classes and averages over examples —
    VQA/GQA/SNLI-VE (VILLA: mean × num_labels), NLVR2 and RefCOCO+ (over regions), retrieval's
    single score per row as a two-class (σ, 1 − σ) distribution; ``mean`` averages every element
    (VCR: over (rows, 2)).

    Raises:
        UnknownTaskError: (a ``ValueError``) for a task that is no task.
        ValueError: for a task without adversarial defaults (pre-training).
    """
    defaults = task_info(task).adversarial
    if defaults is None:
        raise ValueError(f"task {task!r} has no adversarial defaults: adversarial training is not for it")
    if clean.dim() == 1:  # rank scores
        clean, adv = torch.stack([clean, torch.zeros_like(clean)], -1), torch.stack([adv, torch.zeros_like(adv)], -1)
    log_c, log_a = F.log_softmax(clean.float(), dim=-1), F.log_softmax(adv.float(), dim=-1)
    both = (log_c.exp() * (log_c - log_a)) + (log_a.exp() * (log_a - log_c))  # element-wise, symmetric
    if defaults.kl_reduction == "mean":
        return both.mean()
    return both.sum(-1).mean()


# ---- δ ------------------------------------------------------------------------------------------
def _per_example_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    flat = x.reshape(x.size(0), -1)
    value = flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)
    return value.clamp(min=1e-8).reshape(-1, *([1] * (x.dim() - 1)))


def ascend(delta: torch.Tensor, grad: torch.Tensor, cfg: AdversarialConfig, valid: torch.Tensor) -> torch.Tensor:
    """One step of δ up its normalised gradient, projected to ``max_norm``; zero at padding (the
    norm is taken over an example's real tokens or regions)."""
    grad = grad * valid
    step = cfg.lr * grad / _per_example_norm(grad, cfg.norm)
    delta = (delta + step) * valid
    if cfg.max_norm > 0:
        if cfg.norm == "l2":
            scale = (cfg.max_norm / _per_example_norm(delta, "l2")).clamp(max=1.0)
            delta = delta * scale
        else:
            delta = delta.clamp(-cfg.max_norm, cfg.max_norm)
    return delta.detach()


def adversarial_loss(module, batch: dict, cfg: AdversarialConfig,
                     scale: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                     unscale: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The loss whose parameter gradients are FreeLB's accumulated ones, and what it is made of.

    ``module``: a ``VLModule`` (any backbone); ``scale``/``unscale``: the mixed-precision loss scale (δ's gradient
    is taken of the scaled loss, then divided by the scale, as VILLA does with apex)."""
    task = module.spec.name
    clean = module(batch)
    ids = batch["input_ids"]
    hidden = module.backbone.hidden_size
    txt_valid = (ids != 0).unsqueeze(-1).to(torch.float32)
    image_key = module.backbone.image_input_key  # img_feat (regions) or pixel_values (ViLT)
    img = batch.get(image_key)
    img_valid = module.backbone.image_delta_mask(batch) if img is not None else None
    if cfg.modality in ("image", "image+text", "alter") and img is None:
        raise ValueError(f"adversarial modality {cfg.modality!r} needs image inputs (batch[{image_key!r}])")
    passes = [["text"], ["image"]] if cfg.modality == "alter" else [cfg.modality.split("+")]
    divisor = cfg.steps * len(passes)
    total = clean.new_zeros(()) if torch.is_tensor(clean) else torch.zeros(())
    parts = {"task": 0.0, "kl": 0.0}
    for sides in passes:
        deltas = {}
        if "text" in sides:
            deltas["txt_delta"] = torch.zeros(*ids.shape, hidden, device=ids.device, requires_grad=True)
        if "image" in sides:
            deltas["img_delta"] = torch.zeros_like(img, requires_grad=True)
        for k in range(cfg.steps):
            adv = module(batch, **deltas)
            task_loss = module.spec.loss(adv, batch)
            kl = symmetric_kl(clean, adv, task)
            loss = (task_loss + cfg.kl_weight * kl) / divisor
            total = total + loss
            parts["task"] += float(task_loss.detach()) / divisor
            parts["kl"] += float(kl.detach()) / divisor
            if k + 1 < cfg.steps:
                names = list(deltas)
                grads = torch.autograd.grad(scale(loss), [deltas[n] for n in names], retain_graph=True)
                for name, grad in zip(names, grads):
                    valid = txt_valid if name == "txt_delta" else img_valid
                    deltas[name] = ascend(deltas[name], grad / unscale, cfg, valid).requires_grad_()
    return total, parts
