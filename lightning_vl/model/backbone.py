"""The backbone seam: what the task module, the heads and the lottery need of a vision-and-language
encoder, and nothing more ("standardise, don't abstract": each model stays one readable file —
``uniter.py``, ``lxmert.py``, ``vilt.py`` — behind this small contract).

A backbone

* owns its sizes: a config dataclass (``config_class``), its only constructor argument, given as
  ``--model.backbone.init_args.config.*`` or, for UNITER, the historical ``--model.uniter.*``; it
  registers its parameters under its own ``prefix`` in the task module (``uniter.*``, ``lxmert.*``,
  ``vilt.*``): the names masks, run folders and released checkpoints use;
* encodes a batch (the data modules' region-feature batches: ``input_ids``, ``img_feat``,
  ``img_pos_feat``, ``attn_masks``, ``gather_index`` …; for a pixel backbone such as ViLT,
  ``pixel_values`` and ``pixel_mask``) into a :class:`BackboneOutput`, with the adversarial seam's
  ``txt_delta`` (added to the word embeddings) and ``img_delta`` (added to the backbone's image input,
  ``batch[image_input_key]``: the raw region features, or the pixels);
* names its prunable weights, each with its :class:`PrunableGroup` (stream, layer, part), for a
  requested set of parts (``encoder`` always; ``pooler``, the visual feature encoder … as options);
* reads its released weights and the controls θ'_0 (text-only weights, e.g. BERT's, in the language
  layers) and θ''_0 (its own weights shuffled within each tensor) into a state dict the task module
  loads with its :class:`~lightning_vl.model.checkpoints.LoadReport`;
* grows its embedding tables for a task (extra token types, extra word rows), and freezes what a
  task never uses (the pooler, the region mask embedding), so DDP needs no unused-parameter search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple, Optional

import torch
from torch import nn

Stream = Literal["text", "image", "cross", "joint"]


class PrunableGroup(NamedTuple):
    """Where a prunable weight sits: ``stream`` (``joint`` for a single-stream encoder such as
    UNITER's; ``text`` / ``image`` / ``cross`` for LXMERT's language, object-relationship and
    cross-modality encoders), ``layer`` (its index in that stream; -1 outside the layers: pooler,
    feature encoder) and ``part`` (``query``, ``key``, ``value``, ``attn_out``, ``ffn_in``,
    ``ffn_out``, ``pooler``, ``visual_fc`` …). A plain tuple, so masks store it as one
    (``lightning_vl.pruning.Mask.groups``) and read it back without this module.

    Example:
        >>> PrunableGroup("joint", 3, "query").label
        'joint.3.query'
        >>> PrunableGroup("joint", 3, "query") == ("joint", 3, "query")
        True
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

    ``sequence`` (R, L, H): every position's last hidden state in the batch's joined layout (the
    data modules' ``gather_index`` order: row i's text tokens at ``[0, txt_lens[i])``, then its
    regions at ``[txt_lens[i], txt_lens[i] + num_bbs[i])``, then padding), so heads that read regions
    (RefCOCO+, MRFR/MRC, WRA) work on every backbone; ``sequence_mask`` (R, L): 1 where ``sequence``
    is a real token or region; ``pooled`` (R, H) or None: the pooled [CLS] (computed only when the
    head reads it, see ``Backbone.forward``'s ``pool``).

    Example:
        >>> out = BackboneOutput(torch.zeros(2, 5, 8), torch.ones(2, 5, dtype=torch.long))
        >>> out.pooled is None
        True
    """

    sequence: torch.Tensor
    sequence_mask: torch.Tensor
    pooled: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class HeadSizes:
    """What a head may know of the backbone it sits on: sizes, never the backbone's config class.

    Example:
        >>> HeadSizes(hidden_size=32, num_attention_heads=4).hidden_size
        32
    """

    hidden_size: int
    num_attention_heads: int
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    vocab_size: int = 0  # word rows before a task's extra rows (the MLM and bag-of-words heads)
    img_dim: int = 0  # region feature size (the MRFR head)


class Backbone(nn.Module):
    """The contract (see the module docstring). Subclasses set ``prefix`` and ``config_class``,
    take ``config`` (an instance of ``config_class``) as their one constructor argument, keep it as
    ``self.config``, and implement the methods that raise ``NotImplementedError`` here.

    Example (a task module uses a backbone like this)::

        backbone = UniterModel(UniterConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4))
        out = backbone(batch, pool=True)                  # BackboneOutput
        groups = backbone.prunable_groups(("encoder",))  # {"encoder.layer.0.attention.self.query.weight": ...}
    """

    prefix: ClassVar[str]  # the attribute the task module registers it under: parameter names' first part
    config_class: ClassVar[type]  # the sizes dataclass; ``config`` is an instance of it
    # the batch key of the image input ``img_delta`` is added to: region features (UNITER, LXMERT) or
    # ``pixel_values`` (ViLT); the adversarial seam builds δ_img like it, and VLModule.setup compares
    # the data's region-feature size only for backbones that read ``img_feat``
    image_input_key: ClassVar[str] = "img_feat"

    @property
    def hidden_size(self) -> int:
        """The width of ``sequence`` and ``pooled``.

        Example::

            torch.zeros(rows, backbone.hidden_size)  # a pooled-sized tensor

        Raises:
            NotImplementedError: in a backbone without ``head_sizes``.
        """
        return self.head_sizes().hidden_size

    def head_sizes(self) -> HeadSizes:
        """The sizes the task heads are built with.

        Example::

            VqaHead(backbone.head_sizes(), num_labels=3129)

        Raises:
            NotImplementedError: in a backbone that does not implement it.
        """
        raise NotImplementedError

    def forward(self, batch: dict, txt_delta: Optional[torch.Tensor] = None, img_delta: Optional[torch.Tensor] = None,
                pool: bool = True) -> BackboneOutput:
        """Encode a batch. ``txt_delta`` (R, Lt, H) is added to the word embeddings, ``img_delta``
        (R, N, D) to the raw region features (VILLA's seam); ``pool=False`` skips the pooler.

        Example::

            out = backbone(batch, txt_delta=torch.zeros(*batch["input_ids"].shape, backbone.hidden_size))

        Raises:
            KeyError: the batch lacks an input the backbone needs.
        """
        raise NotImplementedError

    def image_delta_mask(self, batch: dict) -> Optional[torch.Tensor]:
        """Where an ``img_delta`` may be nonzero: a 0/1 float tensor that broadcasts against
        ``batch[image_input_key]`` (the adversarial seam multiplies δ_img and its gradient by it, and
        takes per-example norms over it); None when the batch has no image input. The default is for
        region features: (R, N, 1), 1 on each row's first ``num_bbs`` regions (all when absent).

        Example:
            >>> batch = {"img_feat": torch.zeros(2, 3, 4), "num_bbs": [1, 3]}
            >>> Backbone().image_delta_mask(batch)[..., 0].tolist()
            [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]

        Raises:
            Nothing of its own.
        """
        img = batch.get(self.image_input_key)
        if img is None:
            return None
        regions = torch.arange(img.size(1), device=img.device)[None, :]
        nbb = torch.as_tensor(batch["num_bbs"], device=img.device)[:, None] if "num_bbs" in batch else img.size(1)
        return (regions < nbb).unsqueeze(-1).to(img.dtype)

    def prunable_groups(self, parts: tuple[str, ...] = ("encoder",)) -> dict[str, PrunableGroup]:
        """Names (relative to this module: ``encoder.layer.0.attention.self.query.weight``) → group,
        in a fixed order (parts in the order asked, layers ascending).

        Example::

            {f"{backbone.prefix}.{n}": g for n, g in backbone.prunable_groups(("encoder", "pooler")).items()}

        Raises:
            ValueError: an unknown part, naming the backbone's parts.
        """
        raise NotImplementedError

    @classmethod
    def read_init(cls, spec: str, seed: int = 0) -> dict[str, torch.Tensor]:
        """The state dict (keys prefixed ``<prefix>.``, heads' keys as the file has them) an ``init``
        value names: a released checkpoint or one of ours, a text-only model's folder (θ'_0), or
        ``shuffled:<any of these>`` (θ''_0: every ``<prefix>.*`` tensor permuted, seeded). The task
        module loads it non-strictly and reports what was loaded, missing and unexpected.

        Example::

            state = UniterModel.read_init("shuffled:pretrained/uniter-base.pt", seed=1)

        Raises:
            FileNotFoundError: no such file or folder, or a folder without weights.
            ValueError: a file that is not plain tensors, or a folder without the expected weights.
        """
        raise NotImplementedError

    def grow_embeddings(self, type_rows_from: list[int], extra_word_rows: int,
                        state: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Grow the token-type table by one row per ``type_rows_from`` entry (new row k copies row
        ``type_rows_from[k - old]``) and the word table by ``extra_word_rows`` fresh rows; idempotent.
        With ``state`` (a checkpoint about to be loaded), grow only if its tables already have the
        grown sizes (our own checkpoints, UNITER's VCR second stage), so that they load.

        Example::

            backbone.grow_embeddings([1], 0)  # NLVR2: a third type, a copy of the image type

        Raises:
            ValueError: growth requested of a backbone that has no such tables (this default).
        """
        if type_rows_from or extra_word_rows:
            raise ValueError(f"{type(self).__name__} cannot grow its embedding tables "
                             f"({len(type_rows_from)} type rows, {extra_word_rows} word rows asked)")

    def freeze_unused(self, pooled: bool, region_masks: bool, sequence: bool = True) -> None:
        """Freeze what fine-tuning cannot train, so DDP needs no unused-parameter search: the pooler
        when the head reads no ``pooled``, the region mask embedding when the task masks no regions
        (only pre-training's MRM does), and whatever only the sequence output depends on when the
        head reads only ``pooled`` (``sequence`` False; e.g. LXMERT's last cross-modality layer's
        vision side).

        Example::

            backbone.freeze_unused(pooled=head.uses_pooler, region_masks=spec.trains_mask_embedding,
                                   sequence=head.uses_sequence)

        Raises:
            NotImplementedError: in a backbone that does not implement it.
        """
        raise NotImplementedError

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The word table (the MLM decoder ties to it; its rows bound the tokenizer).

        Raises:
            NotImplementedError: in a backbone that does not implement it.
        """
        raise NotImplementedError

    @property
    def img_dim(self) -> int:
        """The feature size of one position of the image input: the region feature size for a
        region backbone (checked against the data's in ``VLModule.setup``), the channels for a pixel one.

        Raises:
            NotImplementedError: in a backbone that does not implement it.
        """
        raise NotImplementedError

    def check_tokenizer(self, tokenizer, words: int, source: str = "the tokenizer") -> None:
        """Refuse a tokenizer this backbone cannot read; ``VLModule.setup`` calls it with the data
        module's tokenizer and ``words``, the word rows before a task's extra rows. The default
        checks nothing beyond the task module's own size checks.

        Example::

            backbone.check_tokenizer(datamodule.tokenizer, config.vocab_size, "data/bert-base-uncased")

        Raises:
            ValueError: in a backbone whose override finds the tokenizer unfit.
        """

    def pretraining_ties(self) -> dict[str, nn.Parameter]:
        """The backbone parameters pre-training heads share: ``img_projection`` (H, D), MRFR's
        transposed output weight (UNITER: ``img_linear.weight``), and ``region_mask`` (the MRM mask
        embedding, which pre-training touches every step). Empty: the heads keep their own.

        Example::

            head.feat_regress.weight = backbone.pretraining_ties()["img_projection"]

        Raises:
            Nothing: the default has no ties.
        """
        return {}


TYPE_TABLE = "embeddings.token_type_embeddings.weight"  # BERT-style tables, relative to the backbone
WORD_TABLE = "embeddings.word_embeddings.weight"


def grow_bert_tables(backbone: Backbone, built: tuple[int, int], type_rows_from: list[int], extra_word_rows: int,
                     state: Optional[dict[str, torch.Tensor]] = None) -> None:
    """``Backbone.grow_embeddings`` for a backbone with BERT-style embedding tables (UNITER, LXMERT):
    rows are counted from the sizes it was ``built`` with (types, words), so growing twice changes
    nothing; with ``state``, only if the checkpoint's tables already have the grown sizes. The
    backbone's own ``extend_type_embeddings(rows, copy_from)`` and ``extend_word_embeddings(rows)``
    do the growing.

    Example::

        grow_bert_tables(core, (2, 28996), [0, 0], 81)  # VCR: 4 types, 81 object-reference words

    Raises:
        Nothing of its own.
    """
    types = built[0] + len(type_rows_from)
    words = built[1] + extra_word_rows
    if state is not None:
        t, w = state.get(f"{backbone.prefix}.{TYPE_TABLE}"), state.get(f"{backbone.prefix}.{WORD_TABLE}")
        if not ((t is not None and t.shape[0] == types != backbone.config.type_vocab_size) or (
                w is not None and w.shape[0] == words != backbone.config.vocab_size)):
            return
    backbone.extend_type_embeddings(types, type_rows_from)
    backbone.extend_word_embeddings(words)


def check_wordpiece_tokenizer(tokenizer, vocab_size: int, extra_word_rows: int = 0, source: str = "the tokenizer",
                              model: str = "the model") -> None:
    """Check a WordPiece tokenizer fits a backbone trained on bert-base-uncased's vocabulary (LXMERT,
    ViLT): ``len(tokenizer) + extra_word_rows`` equals the model's ``vocab_size`` (bert-base-uncased:
    30522; transformers 5 builds a 5-token tokenizer from a missing hub id offline and ignores
    ``vocab_file=``), [PAD] is id 0 (the padding row) and an uncased vocabulary is read lower-cased.
    Read it with ``data_modules.tokenization.load_tokenizer(folder, do_lower_case=True)``.

    Example::

        check_wordpiece_tokenizer(load_tokenizer("pretrained/bert-base-uncased", do_lower_case=True), 30522,
                                  model="ViLT")

    Raises:
        ValueError: a size other than the model's, [PAD] not 0, or an uncased vocabulary read cased.
    """
    size = len(tokenizer)
    if size + extra_word_rows != vocab_size:
        raise ValueError(f"{source} has {size} tokens (+{extra_word_rows} task rows) but {model} has "
                         f"{vocab_size} word rows; a 5-token tokenizer means transformers did not read "
                         "the vocabulary (a hub id offline, or vocab_file= instead of vocab=)")
    vocab = tokenizer.get_vocab()
    if vocab.get("[PAD]") != 0:
        raise ValueError(f"{source}: [PAD] has id {vocab.get('[PAD]')}, {model} pads with id 0")
    cased = any(any(c.isupper() for c in t) for t in vocab if not (t.startswith("[") and t.endswith("]")))
    if not cased and getattr(tokenizer, "do_lower_case", True) is False:
        raise ValueError(f"{source}: an uncased vocabulary (bert-base-uncased) read without lower-casing: "
                         "capitalised words would become [UNK]; load it with do_lower_case=True")


def lengths_mask(lengths, width: int, device) -> torch.Tensor:
    """(R, width) long: 1 in the first ``lengths[r]`` positions of row r.

    Example:
        >>> lengths_mask([1, 3], 3, "cpu").tolist()
        [[1, 0, 0], [1, 1, 1]]

    Raises:
        Nothing of its own.
    """
    n = torch.as_tensor(list(lengths) if not torch.is_tensor(lengths) else lengths, dtype=torch.long, device=device)
    return (torch.arange(width, device=device)[None, :] < n[:, None]).long()
