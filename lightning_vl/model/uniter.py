"""UNITER: the vision-and-language transformer of Chen et al. (ECCV 2020), in one readable file.

Module and parameter names match the released checkpoints (``uniter.embeddings.*``,
``uniter.img_embeddings.*``, ``uniter.encoder.layer.N.*``, ``uniter.pooler.*``), so a released
``uniter-base.pt`` loads without renaming. The encoder and pooler are transformers' own BERT layers
(post-LN, erf-GELU), which have exactly UNITER's names and maths; what BERT lacks — the image
embedder and the text+region join by ``gather_index`` — is written here.

``UniterModel`` is the project's first backbone (``lightning_vl.model.backbone.Backbone``, prefix
``uniter``): it reads a batch, names its prunable weights with their groups, reads UNITER / BERT /
shuffled initial weights and grows its type and word tables as UNITER's task models do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder, BertPooler

from .backbone import Backbone, BackboneOutput, HeadSizes, PrunableGroup, grow_bert_tables
from .checkpoints import SHUFFLED, read_bert_directory, read_state_dict, shuffle_prefixed


# The prunable parts of an encoder layer: BERT-Tickets' six Linear weights, module path → part.
LAYER_PARTS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
}
# The opt-in parts outside the layers: --imp.prunable name → (relative weight name, group part).
EXTRA_PARTS = {"pooler": ("pooler.dense.weight", "pooler"),
               "img_linear": ("img_embeddings.img_linear.weight", "img_linear")}


@dataclass
class UniterConfig:
    """Sizes of a UNITER core; defaults are UNITER-base (``config/uniter-base.json``)."""

    vocab_size: int = 28996
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    img_dim: int = 2048

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )

    def to_bert_config(self) -> BertConfig:
        cfg = {k: v for k, v in asdict(self).items() if k != "img_dim"}
        return BertConfig(**cfg, attn_implementation="sdpa")


# Lightning checkpoints carry the module's hyper-parameters, UniterConfig among them; allow it, so
# they load with torch.load(weights_only=True) (a SLURM requeue resumes a round from one).
torch.serialization.add_safe_globals([UniterConfig])


class UniterTextEmbeddings(nn.Module):
    """LN(word + position + token type), then dropout. Only text tokens get positions."""

    def __init__(self, config: UniterConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, position_ids, token_type_ids=None, delta=None):
        """``delta`` (R, L, H): a perturbation added to the word embeddings before the position and
        type sum (VILLA's text seam)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        words = self.word_embeddings(input_ids)
        if delta is not None:
            words = words + delta
        emb = words + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(emb))


class UniterImageEmbeddings(nn.Module):
    """LN(LN(W f) + LN(W_pos p7) + type), then dropout; ``type`` comes from the *text* type table."""

    def __init__(self, config: UniterConfig):
        super().__init__()
        h, eps = config.hidden_size, config.layer_norm_eps
        self.img_linear = nn.Linear(config.img_dim, h)
        self.img_layer_norm = nn.LayerNorm(h, eps=eps)
        self.pos_layer_norm = nn.LayerNorm(h, eps=eps)
        self.pos_linear = nn.Linear(7, h)
        self.mask_embedding = nn.Embedding(2, config.img_dim, padding_idx=0)
        self.LayerNorm = nn.LayerNorm(h, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, img_feat, img_pos_feat, type_embeddings, img_masks=None, delta=None):
        """``delta`` (R, N, D): a perturbation added to the raw region features, after the mask
        embedding and before ``img_linear`` (VILLA's image seam)."""
        if img_masks is not None:
            # UNITER zeroes row 0 on every call, so unmasked regions get nothing added.
            self.mask_embedding.weight.data[0].zero_()
            img_feat = img_feat + self.mask_embedding(img_masks.long())
        if delta is not None:
            img_feat = img_feat + delta
        transformed_im = self.img_layer_norm(self.img_linear(img_feat))
        transformed_pos = self.pos_layer_norm(self.pos_linear(img_pos_feat))
        return self.dropout(self.LayerNorm(transformed_im + transformed_pos + type_embeddings))


class UniterModel(Backbone):
    """The UNITER core: embeddings, join, encoder and pooler; the ``uniter`` backbone.

    Called with a batch (a dict) it is the seam's ``forward`` (a ``BackboneOutput``); called with
    tensors it is UNITER's own ``forward`` (``encode``: the last layer's sequence), as before.
    """

    prefix = "uniter"
    config_class = UniterConfig

    def __init__(self, config: UniterConfig):
        super().__init__()
        self.config = replace(config)  # own copy: extend_type_embeddings updates it
        self.embeddings = UniterTextEmbeddings(config)
        self.img_embeddings = UniterImageEmbeddings(config)
        self.encoder = BertEncoder(config.to_bert_config())
        self.pooler = BertPooler(config.to_bert_config())
        self.apply(self.init_weights)
        self._built_sizes = (config.type_vocab_size, config.vocab_size)

    def init_weights(self, module: nn.Module) -> None:
        """UNITER's init: N(0, 0.02) for Linear/Embedding (padding rows too), zero bias, unit LN."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def extend_type_embeddings(self, num_types: int, copy_from: list[int]) -> None:
        """Grow the token-type table as UNITER's ``init_type_embedding`` does.

        Existing rows are kept; new row ``k`` is a copy of row ``copy_from[k - old]``
        (NLVR2: 3 types, row 2 = row 1; VCR: 4 types, rows 2 and 3 = row 0).
        """
        old = self.embeddings.token_type_embeddings
        if old.num_embeddings >= num_types:
            return
        new = nn.Embedding(num_types, self.config.hidden_size).to(old.weight.device)
        self.init_weights(new)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = old.weight
            for k, src in enumerate(copy_from, start=old.num_embeddings):
                new.weight[k] = old.weight[src]
        self.embeddings.token_type_embeddings = new
        self.config.type_vocab_size = num_types

    def extend_word_embeddings(self, num_words: int) -> None:
        """Grow the word table to ``num_words`` rows as UNITER's ``init_word_embedding`` does for
        VCR (28996 → 29077): existing rows kept, new rows drawn N(0, initializer_range)."""
        old = self.embeddings.word_embeddings
        if old.num_embeddings >= num_words:
            return
        new = nn.Embedding(num_words, self.config.hidden_size, padding_idx=0).to(old.weight.device)
        self.init_weights(new)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = old.weight
        self.embeddings.word_embeddings = new
        self.config.vocab_size = num_words

    def forward(self, batch, *args, txt_delta=None, img_delta=None, pool: bool = True, **kwargs):
        """``forward(batch, txt_delta=None, img_delta=None, pool=True) -> BackboneOutput`` (the seam:
        ``sequence_mask`` is the batch's ``attn_masks``), or ``forward(input_ids, position_ids, …)``
        → the sequence (``encode``, UNITER's signature).

        Example::

            out = core(batch)                       # BackboneOutput(sequence, sequence_mask, pooled)
            seq = core(ids, pos, feat, boxes, attn, gather)  # a tensor

        Raises:
            KeyError: a batch without ``input_ids``, ``position_ids`` or ``attn_masks``.
        """
        if not isinstance(batch, dict):
            return self.encode(batch, *args, txt_delta=txt_delta, img_delta=img_delta, **kwargs)
        seq = self.encode(
            batch["input_ids"], batch["position_ids"], batch.get("img_feat"), batch.get("img_pos_feat"),
            batch["attn_masks"], batch.get("gather_index"), txt_type_ids=batch.get("txt_type_ids"),
            img_type_ids=batch.get("img_type_ids"), img_masks=batch.get("img_masks"),
            txt_delta=txt_delta, img_delta=img_delta)
        return BackboneOutput(seq, batch["attn_masks"], self.pooler(seq) if pool else None)

    def encode(
        self,
        input_ids,
        position_ids,
        img_feat,
        img_pos_feat,
        attn_masks,
        gather_index,
        txt_type_ids=None,
        img_type_ids=None,
        img_masks=None,
        txt_delta=None,
        img_delta=None,
    ) -> torch.Tensor:
        """Joint text+image encoding; returns the last layer's sequence (R, Ltot, H).

        ``img_feat=None`` encodes the text alone (UNITER's text-only mode: no gather, the mask
        covers the text), as a BERT-like text-only model is trained. ``txt_delta`` / ``img_delta``
        perturb the word embeddings / raw region features (the embedding seam VILLA trains
        adversarially through; same parameter names, so UNITER and VILLA checkpoints load alike)."""
        txt_emb = self.embeddings(input_ids, position_ids, txt_type_ids, delta=txt_delta)
        if img_feat is None:
            return self.encoder(txt_emb, self.extended_attention_mask(attn_masks))[0]
        if img_type_ids is None:
            img_type_ids = torch.ones(img_feat.shape[:2], dtype=torch.long, device=img_feat.device)
        img_type_emb = self.embeddings.token_type_embeddings(img_type_ids)
        img_emb = self.img_embeddings(img_feat, img_pos_feat, img_type_emb, img_masks, delta=img_delta)
        joint = torch.cat([txt_emb, img_emb], dim=1)
        index = gather_index.unsqueeze(-1).expand(-1, -1, self.config.hidden_size)
        embedding_output = torch.gather(joint, 1, index)
        return self.encoder(embedding_output, self.extended_attention_mask(attn_masks))[0]

    def extended_attention_mask(self, attn_masks: torch.Tensor) -> torch.Tensor:
        """UNITER's additive key mask: 0 where attended, -10000 on padding, shape (R, 1, 1, L)."""
        dtype = next(self.parameters()).dtype
        return (1.0 - attn_masks[:, None, None, :].to(dtype)) * -10000.0

    # the rest of the seam (lightning_vl.model.backbone.Backbone) ---------------------------------
    def head_sizes(self) -> HeadSizes:
        """UNITER's sizes for the heads (the config's vocab and type sizes before any growth)."""
        c = self.config
        return HeadSizes(c.hidden_size, c.num_attention_heads, c.hidden_dropout_prob, c.attention_probs_dropout_prob,
                         c.layer_norm_eps, c.initializer_range, c.vocab_size, c.img_dim)

    def prunable_groups(self, parts: tuple[str, ...] = ("encoder",)) -> dict[str, PrunableGroup]:
        """``encoder``: the 6 Linear weights of every layer (stream ``joint``); ``pooler`` and
        ``img_linear`` opt in (layer -1).

        Example:
            >>> core = UniterModel(UniterConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
            ...                                 intermediate_size=8, vocab_size=4, img_dim=4))
            >>> list(core.prunable_groups(("pooler",)).items())
            [('pooler.dense.weight', PrunableGroup(stream='joint', layer=-1, part='pooler'))]

        Raises:
            ValueError: an unknown part, naming encoder, pooler and img_linear.
        """
        out: dict[str, PrunableGroup] = {}
        for part in parts:
            if part == "encoder":
                for i in range(self.config.num_hidden_layers):
                    for path, name in LAYER_PARTS.items():
                        out[f"encoder.layer.{i}.{path}.weight"] = PrunableGroup("joint", i, name)
            elif part in EXTRA_PARTS:
                name, group = EXTRA_PARTS[part]
                out[name] = PrunableGroup("joint", -1, group)
            else:
                raise ValueError(f"unknown prunable part {part!r}; expected encoder, pooler, img_linear")
        return out

    @classmethod
    def read_init(cls, spec: str, seed: int = 0) -> dict[str, torch.Tensor]:
        """A UNITER state dict (released ``.pt``, ours, IMP's ``init.pt``), a HuggingFace BERT folder
        renamed ``bert.*`` → ``uniter.*`` (θ'_0; the image embedder stays at init), or
        ``shuffled:<any of these>`` (θ''_0). See ``lightning_vl.model.checkpoints``.

        Example::

            UniterModel.read_init("pretrained/bert-base-cased")  # a folder: θ'_0

        Raises:
            FileNotFoundError: no such file; a folder without model.safetensors / pytorch_model.bin.
            ValueError: not a state dict of plain tensors; a folder without BERT encoder weights.
        """
        if spec.startswith(SHUFFLED):
            return shuffle_prefixed(cls.read_init(spec[len(SHUFFLED):], seed), seed, cls.prefix)
        path = Path(spec)
        return read_bert_directory(path, cls.prefix) if path.is_dir() else read_state_dict(path)

    def grow_embeddings(self, type_rows_from: list[int], extra_word_rows: int,
                        state: Optional[dict[str, torch.Tensor]] = None) -> None:
        """UNITER's ``init_type_embedding`` / ``init_word_embedding`` for a task (see
        ``extend_type_embeddings`` and ``extend_word_embeddings``); rows are counted from the sizes
        the model was built with, so growing twice changes nothing.

        Example::

            core.grow_embeddings([0, 0], 81)  # VCR: 4 types, 81 object-reference words

        Raises:
            Nothing of its own.
        """
        grow_bert_tables(self, self._built_sizes, type_rows_from, extra_word_rows, state)

    def freeze_unused(self, pooled: bool, region_masks: bool, sequence: bool = True) -> None:
        """Freeze the pooler (``pooled`` False) and the MRM mask embedding (``region_masks`` False);
        ``sequence`` changes nothing: every layer of a single stream feeds the pooled [CLS].

        Example::

            core.freeze_unused(pooled=False, region_masks=False)  # NLVR2's paired-attn head

        Raises:
            Nothing of its own.
        """
        if not region_masks:
            self.img_embeddings.mask_embedding.requires_grad_(False)  # only MRM masks regions
        if not pooled:
            self.pooler.requires_grad_(False)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    @property
    def img_dim(self) -> int:
        return self.config.img_dim

    def pretraining_ties(self) -> dict[str, nn.Parameter]:
        """``img_projection``: ``img_linear.weight`` (MRFR's output); ``region_mask``: the MRM mask
        embedding."""
        return {"img_projection": self.img_embeddings.img_linear.weight,
                "region_mask": self.img_embeddings.mask_embedding.weight}


def encoder_linear_names(config: UniterConfig, prefix: str = "uniter.") -> list[str]:
    """The 6 Linear weights of every encoder layer: BERT-Tickets' prunable set (72 at base size)."""
    return [f"{prefix}encoder.layer.{i}.{p}.weight" for i in range(config.num_hidden_layers) for p in LAYER_PARTS]
