"""Writing a trained model in a layout other code loads as a released checkpoint.

* ``checkpoint`` (``uniter`` is its old name): the model's released ``.pt`` — the backbone's own
  keys (``uniter.*``, ``lxmert.*``) plus the heads' UNITER names, e.g. ``cls.*``, ``feat_regress.*``,
  ``region_classifier.*``, ``itm_output.*`` — what ``model.init`` reads like ``uniter-base.pt``, so
  every task model starts from it (retrieval's rank head from its ITM head);
* ``bert``: a HuggingFace BERT folder (``config.json`` + ``model.safetensors`` with ``bert.*`` and
  ``cls.predictions.*``) of the core's text part — what a text-only model is (the study's θ'_0),
  read back through ``model.init: <folder>`` as BERT is. UNITER only (an LXMERT's language encoder
  is not a BERT: it has 9 of BERT's 12 layers and more besides).

``ExportWeights`` does it at the end of a fit (global rank 0), with a JSON record of the run's
final metrics beside it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_vl.io import atomic_torch_save, atomic_write, atomic_write_text, strict_json

LAYOUTS = ("checkpoint", "uniter", "bert")  # uniter: checkpoint's name from before other backbones


def uniter_state(module) -> dict[str, torch.Tensor]:
    return module.released_state_dict()


def bert_state(module) -> tuple[dict[str, torch.Tensor], dict]:
    """``bert.*`` (embeddings, encoder, pooler) and ``cls.predictions.*`` of a task module, and the
    matching HuggingFace ``config.json``."""
    if getattr(module, "uniter", None) is None:
        raise ValueError(f"the bert export layout writes a UNITER's text part; this model's backbone is "
                         f"{type(module.backbone).__name__}: use layout checkpoint")
    state = {}
    for k, v in module.released_state_dict().items():
        if k.startswith("uniter.") and not k.startswith("uniter.img_embeddings."):
            state["bert." + k[len("uniter."):]] = v
        elif k.startswith("cls.predictions."):
            state[k] = v
    cfg = module.uniter.config
    config = {
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "intermediate_size": cfg.intermediate_size,
        "hidden_act": cfg.hidden_act, "hidden_dropout_prob": cfg.hidden_dropout_prob,
        "attention_probs_dropout_prob": cfg.attention_probs_dropout_prob,
        "max_position_embeddings": cfg.max_position_embeddings, "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range, "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": 0,
    }
    return state, config


def export(module, path: str | Path, layout: str = "checkpoint") -> Path:
    """Write ``module``'s weights to ``path`` in ``layout``; returns the file or folder written."""
    path = Path(path)
    if layout in ("checkpoint", "uniter"):
        atomic_torch_save(uniter_state(module), path)
        return path
    if layout != "bert":
        raise ValueError(f"unknown export layout {layout!r}; one of {LAYOUTS}")
    from safetensors.torch import save

    state, config = bert_state(module)
    blob = save({k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt"})
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / "model.safetensors", lambda f: f.write(blob))
    atomic_write_text(path / "config.json", json.dumps(config, indent=1) + "\n")
    return path


class ExportWeights(pl.Callback):
    """At the end of a fit, write the module's weights in a released layout (``export``) and
    ``<path>.json`` (or ``<folder>/training.json``): the final logged metrics, steps and recipe.

    Args:
        path: the ``.pt`` file (``checkpoint``) or the folder (``bert``) to write.
        layout: ``checkpoint`` (or its old name ``uniter``) or ``bert``.
    """

    def __init__(self, path: str, layout: str = "checkpoint"):
        if layout not in LAYOUTS:
            raise ValueError(f"ExportWeights layout must be one of {LAYOUTS}, got {layout!r}")
        self.path, self.layout = Path(path), layout

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        written = export(pl_module, self.path, self.layout)
        record = {
            "layout": self.layout, "steps": trainer.global_step,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "hparams": {k: (v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v))
                        for k, v in dict(pl_module.hparams).items()},
        }
        sidecar = written / "training.json" if self.layout == "bert" else written.with_suffix(".json")
        atomic_write_text(sidecar, strict_json(record))
