"""The demo world drawn: each scene as a small image, for pixel models (ViLT) on the demo.

An object is drawn inside its box (scaled from the scene's pixels to the image's) in its colour
(``COLOR_RGB``), as its shape — cube a square, sphere a disc, cylinder an upright capsule, cone a
triangle — with its material visible: metal has a white rim and a white highlight in its upper
left, rubber is matte with darker diagonal stripes and a dark rim. Its size is its box's. The
background is a random grey-ish tint with blocky noise (4 x 4 pixel blocks). Clutter boxes (the
detector's background regions) are not drawn: they are background.

Images are ``DEMO_IMAGE_SIZE`` = 160 x 128 (width x height), whatever the scene's own size (480-800 x
360-600): both sides are multiples of 32, so ViLT's resize with ``image_size: 128`` leaves them as
they are, and a tiny ViLT sees 5 x 4 patches of 32 or 10 x 8 of 16; a small object is about
15-24 pixels wide (1-2 patches of 16 a side), a large one 30-48.
Deterministic: the pixels of a scene depend only on the world seed and the scene (its id seeds
the noise), not on the order scenes are drawn in.
"""
from __future__ import annotations

import zlib

import numpy as np
from PIL import Image, ImageDraw

from ..pixels import ImageTransform
from .world import Scene, SceneObject

DEMO_IMAGE_SIZE = (160, 128)  # width, height
# the resize rule that leaves 160 x 128 as it is: a ViLT demo config's image_size: 128
DEMO_IMAGE_TRANSFORM = ImageTransform(128)
COLOR_RGB = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40),
             "purple": (150, 60, 190)}
RUBBER_STRIPE = 0.55  # brightness of rubber's stripes
BLOCK = 4
_CAP = np.linspace(0, np.pi, 9)  # a half circle's angles


def _shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], **style) -> None:
    x1, y1, x2, y2 = box
    w = x2 - x1
    if shape == "cube":
        draw.rectangle(box, **style)
    elif shape == "sphere":
        draw.ellipse(box, **style)
    elif shape == "cylinder":  # an upright capsule, 70 % of the box wide, as one polygon
        r = 0.35 * w
        cx, top, bottom = (x1 + x2) / 2, y1 + min(r, (y2 - y1) / 2), y2 - min(r, (y2 - y1) / 2)
        draw.polygon([(cx + r * float(np.cos(a)), top - r * float(np.sin(a))) for a in _CAP]
                     + [(cx - r * float(np.cos(a)), bottom + r * float(np.sin(a))) for a in _CAP], **style)
    elif shape == "cone":
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], **style)
    else:
        raise ValueError(f"no drawing for shape {shape!r}")


def draw_object(image: Image.Image, obj: SceneObject, box: tuple[float, float, float, float]) -> None:
    """Draw ``obj`` into ``image`` (RGB) at ``box`` (image pixels x1, y1, x2, y2)."""
    colour = COLOR_RGB[obj.color]
    x1, y1 = int(box[0]), int(box[1])
    x2, y2 = int(np.ceil(box[2])) + 1, int(np.ceil(box[3])) + 1
    local = tuple(v - o for v, o in zip(box, (x1, y1, x1, y1)))
    mask = Image.new("L", (x2 - x1, y2 - y1), 0)
    _shape(ImageDraw.Draw(mask), obj.shape, local, fill=255)
    patch = np.asarray(image.crop((x1, y1, x2, y2))).copy()
    inside = np.asarray(mask) > 0
    patch[inside] = colour
    if obj.material == "rubber":
        yy, xx = np.mgrid[y1:y2, x1:x2]
        stripes = inside & (((xx + yy) // 2) % 3 == 0)
        patch[stripes] = (np.asarray(colour) * RUBBER_STRIPE).astype(np.uint8)
    image.paste(Image.fromarray(patch), (x1, y1))
    draw = ImageDraw.Draw(image)
    if obj.material == "metal":
        _shape(draw, obj.shape, box, outline=(255, 255, 255), width=2)
        w, h = box[2] - box[0], box[3] - box[1]
        cx, cy, r = box[0] + 0.32 * w, box[1] + 0.38 * h, max(1.0, 0.07 * min(w, h))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 255, 255))
    else:
        _shape(draw, obj.shape, box, outline=tuple(c // 3 for c in colour), width=1)


def scene_box(scene: Scene, box, size: tuple[int, int] = DEMO_IMAGE_SIZE) -> tuple[float, float, float, float]:
    """A scene-pixel box in the drawn image's pixels."""
    sx, sy = size[0] / scene.width, size[1] / scene.height
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def draw_scene(scene: Scene, seed: int, size: tuple[int, int] = DEMO_IMAGE_SIZE) -> np.ndarray:
    """The scene as uint8 ``(height, width, 3)``.

    Example:
        >>> from data_modules.demo.world import make_scene
        >>> scene = make_scene(np.random.default_rng(0), "img0")
        >>> draw_scene(scene, seed=0).shape
        (128, 160, 3)

    Raises:
        ValueError: a size that is not a multiple of ``BLOCK`` (4), or a shape without a drawing.
    """
    width, height = size
    if width % BLOCK or height % BLOCK or width <= 0 or height <= 0:
        raise ValueError(f"image size {width} x {height}: both sides must be positive multiples of {BLOCK}")
    rng = np.random.default_rng([seed, 3, zlib.crc32(scene.image_id.encode("utf-8"))])
    tint = rng.integers(95, 150, size=3)
    blocks = rng.integers(-20, 21, size=(height // BLOCK, width // BLOCK, 1))
    small = np.clip(tint + blocks, 0, 255).astype(np.uint8)
    image = Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.NEAREST)
    for obj in scene.objects:
        draw_object(image, obj, scene_box(scene, obj.box, size))
    return np.asarray(image, dtype=np.uint8)
