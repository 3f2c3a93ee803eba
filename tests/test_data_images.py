"""Pixels for ViLT: preprocessing equal to transformers' ViltImageProcessor, image folders and
stores, the NLVR2 / VQA batch contract in image mode, errors naming file and id, the demo's
drawn scenes."""
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from data_modules.convert.images import ImageStoreWriter, convert_images
from data_modules.demo import generate_demo
from data_modules.demo.draw import COLOR_RGB, DEMO_IMAGE_SIZE, draw_scene, scene_box
from data_modules.demo.world import WorldConfig, make_scene
from data_modules.features import MissingImageError, StoreError
from data_modules.images import INDEX_NAME, CorruptImageError, ImageFolder, ImageStore, aliases, open_images
from data_modules.nlvr2 import Nlvr2DataModule
from data_modules.pixels import ImageTransform, collate_pixels, normalise, to_rgb
from data_modules.vqa import VqaDataModule

REGION_KEYS = {"img_feat", "img_pos_feat", "gather_index", "num_bbs"}


def _photo(width, height, mode="RGB", seed=0) -> Image.Image:
    """A smooth random picture (gradients + noise), closer to a photograph than white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), (xx + yy) % 256], axis=-1)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(arr, "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray((rng.random((height, width)) * 255).astype(np.uint8), "L")
        image = image.copy()
        image.putalpha(alpha)
    elif mode == "P-transparent":
        image = image.convert("P")
        image.info["transparency"] = 0
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def _saved(image: Image.Image, fmt: str) -> Image.Image:
    """``image`` written as a real JPEG/PNG file (in memory) and opened again, as a loader sees it."""
    buf = io.BytesIO()
    kwargs = {"transparency": image.info["transparency"]} if "transparency" in image.info else {}
    image.save(buf, fmt, **kwargs)
    buf.seek(0)
    return Image.open(buf)


def _mine(images, transform=ImageTransform()):
    return collate_pixels([torch.from_numpy(transform(im).transpose(2, 0, 1).copy()) for im in images],
                          transform.size_divisor)


def _reference(images, **kwargs):
    from transformers import ViltImageProcessor

    processor = ViltImageProcessor(**kwargs)
    if getattr(processor, "backend", "pil") != "pil":
        pytest.skip("transformers' ViltImageProcessor uses torchvision here; the PIL backend is the reference")
    return processor(images, return_tensors="pt", do_convert_rgb=True)


# ---------------------------------------------------------------- preprocessing == ViltImageProcessor

CASES = [((333, 517), "JPEG", "RGB"), ((640, 480), "JPEG", "RGB"), ((50, 80), "JPEG", "RGB"),
         ((517, 333), "PNG", "RGB"), ((480, 640), "PNG", "RGB"), ((80, 50), "PNG", "RGB"),
         ((1000, 300), "JPEG", "RGB"), ((321, 123), "PNG", "L"), ((200, 99), "PNG", "RGBA"),
         ((150, 151), "PNG", "P"), ((97, 131), "PNG", "P-transparent"), ((64, 64), "JPEG", "L")]


def test_batch_equals_vilt_image_processor_exactly():
    """Every case in one batch (padding and masks across sizes) and each alone: max abs diff 0."""
    images = [_saved(_photo(w, h, mode, seed=i), fmt) for i, ((w, h), fmt, mode) in enumerate(CASES)]
    ref = _reference(images)
    values, mask = _mine(images)
    assert values.dtype == torch.float32 and mask.dtype == torch.int64
    assert values.shape == ref["pixel_values"].shape and torch.equal(mask, ref["pixel_mask"])
    assert (values - ref["pixel_values"]).abs().max().item() == 0.0
    for image in images[:6]:
        one_ref, (one_values, one_mask) = _reference([image]), _mine([image])
        assert torch.equal(one_values, one_ref["pixel_values"]) and torch.equal(one_mask, one_ref["pixel_mask"])


@pytest.mark.parametrize("size, divisor", [(224, 32), (128, 16), (384, 64)])
def test_other_sizes_and_divisors_equal_the_processor(size, divisor):
    images = [_saved(_photo(w, h, seed=w), "JPEG") for w, h in ((333, 517), (640, 480), (50, 80))]
    ref = _reference(images, size={"shortest_edge": size}, size_divisor=divisor)
    values, mask = _mine(images, ImageTransform(size, size_divisor=divisor))
    assert torch.equal(values, ref["pixel_values"]) and torch.equal(mask, ref["pixel_mask"])


def test_output_sizes_follow_vilt():
    t = ImageTransform()
    assert t.longest_edge == 639  # int(1333 / 800 * 384), as transformers computes it
    assert t.output_size(640, 480) == (384, 512)
    assert t.output_size(333, 517) == (576, 384)
    assert t.output_size(50, 80) == (608, 384)
    assert t.output_size(1000, 300) == (192, 608)  # the longer side capped, then both rounded down
    assert ImageTransform(128).is_fixed_point(160, 128)
    with pytest.raises(ValueError, match="too elongated"):
        t.output_size(5000, 10)


def test_colour_modes_become_rgb_transparency_on_white():
    transparent = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((1, 1)) == (77, 77, 77)
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)


def test_normalise_is_the_processors_arithmetic():
    levels = np.arange(256, dtype=np.uint8)
    pixels = np.stack([levels, levels[::-1], levels]).reshape(3, 16, 16)
    expected = ((pixels.astype(np.float64) * (1 / 255)).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
    assert np.array_equal(normalise(pixels), expected)
    values, mask = collate_pixels([torch.from_numpy(pixels)], pad_multiple=32)
    assert values.shape == (1, 3, 32, 32) and int(mask.sum()) == 256 and float(values[0, :, 16:, :].abs().sum()) == 0


# ---------------------------------------------------------------- folders and stores

def _nlvr2_folder(root: Path, stems_train, stems_dev, fmt="PNG"):
    """NLVR2's published layout: train in numbered sub-folders, dev flat."""
    for i, stem in enumerate(stems_train):
        d = root / "images" / "train" / str(i % 3)
        d.mkdir(parents=True, exist_ok=True)
        for side in (0, 1):
            _photo(60 + 10 * i, 45 + 7 * side, seed=i).save(d / f"{stem}-img{side}.png", fmt)
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems_dev):
        for side in (0, 1):
            _photo(90, 60 + side, seed=100 + i).save(root / "dev" / f"{stem}-img{side}.png", fmt)


def test_folder_index_is_cached_and_finds_nested_files(tmp_path):
    _nlvr2_folder(tmp_path, ["train-1-0", "train-2-1", "train-3-0"], ["dev-9-0"])
    folder = ImageFolder(tmp_path)
    assert "train-2-1-img1" in folder and "dev-9-0-img0" in folder and len(folder) == 8
    cached = json.loads((tmp_path / INDEX_NAME).read_text())
    assert "images/train/1/train-2-1-img0.png" in cached["files"]
    assert folder.get("train-2-1-img1").shape == (3, 384, 512)  # 70 x 52 -> shorter side 384
    # a second folder object reads the cache (no walk): a file added since is found by require's rescan
    _photo(30, 30).save(tmp_path / "dev" / "dev-9-1-img0.png")
    again = ImageFolder(tmp_path)
    assert "dev-9-1-img0" not in again
    again.require([("dev-9-1-img0", "example dev-9-1-0")], "dev.json")
    assert "dev-9-1-img0" in again


def test_coco_names_are_found_by_image_id(tmp_path):
    assert aliases("COCO_train2014_000000000009") == ["COCO_train2014_000000000009", "9"]
    (tmp_path / "val2014").mkdir()
    _photo(64, 48).save(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    folder = ImageFolder(tmp_path)
    assert folder.file("42").name == "COCO_val2014_000000000042.jpg"
    (tmp_path / "train2014").mkdir()
    _photo(64, 48).save(tmp_path / "train2014" / "COCO_train2014_000000000042.jpg")
    (tmp_path / INDEX_NAME).unlink()
    with pytest.raises(StoreError, match="both image '42'"):
        ImageFolder(tmp_path).index


def test_store_round_trip_resume_and_rule_check(tmp_path):
    src = tmp_path / "src"
    _nlvr2_folder(src, ["train-1-0", "train-2-0"], ["dev-1-0"], fmt="PNG")
    corrupt = src / "dev" / "dev-1-0-img1.png"
    good = corrupt.read_bytes()
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nothing
    out = tmp_path / "images.h5"
    with pytest.raises(CorruptImageError, match="dev-1-0-img1.png"):
        convert_images(src, out, flush_images=1)
    assert not out.exists()
    corrupt.write_bytes(good)
    summary = convert_images(src, out, flush_images=1)
    assert summary["images"] == 6 and summary["resumed"] >= 1 and summary["converted"] == 6 - summary["resumed"]
    store, folder = ImageStore(out, ImageTransform()), ImageFolder(src)
    for key in folder.index:
        assert torch.equal(store.get(key), folder.get(key))  # PNG is lossless: the same pixels
    with pytest.raises(StoreError, match="image_size, max_image_size, size_divisor"):
        ImageStore(out, ImageTransform(224))
    with pytest.raises(FileExistsError):
        convert_images(src, out)
    with ImageStoreWriter(tmp_path / "x.h5", ImageTransform(128)) as writer:
        with pytest.raises(ValueError, match="not resized by the store's rule"):
            writer.add("a", np.zeros((100, 100, 3), np.uint8))
        writer.add("a", np.zeros((128, 160, 3), np.uint8))
    assert isinstance(open_images(tmp_path / "x.h5", ImageTransform(128)), ImageStore)


def test_converter_command_line(tmp_path):
    from data_modules.convert.__main__ import main

    _nlvr2_folder(tmp_path / "src", ["train-1-0"], [])
    assert main(["images", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "s.h5"), "--image-size", "64",
                 "--no-progress"]) == 0
    store = ImageStore(tmp_path / "s.h5", ImageTransform(64))
    assert store.get("train-1-0-img0").shape == (3, 64, 64)  # 60 x 45 -> 85 x 64 -> 64 x 64


# ---------------------------------------------------------------- the data modules in image mode

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixels_world")
    paths = generate_demo(root, seed=2, feat_dim=8, n_train=12, n_dev=6, n_test=4, tasks=("nlvr2", "vqa"))
    return {"root": root, **paths}


def _export(store_path: Path, folder: Path, layout, keys=lambda key: True) -> Path:
    """The store's images (those ``keys`` accepts) as real files (``layout(key) -> relative path``)."""
    store = ImageStore(store_path)
    for key in filter(keys, store.ids):
        path = folder / layout(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(store.get(key).permute(1, 2, 0).numpy()).save(path)
    return folder


def _nlvr2(world, **kwargs):
    args = dict(train_file=world["nlvr2_train"], val_file=world["nlvr2_dev"], test_file=world["nlvr2_test"],
                tokenizer=world["tokenizer"], batch_size=3, eval_batch_size=4, max_txt_len=40, image_size=128)
    args.update(kwargs)
    dm = Nlvr2DataModule(**args)
    dm.setup("fit")
    return dm


def _check_contract(batch, rows, divisor=32):
    assert not REGION_KEYS & set(batch)
    values, mask = batch["pixel_values"], batch["pixel_mask"]
    assert values.dtype == torch.float32 and mask.dtype == torch.int64
    assert values.shape[:2] == (rows, 3) and mask.shape == (rows, *values.shape[2:])
    assert values.shape[2] % divisor == 0 and values.shape[3] % divisor == 0
    assert float(values.min()) >= -1 and float(values.max()) <= 1
    assert float((values * (1 - mask[:, None])).abs().sum()) == 0  # padding is 0
    assert batch["input_ids"].shape[0] == rows and len(batch["txt_lens"]) == rows
    assert batch["attn_masks"].shape == batch["input_ids"].shape
    assert batch["attn_masks"].sum(1).tolist() == batch["txt_lens"]


def test_nlvr2_batches_from_store_and_folder_agree(world, tmp_path):
    dm_store = _nlvr2(world, images=world["images"])
    batch = next(iter(dm_store.val_dataloader()))
    _check_contract(batch, rows=8)
    assert batch["targets"].shape == (4,) and len(batch["ids"]) == 4
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])  # left and right rows share the statement
    assert batch["img_type_ids"].tolist() == [1, 2] * 4  # left 1, right 2 (ViLT's NLVR2 recipe)
    assert batch["pixel_values"].shape[2:] == (128, 160)
    # the region path gives the same text keys for the same examples
    regions = next(iter(_nlvr2(world, features=world["features"], img_dim=8).val_dataloader()))
    for key in ("input_ids", "position_ids", "txt_lens", "targets", "ids"):
        assert (torch.equal(batch[key], regions[key]) if torch.is_tensor(batch[key]) else batch[key] == regions[key])

    def layout(key):  # NLVR2's: train in numbered sub-folders, dev and test flat
        split = key.split("-")[0]
        return (f"images/train/{int(key.split('-')[1]) % 4}/{key}.png" if split == "train" else f"{split}/{key}.png")

    folder = _export(Path(world["images"]), tmp_path / "nlvr2", layout)
    from_folder = next(iter(_nlvr2(world, images=str(folder), image_index_cache=str(tmp_path / "cache")).val_dataloader()))
    for key in ("pixel_values", "pixel_mask", "input_ids", "targets"):
        assert torch.equal(from_folder[key], batch[key])


def test_nlvr2_store_in_dataloader_workers(world):
    dm = _nlvr2(world, images=world["images"], num_workers=1)
    batch = next(iter(dm.train_dataloader()))
    _check_contract(batch, rows=6)


def test_vqa_batches_from_store_and_coco_folder(world, tmp_path):
    root = Path(world["root"])

    def vqa(images, **kwargs):
        dm = VqaDataModule(train_questions=[world["vqa_train_questions"]],
                           train_annotations=[world["vqa_train_annotations"]],
                           val_questions=world["vqa_dev_questions"], val_annotations=world["vqa_dev_annotations"],
                           ans2label=world["vqa_ans2label"], tokenizer=world["tokenizer"], batch_size=5,
                           max_txt_len=30, images=images, image_size=128, **kwargs)
        dm.setup("fit")
        return dm

    batch = next(iter(vqa(world["images"]).train_dataloader()))
    _check_contract(batch, rows=5)
    assert batch["targets"].shape[0] == 5 and "img_type_ids" not in batch
    # COCO's published names, the image id inside: found by VQA's default image_key {image_id}
    folder = _export(Path(world["images"]), tmp_path / "coco", lambda key: f"val2014/COCO_val2014_{int(key):012d}.jpg",
                     keys=str.isdigit)
    jpeg = vqa(str(folder), image_index_cache=str(tmp_path / "cache"))
    from_folder = next(iter(jpeg.val_dataloader()))
    _check_contract(from_folder, rows=5)
    assert root.exists()


def test_missing_image_names_key_and_example(world, tmp_path):
    folder = _export(Path(world["images"]), tmp_path / "n", lambda key: f"{key}.png")
    victim = sorted(folder.glob("dev-*-img1.png"))[0]
    victim.unlink()
    with pytest.raises(MissingImageError) as err:
        _nlvr2(world, images=str(folder))
    assert victim.stem in str(err.value) and f"example {victim.stem[:-5]}-" in str(err.value)


def test_corrupt_image_names_file_and_example(world, tmp_path):
    folder = _export(Path(world["images"]), tmp_path / "n", lambda key: f"{key}.png")
    dm = _nlvr2(world, images=str(folder))
    first = dm.datasets["val"].examples[0]
    victim = folder / f"{first.images[1]}.png"
    victim.write_bytes(victim.read_bytes()[:60])  # cut short
    with pytest.raises(CorruptImageError) as err:
        next(iter(dm.val_dataloader()))
    assert str(victim) in str(err.value) and f"example {first.identifier}" in str(err.value)


def test_images_or_features_not_both_and_only_where_supported(world):
    with pytest.raises(ValueError, match="exactly one of features"):
        _nlvr2(world, images=world["images"], features=world["features"])
    with pytest.raises(ValueError, match="exactly one of features"):
        _nlvr2(world)
    with pytest.raises(StoreError, match="image_size"):
        _nlvr2(world, images=world["images"], image_size=384)
    from data_modules.snli_ve import SnliVeDataModule

    with pytest.raises(ValueError, match="reads region features only"):
        SnliVeDataModule(train_file="t", val_file="v", tokenizer=world["tokenizer"], images=world["images"])


# ---------------------------------------------------------------- the demo's drawn scenes

def test_demo_images_deterministic(tmp_path):
    kwargs = dict(seed=4, feat_dim=8, n_train=10, n_dev=4, n_test=4, tasks=("nlvr2", "vqa"))
    a = generate_demo(tmp_path / "a", **kwargs)
    b = generate_demo(tmp_path / "b", **kwargs)
    c = generate_demo(tmp_path / "c", **{**kwargs, "seed": 5})
    assert Path(a["images"]).read_bytes() == Path(b["images"]).read_bytes()
    with h5py.File(a["images"]) as fa, h5py.File(c["images"]) as fc:
        assert fa["pixels"].shape != fc["pixels"].shape or not np.array_equal(fa["pixels"][:], fc["pixels"][:])
    store, features = ImageStore(a["images"], ImageTransform(128)), h5py.File(a["features"])
    with features:
        keys = set(features["img_ids"].asstr()[:])
    assert set(store.ids) == keys  # every scene of the drawn parts, keyed as in features.h5
    assert not (Path(generate_demo(tmp_path / "d", images=False, **kwargs)["features"]).parent / "images.h5").exists()


def test_objects_are_drawn_in_their_boxes_in_their_colours():
    rng = np.random.default_rng(0)
    palette = {name: np.array(rgb, float) for name, rgb in COLOR_RGB.items()}
    checked = 0
    for i in range(60):
        scene = make_scene(rng, f"img{i}", world=WorldConfig(num_colors=5, num_shapes=4))
        image = draw_scene(scene, seed=1).astype(float)
        assert image.shape == (DEMO_IMAGE_SIZE[1], DEMO_IMAGE_SIZE[0], 3)
        for obj in scene.objects:
            x1, y1, x2, y2 = scene_box(scene, obj.box)
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            if min(w, h) < 8:
                continue  # too few pixels in the centre to average
            centre = image[int(cy - 0.15 * h):int(cy + 0.15 * h) + 1, int(cx - 0.15 * w):int(cx + 0.15 * w) + 1]
            mean = centre.reshape(-1, 3).mean(0)
            nearest = min(palette, key=lambda name: np.abs(palette[name] - mean).sum())
            assert nearest == obj.color, (scene.image_id, obj, mean)
            checked += 1
    assert checked > 60
