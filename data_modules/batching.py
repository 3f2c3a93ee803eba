"""UNITER batches: pad text and regions, then tell the model how to join them (``gather_index``);
and pixel models' (ViLT's) batches: text plus ``pixel_values`` / ``pixel_mask`` (``collate_pixel_rows``).

A row is ``[CLS] text [SEP]`` plus its regions. Text is padded to the longest text of the batch,
regions to the most regions; the model concatenates both padded blocks and ``gather_index``
picks, per row, its ``tl`` text positions followed directly by its ``nb`` regions, so the joint
sequence has no hole between text and image (ChenRocks/UNITER ``data/data.py:get_gather_index``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

OPTIONAL_TYPE_KEYS = ("txt_type_ids", "img_type_ids")


def get_gather_index(txt_lens: Sequence[int], num_bbs: Sequence[int], max_txt_len: int, out_size: int) -> torch.Tensor:
    """(R, out_size) long: identity, except row i's positions ``[tl_i, tl_i + nb_i)`` point at
    ``[max_txt_len, max_txt_len + nb_i)``, the start of the padded region block."""
    if len(txt_lens) != len(num_bbs):
        raise ValueError(f"{len(txt_lens)} text lengths but {len(num_bbs)} region counts")
    tl = torch.as_tensor(list(txt_lens), dtype=torch.long)[:, None]
    nb = torch.as_tensor(list(num_bbs), dtype=torch.long)[:, None]
    if len(tl) and (int((tl + nb).max()) > out_size or int(tl.max()) > max_txt_len):
        raise ValueError(f"out_size {out_size} / max_txt_len {max_txt_len} too small for text lengths "
                         f"{list(txt_lens)} and region counts {list(num_bbs)}")
    pos = torch.arange(out_size, dtype=torch.long)[None, :]
    in_image = (pos >= tl) & (pos < tl + nb)
    return torch.where(in_image, pos - tl + max_txt_len, pos.expand(len(tl), out_size))


def collate_rows(rows: Sequence[dict]) -> dict:
    """UNITER's batch dict from rows with ``input_ids`` (incl. [CLS]/[SEP]), ``img_feat`` (n, D),
    ``img_pos_feat`` (n, 7) and optionally ``txt_type_ids`` / ``img_type_ids``."""
    if not rows:
        raise ValueError("cannot collate an empty list of rows")
    for key in OPTIONAL_TYPE_KEYS:
        present = [key in r for r in rows]
        if any(present) and not all(present):
            raise ValueError(f"{key} given for {sum(present)} of {len(rows)} rows; give it for all or none")
    txt_lens = [int(r["input_ids"].numel()) for r in rows]
    num_bbs = [int(r["img_feat"].shape[0]) for r in rows]
    input_ids = pad_sequence([r["input_ids"] for r in rows], batch_first=True, padding_value=0)
    img_feat = pad_sequence([r["img_feat"] for r in rows], batch_first=True, padding_value=0.0)
    img_pos_feat = pad_sequence([r["img_pos_feat"] for r in rows], batch_first=True, padding_value=0.0)
    joint = torch.tensor([t + n for t, n in zip(txt_lens, num_bbs)], dtype=torch.long)
    out_size = int(joint.max())
    batch = {
        "input_ids": input_ids,
        "position_ids": torch.arange(input_ids.size(1), dtype=torch.long).unsqueeze(0),
        "img_feat": img_feat,
        "img_pos_feat": img_pos_feat,
        "attn_masks": (torch.arange(out_size)[None, :] < joint[:, None]).long(),
        "gather_index": get_gather_index(txt_lens, num_bbs, input_ids.size(1), out_size),
        "txt_lens": txt_lens,
        "num_bbs": num_bbs,
    }
    for key in OPTIONAL_TYPE_KEYS:
        if key in rows[0]:
            batch[key] = pad_sequence([r[key].long() for r in rows], batch_first=True, padding_value=0)
    return batch


def collate_pixel_rows(rows: Sequence[dict], pad_multiple: int = 32) -> dict:
    """A pixel model's (ViLT's) batch dict from rows with ``input_ids`` (incl. [CLS]/[SEP]) and
    ``pixels``, the row's image resized as uint8 ``(3, h, w)`` (``data_modules.pixels``).

    Keys: ``input_ids`` (R, T) long padded with 0, ``position_ids`` (1, T), ``txt_lens`` (list),
    ``attn_masks`` (R, T) long — 1 on the row's text, **text only** here (the image's is
    ``pixel_mask``) —, ``txt_type_ids`` when the rows have them, ``img_type_ids`` (R,) long when
    the rows have one each (a 0-d tensor: the modality type of the row's image, NLVR2's left 1 and
    right 2), ``pixel_values`` (R, 3, H, W)
    float32 normalised as ``ViltImageProcessor`` does, ``pixel_mask`` (R, H, W) int64 (1 = real
    pixel); H and W are the batch's largest, rounded up to ``pad_multiple``. No region keys.

    Example:
        >>> rows = [{"input_ids": torch.tensor([101, 7, 102]), "pixels": torch.zeros(3, 64, 96, dtype=torch.uint8)},
        ...         {"input_ids": torch.tensor([101, 102]), "pixels": torch.zeros(3, 96, 64, dtype=torch.uint8)}]
        >>> b = collate_pixel_rows(rows)
        >>> tuple(b["pixel_values"].shape), b["txt_lens"], b["attn_masks"].tolist()
        ((2, 3, 96, 96), [3, 2], [[1, 1, 1], [1, 1, 0]])

    Raises:
        ValueError: no rows, a row without pixels, or ``txt_type_ids`` on some rows only.
    """
    from .pixels import collate_pixels

    if not rows:
        raise ValueError("cannot collate an empty list of rows")
    if not all("pixels" in r for r in rows):
        raise ValueError("some rows have no pixels; a batch is all pixels or all regions")
    for key in OPTIONAL_TYPE_KEYS:
        present = [key in r for r in rows]
        if any(present) and not all(present):
            raise ValueError(f"{key} given for {sum(present)} of {len(rows)} rows; give it for all or none")
    txt_lens = [int(r["input_ids"].numel()) for r in rows]
    input_ids = pad_sequence([r["input_ids"] for r in rows], batch_first=True, padding_value=0)
    lens = torch.tensor(txt_lens, dtype=torch.long)
    pixel_values, pixel_mask = collate_pixels([r["pixels"] for r in rows], pad_multiple)
    batch = {
        "input_ids": input_ids,
        "position_ids": torch.arange(input_ids.size(1), dtype=torch.long).unsqueeze(0),
        "attn_masks": (torch.arange(input_ids.size(1))[None, :] < lens[:, None]).long(),
        "txt_lens": txt_lens,
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask,
    }
    if "txt_type_ids" in rows[0]:
        batch["txt_type_ids"] = pad_sequence([r["txt_type_ids"].long() for r in rows], batch_first=True, padding_value=0)
    if "img_type_ids" in rows[0]:
        batch["img_type_ids"] = torch.stack([torch.as_tensor(r["img_type_ids"]).long().reshape(()) for r in rows])
    return batch
