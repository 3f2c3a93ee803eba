"""Pre-training the demo's θ0: the study prunes *pre-trained* UNITER, so the demo's tiny UNITER is
pre-trained too, on the demo world's captioned scenes (``data_modules.demo.pretraining``).

Objectives, each row of a batch doing one of the first two:
* masked language modelling (UNITER's MLM) of attribute words, conditioned on the image: binds
  words to regions, which is what RefCOCO+ and retrieval fine-tuning build on;
* image-text matching (UNITER's ITM) on the pooled [CLS], half of the negatives one attribute off;
  saved as ``itm_output`` so retrieval's rank head starts from it, as in UNITER;
* two [CLS] summaries on every row, the bag of words of the text and which attribute values and
  how many objects the image has. Without them a small model's pooled output collapses onto the
  matching decision and task heads on top of it cannot even learn their label priors (measured).

A few minutes on a laptop CPU; the schedule is UNITER's (AdamW, linear warm-up and decay, clip 2.0).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from data_modules.batching import collate_rows
from data_modules.demo.pretraining import PretrainingCorpus, change_one_attribute, dense_caption
from data_modules.tokenization import encode_uniter

from .module import warmup_linear
from .uniter import UniterConfig, UniterModel

IGNORE = -100


class PretrainingBatches(IterableDataset):
    """``steps`` batches, seeded: the first half of each batch are MLM rows (true captions,
    attribute words masked with probability ``mask_prob``, at least one per row), the second half
    ITM rows (half of them mismatched)."""

    def __init__(self, corpus: PretrainingCorpus, tokenizer, vocab_size: int, batch_size: int, steps: int,
                 seed: int, mask_prob: float = 0.3, max_txt_len: int = 60):
        if batch_size < 2 or steps < 0:
            raise ValueError(f"need batch_size >= 2 and steps >= 0, got {batch_size} and {steps}")
        self.corpus, self.tokenizer, self.vocab_size = corpus, tokenizer, vocab_size
        self.batch_size, self.steps, self.seed = batch_size, steps, seed
        self.mask_prob, self.max_txt_len = mask_prob, max_txt_len
        words = [v for _, v in corpus.attribute_names]
        ids = tokenizer.convert_tokens_to_ids(words)
        unknown = [w for w, i in zip(words, ids) if i == tokenizer.unk_token_id]
        if unknown:
            raise ValueError(f"the demo tokenizer has no word piece for {unknown}; regenerate the demo world")
        self.attribute_ids = torch.zeros(vocab_size, dtype=torch.bool)
        self.attribute_ids[ids] = True
        self.special_ids = torch.zeros(vocab_size, dtype=torch.bool)
        self.special_ids[[tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]] = True
        self.mask_id = tokenizer.mask_token_id

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict]:
        rng = np.random.default_rng([self.seed, 17])
        for _ in range(self.steps):
            yield self.make_batch(rng)

    def make_batch(self, rng: np.random.Generator) -> dict:
        corpus, half = self.corpus, self.batch_size // 2
        rows, itm_labels, picked = [], [], []
        for j in range(self.batch_size):
            k = int(rng.integers(len(corpus)))
            objects = [corpus.scenes[k].objects[i] for i in rng.permutation(len(corpus.scenes[k].objects))]
            label = IGNORE
            if j >= half:
                label = 1
                if rng.random() < 0.5:
                    label = 0
                    if rng.random() < 0.5:
                        objects = change_one_attribute(objects, rng, corpus.world)
                    else:
                        other = corpus.scenes[(k + 1 + int(rng.integers(len(corpus) - 1))) % len(corpus)].objects
                        objects = [other[i] for i in rng.permutation(len(other))]
            ids = encode_uniter(self.tokenizer, dense_caption(objects), self.max_txt_len)
            feat, pos = corpus.features[k]
            rows.append({"input_ids": torch.tensor(ids, dtype=torch.long), "img_feat": feat, "img_pos_feat": pos})
            itm_labels.append(label)
            picked.append(k)
        batch = collate_rows(rows)
        ids = batch["input_ids"]
        # MLM on the first half: attribute words, each with mask_prob, at least one per row
        u = torch.from_numpy(rng.random(ids.shape)).float()
        candidate = self.attribute_ids[ids]
        candidate[half:] = False
        first = torch.where(candidate, u, torch.full_like(u, 2.0)).argmin(dim=1, keepdim=True)
        masked = candidate & ((u < self.mask_prob) | (torch.arange(ids.shape[1]) == first))
        bow = torch.zeros(len(ids), self.vocab_size)
        bow.scatter_(1, ids, 1.0)
        bow[:, self.special_ids] = 0.0
        batch.update({
            "input_ids": torch.where(masked, torch.full_like(ids, self.mask_id), ids),
            "mlm_labels": torch.where(masked, ids, torch.full_like(ids, IGNORE)),
            "itm_labels": torch.tensor(itm_labels, dtype=torch.long),
            "bow": bow,
            "presence": corpus.presence[picked],
            "counts": corpus.counts[picked],
        })
        return batch


class DemoPretraining(pl.LightningModule):
    """The UNITER core with the pre-training heads; ``uniter_state_dict`` is what fine-tuning loads."""

    def __init__(self, config: UniterConfig, num_attributes: int, max_count: int, lr: float = 1e-3,
                 warmup_steps: int = 100, weight_decay: float = 0.01, bow_weight: float = 2.0):
        super().__init__()
        self.uniter = UniterModel(config)
        h, v = config.hidden_size, config.vocab_size
        self.mlm_head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=config.layer_norm_eps), nn.Linear(h, v))
        self.itm_output = nn.Linear(h, 2)
        self.bow_head = nn.Linear(h, v)
        self.summary_head = nn.Linear(h, num_attributes + max_count + 1)
        self.num_attributes, self.lr, self.warmup_steps = num_attributes, lr, warmup_steps
        self.weight_decay, self.bow_weight = weight_decay, bow_weight

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, accuracies = self.losses(batch)
        self.log_dict({**accuracies, **{f"{k}_loss": v for k, v in losses.items()}}, prog_bar=True, on_step=True)
        return sum(losses.values())

    def losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each objective's loss, and the MLM / ITM accuracies of the batch."""
        seq = self.uniter(batch["input_ids"], batch["position_ids"], batch["img_feat"], batch["img_pos_feat"],
                          batch["attn_masks"], batch["gather_index"])
        pooled = self.uniter.pooler(seq)
        labels = batch["mlm_labels"]
        masked = labels != IGNORE
        mlm_logits = self.mlm_head(seq[:, : labels.shape[1]][masked])
        losses = {
            "mlm": F.cross_entropy(mlm_logits, labels[masked]),
            "itm": F.cross_entropy(self.itm_output(pooled), batch["itm_labels"], ignore_index=IGNORE),
            "bow": self.bow_weight * F.binary_cross_entropy_with_logits(self.bow_head(pooled), batch["bow"]),
        }
        summary = self.summary_head(pooled)
        losses["image"] = (F.binary_cross_entropy_with_logits(summary[:, : self.num_attributes], batch["presence"])
                           + F.cross_entropy(summary[:, self.num_attributes:], batch["counts"]))
        itm = batch["itm_labels"] != IGNORE
        accuracies = {
            "mlm_acc": (mlm_logits.argmax(-1) == labels[masked]).float().mean(),
            "itm_acc": (self.itm_output(pooled[itm]).argmax(-1) == batch["itm_labels"][itm]).float().mean(),
        }
        return losses, accuracies

    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if not any(s in n for s in ("bias", "LayerNorm", "layer_norm"))]
        no_decay = [p for n, p in self.named_parameters() if any(s in n for s in ("bias", "LayerNorm", "layer_norm"))]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=(0.9, 0.98), eps=1e-6)
        total = int(self.trainer.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_linear(s + 1, self.warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def uniter_state_dict(self) -> dict[str, torch.Tensor]:
        """UNITER's released layout: ``uniter.*`` plus the ITM head (``itm_output.*``)."""
        state = {f"uniter.{k}": v.detach().clone() for k, v in self.uniter.state_dict().items()}
        state.update({f"itm_output.{k}": v.detach().clone() for k, v in self.itm_output.state_dict().items()})
        return state


def pretrain(model: DemoPretraining, batches: PretrainingBatches, progress: bool = True) -> dict[str, float]:
    """Run the pre-training; returns the last logged values (losses, accuracies)."""
    trainer = pl.Trainer(max_steps=batches.steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, gradient_clip_val=2.0,
                         enable_progress_bar=progress, log_every_n_steps=max(1, min(50, batches.steps)))
    trainer.fit(model, DataLoader(batches, batch_size=None))
    return {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
