"""ViLT (Kim, Son & Kim, ICML 2021) as a backbone, through transformers' own ``ViltModel``.

Nothing of ViLT's maths is rewritten here: ``ViltBackbone`` builds a ``transformers.ViltModel`` and
registers its four children (``embeddings``, ``encoder``, ``layernorm``, ``pooler``) as its own, so
parameter names are transformers' (``embeddings.text_embeddings.*`` BERT-style text embeddings,
``embeddings.patch_embeddings.projection`` the patch Conv2d, ``embeddings.token_type_embeddings``
the modality table, ``encoder.layer.N.*`` the single-stream ViT blocks) and, under the task module's
``vilt.`` prefix, exactly the keys of a released ``ViltForMaskedLM`` / ``ViltForQuestionAnswering``
folder (``dandelin/vilt-b32-mlm``). What is written here is the seam (``backbone.Backbone``).

The batch (what the pixel data pipeline produces; R rows as on the region path, NLVR2 two per pair:
rows 2i and 2i+1 the pair's left and right image with the same statement):

* ``input_ids`` (R, Lt) long, [PAD] = 0; the text mask from ``txt_lens`` when given, else
  ``input_ids != 0``; optional ``txt_type_ids`` (R, Lt) (BERT's text types; ViLT uses 0);
* ``pixel_values`` (R, 3, H, W) float32, already normalised (``ViltImageProcessor``: mean = std =
  0.5), H and W multiples of ``patch_size`` (32 for ViLT-B/32); the image at the top left, padding
  right / bottom;
* ``pixel_mask`` (R, H, W) int64, 1 on real pixels, 0 on padding (absent: every pixel is real);
* optional ``img_type_ids``: (R,) long, or (R, …) constant per row (the region batches' layout),
  the modality type of the row's image tokens: 1 (default), NLVR2's right image 2 (ViLT's NLVR2
  recipe: a third modality type, a copy of the image type — see ``grow_embeddings``).

There is no ``img_feat``: a batch without ``pixel_values`` is refused (ValueError naming the key).

``forward`` returns ``sequence`` = ViltModel's ``last_hidden_state`` — the Lt text positions, then
the image [CLS], then the patches in raster order (row-major over the patch grid; padding patches
last) —, ``sequence_mask`` = the text mask then the image mask, and ``pooled`` = ViltModel's pooler
output. transformers' ``visual_embed`` returns the kept patches in a random order (it draws them with
``torch.multinomial``); the backbone calls it itself, sorts its output back to raster order and
hands ViltModel the embedded patches (``image_embeds``), so ``sequence`` has a fixed layout. The
encoder is permutation-equivariant (each patch carries its position embedding), so this changes
float rounding only.

``max_image_length`` is -1 by default (every patch kept): lottery-ticket training compares masked
networks step by step, so every step must run the same function of the image. ViLT itself sampled
at most 200 patches per image in pre-training (a data augmentation; dandelin/ViLT vilt/config.py
``max_image_len = 200`` for the pre-training tasks, -1 for fine-tuning); set it to a positive number
to sample as ViLT's pre-training did.

``img_delta`` (the adversarial seam) is added to ``pixel_values`` (shape (R, 3, H, W); zero at padded
pixels, ``image_delta_mask``): the pixels are ViLT's raw image input, as region features are
UNITER's. ``txt_delta`` (R, Lt, H) is added to the word embeddings (passed as ``inputs_embeds``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers import ViltConfig, ViltModel

from .backbone import Backbone, BackboneOutput, HeadSizes, PrunableGroup, check_wordpiece_tokenizer, lengths_mask
from .checkpoints import (
    SHUFFLED, LoadReport, load_into, read_folder_config, read_weights_file, shuffle_prefixed, weights_source,
)

# A ViLT block (transformers' ViltLayer, ViT's names): module → one of the six BERT parts the
# overlap analysis knows (lightning_vl.analysis.overlap.PART_TYPES), as UNITER's and LXMERT's layers.
LAYER_PARTS = {
    "attention.attention.query": "query",
    "attention.attention.key": "key",
    "attention.attention.value": "value",
    "attention.output.dense": "attn_out",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
}
# Opt-in parts outside the blocks (layer -1): --imp.prunable name → [(relative weight, group part)].
EXTRA_PARTS = {
    "patch_projection": [("embeddings.patch_embeddings.projection.weight", "patch_projection")],
    "pooler": [("pooler.dense.weight", "pooler")],
}
PARTS = ("encoder", *EXTRA_PARTS)
ROOTS = ("embeddings.", "encoder.", "layernorm.", "pooler.")  # a bare ViltModel's keys
WORD_TABLE = "embeddings.text_embeddings.word_embeddings.weight"
TEXT_TYPE_TABLE = "embeddings.text_embeddings.token_type_embeddings.weight"
MODALITY_TABLE = "embeddings.token_type_embeddings.weight"


@dataclass
class ViltBackboneConfig:
    """The sizes of a ViLT (transformers' ``ViltConfig`` fields the project varies). Defaults: ViLT-B/32
    (transformers' ``ViltConfig`` defaults, the ``dandelin/vilt-b32-mlm`` architecture), except
    ``pad_token_id`` 0: ViLT's text embeddings are BERT's with [PAD] = 0 (dandelin/ViLT
    vilt/modules/vilt_module.py builds them from a default ``BertConfig``), and the data pads with 0.

    Example:
        >>> cfg = ViltBackboneConfig(vocab_size=32, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
        ...                          intermediate_size=32, image_size=64, patch_size=16)
        >>> hf = cfg.to_hf()
        >>> hf.max_image_length, hf.modality_type_vocab_size
        (-1, 2)

    Raises:
        ValueError: ``hidden_size`` not a multiple of ``num_attention_heads``, ``image_size`` not a
            multiple of ``patch_size``, ``num_channels`` other than 3, or ``max_image_length`` 0 or
            below -1.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 40
    type_vocab_size: int = 2  # BERT's text types (ViLT's text rows use 0)
    modality_type_vocab_size: int = 2  # 0 text, 1 image (NLVR2 grows a 2: the right image)
    image_size: int = 384  # the position table's grid: image_size / patch_size per side
    patch_size: int = 32
    num_channels: int = 3
    qkv_bias: bool = True
    max_image_length: int = -1  # -1: every patch; n > 0: sample n patches per image (ViLT's augmentation)
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_channels != 3:
            raise ValueError(f"num_channels must be 3 (RGB pixel_values), got {self.num_channels}")
        if self.max_image_length == 0 or self.max_image_length < -1:
            raise ValueError(f"max_image_length must be -1 (every patch) or a positive patch count, "
                             f"got {self.max_image_length}")

    def to_hf(self) -> ViltConfig:
        """transformers' config for these sizes."""
        return ViltConfig(**asdict(self))

    @classmethod
    def from_folder(cls, path: str | Path) -> "ViltBackboneConfig":
        """The sizes in a transformers folder's ``config.json`` (e.g. a copy of dandelin/vilt-b32-mlm);
        a missing ``pad_token_id`` stays 0.

        Example::

            ViltBackbone(ViltBackboneConfig.from_folder("pretrained/vilt-b32-mlm"))

        Raises:
            FileNotFoundError: no ``config.json`` in ``path``.
            ValueError: a config whose ``model_type`` is not ``vilt``.
        """
        raw = read_folder_config(path, "vilt", "a ViLT")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if raw.get(f.name) is not None})


# Lightning checkpoints carry the module's hyper-parameters; allow the config in weights_only loads.
torch.serialization.add_safe_globals([ViltBackboneConfig])


class ViltBackbone(Backbone):
    """The ``vilt`` backbone: transformers' ``ViltModel`` behind the project's seam (the batch
    contract and the choices are in the module docstring).

    Example:
        >>> cfg = ViltBackboneConfig(vocab_size=32, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
        ...                          intermediate_size=32, image_size=64, patch_size=16)
        >>> backbone = ViltBackbone(cfg).eval()
        >>> batch = {"input_ids": torch.tensor([[2, 7, 3, 0]]), "pixel_values": torch.rand(1, 3, 64, 48),
        ...          "pixel_mask": torch.ones(1, 64, 48, dtype=torch.long)}
        >>> out = backbone(batch)
        >>> tuple(out.sequence.shape), tuple(out.pooled.shape)  # 4 text + [CLS] + 4 x 3 patches
        ((1, 17, 16), (1, 16))
        >>> out.sequence_mask.tolist()
        [[1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]
        >>> len(backbone.prunable_groups())  # 6 per block
        6

    Raises:
        ValueError: a batch without ``pixel_values`` or with pixels of the wrong shape; a checkpoint
            whose shapes do not fit (see ``load``).
    """

    prefix = "vilt"
    config_class = ViltBackboneConfig
    image_input_key = "pixel_values"

    def __init__(self, config: ViltBackboneConfig):
        super().__init__()
        self.config = replace(config)  # own copy: growth updates it
        model = ViltModel(config.to_hf())
        # transformers' modules become ours (names without a wrapper level); the model object is kept
        # outside the module tree, so its forward runs on exactly these children.
        self.embeddings, self.encoder = model.embeddings, model.encoder
        self.layernorm, self.pooler = model.layernorm, model.pooler
        self.__dict__["_hf"] = model
        self._built_sizes = (config.modality_type_vocab_size, config.type_vocab_size, config.vocab_size)

    @property
    def hf_model(self) -> ViltModel:
        """The wrapped ``transformers.ViltModel`` (its children are this module's children)."""
        return self.__dict__["_hf"]

    def train(self, mode: bool = True) -> "ViltBackbone":
        super().train(mode)
        self.hf_model.training = mode  # its children already follow; keep its own flag in step
        return self

    def head_sizes(self) -> HeadSizes:
        """ViLT's sizes for the heads: the word rows as built (before a task's growth) and
        ``img_dim`` 0 — ViLT has no region features, so no region head (MRFR) fits it.

        Example:
            >>> cfg = ViltBackboneConfig(vocab_size=32, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
            ...                          intermediate_size=32, image_size=64, patch_size=16)
            >>> sizes = ViltBackbone(cfg).head_sizes()
            >>> sizes.hidden_size, sizes.vocab_size, sizes.img_dim, sizes.layer_norm_eps
            (16, 32, 0, 1e-12)

        Raises:
            Nothing of its own.
        """
        c = self.config
        return HeadSizes(c.hidden_size, c.num_attention_heads, c.hidden_dropout_prob, c.attention_probs_dropout_prob,
                         c.layer_norm_eps, c.initializer_range, self._built_sizes[2], 0)

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The word table (the MLM decoder ties to it, as ``ViltForMaskedLM``'s does; its rows bound the tokenizer)."""
        return self.embeddings.text_embeddings.word_embeddings

    @property
    def img_dim(self) -> int:
        """The feature size of one image-input position: the pixels' channels (3). ``VLModule.setup``
        compares the data's region-feature size only for region backbones."""
        return self.config.num_channels

    # -- forward -----------------------------------------------------------------------------------
    def image_delta_mask(self, batch: dict) -> Optional[torch.Tensor]:
        """(R, 1, H, W): 1 on real pixels (``pixel_mask``), so δ_img stays zero on padding.

        Example::

            valid = backbone.image_delta_mask(batch)  # broadcasts against batch["pixel_values"]

        Raises:
            Nothing of its own.
        """
        pixels = batch.get("pixel_values")
        if pixels is None:
            return None
        mask = batch.get("pixel_mask")
        if mask is None:
            return torch.ones_like(pixels[:, :1])
        return mask[:, None].to(device=pixels.device, dtype=pixels.dtype)

    def embed_image(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' ``ViltEmbeddings.visual_embed`` (patch projection, interpolated position
        embeddings, the image [CLS], dropout; ``max_image_length`` patches kept), its patches put back
        in raster order: ``(embeds (R, 1 + N, H), mask (R, 1 + N))``, padding patches last.

        Example::

            embeds, mask = backbone.embed_image(batch["pixel_values"], batch["pixel_mask"])

        Raises:
            Nothing of its own.
        """
        embeds, mask, (patch_index, _) = self.embeddings.visual_embed(
            pixel_values, pixel_mask, max_image_length=self.config.max_image_length)
        grid_h, grid_w = pixel_values.size(2) // self.config.patch_size, pixel_values.size(3) // self.config.patch_size
        key = patch_index[..., 0] * grid_w + patch_index[..., 1]
        key = torch.where(mask[:, 1:].bool(), key, key + grid_h * grid_w)  # padding patches after the real ones
        order = key.argsort(dim=1, stable=True)
        patches = embeds[:, 1:].gather(1, order.unsqueeze(-1).expand(-1, -1, embeds.size(-1)))
        return torch.cat([embeds[:, :1], patches], dim=1), torch.cat([mask[:, :1], mask[:, 1:].gather(1, order)], dim=1)

    def encode(self, batch: dict, txt_delta: Optional[torch.Tensor] = None,
               img_delta: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ViltModel``'s ``(last_hidden_state, pooler_output)`` for a batch and the sequence mask
        (text mask, then image mask). Rows whose images have different modality types
        (``img_type_ids``: NLVR2's left and right images) run through ``ViltModel`` in one call per
        type, as transformers' ``ViltForImagesAndTextClassification`` does, and come back in row order.

        Example::

            sequence, pooled, mask = backbone.encode(batch)

        Raises:
            KeyError: no ``input_ids``.
            ValueError: no ``pixel_values``; pixels not (R, 3, H, W) with H, W multiples of ``patch_size``;
                a ``pixel_mask`` of another shape than (R, H, W).
        """
        ids = batch["input_ids"]
        pixels = batch.get("pixel_values")
        if pixels is None:
            have = ", ".join(sorted(k for k in batch if not k.startswith("_"))[:8])
            raise ValueError("ViLT reads images as pixels: this batch has no 'pixel_values' (expected (R, 3, H, W) "
                             f"float32 normalised pixels and 'pixel_mask' (R, H, W); it has {have}). "
                             "Region features (img_feat) are for UNITER and LXMERT")
        rows, patch = ids.size(0), self.config.patch_size
        if pixels.dim() != 4 or pixels.size(0) != rows or pixels.size(1) != self.config.num_channels \
                or pixels.size(2) % patch or pixels.size(3) % patch:
            raise ValueError(f"pixel_values has shape {tuple(pixels.shape)}; expected ({rows}, "
                             f"{self.config.num_channels}, H, W) with H and W multiples of patch_size {patch}")
        device = ids.device
        pixel_mask = batch.get("pixel_mask")
        if pixel_mask is None:
            pixel_mask = torch.ones((rows, *pixels.shape[2:]), dtype=torch.long, device=device)
        elif tuple(pixel_mask.shape) != (rows, *pixels.shape[2:]):
            raise ValueError(f"pixel_mask has shape {tuple(pixel_mask.shape)}; expected {(rows, *pixels.shape[2:])}")
        text_mask = lengths_mask(batch["txt_lens"], ids.size(1), device) if "txt_lens" in batch \
            else (ids != 0).long()
        words = self.word_embeddings(ids)
        if txt_delta is not None:
            words = words + txt_delta
        if img_delta is not None:
            pixels = pixels + img_delta
        image_embeds, image_mask = self.embed_image(pixels, pixel_mask.long())
        text_types = batch.get("txt_type_ids")
        types = self._image_types(batch, rows, device)
        kinds = types.unique().tolist()
        if len(kinds) == 1:
            out = self._run(words, text_mask, text_types, image_embeds, image_mask, kinds[0])
            sequence, pooled = out
        else:  # one ViltModel call per modality type, then back in row order
            parts, index = [], []
            for kind in kinds:
                sel = (types == kind).nonzero().squeeze(1)
                parts.append(self._run(words[sel], text_mask[sel], None if text_types is None else text_types[sel],
                                       image_embeds[sel], image_mask[sel], kind))
                index.append(sel)
            back = torch.cat(index).argsort()
            sequence = torch.cat([p[0] for p in parts])[back]
            pooled = torch.cat([p[1] for p in parts])[back]
        return sequence, pooled, torch.cat([text_mask, image_mask.long()], dim=1)

    def _run(self, words, text_mask, text_types, image_embeds, image_mask, kind: int):
        out = self.hf_model(inputs_embeds=words, attention_mask=text_mask, token_type_ids=text_types,
                            image_embeds=image_embeds, pixel_mask=image_mask, image_token_type_idx=int(kind),
                            return_dict=True)
        return out.last_hidden_state, out.pooler_output

    @staticmethod
    def _image_types(batch: dict, rows: int, device) -> torch.Tensor:
        types = batch.get("img_type_ids")
        if types is None:
            return torch.ones(rows, dtype=torch.long, device=device)
        types = torch.as_tensor(types, device=device).reshape(rows, -1)
        if not torch.equal(types, types[:, :1].expand_as(types)):
            raise ValueError("img_type_ids must be one modality type per row (a ViLT row has one image)")
        return types[:, 0].long()

    def forward(self, batch: dict, txt_delta: Optional[torch.Tensor] = None, img_delta: Optional[torch.Tensor] = None,
                pool: bool = True) -> BackboneOutput:
        """Encode a batch: ``txt_delta`` (R, Lt, H) is added to the word embeddings, ``img_delta``
        (R, 3, H, W) to the pixels; ``pool=False`` drops the pooled output (ViltModel computes it
        anyway: one Linear on [CLS]; ``freeze_unused`` freezes it).

        Example::

            out = backbone(batch)  # BackboneOutput(sequence (R, Lt + 1 + N, H), sequence_mask, pooled (R, H))

        Raises:
            KeyError: no ``input_ids``.
            ValueError: no ``pixel_values`` (see ``encode``).
        """
        sequence, pooled, mask = self.encode(batch, txt_delta, img_delta)
        return BackboneOutput(sequence, mask, pooled if pool else None)

    # -- pruning -----------------------------------------------------------------------------------
    def prunable_groups(self, parts: tuple[str, ...] = ("encoder",)) -> dict[str, PrunableGroup]:
        """``encoder``: every Linear weight of the transformer blocks — per block (stream ``joint``,
        single-stream as UNITER) the six BERT parts (``LAYER_PARTS``); ``patch_projection`` (the patch
        Conv2d's weight, (H, 3, P, P); magnitude pruning only — Wanda prunes Linear weights) and
        ``pooler`` opt in (layer -1). ViLT-B/32: 12 × 6 = 72 tensors (84,934,656 weights); +1
        patch_projection (2,359,296), +1 pooler (589,824).

        Example:
            >>> cfg = ViltBackboneConfig(vocab_size=8, hidden_size=8, num_attention_heads=2, num_hidden_layers=0,
            ...                          intermediate_size=8, image_size=32, patch_size=16)
            >>> list(ViltBackbone(cfg).prunable_groups(("pooler",)).items())
            [('pooler.dense.weight', PrunableGroup(stream='joint', layer=-1, part='pooler'))]

        Raises:
            ValueError: an unknown part, naming encoder, patch_projection and pooler.
        """
        return prunable_groups_for(self.config, parts)

    # -- weights -----------------------------------------------------------------------------------
    @classmethod
    def read_init(cls, spec: str, seed: int = 0) -> dict[str, torch.Tensor]:
        """The state dict (backbone keys prefixed ``vilt.``, heads' keys as the file has them) an
        ``init`` value names:

        * a transformers folder of a ViLT (``config.json`` ``model_type: vilt`` + ``model.safetensors``
          or ``pytorch_model.bin``): a bare ``ViltModel``'s keys get the prefix, ``ViltForMaskedLM`` /
          ``ViltForQuestionAnswering`` / … keys already have it and bring their heads (``mlm_score.*``,
          ``classifier.*``, … unexpected when loaded) — θ_0;
        * a transformers folder of a ViT (``model_type: vit``, e.g. google/vit-base-patch32-384): the
          patch projection, position embeddings, image [CLS], the blocks and the final LayerNorm are
          the ViT's (ViLT's names are ViT's), the text embeddings, modality table and pooler stay at
          init (the load report's missing keys; ViT's own pooler is reported unexpected) — θ'_0. This
          is ViLT's own starting point before vision-and-language pre-training (dandelin/ViLT
          vilt/modules/vilt_module.py: ``vit_base_patch32_384`` weights, text embeddings trained from
          scratch), the unimodal init that UNITER's and LXMERT's θ'_0 (BERT) stands for. A BERT folder
          is refused: ViLT never used BERT's weights, and BERT's 512 position rows do not fit ViLT's 40;
        * a state-dict file (ours, a Lightning checkpoint, IMP's ``init.pt``; ``.safetensors`` too);
        * ``shuffled:<any of these>``: every ``vilt.*`` tensor's values permuted, seeded — θ''_0.

        Example::

            state = ViltBackbone.read_init("shuffled:pretrained/vilt-b32-mlm", seed=1)

        Raises:
            FileNotFoundError: no such file; a folder without config.json or weights.
            ValueError: a file that is not plain tensors or holds no ``vilt.*`` weights (a UNITER or
                LXMERT checkpoint); a folder of another model type (bert, lxmert …).
        """
        if spec.startswith(SHUFFLED):
            return shuffle_prefixed(cls.read_init(spec[len(SHUFFLED):], seed), seed, cls.prefix)
        path = Path(spec)
        if path.is_dir():
            return read_folder(path, cls.prefix)
        raw = read_weights_file(path)
        state = {(f"{cls.prefix}.{k}" if k.startswith(ROOTS) else k): v for k, v in raw.items()}
        if not any(k.startswith(f"{cls.prefix}.") for k in state):
            # e.g. the demo's uniter-tiny.pt or lxmert-tiny.pt given to a ViLT: nothing would load
            other = sorted({k.split(".", 1)[0] for k in state})[:4]
            raise ValueError(f"{path} holds no ViLT weights (no {cls.prefix}.* keys; it has {', '.join(other)} …): "
                             "give a ViLT checkpoint (a transformers folder such as a copy of dandelin/vilt-b32-mlm, "
                             "or one of ours) or --model.init null")
        return state

    def load(self, spec: str, seed: int = 0) -> LoadReport:
        """Load an ``init`` value (see ``read_init``) into this backbone alone; keys outside ``vilt.*``
        (heads) are reported unexpected, backbone tensors the source lacks missing (left at init).

        Example::

            report = backbone.load("pretrained/vilt-b32-mlm")
            print(report.summary())

        Raises:
            FileNotFoundError, ValueError: as ``read_init``; ValueError also for a shape mismatch,
                naming the source file, the key and both shapes.
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
    def grow_embeddings(self, type_rows_from: list[int], extra_word_rows: int,
                        state: Optional[dict[str, torch.Tensor]] = None) -> None:
        """A task's extra type rows and word rows. The tasks name type rows in UNITER's single type
        space (0 text, 1 image); ViLT keeps two tables, so rows copied from the image type grow the
        modality table (NLVR2's ``[1]``: a third modality type, a copy of the image type — exactly
        ViLT's NLVR2 set-up, dandelin/ViLT vilt/modules/vilt_module.py) and rows copied from the text
        type grow the text type table (VCR's ``[0, 0]``, as UNITER and LXMERT grow theirs). Counted
        from the built sizes (idempotent). With ``state`` (a checkpoint about to be loaded), each
        table grows only if the checkpoint's already has the grown size (ours; a ViLT fine-tuned on
        NLVR2 has 3 modality rows and 2 text types).

        Example::

            backbone.grow_embeddings([1], 0)  # NLVR2: modality table 2 → 3 rows, row 2 = row 1

        Raises:
            ValueError: type rows copied from both text and image types (no task asks that), or from
                a row other than 0 and 1.
        """
        sources = set(type_rows_from)
        if not sources <= {0, 1} or len(sources) > 1:
            raise ValueError(f"ViLT grows its text type table from type 0 and its modality table from type 1, "
                             f"one of them per task; got type rows from {type_rows_from}")
        table = MODALITY_TABLE if sources == {1} else TEXT_TYPE_TABLE
        built_modality, built_types, built_words = self._built_sizes
        targets = {MODALITY_TABLE: built_modality + (len(type_rows_from) if table == MODALITY_TABLE else 0),
                   TEXT_TYPE_TABLE: built_types + (len(type_rows_from) if table == TEXT_TYPE_TABLE else 0),
                   WORD_TABLE: built_words + extra_word_rows}
        for key, rows in targets.items():
            current = self.get_submodule(key.rsplit(".", 1)[0]).num_embeddings
            if current >= rows:
                continue
            if state is not None:
                theirs = state.get(f"{self.prefix}.{key}")
                if theirs is None or theirs.shape[0] != rows:
                    continue
            self._grow(key, rows, type_rows_from)

    def _grow(self, key: str, rows: int, copy_from: list[int]) -> None:
        path = key.rsplit(".", 1)[0]
        parent, name = path.rsplit(".", 1)
        old = self.get_submodule(path)
        new = nn.Embedding(rows, old.embedding_dim, padding_idx=old.padding_idx).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight.normal_(0.0, self.config.initializer_range)  # fresh word rows, as transformers inits tables
            new.weight[: old.num_embeddings] = old.weight
            if key != WORD_TABLE:
                for k, src in enumerate(copy_from, start=old.num_embeddings):
                    new.weight[k] = old.weight[src]
        setattr(self.get_submodule(parent), name, new)
        field = {WORD_TABLE: "vocab_size", TEXT_TYPE_TABLE: "type_vocab_size",
                 MODALITY_TABLE: "modality_type_vocab_size"}[key]
        setattr(self.config, field, rows)
        setattr(self.hf_model.config, field, rows)

    def freeze_unused(self, pooled: bool, region_masks: bool, sequence: bool = True) -> None:
        """Freeze the pooler when no head reads ``pooled`` (ViLT has no region mask embedding). A
        pooled-only head (``sequence`` False) leaves nothing unread: every block, the final LayerNorm
        and both type tables reach the [CLS] the pooler reads, so DDP finds no unused parameter.

        Example::

            backbone.freeze_unused(pooled=False, region_masks=False, sequence=True)  # NLVR2 paired-attn

        Raises:
            Nothing of its own.
        """
        if not pooled:
            self.pooler.requires_grad_(False)

    def check_tokenizer(self, tokenizer, words: int, source: str = "the tokenizer") -> None:
        """ViLT reads bert-base-uncased WordPiece: the whole vocabulary (30522 at base size), [PAD] = 0,
        lower-cased (``backbone.check_wordpiece_tokenizer``, shared with LXMERT).

        Example::

            backbone.check_tokenizer(load_tokenizer("pretrained/bert-base-uncased", do_lower_case=True), 30522)

        Raises:
            ValueError: see ``backbone.check_wordpiece_tokenizer``.
        """
        check_wordpiece_tokenizer(tokenizer, words, source=source, model="the ViLT")

    def pretraining_ties(self) -> dict[str, nn.Parameter]:
        """None beyond the word table (the MLM decoder ties to ``word_embeddings``, as
        ``ViltForMaskedLM``'s does); ViLT has no region objectives (no MRFR projection, no region
        mask embedding; its masked patch prediction was dropped from the released model)."""
        return {}


# -- helpers ---------------------------------------------------------------------------------------------
def prunable_groups_for(config: ViltBackboneConfig, parts: tuple[str, ...] = ("encoder",)) -> dict[str, PrunableGroup]:
    """``ViltBackbone.prunable_groups`` from the sizes alone (no weights built: counts at base size).

    Example:
        >>> len(prunable_groups_for(ViltBackboneConfig(), ("encoder", "patch_projection", "pooler")))
        74

    Raises:
        ValueError: an unknown part, naming encoder, patch_projection and pooler.
    """
    out: dict[str, PrunableGroup] = {}
    for part in parts:
        if part == "encoder":
            for i in range(config.num_hidden_layers):
                for path, name in LAYER_PARTS.items():
                    out[f"encoder.layer.{i}.{path}.weight"] = PrunableGroup("joint", i, name)
        elif part in EXTRA_PARTS:
            for name, group in EXTRA_PARTS[part]:
                out[name] = PrunableGroup("joint", -1, group)
        else:
            raise ValueError(f"unknown prunable part {part!r} for ViLT; expected one of {', '.join(PARTS)}")
    return out


VIT_ROOTS = ("embeddings.cls_token", "embeddings.position_embeddings", "embeddings.patch_embeddings.",
             "encoder.", "layernorm.")  # what a ViT gives a ViLT (θ'_0)


def read_folder(path: Path, prefix: str = "vilt") -> dict[str, torch.Tensor]:
    """A transformers folder's weights as ``<prefix>.*`` keys: a ViLT's (bare ``ViltModel`` or a
    ``ViltFor…`` with ``vilt.*`` keys and heads) or a ViT's (θ'_0: ``vit.*`` or bare keys, the parts
    ViLT shares with ViT; the rest stays unprefixed and is reported unexpected). Files are read in the
    layout the hub holds and ``save_pretrained`` writes (``encoder.layer.N.attention.attention.query``:
    ViLT's names; transformers 5 renames ViT's modules in memory only).

    Example::

        state = read_folder(Path("pretrained/vilt-b32-mlm"))  # {"vilt.encoder.layer.0…": …, "mlm_score.…": …}

    Raises:
        FileNotFoundError: no config.json, or neither model.safetensors nor pytorch_model.bin.
        ValueError: a model type other than vilt or vit.
    """
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a transformers folder of a ViLT or a ViT)")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if model_type not in ("vilt", "vit"):
        why = (" (ViLT's text embeddings were trained from scratch, never from BERT, and BERT's 512 position "
               "rows do not fit ViLT's 40: ViLT's unimodal init θ'_0 is a ViT's)") if model_type == "bert" else ""
        raise ValueError(f"{config}: model_type {model_type!r}; ViLT reads a ViLT folder (θ_0) or a ViT folder "
                         f"(θ'_0){why}")
    file = weights_source(str(path))
    if file == path:
        raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin")
    raw = read_weights_file(file)
    if model_type == "vilt":  # ViltModel saves bare keys; ViltForMaskedLM & co. already say vilt.*
        return {(f"{prefix}.{k}" if k.startswith(ROOTS) else k): v for k, v in raw.items()}
    out = {}
    for k, v in raw.items():
        bare = k[len("vit."):] if k.startswith("vit.") else k
        out[f"{prefix}.{bare}" if bare.startswith(VIT_ROOTS) else k] = v
    return out
