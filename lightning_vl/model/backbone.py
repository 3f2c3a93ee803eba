"""The backbone seam: what the task module, the heads and the lottery need of a vision-and-language
encoder, and nothing more ("standardise, don't abstract": each model stays one readable file —
``uniter.py``, ``lxmert.py`` — behind this small contract).

A backbone

* owns its sizes (a config dataclass given as ``--model.backbone.init_args.*`` or, for UNITER, the
  historical ``--model.uniter.*``) and registers its parameters under its own ``prefix`` in the
  task module (``uniter.*``, ``lxmert.*``): the names masks, run folders and released checkpoints use;
* encodes a batch (the data modules' region-feature batches: ``input_ids``, ``img_feat``,
  ``img_pos_feat``, ``attn_masks`` …) into a :class:`BackboneOutput`, with the adversarial seam's
  ``txt_delta`` (added to the word embeddings) and ``img_delta`` (added to the raw region features);
* names its prunable weights, each with its :class:`PrunableGroup` (stream, layer, part), for a
  requested set of parts (``encoder`` always; ``pooler``, the visual feature encoder … as options);
* loads its released weights and the controls θ'_0 (text-only weights, e.g. BERT's, in the language
  layers) and θ''_0 (its own weights shuffled within each tensor), each with a :class:`LoadReport`;
* grows its embedding tables for a task (extra token types, extra word rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch
from torch import nn

Stream = Literal["text", "image", "cross", "joint"]


@dataclass(frozen=True)
class PrunableGroup:
    """Where a prunable weight sits: ``stream`` (``joint`` for a single-stream encoder such as
    UNITER's; ``text`` / ``image`` / ``cross`` for LXMERT's language, object-relationship and
    cross-modality encoders), ``layer`` (its index in that stream; -1 outside the layers: pooler,
    feature encoder) and ``part`` (``query``, ``key``, ``value``, ``attn_out``, ``ffn_in``,
    ``ffn_out``, ``pooler``, ``visual_fc`` …).

    Example:
        >>> PrunableGroup("joint", 3, "query").label
        'joint.3.query'
    """

    stream: str
    layer: int
    part: str

    @property
    def label(self) -> str:
        return f"{self.stream}.{self.layer}.{self.part}"


@dataclass
class BackboneOutput:
    """What a backbone hands the heads.

    ``sequence`` (R, L, H): every position's last hidden state, text first (UNITER: its gathered
    joint sequence; LXMERT: the language output then the vision output); ``sequence_mask`` (R, L):
    1 where ``sequence`` is a real token or region; ``pooled`` (R, H) or None: the pooled [CLS]
    (computed only when the head reads it, see ``Backbone.forward``'s ``pool``).
    """

    sequence: torch.Tensor
    sequence_mask: torch.Tensor
    pooled: Optional[torch.Tensor] = None


class Backbone(nn.Module):
    """The contract (see the module docstring). Subclasses set ``prefix`` and implement the methods.

    Raises (in implementations):
        ValueError: a checkpoint whose shapes do not fit, naming the file, the key and both shapes.
    """

    prefix: ClassVar[str]  # the attribute the task module registers it under: parameter names' first part

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    def forward(self, batch: dict, txt_delta: Optional[torch.Tensor] = None, img_delta: Optional[torch.Tensor] = None,
                pool: bool = True) -> BackboneOutput:
        raise NotImplementedError

    def prunable_groups(self, parts: tuple[str, ...] = ("encoder",)) -> dict[str, PrunableGroup]:
        """Names (relative to this module: ``encoder.layer.0.attention.self.query.weight``) → group,
        in a fixed order."""
        raise NotImplementedError
