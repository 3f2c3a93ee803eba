"""``make bench``: what masking costs per training step at base size on this machine, for each
backbone (UNITER-base with NLVR2's paired-attn head, LXMERT-base and ViLT-B/32 with the paired-mlp
head; ViLT on 384×576 pixel images, 12×18 patches).

Three variants train the same NLVR2 model on the same synthetic batch:
``dense`` (no mask), ``masked`` (our way, as ``MaskedTraining`` does it: bool masks, the pruned
gradients zeroed before clipping and the optimizer step; the pruned weights, zeroed once, stay zero
through AdamW by themselves, which the bench checks at the end) and ``torch-prune``
(``torch.nn.utils.prune.custom_from_mask``: a forward pre-hook multiplying every pruned weight by
a float mask, so pruned entries get zero gradient by the chain rule). Both masked variants clip
the gradient norm of the same sub-network, so the comparison is like for like. Every variant steps
with the AdamW that training uses (``--adamw-impl``, default ``auto``: fused at full precision;
``torch`` for torch's default, whose ``sqrt`` of the pruned weights' zero moments is slow on AVX2
CPUs). Steps are interleaved so drift of the machine hits all three alike; the median step time of each is reported, with the ratios to dense, as a table and as
``bench/results.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.utils.prune as tprune

from lightning_vl.model.uniter import UniterConfig
from lightning_vl.pruning import Mask, random_prune
from lightning_vl.training.adversarial import AdversarialConfig, adversarial_loss
from lightning_vl.training.module import ADAMW_IMPLS, VLModule, adamw_kernel


def synthetic_batch(pairs: int, txt_len: int, n_boxes: int, vocab_size: int, img_dim: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = 2 * pairs
    ltot = txt_len + n_boxes
    gather = torch.arange(ltot).repeat(rows, 1)
    return {
        "input_ids": torch.randint(1, vocab_size, (rows, txt_len), generator=g),
        "position_ids": torch.arange(txt_len)[None],
        "img_feat": torch.randn(rows, n_boxes, img_dim, generator=g),
        "img_pos_feat": torch.rand(rows, n_boxes, 7, generator=g),
        "img_type_ids": torch.tensor([1, 2]).repeat(pairs)[:, None].expand(rows, n_boxes).contiguous(),
        "attn_masks": torch.ones(rows, ltot, dtype=torch.long),
        "gather_index": gather,
        "targets": torch.randint(0, 2, (pairs,), generator=g),
    }


class Variant:
    def __init__(self, name: str, model: VLModule, mask: Mask | None, torch_prune: bool,
                 adversarial: AdversarialConfig | None = None, adamw_impl: str = "auto"):
        self.name, self.model, self.mask = name, model, mask
        self.adversarial = adversarial.resolved(model.spec.name) if adversarial is not None else None
        self.passes: list[int] = []
        self._calls = 0
        model.backbone.register_forward_hook(self._count)
        self.params = {n: model.get_parameter(n) for n in mask.keys()} if mask else {}
        if torch_prune:
            for n in mask.keys():
                module_name, attr = n.rsplit(".", 1)
                tprune.custom_from_mask(model.get_submodule(module_name), attr, mask[n])
            self.mask = None  # the hook does the masking
        elif mask is not None:
            mask.apply_(self.params)
        self.extra_bytes = self._extra_bytes(torch_prune)
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6,
                                     **adamw_kernel(adamw_impl, mixed_precision=False))
        self.times: list[float] = []
        self.mask_times: list[float] = []

    def _extra_bytes(self, torch_prune: bool) -> int:
        """Memory the masking adds beside the dense parameters."""
        if self.mask is not None:
            return sum(t.numel() * t.element_size() for _, t in self.mask.items())
        if not torch_prune:
            return 0
        extra = 0
        for module in self.model.modules():
            for name, buf in module.named_buffers(recurse=False):
                if name.endswith("_mask"):
                    extra += buf.numel() * buf.element_size()
                    # the hook keeps the masked weight as a plain attribute beside weight_orig
                    extra += getattr(module, name[: -len("_mask")]).numel() * buf.element_size()
        return extra

    def _count(self, *_) -> None:
        self._calls += 1

    def step(self, batch: dict) -> None:
        start = time.perf_counter()
        self._calls = 0
        if self.adversarial is not None:
            loss, _ = adversarial_loss(self.model, batch, self.adversarial)
        else:
            loss = self.model.spec.loss(self.model(batch), batch)
        loss.backward()
        self.passes.append(self._calls)
        masking = 0.0
        if self.mask is not None:  # what MaskedTraining.on_before_optimizer_step does
            t = time.perf_counter()
            self.mask.mask_grads_(self.params)
            masking += time.perf_counter() - t
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 2.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.mask is not None:
            self.mask_times.append(masking)
        self.times.append(time.perf_counter() - start)

    def check(self) -> None:
        """The pruned weights are still exactly zero (``MaskedTraining`` checks the same)."""
        if self.mask is not None:
            moved = self.mask.pruned_nonzero(self.params)
            if moved:
                raise RuntimeError(f"{self.name}: pruned weights moved in {moved[:3]}")


SIZES = {  # per backbone: the synthetic batch's shape (boxes: regions, or the image's pixels) and head
    "uniter": {"txt_len": 30, "boxes": 70, "head": "paired-attn"},
    "lxmert": {"txt_len": 20, "boxes": 36, "head": "paired-mlp"},  # LXMERT's 20 word-pieces, 36 regions
    "vilt": {"txt_len": 40, "pixels": (384, 576), "head": "paired-mlp"},  # ViLT's 40 tokens, a 384-px image
}


def pixel_batch(pairs: int, txt_len: int, size: tuple[int, int], vocab_size: int, seed: int = 0) -> dict:
    """An NLVR2 batch of pixel rows (a ViLT's): two images per statement, the right one of type 2."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * pairs
    return {
        "input_ids": torch.randint(1, vocab_size, (rows, txt_len), generator=g),
        "txt_lens": torch.full((rows,), txt_len),
        "pixel_values": torch.randn(rows, 3, *size, generator=g),
        "pixel_mask": torch.ones(rows, *size, dtype=torch.long),
        "img_type_ids": torch.tensor([1, 2]).repeat(pairs),
        "targets": torch.randint(0, 2, (pairs,), generator=g),
    }


def build(backbone: str, size: str) -> tuple[VLModule, int, int]:
    """The NLVR2 model of ``backbone`` at ``size``, its vocabulary and region-feature sizes."""
    head = SIZES[backbone]["head"]
    if backbone == "uniter":
        cfg = UniterConfig() if size == "base" else UniterConfig(
            vocab_size=512, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=512, img_dim=128)
        return VLModule(uniter=cfg, head=head), cfg.vocab_size, cfg.img_dim
    if backbone == "vilt":
        from lightning_vl.model.vilt import ViltBackbone, ViltBackboneConfig

        cfg = ViltBackboneConfig() if size == "base" else ViltBackboneConfig(
            vocab_size=512, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)
        return VLModule(backbone=ViltBackbone(cfg), head=head), cfg.vocab_size, 3
    from lightning_vl.model.lxmert import LxmertBackbone, LxmertBackboneConfig

    cfg = LxmertBackboneConfig() if size == "base" else LxmertBackboneConfig(
        vocab_size=512, hidden_size=128, num_attention_heads=4, intermediate_size=512, l_layers=3, x_layers=2,
        r_layers=2, visual_feat_dim=128)
    return VLModule(backbone=LxmertBackbone(cfg), head=head), cfg.vocab_size, cfg.visual_feat_dim


def bench_one(backbone: str, args) -> dict:
    """Time the variants of one backbone, interleaved; its table printed, its results returned."""
    torch.manual_seed(0)
    base, vocab, img_dim = build(backbone, args.size)
    base.train()
    txt_len = args.txt_len or SIZES[backbone]["txt_len"]
    pixels = SIZES[backbone].get("pixels")
    if pixels and args.size == "tiny":
        pixels = (pixels[0] // 3, pixels[1] // 3)  # 128×192: 4×6 patches of 32
    boxes = 0 if pixels else args.boxes or SIZES[backbone]["boxes"]
    names = base.prunable_parameter_names()
    dense_mask = Mask.ones_like({n: base.get_parameter(n).detach() for n in names})
    mask = random_prune(dense_mask, args.sparsity, torch.Generator().manual_seed(0))
    variants = [
        Variant("dense", copy.deepcopy(base), None, False, adamw_impl=args.adamw_impl),
        Variant("masked", copy.deepcopy(base), mask, False, adamw_impl=args.adamw_impl),
        Variant("torch-prune", copy.deepcopy(base), mask, True, adamw_impl=args.adamw_impl),
    ]
    if args.adversarial_steps:
        adv = AdversarialConfig(enabled=True, steps=args.adversarial_steps, modality=args.adversarial_modality)
        variants.append(Variant(f"masked+adv K={args.adversarial_steps}", copy.deepcopy(base), mask, False, adv,
                                adamw_impl=args.adamw_impl))
    del base
    if pixels:
        batch = pixel_batch(args.pairs, txt_len, pixels, vocab)
        patch = variants[0].model.backbone.config.patch_size
        tokens = txt_len + 1 + (pixels[0] // patch) * (pixels[1] // patch)  # text, the image [CLS], patches
    else:
        batch = synthetic_batch(args.pairs, txt_len, boxes, vocab, img_dim)
        tokens = txt_len + boxes
    label = {"uniter": "UNITER", "lxmert": "LXMERT", "vilt": "ViLT"}[backbone] + f"-{args.size}"
    print(f"{label}: {sum(p.numel() for p in variants[0].model.parameters()):,} params, "
          f"{mask.num_total:,} prunable in {len(names)} tensors at {args.sparsity:.0%} sparsity; batch "
          f"{2 * args.pairs} rows × {tokens} tokens; AdamW {args.adamw_impl}; {torch.get_num_threads()} threads",
          flush=True)
    interleaved, after = variants[:3], variants[3:]
    for group in (interleaved, after):
        for i in range(args.warmup + args.steps):
            order = group if i % 2 == 0 else group[::-1]
            for v in order:
                v.step(batch)
            print(f"  step {i + 1}/{args.warmup + args.steps}: "
                  + "  ".join(f"{v.name} {v.times[-1]:.3f}s" for v in group), flush=True)
    for v in variants:  # drop warm-up
        v.check()
        v.times = v.times[args.warmup:]
    dense = statistics.median(variants[0].times)
    result = {"tokens": tokens, "prunable_tensors": len(names), "variants": {}}
    print(f"\n{label:<20} {'median step':>12} {'ratio':>8} {'paired':>8} {'extra memory':>14} {'passes':>7}")
    for v in variants:
        med = statistics.median(v.times)
        # interleaved variants: the median of step-by-step ratios to the dense step beside them,
        # which cancels the machine's drift (a loaded 2-core VM's steps vary by ±15%)
        paired = (statistics.median(t / d for t, d in zip(v.times, variants[0].times))
                  if v in interleaved else None)
        entry = {"median_s": med, "ratio_to_dense": med / dense, "paired_ratio_to_dense": paired, "times_s": v.times,
                 "extra_memory_mb": v.extra_bytes / 2**20, "forward_passes_per_step": statistics.median(v.passes)}
        if v.mask_times:
            entry["mask_apply_median_s"] = statistics.median(v.mask_times)
        result["variants"][v.name] = entry
        print(f"{v.name:<20} {med:>11.3f}s {med / dense:>8.3f} {'' if paired is None else f'{paired:.3f}':>8} "
              f"{v.extra_bytes / 2**20:>11.0f} MB "
              f"{statistics.median(v.passes):>7.0f}")
    if variants[1].mask_times:
        apply = statistics.median(variants[1].mask_times)
        result["mask_apply_fraction_of_dense_step"] = apply / dense
        print(f"mask application alone (the gradients): {apply * 1e3:.1f} ms per step = {apply / dense:.1%} "
              "of a dense step (the step ratios above also carry this machine's step-to-step noise)\n", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", nargs="+", choices=list(SIZES), default=list(SIZES),
                    help="the backbones to time, one after the other (default: all three)")
    ap.add_argument("--size", choices=["base", "tiny"], default="base")
    ap.add_argument("--pairs", type=int, default=4, help="NLVR2 pairs per batch (2 rows each)")
    ap.add_argument("--txt-len", type=int, default=None, help="word-pieces per row (default: UNITER 30, LXMERT 20, "
                    "ViLT 40)")
    ap.add_argument("--boxes", type=int, default=None, help="regions per image (default: UNITER 70, LXMERT 36)")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--adamw-impl", choices=ADAMW_IMPLS, default="auto",
                    help="AdamW's implementation, as --model.adamw_impl (default auto: fused at full precision)")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default="bench/results.json")
    ap.add_argument("--adversarial-steps", type=int, default=3,
                    help="also time masked training with VILLA's adversarial steps K (0: skip)")
    ap.add_argument("--adversarial-modality", default="text", help="text, image, image+text or alter")
    args = ap.parse_args(argv)

    result = {"config": vars(args), "threads": torch.get_num_threads(), "backbones": {}}
    for backbone in args.backbone:
        result["backbones"][backbone] = bench_one(backbone, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("masked step / dense step (medians; paired): " + ", ".join(
        f"{b} {r['variants']['masked']['ratio_to_dense']:.3f}; {r['variants']['masked']['paired_ratio_to_dense']:.3f}"
        for b, r in result["backbones"].items()))
    print(f"written {out}")
    return result


if __name__ == "__main__":
    main()
