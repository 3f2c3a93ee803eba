"""``VLModule``: a backbone (``lightning_vl.model.backbone``; UNITER by default) plus one task head,
trained with UNITER's fine-tuning recipe.

State-dict keys: ``<prefix>.*`` (the backbone's: ``uniter.*``, UNITER's released names) and ``head.*``
(UNITER's head names under ``head.``). The optimizer follows UNITER: AdamW with betas (0.9, 0.98), eps 1e-6, weight decay
0.01 except for parameters whose name contains ``bias``/``LayerNorm.weight``, an optional head
learning-rate multiplier, and linear warm-up then linear decay over the fit's optimizer steps.
Gradient clipping is the Trainer's ``gradient_clip_val``. AdamW runs as one fused kernel per
parameter group (``adamw_impl``, below) except under mixed precision.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Literal, Optional, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from pytorch_lightning.utilities import rank_zero_info

from lightning_vl.model.backbone import Backbone, PrunableGroup
from lightning_vl.model.checkpoints import load_into, map_head_keys
from lightning_vl.model.heads import init_head_weights
from lightning_vl.model.uniter import UniterConfig, UniterModel
from lightning_vl.tasks.names import DEFAULT_TASK
from lightning_vl.tasks.specs import get_task

from .adversarial import AdversarialConfig, adversarial_loss

NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")  # UNITER's substring filter
ADAMW_IMPLS = ("auto", "fused", "torch")
AdamWImpl = Literal["auto", "fused", "torch"]


def adamw_kernel(impl: str, mixed_precision: bool) -> dict:
    """``torch.optim.AdamW``'s implementation flags for ``--model.adamw_impl``.

    ``fused`` updates every tensor of a parameter group in one kernel (CPU and CUDA). On the CPU it
    is ~6× faster than torch's default for-loop and has no slow path for the exactly-zero gradients
    and moments of pruned weights (the default's ``sqrt`` of 0.0 is ~5× slower than of a normal
    float with AVX2; with ``MaskedTraining`` no longer re-zeroing weights, ``make bench``'s masked
    UNITER-base step went from 1.127× to 1.002× dense). Its results equal
    the default's to the last bit or two (it groups the arithmetic differently), so it counts in
    run identities. ``torch`` leaves the choice to torch (for-loop on the CPU, ``foreach`` on CUDA),
    as runs made before this option did. ``auto`` is ``fused`` except under mixed precision, where
    Lightning clips gradients before a scaler step that a fused optimizer would unscale itself.

    Example:
        >>> adamw_kernel("auto", mixed_precision=False)
        {'fused': True}
        >>> adamw_kernel("auto", mixed_precision=True)
        {}

    Raises:
        ValueError: an unknown implementation, or ``fused`` under mixed precision.
    """
    if impl not in ADAMW_IMPLS:
        raise ValueError(f"--model.adamw_impl {impl!r}: expected one of {', '.join(ADAMW_IMPLS)}")
    if impl == "fused" and mixed_precision:
        raise ValueError("--model.adamw_impl fused cannot run under mixed precision (Lightning clips the "
                         "gradients before the scaler's step, which a fused AdamW unscales itself): use "
                         "--model.adamw_impl auto (or torch), or --trainer.precision 32-true")
    if impl == "torch" or (impl == "auto" and mixed_precision):
        return {}
    return {"fused": True}


def _detached(outputs):
    """Model outputs for the metrics: float tensors without graph (dict outputs item by item)."""
    if isinstance(outputs, dict):
        return {k: _detached(v) for k, v in outputs.items()}
    if isinstance(outputs, torch.Tensor):
        return outputs.detach().float() if outputs.is_floating_point() else outputs.detach()
    return outputs


def warmup_linear(step: int, warmup: int, total: int) -> float:
    """UNITER's schedule as a multiplier; ``step`` counts optimizer updates from 1."""
    if step < warmup:
        return step / warmup
    if total <= warmup:
        return 1.0
    return max((total - step) / (total - warmup), 1e-8)


def build_backbone(spec: Union[Backbone, dict]) -> Backbone:
    """A backbone from ``--model.backbone`` (LightningCLI gives it built) or from the
    ``{"class_path", "init_args": {"config": {...}}}`` a checkpoint's hyper-parameters hold.

    Raises:
        ValueError: a class path that names no ``Backbone``.
    """
    if isinstance(spec, Backbone):
        return spec
    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise ValueError(f"model.backbone.class_path {spec['class_path']!r} is not a Backbone subclass")
    config = (spec.get("init_args") or {}).get("config") or {}
    return cls(config if isinstance(config, cls.config_class) else cls.config_class(**config))


class VLModule(pl.LightningModule):
    """A task model: a backbone and one task head.

    Args:
        task: a name from ``lightning_vl.tasks.names.TASK_NAMES``.
        uniter: UNITER's sizes (``configs/model/uniter-*.yaml``), the backbone when ``backbone`` is None.
        backbone: another backbone (``--model.backbone`` with a ``class_path``, e.g.
            ``lightning_vl.model.lxmert.LxmertBackbone`` or ``lightning_vl.model.vilt.ViltBackbone``, and
            ``init_args.config.*``); None = UNITER
            with ``uniter``'s sizes, so UNITER commands and run identities are as before.
        head: head variant of the task (NLVR2: ``paired-attn`` or ``paired``); None = the default.
        head_options: keyword arguments of the head (pre-training: ``ot_weight``, ``summaries``).
        labels: label strings in index order (VQA/GQA answers). The CLI copies them from the data
            module; they are saved with every checkpoint, so predictions can be decoded.
        init: weights to start from, as the backbone reads them (``Backbone.read_init``; UNITER: a
            released checkpoint, one of ours, a HuggingFace BERT directory, or ``shuffled:<any of
            these>``); None = random init.
        init_seed: seed of the permutation for ``shuffled:`` inits.
        mask: a mask file (a ticket) to fine-tune with; pruned weights are kept at zero.
        lr: peak learning rate. head_lr_mult: multiplier for the head's learning rate.
        warmup_steps: linear warm-up length in optimizer steps (then linear decay to the fit's end).
        adversarial: VILLA's adversarial training (``lightning_vl.training.adversarial``); off by default.
        adamw_impl: ``auto`` (fused AdamW except under mixed precision), ``fused`` or ``torch`` (torch's
            default, which runs made before this option used: pass it to resume one); see ``adamw_kernel``.
    """

    def __init__(
        self,
        task: str = DEFAULT_TASK,
        uniter: UniterConfig = UniterConfig(),
        backbone: Optional[Backbone] = None,
        head: Optional[str] = None,
        head_options: Optional[dict] = None,
        labels: Optional[list[str]] = None,
        init: Optional[str] = None,
        init_seed: int = 0,
        mask: Optional[str] = None,
        lr: float = 3e-5,
        head_lr_mult: float = 1.0,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_steps: int = 800,
        adversarial: AdversarialConfig = AdversarialConfig(),
        adamw_impl: AdamWImpl = "auto",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        adamw_kernel(adamw_impl, mixed_precision=False)  # an unknown name fails here, not at fit time
        if backbone is not None:  # kept as plain data, so checkpoints load with weights_only=True
            backbone = build_backbone(backbone)
            self.hparams["backbone"] = {"class_path": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
                                        "init_args": {"config": asdict(backbone.config)}}
        core = backbone if backbone is not None else UniterModel(uniter)
        self._prefix = core.prefix
        self._sizes_option = "model.uniter" if backbone is None else "model.backbone.init_args.config"
        self.spec = get_task(task)
        if isinstance(adversarial, dict):
            adversarial = AdversarialConfig(**adversarial)
        self.adversarial = adversarial.resolved(task)
        head = head or self.spec.default_head
        if head not in self.spec.heads:
            raise ValueError(f"task {task!r} has heads {sorted(self.spec.heads)}, not {head!r}")
        fixed = list(self.spec.labels) if self.spec.labels else None
        if labels is not None and fixed is not None and list(labels) != fixed:
            raise ValueError(f"task {task!r} has the labels {fixed} in this order, the data gave {list(labels)}")
        self.labels = list(labels) if labels is not None else fixed
        self.add_module(core.prefix, core)  # self.uniter: the names masks and released files use
        sizes = core.head_sizes()
        self.head = self.spec.heads[head](sizes, len(self.labels) if self.labels else None, **(head_options or {}))
        init_head_weights(self.head, sizes.initializer_range)
        # parameters fine-tuning never uses are frozen, so DDP needs no unused-parameter search
        core.freeze_unused(pooled=self.head.uses_pooler, region_masks=self.spec.trains_mask_embedding,
                           sequence=getattr(self.head, "uses_sequence", True))
        self._words = sizes.vocab_size  # the word rows before the task's extra rows
        if init:
            self.load_initial_weights(init)
        self._extend_tables()
        if hasattr(self.head, "tie_to"):  # pre-training heads share the word and image embeddings
            self.head.tie_to(self.backbone)
        core = {p.data_ptr() for p in self.backbone.parameters()}
        self._tied_head_keys = {f"head.{k}" for k, p in self.head.named_parameters(remove_duplicate=False)
                                if p.data_ptr() in core}
        num_labels = len(self.labels) if self.labels else None
        self.val_metrics = self.spec.metrics(num_labels).clone(prefix="val/")
        self.test_metrics = self.spec.metrics(num_labels).clone(prefix="test/")

    @property
    def backbone(self) -> Backbone:
        """The backbone, registered under its ``prefix`` (``self.uniter`` for UNITER)."""
        return getattr(self, self._prefix)

    def _extend_tables(self, state: Optional[dict] = None) -> None:
        self.backbone.grow_embeddings(self.spec.type_rows_from, self.spec.extra_word_rows, state)

    # the lottery runner's interface (lightning_vl.lottery.Prunable) ---------------------------
    @property
    def task_name(self) -> str:
        return self.spec.name

    @property
    def monitor(self) -> str:
        return self.spec.monitor

    def is_head_parameter(self, name: str) -> bool:
        """Task-specific weights (reset per ``head_reset``, never pruned); a head weight tied to
        the core (the MLM decoder, MRFR's regression) belongs to the core."""
        return name.startswith("head.") and name not in self._tied_head_keys

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in UNITER's released layout: ``uniter.*`` plus the head's UNITER names at the
        top level (``cls.*``, ``itm_output.*``, ``vqa_output.*``…; tied tensors appear twice)."""
        return {(k[len("head."):] if k.startswith("head.") else k): v.detach().cpu().clone()
                for k, v in self.state_dict(keep_vars=False).items()}

    def training_loss(self, batch: dict) -> torch.Tensor:
        return self.spec.loss(self(batch), batch)

    def prunable_groups(self, include: tuple[str, ...] = ("encoder",)) -> dict[str, PrunableGroup]:
        """The prunable set, parameter name → group (``Backbone.prunable_groups`` under the
        backbone's prefix; UNITER: ``encoder`` = the 6 Linear weights per layer, ``pooler`` and
        ``img_linear`` opt-in). Heads are never prunable."""
        return {f"{self._prefix}.{k}": g for k, g in self.backbone.prunable_groups(tuple(include)).items()}

    def prunable_parameter_names(self, include: tuple[str, ...] = ("encoder",)) -> list[str]:
        """The names of ``prunable_groups``, in its order."""
        return list(self.prunable_groups(include))

    def load_initial_weights(self, path: str) -> None:
        state = type(self.backbone).read_init(path, seed=self.hparams.init_seed)
        adapt = getattr(self.head, "adapt_init_state", None)
        if adapt is not None:  # e.g. the retrieval head starts from UNITER's ITM head
            state = adapt(state)
        state = map_head_keys(state, self)
        # already extended (our own checkpoints, UNITER's VCR 2nd stage): extend first, then load
        self._extend_tables(state)
        report = load_into(self, state, str(path))
        rank_zero_info(report.summary())
        self.init_report = report

    def setup(self, stage: str) -> None:
        """Refuse a tokenizer whose ids (plus the task's extra tokens) the word table cannot hold, or
        that the backbone cannot read (``Backbone.check_tokenizer``: LXMERT wants its whole uncased
        vocabulary, lower-cased), and region features of another size than the model's (for backbones
        that read region features: ``Backbone.image_input_key == "img_feat"``)."""
        from lightning_vl.pruning.distributed import destroy_at_exit

        destroy_at_exit()  # a gloo group alive at exit can abort the process
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        sizes = self._sizes_option
        rows = self.backbone.word_embeddings.num_embeddings
        if tokenizer is not None and len(tokenizer) + self.spec.extra_word_rows > rows:
            extra = f" plus {self.spec.extra_word_rows} task tokens" if self.spec.extra_word_rows else ""
            raise ValueError(
                f"tokenizer {getattr(datamodule, 'tokenizer_path', '')} has {len(tokenizer)} tokens{extra}, more "
                f"than the model's {rows} word embeddings ({sizes}.vocab_size)"
            )
        # region features only: a pixel backbone (ViLT, image_input_key "pixel_values") reads images, and
        # its forward refuses a batch without them
        data_dim = getattr(datamodule, "img_dim", None) if self.backbone.image_input_key == "img_feat" else None
        if data_dim is not None and data_dim != self.backbone.img_dim:
            raise ValueError(
                f"the data's region features are {data_dim}-d (data.init_args.img_dim) but the model's image "
                f"embedding takes {self.backbone.img_dim}-d features ({sizes}.img_dim); set both to the "
                f"store's feature size")
        extra = self.spec.extra_word_rows
        if tokenizer is not None and extra:
            words = self._words  # model.uniter.vocab_size, before the task's rows were appended
            if len(tokenizer) != words:
                raise ValueError(
                    f"task {self.spec.name!r} appends {extra} word rows after the model's {words} words "
                    f"({sizes}.vocab_size), but tokenizer {getattr(datamodule, 'tokenizer_path', '')} has "
                    f"{len(tokenizer)} tokens; expected exactly {words}, so that the task's tokens (ids from "
                    f"len(tokenizer) on) are the appended rows (an old demo world? `make demo` regenerates it "
                    "with its vocabulary padded to the model's vocab_size)")
            ids = getattr(datamodule, "object_token_ids", None)  # VCR: object_token_offset .. + num_object_tokens
            if ids is not None and (ids.start != words or len(ids) > extra):
                raise ValueError(
                    f"the data's object tokens have ids {ids.start}..{ids.stop - 1} but the model appends rows "
                    f"{words}..{words + extra - 1} for them; set data.init_args.object_token_offset: null "
                    f"(= len(tokenizer) = {words}) and num_object_tokens <= {extra}")
        if tokenizer is not None:  # what the backbone itself needs of it (LXMERT, ViLT: the whole uncased vocabulary)
            self.backbone.check_tokenizer(tokenizer, self._words,
                                          f"tokenizer {getattr(datamodule, 'tokenizer_path', '') or ''}".strip())

    def on_fit_start(self) -> None:
        """Record the label strings and the tokenizer (path, size, sha256, special ids) the run
        trains with, next to its logs: a checkpoint is only meaningful with the same ids."""
        # without a logger, Lightning's log_dir falls back to the working directory: write nothing
        log_dir = self.trainer.log_dir if self.trainer.logger is not None else None
        if not self.trainer.is_global_zero or not log_dir:
            return
        record: dict = {"task": self.spec.name, "labels": self.labels}
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        vocab = getattr(tokenizer, "uniter_vocab_path", None)
        if vocab:
            record["tokenizer"] = {
                "vocab": str(Path(vocab).resolve()), "size": len(tokenizer),
                "sha256": hashlib.sha256(Path(vocab).read_bytes()).hexdigest(),
                "special_ids": getattr(tokenizer, "uniter_special_ids", None),
                "extra_word_rows": self.spec.extra_word_rows,
            }
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        (Path(log_dir) / "data_ids.json").write_text(json.dumps(record, indent=1) + "\n")

    # ------------------------------------------------------------------------------------------
    def forward(self, batch: dict, txt_delta=None, img_delta=None) -> torch.Tensor:
        out = self.backbone(batch, txt_delta=txt_delta, img_delta=img_delta, pool=self.head.uses_pooler)
        return self.head(out, batch)

    @staticmethod
    def _batch_size(batch: dict) -> int:
        return len(batch["ids"]) if "ids" in batch else len(batch["targets"])

    def _eval_step(self, batch: dict, metrics, stage: str) -> None:
        if batch.get("unlabeled"):
            raise ValueError(f"the {stage} split has no labels (e.g. a VQA/GQA/VCR test file without answers), so "
                             f"it cannot be scored: use `lightning-vl predict` for it, or give a labelled {stage} file")
        logits = self(batch)
        loss = self.spec.loss(logits, batch)
        if loss is not None:
            self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=self._batch_size(batch))
        metrics.update(*self.spec.metric_inputs(_detached(logits), batch))

    def _log_metrics(self, metrics) -> None:
        """Compute (synced across ranks), log and reset: metrics like retrieval recall need the
        whole split, so they are logged once per evaluation rather than per batch."""
        values = metrics.compute()
        metrics.reset()
        self.log_dict({k: v.float() for k, v in values.items()}, prog_bar=True, sync_dist=False)

    def training_step(self, batch, batch_idx):
        if self.adversarial.active:
            loss, parts = adversarial_loss(self, batch, self.adversarial, *self._loss_scale())
            self.log_dict({"train/adv_task_loss": parts["task"], "train/adv_kl": parts["kl"]},
                          batch_size=self._batch_size(batch))
        else:
            loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=self._batch_size(batch))
        return loss

    def _loss_scale(self):
        """Mixed precision's loss scaling, for the adversarial δ gradients: (scale, 1 / scale)."""
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) if self._trainer else None
        if scaler is None or not scaler.is_enabled():
            return (lambda x: x), 1.0
        return scaler.scale, float(scaler.get_scale())

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def predict_step(self, batch, batch_idx):
        return {"ids": batch.get("ids"), "logits": self(batch)}

    # ------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            key = (name.startswith("head."), any(nd in name for nd in NO_DECAY))
            groups.setdefault(key, []).append(p)
        param_groups = [
            {
                "params": params,
                "lr": hp.lr * (hp.head_lr_mult if is_head else 1.0),
                "weight_decay": 0.0 if no_decay else hp.weight_decay,
            }
            for (is_head, no_decay), params in sorted(groups.items())
        ]
        mixed = isinstance(getattr(self._trainer, "precision_plugin", None), MixedPrecision)
        optimizer = torch.optim.AdamW(param_groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps,
                                      **adamw_kernel(hp.adamw_impl, mixed))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_linear(s + 1, hp.warmup_steps, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_callbacks(self):
        """Every fit stops at a non-finite loss (``TrainingHealth``); ``mask=...`` fine-tunes a
        ticket: the masked-training callback keeps it sparse."""
        from callbacks.health import TrainingHealth

        if not self.hparams.mask:
            return [TrainingHealth()]
        from callbacks import MaskedTraining
        from lightning_vl.pruning import Mask

        return [TrainingHealth(), MaskedTraining(Mask.load(self.hparams.mask))]
