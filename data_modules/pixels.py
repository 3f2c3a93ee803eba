"""ViLT's image preprocessing, done in the data loader with PIL and numpy: resize, rescale,
normalise, pad, and the pixel mask.

The rule is transformers' ``ViltImageProcessor`` (huggingface/transformers
``src/transformers/models/vilt/image_processing_pil_vilt.py``; dandelin/ViLT ``vilt/transforms/utils.py``
``MinMaxResize`` is the original): the shorter side goes to ``shortest_edge`` (384), the longer side
is capped at ``int(1333 / 800 * shortest_edge)`` (639 for 384), both are rounded to the nearest
pixel and then down to a multiple of ``size_divisor`` (32, ViLT's patch size), with PIL's bicubic
resampling; pixels are rescaled by 1/255 and normalised with mean 0.5 and std 0.5 per channel;
a batch is padded (bottom and right, with 0 after normalisation) to its largest height and width,
and ``pixel_mask`` is 1 on real pixels, 0 on padding.

Colour modes: every image is made RGB as ``ViltImageProcessor(do_convert_rgb=True)`` does it —
greyscale (``L``, ``1``, ``I;16`` …) and ``CMYK`` / ``YCbCr`` by PIL's ``convert("RGB")``, images with
transparency (``RGBA``, ``LA``, ``PA``, a palette or greyscale image with a ``transparency`` entry)
composited onto white first. ViLT itself decodes with ``Image.open(...).convert("RGB")``
(dandelin/ViLT ``vilt/datasets/base_dataset.py``), which drops alpha instead: the two differ only
on transparent pixels, which real VQA/NLVR2 images rarely have.

The work is split where it is cheapest: a dataset row carries the resized image as uint8
``(3, H, W)`` (a quarter of float32 through the worker queue); ``collate_pixels`` pads and
normalises the batch with transformers' own arithmetic (float64 rescale cast to float32, then
float32 ``(x - mean) / std``), so the values are the same floats, not merely close; ``normalise``
(one image, numpy) does it with a 256-entry lookup table of those values.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

MAX_LONGER_EDGE, MAX_SHORTER_EDGE = 1333, 800  # ViLT's (and DETR's) 800 x 1333, scaled to shortest_edge
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
RESAMPLE = "bicubic"


@dataclass(frozen=True)
class ImageTransform:
    """ViLT's resize rule.

    Args:
        shortest_edge: the shorter side's target (ViLT: 384).
        longest_edge: cap on the longer side; None = ``int(1333 / 800 * shortest_edge)`` (639).
        size_divisor: both sides are rounded down to a multiple of it (ViLT-B/32: 32).

    Example:
        >>> ImageTransform().output_size(640, 480)   # (height, width) of a 640 x 480 image
        (384, 512)
        >>> ImageTransform().output_size(50, 80)   # a tiny portrait image
        (608, 384)

    Raises:
        ValueError: a non-positive size, or an image so elongated that a side would become 0.
    """

    shortest_edge: int = 384
    longest_edge: Optional[int] = None
    size_divisor: int = 32

    def __post_init__(self) -> None:
        for name in ("shortest_edge", "size_divisor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.longest_edge is None:
            object.__setattr__(self, "longest_edge", int(MAX_LONGER_EDGE / MAX_SHORTER_EDGE * self.shortest_edge))
        if isinstance(self.longest_edge, bool) or not isinstance(self.longest_edge, int) or \
                self.longest_edge < self.shortest_edge:
            raise ValueError(f"longest_edge must be an int >= shortest_edge ({self.shortest_edge}), got {self.longest_edge!r}")

    def output_size(self, width: int, height: int, where: str = "image") -> tuple[int, int]:
        """``(height, width)`` after resizing a ``width`` x ``height`` image (transformers'
        ``get_resize_output_image_size`` of the ViLT processor, the same float arithmetic)."""
        if width <= 0 or height <= 0:
            raise ValueError(f"{where}: size {width} x {height} is not positive")
        scale = self.shortest_edge / min(height, width)
        if height < width:
            new_h, new_w = self.shortest_edge, scale * width
        else:
            new_h, new_w = scale * height, self.shortest_edge
        if max(new_h, new_w) > self.longest_edge:
            scale = self.longest_edge / max(new_h, new_w)
            new_h, new_w = scale * new_h, scale * new_w
        new_h, new_w = int(new_h + 0.5), int(new_w + 0.5)
        new_h, new_w = new_h // self.size_divisor * self.size_divisor, new_w // self.size_divisor * self.size_divisor
        if new_h == 0 or new_w == 0:
            raise ValueError(f"{where}: a {width} x {height} image is too elongated for ViLT's resize "
                             f"(shortest_edge {self.shortest_edge}, longest_edge {self.longest_edge}, size_divisor "
                             f"{self.size_divisor}): a side would be 0 pixels")
        return new_h, new_w

    def is_fixed_point(self, width: int, height: int) -> bool:
        """Whether an image of this size is left as it is (what a pre-resized store holds)."""
        return self.output_size(width, height) == (height, width)

    def __call__(self, image: Image.Image, where: str = "image") -> np.ndarray:
        """The resized RGB image as uint8 ``(H, W, 3)`` (PIL bicubic), ``image`` made RGB first."""
        image = to_rgb(image)
        h, w = self.output_size(*image.size, where=where)
        if (w, h) != image.size:
            image = image.resize((w, h), resample=Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8)

    def as_attrs(self) -> dict:
        """The settings as a store keeps them (``data_modules.images``)."""
        return {"shortest_edge": self.shortest_edge, "longest_edge": self.longest_edge,
                "size_divisor": self.size_divisor, "resample": RESAMPLE}


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in mode RGB; transparency is composited onto white (transformers' ``convert_to_rgb``).

    Example:
        >>> to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0))   # fully transparent black
        (255, 255, 255)
    """
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _lookup_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, 256) float32: value v of channel c after rescale and normalise, computed as transformers
    does (float64 rescale cast to float32, then float32 ``(x - mean) / std``)."""
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    return np.stack([(levels - np.float32(m)) / np.float32(s) for m, s in zip(mean, std)]).astype(np.float32)


NORMALISE_LUT = _lookup_table(IMAGE_MEAN, IMAGE_STD)
_MEAN = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
_STD = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]


def normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``(3, H, W)`` → float32, rescaled by 1/255 and normalised (mean 0.5, std 0.5).

    Example:
        >>> normalise(np.array([[[0, 255]]] * 3, dtype=np.uint8))[0].tolist()
        [[-1.0, 1.0]]
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[0] != 3:
        raise ValueError(f"expected uint8 (3, H, W) pixels, got {pixels.dtype} {pixels.shape}")
    out = np.empty(pixels.shape, dtype=np.float32)
    for c in range(3):
        out[c] = NORMALISE_LUT[c][pixels[c]]  # fancy indexing: 3x faster than np.take(..., out=) here
    return out


def collate_pixels(images: Sequence[torch.Tensor], pad_multiple: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values (R, 3, H, W) float32, pixel_mask (R, H, W) int64)`` of uint8 ``(3, h, w)``
    images: normalised, padded bottom/right with 0 to the largest ``h`` / ``w`` of the batch rounded up
    to ``pad_multiple``.

    Example:
        >>> values, mask = collate_pixels([torch.zeros(3, 32, 64, dtype=torch.uint8),
        ...                                torch.zeros(3, 40, 32, dtype=torch.uint8)])
        >>> tuple(values.shape), tuple(mask.shape), int(mask[1].sum())
        ((2, 3, 64, 64), (2, 64, 64), 1280)

    Raises:
        ValueError: no images, or one that is not uint8 (3, h, w), or pad_multiple < 1.
    """
    if not images:
        raise ValueError("cannot collate an empty list of images")
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
    for i, img in enumerate(images):
        if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image {i}: expected uint8 (3, h, w) pixels, got {img.dtype} {tuple(img.shape)}")
    height = -(-max(int(img.shape[1]) for img in images) // pad_multiple) * pad_multiple
    width = -(-max(int(img.shape[2]) for img in images) // pad_multiple) * pad_multiple
    values = torch.empty((len(images), 3, height, width), dtype=torch.float32)
    mask = torch.zeros((len(images), height, width), dtype=torch.int64)
    for i, img in enumerate(images):
        h, w = int(img.shape[1]), int(img.shape[2])
        real = values[i, :, :h, :w]
        # transformers' arithmetic, in place: float64 x / 255 cast to float32, then (x - mean) / std in float32
        real.copy_(img.to(torch.float64).mul_(1 / 255))
        real.sub_(_MEAN).div_(_STD)
        values[i, :, h:, :] = 0
        values[i, :, :h, w:] = 0
        mask[i, :h, :w] = 1
    return values, mask
