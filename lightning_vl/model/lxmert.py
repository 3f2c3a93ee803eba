"""LXMERT (Tan & Bansal, EMNLP 2019) as a backbone, through transformers' own ``LxmertModel``.

Nothing of LXMERT's maths is rewritten here: ``LxmertBackbone`` builds a ``transformers.LxmertModel``
and registers its three children (``embeddings``, ``encoder``, ``pooler``) as its own, so parameter
names are transformers' (``encoder.layer.N.*`` language, ``encoder.r_layers.N.*`` object
relationship, ``encoder.x_layers.N.*`` cross-modality, ``encoder.visn_fc.*``) and, under the task
module's ``lxmert.`` prefix, exactly the keys of a released ``LxmertForPreTraining`` checkpoint
(``unc-nlp/lxmert-base-uncased``). What is written here is the seam (``backbone.Backbone``):

* reading the project's region-feature batches: text tokens with their own padding mask (from
  ``txt_lens``), ``visual_feats`` = the region features, ``visual_pos`` = the first four box
  coordinates of ``img_pos_feat`` (x1, y1, x2, y2, already in [0, 1]), ``visual_attention_mask``
  from ``num_bbs``; ``txt_delta`` is added to the word embeddings (passed as ``inputs_embeds``),
  ``img_delta`` to the raw region features;
* joining the two output streams in the batch's layout (``gather_index``: row i's text tokens, then
  its regions, then padding — the layout UNITER's sequence has), so heads read both alike;
* the prunable weights with their groups, the released / θ'_0 (BERT) / θ''_0 (shuffled) weights,
  embedding growth and a tokenizer check (LXMERT reads bert-base-uncased WordPiece).

Region masking for pre-training needs nothing here: the data side already sets masked regions'
features to 0, which is LXMERT's own feature masking (it has no mask embedding).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers import LxmertConfig, LxmertModel

from .backbone import (
    Backbone, BackboneOutput, HeadSizes, PrunableGroup, check_wordpiece_tokenizer, grow_bert_tables, lengths_mask,
)
from .checkpoints import (
    SHUFFLED, WEIGHT_FILES, LoadReport, load_into, read_bert_directory, read_folder_config, read_weights_file,
    shuffle_prefixed, weights_source,
)


# A language or object-relationship layer (transformers' LxmertLayer, BERT's names): module → part.
LAYER_PARTS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
}
# A cross-modality layer (LxmertXLayer): the part is ``<block>_<BERT part>``, block ``cross`` for the
# one cross-attention both directions share, ``lang`` / ``visn`` for each side's self-attention and
# FFN; ``part.split("_", 1)[1]`` is always one of the six BERT parts above.
CROSS_PARTS = {
    "visual_attention.att.query": "cross_query",
    "visual_attention.att.key": "cross_key",
    "visual_attention.att.value": "cross_value",
    "visual_attention.output.dense": "cross_attn_out",
    **{f"{side}_self_att.{path.replace('attention.', '', 1)}": f"{side}_{part}"
       for side in ("lang", "visn") for path, part in list(LAYER_PARTS.items())[:4]},
    "lang_inter.dense": "lang_ffn_in",
    "lang_output.dense": "lang_ffn_out",
    "visn_inter.dense": "visn_ffn_in",
    "visn_output.dense": "visn_ffn_out",
}
# Opt-in parts outside the layers (layer -1): --imp.prunable name → [(relative weight, group part)].
EXTRA_PARTS = {
    "visual_fc": [("encoder.visn_fc.visn_fc.weight", "visual_fc"), ("encoder.visn_fc.box_fc.weight", "visual_fc")],
    "pooler": [("pooler.dense.weight", "pooler")],
}
PARTS = ("encoder", *EXTRA_PARTS)
HEAD_KEYS = ("cls.", "obj_predict_head.", "answer_head.")  # LxmertForPreTraining's heads (reported unexpected)


@dataclass
class LxmertBackboneConfig:
    """The sizes of an LXMERT the project varies (the rest of ``LxmertConfig`` — pre-training task
    flags, label counts — concerns heads it does not use). Defaults: ``unc-nlp/lxmert-base-uncased``.

    Example:
        >>> cfg = LxmertBackboneConfig(hidden_size=32, num_attention_heads=4, l_layers=1, x_layers=1, r_layers=1)
        >>> cfg.to_hf().x_layers
        1

    Raises:
        ValueError: ``hidden_size`` not a multiple of ``num_attention_heads``, or ``visual_pos_dim``
            other than 4 (the batches give boxes as x1, y1, x2, y2).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    l_layers: int = 9
    x_layers: int = 5
    r_layers: int = 5
    visual_feat_dim: int = 2048
    visual_pos_dim: int = 4
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.visual_pos_dim != 4:
            raise ValueError(f"visual_pos_dim must be 4 (boxes as x1, y1, x2, y2 in [0, 1]), got {self.visual_pos_dim}")

    def to_hf(self) -> LxmertConfig:
        """transformers' config for these sizes."""
        return LxmertConfig(**asdict(self))

    @classmethod
    def from_folder(cls, path: str | Path) -> "LxmertBackboneConfig":
        """The sizes in a transformers folder's ``config.json`` (e.g. a copy of unc-nlp/lxmert-base-uncased).

        Example::

            LxmertBackbone(LxmertBackboneConfig.from_folder("pretrained/lxmert-base-uncased"))

        Raises:
            FileNotFoundError: no ``config.json`` in ``path``.
            ValueError: a config whose ``model_type`` is not ``lxmert``.
        """
        raw = read_folder_config(path, "lxmert", "an LXMERT")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


# Lightning checkpoints carry the module's hyper-parameters; allow the config in weights_only loads.
torch.serialization.add_safe_globals([LxmertBackboneConfig])


class LxmertBackbone(Backbone):
    """The ``lxmert`` backbone: transformers' ``LxmertModel`` behind the project's seam.

    ``forward(batch)`` returns the language then vision outputs joined in the batch's layout
    (``gather_index``; without one, plainly concatenated), the matching mask (``attn_masks``, or the
    two masks concatenated) and LXMERT's pooled output (from the language [CLS]). ``encode`` gives
    ``LxmertModel``'s own three outputs.

    Example:
        >>> cfg = LxmertBackboneConfig(vocab_size=16, hidden_size=8, num_attention_heads=2, intermediate_size=16,
        ...                            l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=6)
        >>> backbone = LxmertBackbone(cfg)
        >>> batch = {"input_ids": torch.tensor([[1, 5, 2]]), "txt_lens": [3], "num_bbs": [2],
        ...          "img_feat": torch.rand(1, 2, 6), "img_pos_feat": torch.rand(1, 2, 7)}
        >>> out = backbone(batch)
        >>> tuple(out.sequence.shape), tuple(out.pooled.shape)
        ((1, 5, 8), (1, 8))
        >>> len(backbone.prunable_groups())  # 6 per language / relationship layer, 16 per cross layer
        28

    Raises:
        ValueError: a batch without regions (LXMERT has no text-only mode); a checkpoint whose shapes
            do not fit (see ``load``).
    """

    prefix = "lxmert"
    config_class = LxmertBackboneConfig

    def __init__(self, config: LxmertBackboneConfig):
        super().__init__()
        self.config = replace(config)  # own copy: growth updates it
        model = LxmertModel(config.to_hf())
        # transformers' modules become ours (names without a wrapper level); the model object is kept
        # outside the module tree, so its forward runs on exactly these children.
        self.embeddings, self.encoder, self.pooler = model.embeddings, model.encoder, model.pooler
        self.__dict__["_hf"] = model
        self._built_sizes = (config.type_vocab_size, config.vocab_size)

    @property
    def hf_model(self) -> LxmertModel:
        """The wrapped ``transformers.LxmertModel`` (its children are this module's children)."""
        return self.__dict__["_hf"]

    def train(self, mode: bool = True) -> "LxmertBackbone":
        super().train(mode)
        self.hf_model.training = mode  # its children already follow; keep its own flag in step
        return self

    def head_sizes(self) -> HeadSizes:
        """LXMERT's sizes for the heads: the word rows and region feature size as built (before a
        task's growth); LXMERT's LayerNorms use BERT's eps, 1e-12.

        Example:
            >>> cfg = LxmertBackboneConfig(vocab_size=16, hidden_size=8, num_attention_heads=2, intermediate_size=16,
            ...                            l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=6)
            >>> sizes = LxmertBackbone(cfg).head_sizes()
            >>> sizes.hidden_size, sizes.vocab_size, sizes.img_dim
            (8, 16, 6)

        Raises:
            Nothing of its own.
        """
        c = self.config
        return HeadSizes(c.hidden_size, c.num_attention_heads, c.hidden_dropout_prob, c.attention_probs_dropout_prob,
                         1e-12, c.initializer_range, self._built_sizes[1], c.visual_feat_dim)

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The word table (the MLM decoder ties to it; its rows bound the tokenizer)."""
        return self.embeddings.word_embeddings

    @property
    def img_dim(self) -> int:
        """The region feature size read (``visual_feat_dim``)."""
        return self.config.visual_feat_dim

    # -- forward -----------------------------------------------------------------------------------
    def encode(self, batch: dict, txt_delta: Optional[torch.Tensor] = None,
               img_delta: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
        """``LxmertModel``'s ``(language_output, vision_output, pooled_output)`` for a batch, and the
        text and region masks: ``(lang, vision, pooled, text_mask, region_mask)``.

        Example::

            lang, vision, pooled, text_mask, region_mask = backbone.encode(batch)

        Raises:
            KeyError: no ``input_ids``.
            ValueError: no region features (``img_feat`` None or absent).
        """
        ids = batch["input_ids"]
        feats, boxes = batch.get("img_feat"), batch.get("img_pos_feat")
        if feats is None or boxes is None:
            raise ValueError("LXMERT encodes text with regions; this batch has no img_feat/img_pos_feat "
                             "(a text-only batch)")
        device = ids.device
        text_mask = lengths_mask(batch.get("txt_lens"), ids.size(1), device) if "txt_lens" in batch \
            else (ids != 0).long()
        region_mask = lengths_mask(batch.get("num_bbs"), feats.size(1), device) if "num_bbs" in batch \
            else torch.ones(feats.shape[:2], dtype=torch.long, device=device)
        words = self.embeddings.word_embeddings(ids)
        if txt_delta is not None:
            words = words + txt_delta
        if img_delta is not None:
            feats = feats + img_delta
        out = self.hf_model(
            inputs_embeds=words, attention_mask=text_mask, token_type_ids=batch.get("txt_type_ids"),
            visual_feats=feats, visual_pos=boxes[..., :4], visual_attention_mask=region_mask, return_dict=True)
        return out.language_output, out.vision_output, out.pooled_output, text_mask, region_mask

    def forward(self, batch: dict, txt_delta: Optional[torch.Tensor] = None, img_delta: Optional[torch.Tensor] = None,
                pool: bool = True) -> BackboneOutput:
        """Encode a batch: ``txt_delta`` (R, Lt, H) is added to the word embeddings, ``img_delta``
        (R, N, D) to the region features; ``pool=False`` drops the pooled output (LXMERT computes
        it anyway: one Linear on [CLS]).

        Example::

            out = backbone(batch)  # BackboneOutput(sequence (R, L, H), sequence_mask (R, L), pooled (R, H))

        Raises:
            KeyError: no ``input_ids``.
            ValueError: no region features.
        """
        lang, vision, pooled, text_mask, region_mask = self.encode(batch, txt_delta, img_delta)
        sequence = torch.cat([lang, vision], dim=1)
        gather = batch.get("gather_index")
        if gather is not None:
            index = gather.to(sequence.device).unsqueeze(-1).expand(-1, -1, sequence.size(-1))
            sequence = torch.gather(sequence, 1, index)
            mask = batch["attn_masks"].to(sequence.device) if "attn_masks" in batch else \
                torch.gather(torch.cat([text_mask, region_mask], dim=1), 1, gather.to(sequence.device))
        else:
            mask = torch.cat([text_mask, region_mask], dim=1)
        return BackboneOutput(sequence, mask, pooled if pool else None)

    # -- pruning -----------------------------------------------------------------------------------
    def prunable_groups(self, parts: tuple[str, ...] = ("encoder",)) -> dict[str, PrunableGroup]:
        """``encoder``: every Linear weight of the three encoders — per language layer (stream
        ``text``) and object-relationship layer (``image``) the six BERT parts, per cross-modality
        layer (``cross``) sixteen (``CROSS_PARTS``: ``cross_*`` the shared cross-attention,
        ``lang_*`` / ``visn_*`` each side's self-attention and FFN); ``visual_fc`` (the visual
        feature encoder's two Linears) and ``pooler`` opt in (layer -1). Base size: 54 text + 30
        image + 80 cross = 164 tensors (181,665,792 weights); +2 visual_fc, +1 pooler.

        Example:
            >>> cfg = LxmertBackboneConfig(vocab_size=8, hidden_size=8, num_attention_heads=2, intermediate_size=8,
            ...                            l_layers=0, x_layers=0, r_layers=0, visual_feat_dim=4)
            >>> list(LxmertBackbone(cfg).prunable_groups(("pooler",)).items())
            [('pooler.dense.weight', PrunableGroup(stream='text', layer=-1, part='pooler'))]

        Raises:
            ValueError: an unknown part, naming encoder, visual_fc and pooler.
        """
        return prunable_groups_for(self.config, parts)

    # -- weights -----------------------------------------------------------------------------------
    @classmethod
    def read_init(cls, spec: str, seed: int = 0) -> dict[str, torch.Tensor]:
        """The state dict (backbone keys prefixed ``lxmert.``, heads' keys as the file has them) an
        ``init`` value names:

        * a transformers folder of an LXMERT (``config.json`` ``model_type: lxmert`` + weights):
          ``LxmertModel`` keys get the prefix, ``LxmertForPreTraining`` keys already have it and
          bring ``cls.*`` / ``obj_predict_head.*`` / ``answer_head.*`` (unexpected when loaded) — θ_0;
        * a transformers folder of a BERT (``model_type: bert``): ``bert.*`` → ``lxmert.*``, so the
          embeddings, the language layers (BERT's first ``l_layers``) and the pooler are BERT's and
          the rest stays at init (the load report's missing keys) — θ'_0;
        * a state-dict file (ours, a Lightning checkpoint, IMP's ``init.pt``; ``.safetensors`` too);
        * ``shuffled:<any of these>``: every ``lxmert.*`` tensor's values permuted, seeded — θ''_0.

        Example::

            state = LxmertBackbone.read_init("shuffled:pretrained/lxmert-base-uncased", seed=1)

        Raises:
            FileNotFoundError: no such file; a folder without config.json or weights.
            ValueError: a file that is not plain tensors or holds no ``lxmert.*`` weights (a UNITER
                checkpoint); a folder of another model type.
        """
        if spec.startswith(SHUFFLED):
            return shuffle_prefixed(cls.read_init(spec[len(SHUFFLED):], seed), seed, cls.prefix)
        path = Path(spec)
        if path.is_dir():
            return read_folder(path, cls.prefix)
        raw = read_weights_file(path)
        backbone_roots = ("embeddings.", "encoder.", "pooler.")
        state = {(f"{cls.prefix}.{k}" if k.startswith(backbone_roots) else k): v for k, v in raw.items()}
        if not any(k.startswith(f"{cls.prefix}.") for k in state):
            # e.g. the demo's uniter-tiny.pt (configs/demo.yaml's init) given to an LXMERT: nothing would load
            other = sorted({k.split(".", 1)[0] for k in state})[:4]
            raise ValueError(f"{path} holds no LXMERT weights (no {cls.prefix}.* keys; it has {', '.join(other)} …): "
                             f"give an LXMERT checkpoint (the demo's: data/demo/lxmert-tiny.pt) or --model.init null")
        return state

    def load(self, spec: str, seed: int = 0) -> LoadReport:
        """Load an ``init`` value (see ``read_init``) into this backbone alone; keys outside
        ``lxmert.*`` (pre-training heads, BERT's extra layers …) are reported unexpected, backbone
        tensors the source lacks missing (left at their init).

        Example::

            report = backbone.load("pretrained/bert-base-uncased")  # θ'_0
            print(report.summary())

        Raises:
            FileNotFoundError, ValueError: as ``read_init``; ValueError also for a shape mismatch,
                naming the source, the key and both shapes.
        """
        state = self.read_init(spec, seed)
        head = f"{self.prefix}."
        own = {k[len(head):]: v for k, v in state.items() if k.startswith(head)}
        report = load_into(self, own, source=str(weights_source(spec)))
        report.loaded = [head + k for k in report.loaded]
        report.missing = [head + k for k in report.missing]
        report.unexpected = [head + k for k in report.unexpected] + [k for k in state if not k.startswith(head)]
        return report

    # -- embedding growth and the rest of the seam -----------------------------------------------------
    def extend_type_embeddings(self, num_types: int, copy_from: list[int]) -> None:
        """Grow the token-type table as UNITER's ``init_type_embedding`` does: rows kept, new row k a
        copy of row ``copy_from[k - old]``. LXMERT's type table keeps its ``padding_idx=0``.

        Example::

            backbone.extend_type_embeddings(3, [1])  # NLVR2-style third type

        Raises:
            Nothing of its own.
        """
        old = self.embeddings.token_type_embeddings
        if old.num_embeddings >= num_types:
            return
        new = self._grown(old, num_types)
        with torch.no_grad():
            for k, src in enumerate(copy_from, start=old.num_embeddings):
                new.weight[k] = old.weight[src]
        self.embeddings.token_type_embeddings = new
        self.config.type_vocab_size = self.hf_model.config.type_vocab_size = num_types

    def extend_word_embeddings(self, num_words: int) -> None:
        """Grow the word table to ``num_words`` rows (VCR's object-reference words): rows kept, new
        rows N(0, initializer_range), as transformers initialises LXMERT's tables.

        Example::

            backbone.extend_word_embeddings(30522 + 81)

        Raises:
            Nothing of its own.
        """
        old = self.embeddings.word_embeddings
        if old.num_embeddings >= num_words:
            return
        self.embeddings.word_embeddings = self._grown(old, num_words)
        self.config.vocab_size = self.hf_model.config.vocab_size = num_words

    def _grown(self, old: nn.Embedding, rows: int) -> nn.Embedding:
        new = nn.Embedding(rows, old.embedding_dim, padding_idx=old.padding_idx).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight.normal_(0.0, self.config.initializer_range)
            new.weight[: old.num_embeddings] = old.weight
        return new

    def grow_embeddings(self, type_rows_from: list[int], extra_word_rows: int,
                        state: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Grow the type table by one row per ``type_rows_from`` entry and the word table by
        ``extra_word_rows``, counted from the built sizes (idempotent). With ``state`` (a checkpoint
        about to be loaded), grow only if its tables already have the grown sizes.

        Example::

            backbone.grow_embeddings([1], 0)

        Raises:
            Nothing of its own.
        """
        grow_bert_tables(self, self._built_sizes, type_rows_from, extra_word_rows, state)

    def freeze_unused(self, pooled: bool, region_masks: bool, sequence: bool = True) -> None:
        """Freeze the pooler when no head reads ``pooled`` (LXMERT has no region mask embedding),
        and, when a head reads only ``pooled`` (VQA, GQA, NLVR2's paired-mlp: the language stream's
        [CLS]), the vision side of the last cross-modality layer (its self-attention and FFN),
        whose output nothing reads: left trainable, DDP fails at the second step ("parameters that
        were not used in producing the loss"). Without cross-modality layers the whole vision
        stream is unread then. Masks still cover these weights; they keep their start values.

        Example::

            backbone.freeze_unused(pooled=True, region_masks=False, sequence=False)  # VQA's head

        Raises:
            Nothing of its own.
        """
        if not pooled:
            self.pooler.requires_grad_(False)
        if not sequence:
            encoder = self.hf_model.encoder
            if len(encoder.x_layers):
                last = encoder.x_layers[-1]
                for module in (last.visn_self_att, last.visn_inter, last.visn_output):
                    module.requires_grad_(False)
            else:
                for module in (encoder.visn_fc, encoder.r_layers):
                    module.requires_grad_(False)

    def check_tokenizer(self, tokenizer, words: int, source: str = "the tokenizer") -> None:
        """The whole vocabulary, [PAD] = 0 and lower-casing for an uncased one (``check_tokenizer``).

        Raises:
            ValueError: see the module-level ``check_tokenizer``.
        """
        check_tokenizer(tokenizer, words, source=source)

    def pretraining_ties(self) -> dict[str, nn.Parameter]:
        """None: LXMERT's region heads keep their own weights."""
        return {}


# -- helpers ---------------------------------------------------------------------------------------------

def prunable_groups_for(config: LxmertBackboneConfig, parts: tuple[str, ...] = ("encoder",)) -> dict[str, PrunableGroup]:
    """``LxmertBackbone.prunable_groups`` from the sizes alone (no weights built: counts at base size).

    Example:
        >>> len(prunable_groups_for(LxmertBackboneConfig(), ("encoder", "visual_fc", "pooler")))
        167

    Raises:
        ValueError: an unknown part, naming encoder, visual_fc and pooler.
    """
    out: dict[str, PrunableGroup] = {}
    for part in parts:
        if part == "encoder":
            for stream, layers, count, table in (("text", "layer", config.l_layers, LAYER_PARTS),
                                                 ("image", "r_layers", config.r_layers, LAYER_PARTS),
                                                 ("cross", "x_layers", config.x_layers, CROSS_PARTS)):
                for i in range(count):
                    for path, name in table.items():
                        out[f"encoder.{layers}.{i}.{path}.weight"] = PrunableGroup(stream, i, name)
        elif part in EXTRA_PARTS:
            stream = "image" if part == "visual_fc" else "text"  # the pooler reads the language [CLS]
            for name, group in EXTRA_PARTS[part]:
                out[name] = PrunableGroup(stream, -1, group)
        else:
            raise ValueError(f"unknown prunable part {part!r} for LXMERT; expected one of {', '.join(PARTS)}")
    return out


def read_folder(path: Path, prefix: str = "lxmert") -> dict[str, torch.Tensor]:
    """A transformers folder's weights as ``<prefix>.*`` keys: an LXMERT's (``LxmertModel`` or
    ``LxmertForPreTraining``) or a BERT's (θ'_0, ``bert.*`` renamed; the rest stays at init).

    Example::

        state = read_folder(Path("pretrained/bert-base-uncased"))  # {"lxmert.encoder.layer.0…": …}

    Raises:
        FileNotFoundError: no config.json, or neither model.safetensors nor pytorch_model.bin.
        ValueError: a model type other than lxmert or bert; a BERT folder without encoder weights.
    """
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a transformers folder of an LXMERT or a BERT)")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    file = weights_source(str(path))
    if file == path:
        raise FileNotFoundError(f"{path} has neither {' nor '.join(WEIGHT_FILES)}")
    if model_type == "bert":  # θ'_0: the shared reader, bert.* → <prefix>.* (checkpoints.read_bert_directory)
        return read_bert_directory(path, prefix)
    if model_type == "lxmert":
        # LxmertModel saves bare keys; LxmertForPreTraining / ForQuestionAnswering already say lxmert.*
        roots = ("embeddings.", "encoder.", "pooler.")
        return {(f"{prefix}.{k}" if k.startswith(roots) else k): v for k, v in read_weights_file(file).items()}
    raise ValueError(f"{config}: model_type {model_type!r}; expected 'lxmert' (θ_0) or 'bert' (θ'_0)")


def check_tokenizer(tokenizer, vocab_size: int, extra_word_rows: int = 0, source: str = "the tokenizer") -> None:
    """Check a WordPiece tokenizer fits an LXMERT (``backbone.check_wordpiece_tokenizer``, shared with
    ViLT): the whole bert-base-uncased vocabulary, [PAD] = 0, lower-cased when uncased.

    Example::

        check_tokenizer(load_tokenizer("pretrained/bert-base-uncased", do_lower_case=True), backbone.config.vocab_size)

    Raises:
        ValueError: a size other than the model's, [PAD] not 0, or an uncased vocabulary read cased.
    """
    check_wordpiece_tokenizer(tokenizer, vocab_size, extra_word_rows, source, model="the LXMERT")
