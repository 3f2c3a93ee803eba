"""Mask overlap (lightning_vl.analysis.overlap): metrics on hand-made masks, grouping by layer type
and index, chance levels, refusing masks that cannot be compared, and the ``overlap`` command."""
import csv
import math

import pytest
import torch

from lightning_vl.pruning import Mask, random_prune
from lightning_vl.pruning import mask as mask_module
from lightning_vl.analysis import overlap as ov
from lightning_vl.analysis.overlap import (MaskMismatch, OverlapAnalysis, PackedMask, chance_hamming, chance_iou,
                                           chance_overlap, layer_index, layer_type)

Q0 = "uniter.encoder.layer.0.attention.self.query.weight"
OUT1 = "uniter.encoder.layer.1.output.dense.weight"
POOL = "uniter.pooler.dense.weight"


def m(*bits):
    return torch.tensor(bits, dtype=torch.bool)


def test_metrics_of_two_hand_made_masks():
    # A keeps {0,1,2}, B keeps {1,2,3,4} of 8: ∩ = 2, ∪ = 5, ⊕ = {0,3,4}
    a = Mask({"w": m(1, 1, 1, 0, 0, 0, 0, 0)})
    b = Mask({"w": m(0, 1, 1, 1, 1, 0, 0, 0)})
    r = ov.pair_overlap(a, b)
    assert (r["intersection"], r["union"], r["kept_a"], r["kept_b"], r["total"]) == (2, 5, 3, 4, 8)
    assert r["iou"] == pytest.approx(2 / 5)
    assert r["overlap"] == pytest.approx(2 / 3)
    assert r["hamming"] == pytest.approx(3 / 8)
    # chance at densities 3/8 and 1/2
    assert r["iou_chance"] == pytest.approx((3 / 16) / (3 / 8 + 1 / 2 - 3 / 16))  # = 3/11
    assert r["overlap_chance"] == pytest.approx(1 / 2)
    assert r["hamming_chance"] == pytest.approx(3 / 8 + 1 / 2 - 2 * 3 / 16)


def test_two_random_masks_overlap_at_chance():
    dense = Mask.ones_like({"w": torch.zeros(200_000)})
    a = random_prune(dense, 0.7, torch.Generator().manual_seed(0))
    b = random_prune(dense, 0.7, torch.Generator().manual_seed(1))
    r = ov.pair_overlap(a, b)
    assert r["iou_chance"] == pytest.approx(0.3 / 1.7)  # the paper's 0.176 at 70% sparsity
    assert r["iou"] == pytest.approx(r["iou_chance"], abs=0.01)
    same = ov.pair_overlap(a, a)
    assert (same["iou"], same["overlap"], same["hamming"]) == (1.0, 1.0, 0.0)
    assert same["iou_chance"] == pytest.approx(0.3 / 1.7)


def test_per_type_and_per_layer_counts_by_hand():
    a = Mask({Q0: m(1, 1, 0, 0).reshape(2, 2), OUT1: m(1, 0, 1, 0, 1, 0), POOL: m(1, 1)})
    b = Mask({Q0: m(1, 0, 1, 0).reshape(2, 2), OUT1: m(1, 0, 1, 0, 0, 0), POOL: m(0, 0)})
    an = OverlapAnalysis.compute({"a": a, "b": b})
    assert an.groups("type") == ["Q", "FFN-out", "other"]
    assert an.groups("layer") == [0, 1, "other"]
    q = an.counts("a", "b", "type", "Q")          # {0,1} vs {0,2}: ∩ 1, ∪ 3, ⊕ 2 of 4
    assert (q.iou, q.overlap, q.hamming) == (pytest.approx(1 / 3), pytest.approx(1 / 2), pytest.approx(2 / 4))
    f = an.counts("a", "b", "type", "FFN-out")    # {0,2,4} vs {0,2}: B inside A
    assert (f.iou, f.overlap, f.hamming) == (pytest.approx(2 / 3), 1.0, pytest.approx(1 / 6))
    o = an.counts("a", "b", "type", "other")      # B keeps nothing of the pooler
    assert o.iou == 0.0 and math.isnan(o.overlap) and o.hamming == 1.0
    assert an.counts("a", "b", "layer", 1) == f and an.counts("a", "b", "layer", "other") == o
    total = an.counts("a", "b")                   # 12 weights: ∩ 3, kept 7 and 4
    assert (total.both, total.kept_a, total.kept_b, total.total) == (3, 7, 4, 12)
    assert total.iou == pytest.approx(3 / 8) and total.hamming == pytest.approx(5 / 12)
    # per-type chance uses the group's own densities
    assert q.chance("iou") == pytest.approx(chance_iou(0.5, 0.5))
    assert f.chance("overlap") == pytest.approx(0.5)
    # matrix: symmetric, diagonal = a mask with itself
    iou = an.matrix("iou")
    assert iou[0, 1] == iou[1, 0] == pytest.approx(3 / 8) and iou[0, 0] == iou[1, 1] == 1.0
    assert an.matrix("hamming")[0, 0] == 0.0
    rows = an.rows("type")
    assert [r["type"] for r in rows] == ["Q", "FFN-out", "other"]


def test_layer_type_and_index_by_name():
    for i in (0, 11):
        p = f"uniter.encoder.layer.{i}."
        assert layer_type(p + "attention.self.query.weight") == "Q"
        assert layer_type(p + "attention.self.key.weight") == "K"
        assert layer_type(p + "attention.self.value.weight") == "V"
        assert layer_type(p + "attention.output.dense.weight") == "attention-output"
        assert layer_type(p + "intermediate.dense.weight") == "FFN-in"
        assert layer_type(p + "output.dense.weight") == "FFN-out"
        assert layer_type(p + "attention.output.LayerNorm.weight") == "other"
        assert layer_type(p + "attention.self.query.bias") == "other"
        assert layer_index(p + "output.dense.weight") == i
    for name in ("uniter.pooler.dense.weight", "uniter.img_embeddings.img_linear.weight", "head.vqa_output.0.weight"):
        assert layer_type(name) == "other" and layer_index(name) == "other"


def test_chance_levels():
    p = 0.3  # 70% sparsity
    assert chance_iou(p, p) == pytest.approx(p / (2 - p)) and round(chance_iou(p, p), 3) == 0.176
    assert chance_overlap(p, p) == pytest.approx(p)
    assert chance_overlap(0.2, 0.5) == pytest.approx(0.5)          # E|A∩B| / min = pa·pb / min = max
    assert chance_hamming(p, p) == pytest.approx(2 * p * (1 - p))
    assert chance_hamming(0.2, 0.5) == pytest.approx(0.2 + 0.5 - 2 * 0.1)
    assert chance_iou(1.0, 1.0) == 1.0 and chance_hamming(1.0, 0.0) == 1.0
    assert math.isnan(chance_iou(0.0, 0.0)) and math.isnan(chance_overlap(0.0, 0.4))


def test_random_masks_at_70_percent_land_at_chance():
    g = torch.Generator().manual_seed(0)
    shapes = {Q0: (512, 512), OUT1: (512, 2048)}
    a = Mask({k: torch.rand(s, generator=g) < 0.3 for k, s in shapes.items()})
    b = Mask({k: torch.rand(s, generator=g) < 0.3 for k, s in shapes.items()})
    c = OverlapAnalysis.compute({"a": a, "b": b}).counts("a", "b")
    assert c.iou == pytest.approx(0.176, abs=0.003)
    assert c.iou == pytest.approx(c.chance("iou"), abs=0.002)
    assert c.overlap == pytest.approx(c.chance("overlap"), abs=0.003)
    assert c.hamming == pytest.approx(c.chance("hamming"), abs=0.003)
    assert c.iou_chance_tensorwise == pytest.approx(c.chance("iou"), abs=0.002)  # same density in every tensor


def test_tensorwise_chance_is_higher_for_uneven_layers():
    # both masks keep all of one tensor and 10% of another: tensorwise random masks agree more
    g = torch.Generator().manual_seed(1)
    a = Mask({Q0: torch.ones(100, 100, dtype=torch.bool), OUT1: torch.rand(100, 100, generator=g) < 0.1})
    b = Mask({Q0: torch.ones(100, 100, dtype=torch.bool), OUT1: torch.rand(100, 100, generator=g) < 0.1})
    c = OverlapAnalysis.compute({"a": a, "b": b}).counts("a", "b")
    expected_both = 10000 + a[OUT1].sum().item() * b[OUT1].sum().item() / 10000
    assert c.both_chance == pytest.approx(expected_both)
    assert c.iou_chance_tensorwise > c.chance("iou") + 0.3


def test_masks_over_different_parameters_or_shapes_are_refused():
    a = Mask({Q0: m(1, 0), OUT1: m(1, 1)})
    with pytest.raises(MaskMismatch, match=r"a\.pt and b\.pt cover different parameters.*only in a\.pt.*only in b\.pt"):
        OverlapAnalysis.compute({"a": a, "b": Mask({Q0: m(1, 0), POOL: m(1, 1)})},
                                sources={"a": "a.pt", "b": "b.pt"})
    with pytest.raises(MaskMismatch, match=rf"a\.pt and c\.pt differ in shape: {OUT1} is \(2,\) in a\.pt and \(3,\)"):
        OverlapAnalysis.compute({"a": a, "c": Mask({Q0: m(1, 0), OUT1: m(1, 1, 0)})},
                                sources={"a": "a.pt", "c": "c.pt"})
    with pytest.raises(TypeError, match="bool"):
        OverlapAnalysis.compute({"a": {"w": torch.ones(2)}, "b": {"w": torch.ones(2)}})


def test_packed_mask_reads_the_mask_format_lazily(tmp_path):
    assert ov.MASK_FORMAT == mask_module.FORMAT and ov.MASK_VERSION == mask_module.VERSION
    g = torch.Generator().manual_seed(2)
    mask = Mask({Q0: torch.rand(7, 9, generator=g) < 0.4, OUT1: torch.rand(13, generator=g) < 0.5})
    mask.save(tmp_path / "mask.pt")
    packed = PackedMask.load(tmp_path / "mask.pt")
    assert list(packed.keys()) == list(mask.keys()) and packed.shapes[Q0] == (7, 9)
    for k in mask:
        assert packed[k].dtype == torch.bool and torch.equal(packed[k], mask[k])
    (tmp_path / "torn.pt").write_bytes((tmp_path / "mask.pt").read_bytes()[:40])
    with pytest.raises(ValueError, match="torn.pt: cannot read the mask"):
        PackedMask.load(tmp_path / "torn.pt")
    state = mask.state_dict()
    state["packed"][Q0] = state["packed"][Q0][:-1]
    with pytest.raises(ValueError, match="packed bits"):
        PackedMask(state, "short.pt")


def test_labels_from_run_folders():
    paths = [ov._mask_file(ov.Path(p)) for p in (
        "runs/nlvr2/imp-0123abcd/round_07/mask.pt", "runs/vqa/imp-89abcdef/round_07/mask.pt",
        "runs/pretrain/imp-aaaaaaaa/round_07")]
    assert ov.derive_labels(paths) == ["nlvr2", "vqa", "pretrain"]
    two_rounds = [ov.Path("runs/vqa/imp-0123abcd/round_05/mask.pt"), ov.Path("runs/vqa/imp-0123abcd/round_07/mask.pt"),
                  ov.Path("runs/vqa/imp-0123abcd/round_07/branches/shuffle-deadbeef/mask.pt")]
    assert ov.derive_labels(two_rounds) == ["vqa/imp/r05", "vqa/imp/r07", "vqa/imp/r07/shuffle"]
    assert ov.derive_labels([ov.Path("x/foo.pt"), ov.Path("y/mask.pt")]) == ["foo", "y"]
    assert ov.parse_mask_args(["VQA=runs/vqa/r/round_01/mask.pt"]) == [("VQA", ov.Path("runs/vqa/r/round_01/mask.pt"))]


def _run_folder_mask(root, task, mask):
    path = root / "runs" / task / "imp-0123abcd" / "round_07" / "mask.pt"
    mask.save(path)
    return path


def test_overlap_command_writes_csv_markdown_and_heatmap(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    masks = {t: Mask({Q0: torch.rand(16, 16, generator=g) < 0.3, OUT1: torch.rand(16, 64, generator=g) < 0.3,
                      POOL: torch.rand(16, 16, generator=g) < 0.3}) for t in ("vqa", "nlvr2", "pretrain")}
    paths = [str(_run_folder_mask(tmp_path, t, mk)) for t, mk in masks.items()]
    out = tmp_path / "reports" / "overlap"
    assert ov.main([*paths, "--out", str(out), "--metric", "iou", "--metric", "hamming"]) == 0
    for name in ("pairwise.csv", "per_type.csv", "per_layer.csv", "overlap.md", "overlap_iou.png", "overlap_hamming.png"):
        assert (out / name).is_file(), name
    assert (out / "overlap_iou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "pairwise.csv").open()))
    assert [(r["a"], r["b"]) for r in rows] == [("vqa", "nlvr2"), ("vqa", "pretrain"), ("nlvr2", "pretrain")]
    expected = ov.pair_overlap(masks["vqa"], masks["nlvr2"])
    assert float(rows[0]["iou"]) == pytest.approx(expected["iou"], rel=1e-5)
    assert float(rows[0]["iou_chance"]) == pytest.approx(expected["iou_chance"], rel=1e-5)
    per_type = list(csv.DictReader((out / "per_type.csv").open()))
    assert {r["type"] for r in per_type} == {"Q", "FFN-out", "other"}
    per_layer = list(csv.DictReader((out / "per_layer.csv").open()))
    assert {r["layer"] for r in per_layer} == {"0", "1", "other"}
    md = (out / "overlap.md").read_text()
    assert "## IoU of kept weights (chance" in md and "![IoU of kept weights](overlap_iou.png)" in md
    assert "vqa" in capsys.readouterr().out
    # explicit labels
    assert ov.main([f"A={paths[0]}", f"B={paths[1]}", "--out", str(tmp_path / "o2")]) == 0
    assert list(csv.DictReader((tmp_path / "o2" / "pairwise.csv").open()))[0]["a"] == "A"


def test_overlap_command_refuses_mismatched_and_missing_masks(tmp_path, capsys):
    a = _run_folder_mask(tmp_path, "vqa", Mask({Q0: m(1, 0, 1, 1)}))
    b = _run_folder_mask(tmp_path, "gqa", Mask({Q0: m(1, 0, 1)}))
    assert ov.main([str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(a) in err and str(b) in err and "differ in shape" in err
    assert not (tmp_path / "out").exists()
    assert ov.main([str(a), str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")]) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err
    assert ov.main([f"X={a}", f"X={b}"]) == 2
    assert "distinct" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ov.main([str(a)])
