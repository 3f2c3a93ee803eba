"""RefCOCO+: refs pickle / instances reading, validation, the one-row-per-expression batches, box
IoU, and the demo generator."""
import json
import logging
import os
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.boxes import box_iou
from data_modules.demo import generate_demo
from data_modules.demo import refcoco as demo_refcoco
from data_modules.demo.world import DEFAULT_WORLD
from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import MissingImageError
from data_modules.refcoco import RefcocoDataModule, load_refs_file, read_instances, read_refs

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "cube", "man", "left", "blue", "ball", "cafe"]


# ---------------------------------------------------------------- box IoU

def test_box_iou_values_edges_and_types():
    a = torch.tensor([[0, 0, 2, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 5, 9]], dtype=torch.float64)
    b = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 0, 2, 1], [0.5, 0, 1.5, 1], [5, 5, 5, 9]], dtype=torch.float64)
    iou = box_iou(a, b)
    # [0,0,2,1] vs [0,0,1,1]: intersection 1, union 2 -> exactly 0.5 (continuous, no +1; UNITER's
    # inclusive-pixel IoU would give 4/6 here); touching boxes 0; a zero-width box 0, not NaN.
    assert iou.tolist() == [0.5, 1.0, 0.0, 1 / 3, 0.0]
    assert (iou >= 0.5).tolist() == [True, True, False, False, False]
    t = box_iou(a.float(), b[1].float())  # broadcast one box
    assert t.dtype == torch.float32 and torch.allclose(t, torch.tensor([0.5, 1.0, 1.0, 1.0, 0.0]))
    assert box_iou(torch.tensor([10.0, 10, 20, 30]), torch.tensor([15.0, 10, 25, 30])).item() == pytest.approx(100 / 300)
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 4\)"):
        box_iou(torch.zeros(2, 3), torch.zeros(2, 3))


# ---------------------------------------------------------------- refs files

def _py2_pickle(obj) -> bytes:
    """What Python 2's cPickle (protocol 2) writes: ``str`` as byte strings, ``unicode`` as BINUNICODE."""
    def emit(o) -> bytes:
        if isinstance(o, bool) or o is None:
            raise TypeError(o)
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        if isinstance(o, float):
            return b"G" + struct.pack(">d", o)
        if isinstance(o, bytes):  # a Python-2 str
            return b"U" + bytes([len(o)]) + o
        if isinstance(o, str):  # a Python-2 unicode
            raw = o.encode("utf-8")
            return b"X" + struct.pack("<I", len(raw)) + raw
        if isinstance(o, list):
            return b"](" + b"".join(emit(v) for v in o) + b"e"
        if isinstance(o, dict):
            return b"}(" + b"".join(emit(k) + emit(v) for k, v in o.items()) + b"u"
        raise TypeError(o)
    return b"\x80\x02" + emit(obj) + b"."


def _ref(ref_id, ann_id, image_id, split, sents, sent_ids=None):
    sent_ids = sent_ids or [100 * ref_id + k for k in range(len(sents))]
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1, "split": split,
            "sent_ids": sent_ids, "file_name": f"COCO_train2014_{image_id:012d}_{ref_id}.jpg",
            "sentences": [{"sent_id": i, "sent": s, "raw": s, "tokens": s.split()} for i, s in zip(sent_ids, sents)]}


def test_python2_refs_pickle_is_read_with_byte_strings_decoded(tmp_path):
    py2 = [{b"ref_id": 7, b"ann_id": 70, b"image_id": 1, b"split": b"testA", b"score": 0.5,
            b"sentences": [{b"sent_id": 20, b"sent": "café man".encode("utf-8"), b"raw": "Café man", b"tokens": [b"man"]}]}]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(_py2_pickle(py2))
    refs = load_refs_file(path)
    assert refs == [{"ref_id": 7, "ann_id": 70, "image_id": 1, "split": "testA", "score": 0.5,
                     "sentences": [{"sent_id": 20, "sent": "café man", "raw": "Café man", "tokens": ["man"]}]}]
    sents = read_refs(path)
    assert [(s.id, s.ann_id, s.image_id, s.split, s.sent) for s in sents] == [("7-20", 70, 1, "testA", "café man")]
    # the same list as JSON (what a converter may write) reads the same
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    assert read_refs(tmp_path / "refs.json") == sents


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickled_code_is_refused_never_run(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "x": _Evil()}], protocol=2))
    with pytest.raises(ValueError) as err:
        load_refs_file(path)
    assert str(path) in str(err.value) and "refuses to load" in str(err.value) and "getcwd" in str(err.value)
    path.write_bytes(b"\x80\x02]q\x00(")  # truncated
    with pytest.raises(ValueError, match="cannot read as a refs pickle"):
        load_refs_file(path)
    path.write_bytes(pickle.dumps({"refs": []}, protocol=2))
    with pytest.raises(ValueError, match="holds a dict, expected a list of ref dicts"):
        load_refs_file(path)
    with pytest.raises(FileNotFoundError, match="refs_missing.p"):
        load_refs_file(tmp_path / "refs_missing.p")


GOOD_REF = _ref(5, 50, 1, "train", ["red cube"])


@pytest.mark.parametrize("bad, expected", [
    ("not a dict", "ref #1 is a str, expected a dict"),
    ({k: v for k, v in GOOD_REF.items() if k != "ann_id"}, "ref #1 (ref_id 5): field 'ann_id' is missing; expected int"),
    ({**GOOD_REF, "image_id": "1"}, "ref #1 (ref_id 5): field 'image_id' is str '1'; expected int"),
    ({**GOOD_REF, "split": None}, "field 'split' is NoneType None; expected str"),
    ({**GOOD_REF, "sentences": []}, "ref #1 (ref_id 5): no sentences"),
    ({**GOOD_REF, "sentences": [{"sent": "red cube"}]}, "ref #1 (ref_id 5), sentence #0: field 'sent_id' is missing"),
    ({**GOOD_REF, "sentences": [{"sent_id": 3, "sent": "  "}]}, "sentence #0 (sent_id 3): empty expression"),
    ({**GOOD_REF, "ref_id": 4}, "ref #1 (ref_id 4): ref_id 4 already used by ref #0"),
])
def test_malformed_ref_names_file_ref_and_expectation(tmp_path, bad, expected):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps([_ref(4, 40, 1, "train", ["blue ball"]), bad]))
    with pytest.raises(ValueError) as err:
        read_refs(path)
    assert str(path) in str(err.value) and expected in str(err.value)


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 4]),
     "annotation 11 (annotations[0]): bbox [1, 2, 0, 4]; expected [x, y, w, h]"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bbox [1, 2, 3]"),
    (lambda d: d["images"][0].update(width=0), "images[0]"),
    (lambda d: d.pop("annotations"), "lists 'images' and 'annotations'"),
])
def test_malformed_instances_name_file_entry_and_expectation(tmp_path, change, expected):
    data = {"images": [{"id": 1, "width": 100, "height": 80}],
            "annotations": [{"id": 11, "image_id": 1, "bbox": [10, 20, 30, 40]}], "categories": []}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    coco = read_instances(path)
    assert coco.ann_box == {11: (1, [10.0, 20.0, 40.0, 60.0])} and coco.image_wh == {1: (100, 80)}
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        read_instances(path)
    assert str(path) in str(err.value) and expected in str(err.value)


# ---------------------------------------------------------------- the DataModule on a hand-built case

# image 1 (200 x 100): three regions; image 2 (50 x 40): two regions
REGIONS = {"1": [[0, 0, 100, 100], [100, 0, 200, 50], [20, 10, 60, 90]], "2": [[0, 0, 50, 40], [10, 10, 20, 20]]}
SIZES = {"1": (200, 100), "2": (50, 40)}
ANNS = [  # id, image, xywh
    (11, 1, [100, 0, 100, 50]),   # exactly region 1 of image 1
    (12, 1, [22, 12, 40, 78]),    # best match region 2 (IoU ~0.84), not exact: a "detected" store
    (21, 2, [30, 25, 20, 15]),    # no region of image 2 reaches IoU 0.5
]


def _write_store(path, regions=REGIONS, sizes=SIZES, dim=8, key=lambda k: k):
    rng = np.random.default_rng(0)
    with RegionFeatureWriter(path, dim) as w:
        for img, boxes in regions.items():
            w.add(key(img), rng.standard_normal((len(boxes), dim)), np.array(boxes, dtype=float), *sizes[img])
    return str(path)


@pytest.fixture
def refcoco_files(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    refs = [_ref(1, 11, 1, "train", ["red cube", "the man"], [10, 11]), _ref(2, 12, 1, "val", ["blue ball"], [12]),
            _ref(3, 21, 2, "testA", ["the red ball"], [13]), _ref(4, 11, 1, "testAB", ["cube"], [14])]
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    instances = {"images": [{"id": 1, "width": 200, "height": 100, "file_name": "a.jpg"},
                            {"id": 2, "width": 50, "height": 40, "file_name": "b.jpg"}],
                 "annotations": [{"id": a, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0,
                                  "segmentation": []} for a, i, b in ANNS],
                 "categories": [{"id": 1, "name": "cube"}]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    return {"refs_file": str(tmp_path / "refs(unc).p"), "instances_file": str(tmp_path / "instances.json"),
            "features": _write_store(tmp_path / "feat.h5"), "tokenizer": str(tmp_path / "tok"), "img_dim": 8,
            "root": tmp_path}


def _dm(files, **overrides):
    args = {k: v for k, v in files.items() if k != "root"}
    args.update(batch_size=2, eval_batch_size=4)
    args.update(overrides)
    return RefcocoDataModule(**args)


def test_batch_contract_on_a_hand_built_case(refcoco_files):
    dm = _dm(refcoco_files)
    assert dm.labels is None
    dm.setup("fit")
    dm.setup("test")
    batch = dm.datasets["train"].collate([dm.datasets["train"][0], dm.datasets["train"][1], dm.datasets["test"][0]])
    assert batch["ids"] == ["1-10", "1-11", "3-13"]
    words = lambda i: [VOCAB[t] for t in batch["input_ids"][i, : batch["txt_lens"][i]].tolist()]  # noqa: E731
    assert [words(i) for i in range(3)] == [["[CLS]", "red", "cube", "[SEP]"], ["[CLS]", "the", "man", "[SEP]"],
                                            ["[CLS]", "the", "red", "ball", "[SEP]"]]
    assert batch["num_bbs"] == [3, 3, 2]
    assert batch["targets"].dtype == torch.long and batch["targets"].tolist() == [1, 1, 0]
    assert batch["region_boxes"].dtype == torch.float32 and batch["region_boxes"].shape == (3, 3, 4)
    expected = torch.tensor([REGIONS["1"], REGIONS["1"], REGIONS["2"] + [[0, 0, 0, 0]]], dtype=torch.float32)
    assert torch.allclose(batch["region_boxes"], expected, atol=1e-3)
    assert batch["gt_boxes"].dtype == torch.float32
    assert batch["gt_boxes"].tolist() == [[100, 0, 200, 50], [100, 0, 200, 50], [30, 25, 50, 40]]
    # the rows are UNITER rows of the image's stored regions
    feat, pos = dm.store.get("2")
    assert torch.equal(batch["img_feat"][2, :2], feat) and torch.equal(batch["img_pos_feat"][2, :2], pos)
    assert "img_type_ids" not in batch and "txt_type_ids" not in batch
    val = next(iter(dm.val_dataloader()))
    assert val["ids"] == ["2-12"] and val["targets"].tolist() == [2]  # argmax IoU for a non-exact box
    assert dm.datasets["val"].examples[0].max_iou == pytest.approx(float(box_iou(
        torch.tensor(REGIONS["1"][2], dtype=torch.float64), torch.tensor([22.0, 12, 62, 90], dtype=torch.float64))))


def test_splits_match_exactly_and_unknown_split_lists_known(refcoco_files, caplog):
    dm = _dm(refcoco_files)
    dm.setup("test")
    assert [ex.id for ex in dm.datasets["test"].examples] == ["3-13"]  # not the "testAB" ref (substring quirk)
    dm = _dm(refcoco_files, test_split="testAB")
    dm.setup("test")
    assert [ex.id for ex in dm.datasets["test"].examples] == ["4-14"]
    assert dm.datasets["test"].poor_matches == 0
    dm = _dm(refcoco_files, test_split=None)
    assert dm.split_files()["test"] is None
    dm = _dm(refcoco_files, val_split="testB")
    with pytest.raises(ValueError) as err:
        dm.setup("validate")
    assert refcoco_files["refs_file"] in str(err.value) and "'testB'" in str(err.value)
    assert "['testA', 'testAB', 'train', 'val']" in str(err.value)
    # the unreachable target of ref 3 is counted and logged at setup
    dm = _dm(refcoco_files)
    with caplog.at_level(logging.INFO):
        dm.setup("test")
    assert dm.datasets["test"].poor_matches == 1
    assert "1 (100.0%) have no region with IoU >= 0.5" in caplog.text


def test_missing_images_and_image_key(refcoco_files, tmp_path):
    only_one = _write_store(tmp_path / "one.h5", regions={"1": REGIONS["1"]})
    dm = _dm(refcoco_files, features=only_one)
    dm.setup("fit")  # train and val use image 1 only
    with pytest.raises(MissingImageError) as err:
        dm.setup("test")
    msg = str(err.value)
    assert only_one in msg and "'2' (ref 3, image_id 2)" in msg and "image_key" in msg
    keyed = _write_store(tmp_path / "keyed.h5", key=lambda k: f"COCO_train2014_{int(k):012d}")
    dm = _dm(refcoco_files, features=keyed, image_key="COCO_train2014_{image_id:012d}")
    dm.setup("test")
    assert dm.datasets["test"][0]["row"]["img_feat"].shape == (2, 8)
    with pytest.raises(ValueError, match="RefCOCO image_key '{img}': unknown field {img}; .*only {image_id}"):
        _dm(refcoco_files, image_key="{img}")


def test_image_size_disagreement_and_unknown_annotation(refcoco_files, tmp_path):
    wrong = _write_store(tmp_path / "wrong.h5", sizes={"1": (200, 100), "2": (60, 40)})
    dm = _dm(refcoco_files, features=wrong)
    with pytest.raises(ValueError) as err:
        dm.setup("test")
    msg = str(err.value)
    assert "image 2" in msg and wrong in msg and "60 x 40" in msg and refcoco_files["instances_file"] in msg and "50 x 40" in msg
    refs = [_ref(1, 99, 1, "train", ["red cube"]), _ref(2, 21, 1, "val", ["cube"])]
    Path(refcoco_files["refs_file"]).write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(ValueError, match=r"ref 1 refers to ann_id 99, which .*instances.json does not contain"):
        _dm(refcoco_files).setup("fit")
    with pytest.raises(ValueError, match="ref 2 gives image_id 1 but its annotation 21 belongs to image 2"):
        _dm(refcoco_files).setup("validate")


def test_eval_features_serve_val_and_max_boxes_cuts_regions(refcoco_files, tmp_path):
    det = _write_store(tmp_path / "det.h5", regions={"1": [[0, 0, 10, 10], [21, 12, 62, 91]], "2": REGIONS["2"]})
    dm = _dm(refcoco_files, eval_features=det)
    dm.setup("fit")
    assert dm.datasets["train"].store.path == Path(refcoco_files["features"])
    assert dm.datasets["val"].store.path == Path(det)
    val = next(iter(dm.val_dataloader()))
    assert val["num_bbs"] == [2] and val["targets"].tolist() == [1]
    assert torch.allclose(val["region_boxes"][0], torch.tensor([[0.0, 0, 10, 10], [21, 12, 62, 91]]), atol=1e-3)
    dm = _dm(refcoco_files, max_boxes=2)
    dm.setup("fit")
    item = dm.datasets["val"][0]
    assert item["region_boxes"].shape == (2, 4) and item["target"] == 0  # the best region (2) was cut
    assert dm.datasets["val"].poor_matches == 1


# ---------------------------------------------------------------- the demo generator

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("refdemo")
    paths = generate_demo(out, seed=5, feat_dim=16, n_train=300, n_dev=100, n_test=100, tasks=("refcoco+",))
    return out, paths


def test_demo_writes_the_refer_toolkit_schema(demo):
    out, paths = demo
    folder = out / "refcoco+"
    assert paths["refcoco+_refs"] == str(folder / "refs(unc).p")
    refs = load_refs_file(folder / "refs(unc).p")
    raw = (folder / "refs(unc).p").read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2, like the released file
    coco = json.loads((folder / "instances.json").read_text())
    assert set(coco) == {"images", "annotations", "categories"}
    counts = Counter()
    anns = {a["id"]: a for a in coco["annotations"]}
    images = {i["id"]: i for i in coco["images"]}
    for ref in refs:
        assert set(ref) == {"ref_id", "ann_id", "image_id", "category_id", "split", "sent_ids", "sentences", "file_name"}
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]] and 1 <= len(ref["sentences"]) <= 3
        for s in ref["sentences"]:
            assert set(s) == {"sent_id", "sent", "raw", "tokens"} and s["tokens"] == s["sent"].split()
            assert s["sent"] == s["sent"].lower() and not {"left", "right"} & set(s["tokens"])
        assert anns[ref["ann_id"]]["image_id"] == ref["image_id"] and anns[ref["ann_id"]]["category_id"] == ref["category_id"]
        counts[ref["split"]] += len(ref["sentences"])
    assert counts == {"train": 300, "val": 100, "testA": 50, "testB": 50}
    assert min(images) >= 5_000_000 and min(anns) >= 50_000_000
    for a in coco["annotations"]:
        assert set(a) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
        x, y, w, h = a["bbox"]
        img = images[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= img["width"] + 0.01 and y + h <= img["height"] + 0.01
    # splits partition the images; testA refers to the first shape only, testB to the others
    split_images = {}
    for ref in refs:
        split_images.setdefault(ref["image_id"], set()).add(ref["split"])
    assert all(len(s) == 1 for s in split_images.values())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert {names[r["category_id"]] for r in refs if r["split"] == "testA"} == {DEFAULT_WORLD.shapes[0]}
    assert DEFAULT_WORLD.shapes[0] not in {names[r["category_id"]] for r in refs if r["split"] == "testB"}
    manifest = json.loads((out / "manifest.json").read_text())["tasks"]["refcoco+"]
    assert manifest["splits"]["val"]["expressions"] == 100 and set(manifest["splits"]["train"]["kinds"]) == set(demo_refcoco.KINDS)


def test_demo_is_deterministic_by_seed(demo, tmp_path):
    out, _ = demo
    generate_demo(tmp_path / "a", seed=5, feat_dim=16, n_train=300, n_dev=100, n_test=100, tasks=("refcoco+",))
    for name in ("refs(unc).p", "instances.json"):
        assert (tmp_path / "a" / "refcoco+" / name).read_bytes() == (out / "refcoco+" / name).read_bytes()
    generate_demo(tmp_path / "b", seed=6, feat_dim=16, n_train=30, n_dev=10, n_test=10, tasks=("refcoco+",))
    assert load_refs_file(tmp_path / "b" / "refcoco+" / "refs(unc).p")[0] != load_refs_file(out / "refcoco+" / "refs(unc).p")[0]


def test_every_expression_singles_out_its_object_among_distractors():
    rng = np.random.default_rng(1)
    part = demo_refcoco.make_split("train", 400, rng, DEFAULT_WORLD, demo_refcoco._Ids())
    scenes = {int(s.image_id): s for s in part.scenes}
    sentences = [(ref, s) for ref in part.refs for s in ref["sentences"]]
    assert len(sentences) == len(part.expressions) == len(part.targets) == 400
    shares = 0
    for (ref, sent), expr, target in zip(sentences, part.expressions, part.targets):
        scene = scenes[ref["image_id"]]
        assert sent["sent"] == expr.text and expr.matches(scene) == [target]
        obj = scene.objects[target]
        others = [o for o in scene.objects if o is not obj]
        shares += any(o.color == obj.color or o.shape == obj.shape for o in others)
    assert shares / 400 > 0.8  # distractors: the expression has to be read
    kinds = Counter(e.kind for e in part.expressions)
    assert all(kinds[k] > 0.1 * 400 for k in demo_refcoco.KINDS)


def test_no_region_order_or_box_size_shortcut(demo):
    out, paths = demo
    dm = RefcocoDataModule(paths["refcoco+_refs"], paths["refcoco+_instances"], features=paths["features"],
                           tokenizer=paths["tokenizer"],
                           img_dim=16, batch_size=8)
    dm.setup("fit")
    data = dm.datasets["train"]
    first = largest = last = 0
    chance, rel = [], []
    for i in range(len(data)):
        item = data[i]
        boxes, t = item["region_boxes"], item["target"]
        n = len(boxes)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        first += t == 0
        last += t == n - 1
        largest += t == int(area.argmax())
        chance.append(1 / n)
        rel.append(t / (n - 1))
    n = len(data)
    assert data.poor_matches == 0
    assert abs(np.mean(rel) - 0.5) < 0.06  # the target's place among the regions is uniform
    assert first / n < np.mean(chance) + 0.07 and last / n < np.mean(chance) + 0.07
    assert largest / n < np.mean(chance) + 0.07
