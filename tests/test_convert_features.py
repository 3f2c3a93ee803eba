"""Region-feature converters: every public layout is written here in its real schema, converted,
and the store checked value by value; bad records are reported by id while the rest convert."""
import base64
import io
import json
import pickle
import re

import h5py
import numpy as np
import pytest

from data_modules.convert import ConvertError, convert_features
from data_modules.convert import sources as S
from data_modules.convert.__main__ import main as cli_main
from data_modules.convert.features import KeyMapper, NothingConverted, Reject, load_image_sizes, select_boxes
from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import RegionFeatureStore, partial_path

DIM = 8


def make_images(n, seed=0, dim=DIM, prefix="", nb=(3, 7), first=100):
    """(id, features f32 (k, dim), pixel boxes (k, 4), width, height, conf (k,)) per image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(*nb))
        w, h = int(rng.integers(300, 700)), int(rng.integers(200, 500))
        x1, y1 = rng.uniform(0, w / 2, k), rng.uniform(0, h / 2, k)
        boxes = np.stack([x1, y1, x1 + rng.uniform(5, w / 2, k), y1 + rng.uniform(5, h / 2, k)], 1).astype(np.float32)
        feats = rng.standard_normal((k, dim)).astype(np.float32) * 3
        out.append((f"{prefix}{first + i}", feats, boxes, w, h, rng.uniform(0, 1, k).astype(np.float32)))
    return out


def b64(a, dtype=np.float32):
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def butd_line(img_id, feats, boxes, w, h, *_):
    return "\t".join([str(img_id), str(w), str(h), str(len(boxes)), b64(boxes), b64(feats)])


def lxmert_line(img_id, feats, boxes, w, h, conf):
    k = len(boxes)
    return "\t".join([str(img_id), str(h), str(w), b64(np.zeros(k), np.int64), b64(conf), b64(np.zeros(k), np.int64),
                      b64(np.zeros(k)), str(k), b64(boxes), b64(feats)])


def check_store(path, expected, keys=None, only=True):
    """Every image of ``expected`` is in the store with its values (features within float16 rounding)."""
    store = RegionFeatureStore(path)
    keys = keys or [e[0] for e in expected]
    assert sorted(store.ids) == sorted(keys) if only else set(keys) <= set(store.ids)
    for key, (img_id, feats, boxes, w, h, *_) in zip(keys, expected):
        f, pos = store.get(key)
        np.testing.assert_array_equal(f.numpy(), feats.astype(np.float16).astype(np.float32))
        scale = np.array([w, h, w, h])
        np.testing.assert_allclose(pos[:, :4].numpy(), boxes / scale, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pos[:, 4:6].numpy(), (boxes[:, 2:] - boxes[:, :2]) / scale[:2], rtol=1e-4, atol=1e-6)
        assert store.image_size(key) == (w, h)
    return store


def read_report(path):
    """The rejected records (the summary line of each run left out)."""
    return [r for r in map(json.loads, open(path)) if "summary" not in r]


def read_summary(path):
    """The last run's summary line."""
    return [r["summary"] for r in map(json.loads, open(path)) if "summary" in r][-1]


def run(src, fmt, out, **kw):
    kw.setdefault("progress", False)
    return convert_features([str(s) for s in src], fmt, out, **kw)


# ---------------------------------------------------------------------------------------------- TSV

def test_tsv_both_column_orders_and_several_files_into_one_store(tmp_path):
    a, b = make_images(4, seed=1), make_images(3, seed=2, prefix="COCO_val2014_000000", first=200)
    (tmp_path / "a.tsv").write_text("\n".join(butd_line(*im) for im in a) + "\n")
    (tmp_path / "b.tsv").write_text("\n".join(lxmert_line(*im) for im in b) + "\n")
    # LXMERT has confidences: with th -1 and max 100 every region is kept, as in the source
    s = run([tmp_path / "*.tsv"], "tsv", tmp_path / "s.h5", key_format="{num}", conf_th=-1)
    assert (s.converted, s.rejected, s.feat_dim) == (7, 0, DIM)
    check_store(tmp_path / "s.h5", a + b, keys=[str(int(im[0][-3:])) for im in a + b])
    assert read_report(tmp_path / "s.h5.report.jsonl") == []
    meta = json.loads(h5py.File(tmp_path / "s.h5").attrs["meta"])
    assert meta["format"] == "tsv" and meta["key_format"] == "{num}"


def test_tsv_header_line_names_columns_and_huge_lines_pass_the_csv_limit(tmp_path):
    ims = make_images(2, seed=3, dim=20000, nb=(2, 3))  # ~200 KB base64 per line, over csv's 128 KB default
    header = "\t".join(("image_id", "image_h", "image_w", "num_boxes", "boxes", "features"))
    lines = ["\t".join([i, str(h), str(w), str(len(bx)), b64(bx), b64(f)]) for i, f, bx, w, h, _ in ims]
    (tmp_path / "x.tsv").write_text(header + "\n" + "\n".join(lines) + "\n")
    assert run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5").converted == 2
    check_store(tmp_path / "s.h5", ims)


def test_tsv_bad_records_are_reported_by_id_and_the_rest_converted(tmp_path):
    ims = make_images(8, seed=4)
    lines = [butd_line(*im) for im in ims[:3]]
    i, f, bx, w, h, c = ims[3]
    lines.append(butd_line("bad_dim", np.zeros((len(bx), DIM + 1)), bx, w, h))
    lines.append(butd_line(i, f, bx, w, h).rsplit("\t", 1)[0] + "\t###not-base64###")
    lines.append(butd_line("nan", np.where(np.arange(DIM) == 2, np.nan, f), bx, w, h))
    lines.append(butd_line("outside", f, bx + np.array([0, 0, w, 0], np.float32), w, h))
    lines.append("\t".join(["zero", "10", "10", "0", "", ""]))
    lines.append("short\t10\t10")
    lines.append("\t".join(["nboxes", str(w), str(h), str(len(bx) + 1), b64(bx), b64(f)]))
    lines.append(butd_line("degenerate", f, np.where(np.arange(4) == 2, bx[:, [0]], bx), w, h))
    lines.append(butd_line(*ims[0]).replace(ims[0][0], "100", 1))  # the first image again
    # a box 1 px beyond the right edge (within --box-tol): clipped and counted, the image is kept
    edge = bx.copy()
    edge[0, 2] = w + 1
    lines.append(butd_line("edge", f, edge, w, h))
    lines += [butd_line(*im) for im in ims[4:]]
    (tmp_path / "x.tsv").write_text("\n".join(lines) + "\n\n")
    s = run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5")
    good = ims[:3] + ims[4:]
    assert s.converted == len(good) + 1 and s.rejected == 9 and s.clipped_boxes == 1
    clipped = edge.copy()
    clipped[0, 2] = w
    check_store(tmp_path / "s.h5", good + [("edge", f, clipped, w, h)])
    report = {r["id"]: r for r in read_report(tmp_path / "s.h5.report.jsonl")}
    expected = {
        "bad_dim": r"features are 9-d, expected 8-d",
        ims[3][0]: r"column features is not valid base64",
        "nan": r"features of region 0 contain NaN",
        "outside": r"box 0 = .* lies outside the \d+ x \d+ image by more than --box-tol",
        "zero": r"num_boxes is 0: no regions",
        "short": r"3 columns, expected 6",
        "nboxes": r"boxes hold \d+ floats, expected num_boxes \* 4",
        "degenerate": r"box 0 = .* has no width or height",
    }
    for img_id, pattern in expected.items():
        assert re.search(pattern, report[img_id]["reason"]), (img_id, report[img_id])
        assert report[img_id]["where"].startswith(str(tmp_path / "x.tsv") + ":")
    dup = [r for r in read_report(tmp_path / "s.h5.report.jsonl") if r["id"] == "100"]
    assert len(dup) == 1 and "duplicate" in dup[0]["reason"] and dup[0]["where"].endswith(":12")


def test_tsv_height_before_width_is_caught_and_fixed_by_tsv_fields(tmp_path):
    ims = make_images(6, seed=5)
    for im in ims:  # wide images with a box reaching the right edge: only fits with w, h right
        im[2][0, 2] = im[3]
    rows = ["\t".join([i, str(h), str(w), str(len(bx)), b64(bx), b64(f)]) for i, f, bx, w, h, _ in ims]
    (tmp_path / "x.tsv").write_text("\n".join(rows) + "\n")
    wide = [im for im in ims if im[3] > im[4] * 1.02]
    assert len(wide) >= 5
    with pytest.raises(ConvertError, match="width and height swapped.*--tsv-fields"):
        run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()
    s = run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5", restart=True,
            tsv_fields=("image_id", "image_h", "image_w", "num_boxes", "boxes", "features"))
    assert s.converted == 6
    check_store(tmp_path / "s.h5", ims)


def test_tsv_unknown_column_count_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "x.tsv").write_text("1\t2\t3\t4\n")
    with pytest.raises(ValueError, match=r"x\.tsv:1: 4 tab-separated columns; expected 6 .* or 10"):
        run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5", feat_dim=DIM)


# ------------------------------------------------------------------------------------------ HDF5

def write_fixed_h5(path, ims):
    with h5py.File(path, "w") as f:
        f["image_features"] = np.stack([im[1] for im in ims])
        f["image_bb"] = np.stack([im[2] for im in ims])
        f["spatial_features"] = np.stack([spatial(im[2], im[3], im[4]) for im in ims])


def spatial(boxes, w, h):
    s = boxes / np.array([w, h, w, h], np.float32)
    return np.concatenate([s, s[:, 2:] - s[:, :2]], 1).astype(np.float32)


def test_butd_h5_fixed_and_adaptive_layouts_with_their_mappings(tmp_path):
    fixed = make_images(5, seed=6, nb=(4, 5))  # fixed: the same number of boxes for every image
    order = [3, 0, 4, 1, 2]  # row of each image: the mapping, not the file order, gives the ids
    write_fixed_h5(tmp_path / "val36.hdf5", [fixed[order.index(r)] for r in range(5)])
    with open(tmp_path / "val36_imgid2idx.pkl", "wb") as f:
        pickle.dump({int(im[0]): r for im, r in zip(fixed, order)}, f, protocol=2)
    adaptive = make_images(4, seed=7)
    with h5py.File(tmp_path / "test2015.hdf5", "w") as f:
        f["image_features"] = np.concatenate([im[1] for im in adaptive])
        f["image_bb"] = np.concatenate([im[2] for im in adaptive])
        f["spatial_features"] = np.concatenate([spatial(*im[2:5]) for im in adaptive])
        ends = np.cumsum([len(im[2]) for im in adaptive])
        f["pos_boxes"] = np.stack([ends - [len(im[2]) for im in adaptive], ends], 1).astype(np.int32)
    (tmp_path / "test2015_imgid2idx.json").write_text(json.dumps({str(int(im[0]) + 50): r for r, im in enumerate(adaptive)}))
    s = run([tmp_path / "val36.hdf5"], "butd-h5", tmp_path / "a.h5")
    assert (s.converted, s.feat_dim) == (5, DIM)
    check_store(tmp_path / "a.h5", fixed)
    ButdH5 = S.ButdH5Source
    ButdH5.BLOCK_ROWS, old = 7, ButdH5.BLOCK_ROWS  # windows that split images: reads stay right
    try:
        run([tmp_path / "test2015.hdf5"], "butd-h5", tmp_path / "b.h5")
    finally:
        ButdH5.BLOCK_ROWS = old
    check_store(tmp_path / "b.h5", adaptive, keys=[str(int(im[0]) + 50) for im in adaptive])


def test_butd_h5_inconsistent_spatial_features_are_reported(tmp_path):
    ims = make_images(3, seed=8, nb=(4, 5))
    write_fixed_h5(tmp_path / "t.hdf5", ims)
    with h5py.File(tmp_path / "t.hdf5", "a") as f:
        f["spatial_features"][1, 2, 0] += 0.2
    (tmp_path / "t_imgid2idx.json").write_text(json.dumps({im[0]: r for r, im in enumerate(ims)}))
    s = run([tmp_path / "t.hdf5"], "butd-h5", tmp_path / "s.h5")
    assert (s.converted, s.rejected) == (2, 1)
    [r] = read_report(tmp_path / "s.h5.report.jsonl")
    assert r["id"] == ims[1][0] and r["where"].endswith("t.hdf5#1") and "spatial_features disagree" in r["reason"]


class Evil:
    def __reduce__(self):
        return (print, ("ran code",))


@pytest.mark.parametrize("content, message", [
    ({1: 0, "x": Evil()}, "refusing to load"),
    ([1, 2], "expected a non-empty dict"),
    ({1: -1}, "not image_id -> non-negative int row"),
    ({1: 0, 2: 0}, "several image ids map to the same row"),
])
def test_imgid2idx_pickle_is_read_without_running_code(tmp_path, content, message, capsys):
    with open(tmp_path / "m.pkl", "wb") as f:
        pickle.dump(content, f)
    with pytest.raises(ValueError, match=rf"m\.pkl: .*{message}"):
        S.load_imgid2idx(tmp_path / "m.pkl")
    assert "ran code" not in capsys.readouterr().out


def test_butd_h5_mapping_outside_the_file_and_missing_mapping(tmp_path):
    write_fixed_h5(tmp_path / "t.hdf5", make_images(2, seed=9, nb=(3, 4)))
    with pytest.raises(ConvertError, match=r"no t_imgid2idx\.pkl or \.json.*--imgid2idx"):
        run([tmp_path / "t.hdf5"], "butd-h5", tmp_path / "s.h5")
    (tmp_path / "m.json").write_text('{"7": 5}')
    with pytest.raises(ConvertError, match=r"t\.hdf5: the image-id mapping points at row 5, but the file has 2 images"):
        run([tmp_path / "t.hdf5"], "butd-h5", tmp_path / "s.h5", imgid2idx=tmp_path / "m.json")


# ------------------------------------------------------------------------------------------- npz

def test_npz_folder_uniter_and_openvqa_styles_with_box_selection(tmp_path):
    ims = make_images(4, seed=10, nb=(12, 16))
    d = tmp_path / "npz"
    d.mkdir()
    sizes = {}
    for img_id, f, bx, w, h, conf in ims[:2]:  # UNITER extractor: norm_bb, conf (N, 1), float16
        norm = np.concatenate([bx / [w, h, w, h], (bx[:, 2:] - bx[:, :2]) / [w, h]], 1)
        np.savez(d / f"coco_val2014_{int(img_id):012d}.npz", features=f.astype(np.float16),
                 norm_bb=norm.astype(np.float16), conf=conf[:, None].astype(np.float16),
                 soft_labels=np.zeros((len(f), 5), np.float16))
        sizes[img_id] = [w, h]
    for img_id, f, bx, w, h, conf in ims[2:]:  # OpenVQA: x channel-first, bbox in pixels, size keys
        np.savez(d / f"COCO_val2014_{int(img_id):012d}.jpg.npz", x=f.T, bbox=bx, image_w=w, image_h=h,
                 num_bbox=len(bx))
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    s = run([d], "npz", tmp_path / "s.h5", key_format="{num}", image_sizes=tmp_path / "sizes.json",
            conf_th=0.5, min_boxes=10, max_boxes=11)
    store = RegionFeatureStore(tmp_path / "s.h5")
    assert sorted(store.ids) == sorted(im[0] for im in ims) and s.rejected == 0
    for img_id, f, bx, w, h, conf in ims[:2]:
        c16 = conf.astype(np.float16).astype(np.float64)
        keep = select_boxes(len(f), c16, 0.5, 10, 11)
        assert len(keep) == min(11, max(10, int((c16 > 0.5).sum())))
        got_f, pos = store.get(img_id)
        np.testing.assert_array_equal(got_f.numpy(), f[keep].astype(np.float16).astype(np.float32))
        norm16 = (bx / [w, h, w, h]).astype(np.float16).astype(np.float64)[keep]
        np.testing.assert_allclose(pos[:, :4].numpy(), np.clip(norm16, 0, 1), atol=1e-6)
        assert store.image_size(img_id) == (w, h)
    check_store(tmp_path / "s.h5", ims[2:], only=False)  # no confidences: every region kept


def test_npz_without_size_and_unreadable_files_are_reported(tmp_path):
    d = tmp_path / "npz"
    d.mkdir()
    (d / "broken.npz").write_bytes(b"not a zip")
    np.savez(d / "nosize.npz", features=np.ones((2, DIM)), norm_bb=np.array([[0, 0, .5, .5], [.1, .1, .2, .3]]))
    np.savez(d / "nofeat.npz", boxes=np.ones((2, 4)))
    np.savez(d / "ok.npz", features=np.ones((2, DIM)), norm_bb=np.array([[0, 0, .5, .5], [.1, .1, .2, .3]]))
    (tmp_path / "sizes.json").write_text(json.dumps({"images": [{"id": 1, "width": 30, "height": 20, "file_name": "ok.jpg"}]}))
    s = run([d], "npz", tmp_path / "s.h5", image_sizes=tmp_path / "sizes.json", feat_dim=DIM)
    assert RegionFeatureStore(tmp_path / "s.h5").ids == ["ok"] and s.rejected == 3
    report = {r["id"]: r["reason"] for r in read_report(tmp_path / "s.h5.report.jsonl")}
    assert "npz cannot be read" in report["broken.npz"]
    assert "image size unknown (not in" in report["nosize.npz"]
    assert "needs features" in report["nofeat.npz"]
    s = run([d / "nosize.npz"], "npz", tmp_path / "u.h5", unknown_size=True)
    store = RegionFeatureStore(tmp_path / "u.h5")
    assert store.image_size("nosize") == (1, 1)
    np.testing.assert_allclose(store.get("nosize")[1][1, :4].numpy(), [.1, .1, .2, .3], rtol=1e-6)


# -------------------------------------------------------------------------------- box selection

def test_box_selection_follows_uniters_rule_and_keeps_the_most_confident_in_source_order():
    conf = np.array([0.1, 0.9, 0.3, 0.05, 0.8, 0.25, 0.21, 0.2])
    # 5 above 0.2 (0.2 itself is not: UNITER counts conf > th), within [2, 6]: those 5, in order
    assert select_boxes(8, conf, 0.2, 2, 6).tolist() == [1, 2, 4, 5, 6]
    # clamped up to min 7: the 7 most confident, still in source order
    assert select_boxes(8, conf, 0.5, 7, 8).tolist() == [0, 1, 2, 4, 5, 6, 7]
    # clamped down to max 2
    assert select_boxes(8, conf, 0.0, 1, 2).tolist() == [1, 4]
    # UNITER's confidence-sorted npz: the same as its "first nbb rows"
    srt = np.sort(conf)[::-1]
    assert select_boxes(8, srt, 0.2, 2, 6).tolist() == list(range(5))
    assert select_boxes(8, conf, -1, 2, 3).tolist() == [0, 1, 2]  # fixed policy: the first max
    assert select_boxes(8, None, 0.2, 2, 3).tolist() == list(range(8))  # no conf: the extractor chose
    assert select_boxes(8, conf, 0.2, 2, 6, nbb=3).tolist() == [0, 1, 2]  # img_db nbb json
    assert select_boxes(8, conf, None, None, None).tolist() == list(range(8))  # the default: every region


def test_key_mapper_fields_prefixes_and_errors():
    assert KeyMapper()("nlvr2_dev-850-0-img0.npz") == "nlvr2_dev-850-0-img0"
    assert KeyMapper(strip_prefix=["nlvr2_"])("nlvr2_dev-850-0-img0.npz") == "dev-850-0-img0"
    assert KeyMapper("{num}")("COCO_train2014_000000000042.jpg.npz") == "42"
    assert KeyMapper("{num:012d}")("42") == "000000000042"
    assert KeyMapper("{id}")("a.npz") == "a.npz"
    with pytest.raises(ValueError, match=r"--key-format '\{image\}': unknown field \{image\}; .* only \{id\}, \{stem\}, \{num\}"):
        KeyMapper("{image}")
    with pytest.raises(ValueError, match="uses no field"):
        KeyMapper("x")
    with pytest.raises(Reject, match="does not start with --strip-prefix 'a_' or 'b_'"):
        KeyMapper(strip_prefix=["a_", "b_"])("c_1")
    with pytest.raises(Reject, match="no number"):
        KeyMapper("{num}")("abc")


def test_image_sizes_file_forms(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"x": [3, 4], "y": {"width": 5, "height": 6}}))
    assert load_image_sizes(tmp_path / "a.json") == {"x": (3, 4), "y": (5, 6)}
    (tmp_path / "b.json").write_text(json.dumps({"x": [3, 0]}))
    with pytest.raises(ValueError, match=r"b\.json: 'x': size 3 x 0 is not two positive integers"):
        load_image_sizes(tmp_path / "b.json")


# ------------------------------------------------------------------------------------- img_db

def soft_labels_of(img_id, n, classes=5):
    """A class distribution per region (Dirichlet rows, as a detector's softmax), fixed by the id."""
    return np.random.default_rng(sum(map(ord, img_id))).dirichlet(np.ones(classes) * 0.5, size=n)


def test_uniter_img_db_msgpack_and_compressed(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    msgpack = pytest.importorskip("msgpack")
    ims = make_images(3, seed=11, nb=(12, 15), prefix="dev-85")
    sizes = {}
    for sub, compressed in (("feat_th0.2_max100_min10", False), ("feat_th0.2_max100_min10_compressed", True)):
        db = tmp_path / ("plain" if not compressed else "comp")
        (db / sub).mkdir(parents=True)
        env = lmdb.open(str(db / sub), map_size=1 << 24)
        nbb = {}
        with env.begin(write=True) as txn:
            for img_id, f, bx, w, h, conf in ims:
                name = f"nlvr2_{img_id}-0-img0.npz"
                norm = np.concatenate([bx / [w, h, w, h], (bx[:, 2:] - bx[:, :2]) / [w, h]], 1)
                order = np.argsort(-conf)  # UNITER's npz are sorted by confidence
                arrays = {"features": f[order].astype(np.float16), "norm_bb": norm[order].astype(np.float16),
                          "conf": conf[order][:, None].astype(np.float16),
                          "soft_labels": soft_labels_of(img_id, len(f))[order].astype(np.float16)}
                if compressed:
                    buf = io.BytesIO()
                    np.savez_compressed(buf, **arrays)
                    value = buf.getvalue()
                else:  # what msgpack_numpy writes
                    value = msgpack.packb({k: {b"nd": True, b"type": a.dtype.str, b"kind": b"", b"shape": a.shape,
                                               b"data": a.tobytes()} for k, a in arrays.items()}, use_bin_type=True)
                txn.put(name.encode(), value)
                nbb[name] = 11 if img_id.endswith("0") else min(100, max(10, int((conf > 0.2).sum())))
                sizes[f"{img_id}-0-img0"] = [w, h]
            txn.put(b"__keys__", json.dumps(sorted(nbb)).encode())
        env.close()
        (db / "nbb_th0.2_max100_min10.json").write_text(json.dumps(nbb))
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    for db in ("plain", "comp"):
        out = tmp_path / f"{db}.h5"
        s = run([tmp_path / db], "img-db", out, strip_prefix=["nlvr2_"], image_sizes=tmp_path / "sizes.json")
        assert (s.converted, s.rejected) == (3, 0)
        store = RegionFeatureStore(out)
        for img_id, f, bx, w, h, conf in ims:
            order = np.argsort(-conf)
            n = 11 if img_id.endswith("0") else min(100, max(10, int((conf > 0.2).sum())))  # the json's nbb
            got, pos = store.get(f"{img_id}-0-img0")
            np.testing.assert_array_equal(got.numpy(), f[order][:n].astype(np.float16).astype(np.float32))
            norm16 = (bx / [w, h, w, h])[order][:n].astype(np.float16).astype(np.float64)
            np.testing.assert_allclose(pos[:, :4].numpy(), norm16, atol=1e-6)
            # the soft labels of the same regions, as UNITER's MRC reads them
            expected = soft_labels_of(img_id, len(f))[order][:n].astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(store.get_soft_labels(f"{img_id}-0-img0").numpy(), expected)
        assert store.soft_label_dim == 5 and store.soft_label_names is None
        assert "soft labels: kept: 5 classes per region" in s.text()
        assert read_summary(out.with_name(out.name + ".report.jsonl"))["soft_labels"]["classes"] == 5
        assert json.loads(h5py.File(out).attrs["meta"])["conf_th"] == 0.2


def test_img_db_without_lmdb_names_the_packages(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_lmdb(name, *a, **k):
        if name == "lmdb":
            raise ImportError("no")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_lmdb)
    (tmp_path / "db").mkdir()
    with pytest.raises(ConvertError, match="pip install lmdb msgpack"):
        run([tmp_path / "db"], "img-db", tmp_path / "s.h5", image_sizes=None, conf_th=0.2, min_boxes=10, max_boxes=100)


def test_msgpack_numpy_values_with_objects_are_refused():
    msgpack = pytest.importorskip("msgpack")
    value = msgpack.packb({"features": {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1], b"data": b"x"}},
                          use_bin_type=True)
    with pytest.raises(ValueError, match="object or structured array"):
        S.decode_img_db_value(value, compressed=False, msgpack=msgpack)


# ------------------------------------------------------------------------------ resume, CLI, writer

def test_resume_after_an_interruption_gives_the_uninterrupted_store(tmp_path, monkeypatch):
    ims = make_images(30, seed=12)
    lines = [butd_line(*im) for im in ims]
    lines.insert(5, butd_line("bad", np.zeros((3, DIM + 1)), ims[0][2][:3], 10, 10))
    (tmp_path / "x.tsv").write_text("\n".join(lines) + "\n")
    full = run([tmp_path / "x.tsv"], "tsv", tmp_path / "full.h5")

    real, calls = S.TsvSource._record, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(S.TsvSource, "_record", staticmethod(interrupted))
    with pytest.raises(KeyboardInterrupt):
        run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5", flush_rows=20, feat_dim=DIM)
    assert not (tmp_path / "s.h5").exists() and partial_path(tmp_path / "s.h5").exists()
    monkeypatch.setattr(S.TsvSource, "_record", staticmethod(real))
    with pytest.raises(ConvertError, match="other settings.*--restart"):
        run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5", key_format="{id}")
    s = run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5")
    assert 0 < s.resumed < 19 and s.resumed + s.converted == 30 and not partial_path(tmp_path / "s.h5").exists()
    assert full.converted == 30 and len(read_report(tmp_path / "s.h5.report.jsonl")) == 1  # "bad" once
    check_store(tmp_path / "s.h5", ims)
    with h5py.File(tmp_path / "full.h5") as a, h5py.File(tmp_path / "s.h5") as b:
        for name in ("img_ids", "num_boxes", "offsets", "img_wh", "features", "norm_bb"):
            np.testing.assert_array_equal(a[name][:], b[name][:])
    with pytest.raises(ConvertError, match=r"s\.h5 exists; pass --overwrite"):
        run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5")


def test_writer_resume_suspend_and_refusals(tmp_path):
    path = tmp_path / "s.h5"
    w = RegionFeatureWriter(path, 2, resume=True, meta={"a": 1}, flush_rows=1)
    w.add("a", np.ones((1, 2)), [[0, 0, 1, 1]], 2, 2)
    w.add("b", np.ones((2, 2)), [[0, 0, 1, 1], [0, 0, 2, 2]], 2, 2)
    w.suspend()
    assert not path.exists()
    with pytest.raises(ValueError, match=r"\.s\.h5\.partial .*holds 2-d features, expected 4-d"):
        RegionFeatureWriter(path, 4, resume=True, meta={"a": 1})
    with pytest.raises(ValueError, match="other settings"):
        RegionFeatureWriter(path, 2, resume=True, meta={"a": 2})
    with RegionFeatureWriter(path, 2, resume=True, meta={"a": 1}) as w:
        assert w.resumed == 2 and "b" in w and "c" not in w
        w.add("c", 2 * np.ones((1, 2)), [[0, 0, 1, 2]], 2, 2)
    store = RegionFeatureStore(path)
    assert store.ids == ["a", "b", "c"] and store.get("c")[0].tolist() == [[2.0, 2.0]]
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]
    partial_path(path).write_bytes(b"cut off")
    with pytest.raises(ValueError, match="cannot be opened.*delete it"):
        RegionFeatureWriter(path, 2, resume=True)


def test_cli_help_and_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cli_main(["features", "--help"])
    assert err.value.code == 0 and "--key-format" in capsys.readouterr().out
    (tmp_path / "x.tsv").write_text("\n".join(butd_line(*im) for im in make_images(3, seed=13)) + "\n")
    assert cli_main(["features", "--src", str(tmp_path / "x.tsv"), "--format", "tsv", "--out",
                     str(tmp_path / "s.h5"), "--no-progress"]) == 0
    assert "3 images (3 converted now, 0 resumed), 0 rejected" in capsys.readouterr().out
    assert cli_main(["features", "--src", str(tmp_path / "x.tsv"), "--format", "tsv", "--out",
                     str(tmp_path / "s.h5"), "--no-progress"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err



def test_values_written_by_msgpack_numpy_itself_decode_exactly():
    msgpack = pytest.importorskip("msgpack")
    mn = pytest.importorskip("msgpack_numpy")
    arrays = {"features": np.arange(6, dtype=np.float16).reshape(2, 3), "conf": np.array([[0.5], [0.25]], np.float16)}
    value = msgpack.packb(arrays, default=mn.encode, use_bin_type=True)  # as UNITER's convert_imgdir.py
    got = S.decode_img_db_value(value, compressed=False, msgpack=msgpack)
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype and np.array_equal(got[k], a)


def test_concat_puts_the_first_stores_regions_first(tmp_path, capsys):
    """VCR: ground-truth boxes, then detected ones, per image; sizes must agree."""
    from data_modules.convert.__main__ import main as convert_main
    from data_modules.convert.writer import RegionFeatureWriter
    from data_modules.features import RegionFeatureStore

    rng = np.random.default_rng(0)
    data = {}
    for name, n in (("gt", 2), ("det", 3)):
        with RegionFeatureWriter(tmp_path / f"{name}.h5", 8) as w:
            for key in (("a", "b") if name == "gt" else ("a",)):
                f = rng.standard_normal((n, 8)).astype(np.float16).astype(np.float32)
                b = np.array([[10 * i, 5, 10 * i + 20, 30] for i in range(n)], dtype=np.float32)
                w.add(key, f, b, 100, 50)
                data[name, key] = (f, b)
    assert convert_main(["concat", "--src", str(tmp_path / "gt.h5"), str(tmp_path / "det.h5"),
                         "--out", str(tmp_path / "vcr.h5")]) == 0
    store = RegionFeatureStore(tmp_path / "vcr.h5")
    feats, pos = store.get("a")
    assert np.allclose(feats.numpy(), np.concatenate([data["gt", "a"][0], data["det", "a"][0]]), atol=1e-3)
    assert np.allclose(pos[:, :4].numpy() * [100, 50, 100, 50], np.concatenate([data["gt", "a"][1], data["det", "a"][1]]))
    assert store.num_boxes("b") == 2  # not detected: ground truth only
    with RegionFeatureWriter(tmp_path / "other.h5", 8) as w:
        w.add("a", np.ones((1, 8), np.float32), np.array([[0, 0, 10, 10]], np.float32), 60, 50)
    assert convert_main(["concat", "--src", str(tmp_path / "gt.h5"), str(tmp_path / "other.h5"), "--out",
                         str(tmp_path / "x.h5")]) == 2
    assert re.search("error: image 'a'.*100x50.*60x50", capsys.readouterr().err)
    (tmp_path / "cut.h5").write_bytes((tmp_path / "det.h5").read_bytes()[:1000])
    assert convert_main(["concat", "--src", str(tmp_path / "gt.h5"), str(tmp_path / "cut.h5"), "--out",
                         str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: .*cut\.h5 is truncated: 1,000 bytes on disk", err) and "Traceback" not in err
    assert not (tmp_path / "x.h5").exists() and not list(tmp_path.glob(".x.h5*"))


# ------------------------------------------------------- box selection default, faults that exit 0

def fixed_tsv(path, n_images=6, boxes=36, seed=20):
    """LXMERT-style TSV: 36 boxes per image, with confidences (most below UNITER's 0.2 or not)."""
    ims = make_images(n_images, seed=seed, nb=(boxes, boxes + 1))
    path.write_text("\n".join(lxmert_line(*im) for im in ims) + "\n")
    return ims


def test_fixed_box_tsv_keeps_every_box_by_default(tmp_path, capsys):
    ims = fixed_tsv(tmp_path / "x.tsv")
    s = run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5")
    assert (s.converted, s.dropped_boxes, s.boxes_in, s.boxes_out, s.thinned_images) == (6, 0, 216, 216, 0)
    store = check_store(tmp_path / "s.h5", ims)  # every region, in source order
    assert {store.num_boxes(im[0]) for im in ims} == {36}
    assert json.loads(h5py.File(tmp_path / "s.h5").attrs["meta"])["conf_th"] is None
    summary = read_summary(tmp_path / "s.h5.report.jsonl")["box_selection"]
    assert summary["policy"].startswith("none: every region kept") and summary["dropped"] == 0
    assert cli_main(["features", "--src", str(tmp_path / "x.tsv"), "--format", "tsv", "--out", str(tmp_path / "c.h5"),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "box selection: none: every region kept" in out and "every source region kept (216 regions in 6 images)" in out


def test_uniters_rule_only_when_asked_and_what_it_drops_is_reported(tmp_path, capsys):
    ims = fixed_tsv(tmp_path / "x.tsv")
    args = ["features", "--src", str(tmp_path / "x.tsv"), "--format", "tsv", "--out", str(tmp_path / "s.h5"),
            "--no-progress", "--conf-th", "0.2", "--min-boxes", "10", "--max-boxes", "100"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    kept = {im[0]: int((im[5] > 0.2).sum()) for im in ims}  # 36 boxes: between min 10 and max 100
    assert all(10 <= k < 36 for k in kept.values())
    store = RegionFeatureStore(tmp_path / "s.h5")
    for img_id, f, bx, w, h, conf in ims:
        keep = select_boxes(36, conf.astype(np.float64), 0.2, 10, 100)
        assert store.num_boxes(img_id) == kept[img_id] == len(keep)
        np.testing.assert_array_equal(store.get(img_id)[0].numpy(), f[keep].astype(np.float16).astype(np.float32))
    dropped = sum(36 - k for k in kept.values())
    assert "box selection: UNITER's rule, conf_th 0.2, min_boxes 10, max_boxes 100" in out
    assert f"DROPPED {dropped} of 216 source regions ({100 * dropped / 216:.1f} %): {216 - dropped} written; 6 of 6 " \
           f"images converted now lost regions, e.g. '{ims[0][0]}' ({kept[ims[0][0]]} of 36)" in out
    assert "every source image had 36 regions (fixed-box features?): omit --conf-th to keep them all" in out
    summary = read_summary(tmp_path / "s.h5.report.jsonl")
    sel = summary["box_selection"]
    assert (sel["regions_in"], sel["regions_out"], sel["dropped"], sel["images_affected"]) == (216, 216 - dropped, dropped, 6)
    assert sel["examples"][0] == {"key": ims[0][0], "kept": kept[ims[0][0]], "of": 36}
    assert sel["source_regions_per_image"] == [36, 36]
    # min / max without a threshold: refused, naming UNITER's rule; nothing written
    args = ["features", "--src", str(tmp_path / "x.tsv"), "--format", "tsv", "--out", str(tmp_path / "m.h5"),
            "--no-progress", "--max-boxes", "20"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "--min-boxes / --max-boxes apply with --conf-th only: UNITER's rule is --conf-th 0.2 --min-boxes 10" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "s.h5.report.jsonl", "x.tsv"]
    with pytest.raises(SystemExit):  # --conf-th takes a number or 'none'
        cli_main(args[:-2] + ["--conf-th", "lots"])
    assert "expected a number (0.2: UNITER's rule" in capsys.readouterr().err


def test_img_db_defaults_to_its_envs_policy_and_conf_th_none_keeps_all(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    msgpack = pytest.importorskip("msgpack")
    ims = make_images(2, seed=21, nb=(30, 31), prefix="x")
    env_dir = tmp_path / "db" / "feat_th0.2_max100_min10"
    env_dir.mkdir(parents=True)
    env = lmdb.open(str(env_dir), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for img_id, f, bx, w, h, conf in ims:
            norm = (bx / [w, h, w, h]).astype(np.float16)
            arrays = {"features": f.astype(np.float16), "norm_bb": norm, "conf": conf.astype(np.float16)}
            txn.put(f"{img_id}.npz".encode(), msgpack.packb(
                {k: {b"nd": True, b"type": a.dtype.str, b"kind": b"", b"shape": a.shape, b"data": a.tobytes()}
                 for k, a in arrays.items()}, use_bin_type=True))
    env.close()
    s = run([tmp_path / "db"], "img-db", tmp_path / "a.h5", unknown_size=True)
    assert s.selection.startswith("the img_db env's own policy (feat_th0.2_max100_min10: conf_th 0.2, min_boxes 10")
    assert s.dropped_boxes > 0 and s.boxes_in == 60
    s = run([tmp_path / "db"], "img-db", tmp_path / "b.h5", unknown_size=True, conf_th="none")
    assert s.dropped_boxes == 0 and s.boxes_out == 60 and s.selection.startswith("none (--conf-th none)")


@pytest.mark.parametrize("layout, message", [
    ("file", r"--src .*feats\.tsv is a file, not an LMDB folder; expected UNITER's img_db folder"),
    ("data.mdb", r"--src .*data\.mdb is a file, not an LMDB folder \(the LMDB folder is .*db\)"),
    ("folder", r"--src .*db is not an LMDB img_db: no data\.mdb in it or in a sub-folder \(it holds notes\.txt\)"),
    ("garbage", r"--src .*db: not a readable LMDB environment \(.*MDB_INVALID.*\); expected UNITER's img_db"),
    ("absent", r"--src .*nothing: no such file or folder"),
])
def test_img_db_given_something_else_is_a_clean_error(tmp_path, capsys, layout, message):
    if layout == "garbage":
        pytest.importorskip("lmdb")
    db = tmp_path / "db"
    db.mkdir()
    src = {"file": tmp_path / "feats.tsv", "data.mdb": db / "data.mdb", "folder": db, "garbage": db,
           "absent": tmp_path / "nothing"}[layout]
    if layout == "file":
        src.write_text("1\t2\n")
    elif layout == "folder":
        (db / "notes.txt").write_text("x")
    elif layout in ("garbage", "data.mdb"):
        (db / "data.mdb").write_bytes(b"garbage" * 100)
    for conf in ([], ["--conf-th", "0.2"]):  # with and without the env's policy being looked up
        code = cli_main(["features", "--src", str(src), "--format", "img-db", "--out", str(tmp_path / "s.h5"),
                         "--unknown-size", "--no-progress", *conf])
        err = capsys.readouterr().err
        assert code == 2 and re.search(message, err) and err.startswith("error: "), err
        assert "Traceback" not in err
    assert not (tmp_path / "s.h5").exists() and not partial_path(tmp_path / "s.h5").exists()
    assert not (tmp_path / "s.h5.report.jsonl").exists()


def test_a_conversion_rejecting_every_record_leaves_no_store(tmp_path, capsys):
    ims = make_images(3, seed=22)
    bad = [butd_line(i, np.zeros((len(bx), DIM + 1)), bx, w, h) for i, f, bx, w, h, _ in ims]
    bad.append(butd_line("nan", np.full((2, DIM + 1), np.nan), ims[0][2][:2], 600, 500))
    (tmp_path / "x.tsv").write_text("\n".join(bad) + "\n")
    with pytest.raises(NothingConverted) as err:
        run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5", feat_dim=DIM)
    msg = str(err.value)
    assert msg.startswith("no image converted: all 4 records were rejected, 4 of them as "
                          "'features are #-d, expected #-d like the rest of the store' (e.g. ")
    assert f"no store written at {tmp_path / 's.h5'}; every rejected record and its reason is in " \
           f"{tmp_path / 's.h5.report.jsonl'}" in msg
    assert err.value.summary.rejected == 4 and isinstance(err.value, ConvertError)
    assert not (tmp_path / "s.h5").exists() and not partial_path(tmp_path / "s.h5").exists()
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["s.h5.report.jsonl", "x.tsv"]
    assert len(read_report(tmp_path / "s.h5.report.jsonl")) == 4
    assert read_summary(tmp_path / "s.h5.report.jsonl")["converted"] == 0
    # from the CLI: exit 1, the reasons on stdout, the error on stderr; an existing store stays as it was
    (tmp_path / "good.tsv").write_text(butd_line(*ims[0]) + "\n")
    run([tmp_path / "good.tsv"], "tsv", tmp_path / "s.h5")
    before = (tmp_path / "s.h5").read_bytes()
    code = cli_main(["features", "--src", str(tmp_path / "x.tsv"), "--format", "tsv", "--out", str(tmp_path / "s.h5"),
                     "--no-progress", "--overwrite", "--feat-dim", str(DIM)])
    out, err = capsys.readouterr()
    assert code == 1 and "error: no image converted: all 4 records were rejected" in err
    assert f"the existing {tmp_path / 's.h5'} is left as it was" in err and "rejected 4 records (1 kinds" in out
    assert (tmp_path / "s.h5").read_bytes() == before and not partial_path(tmp_path / "s.h5").exists()


def test_sources_without_records_leave_no_store(tmp_path):
    (tmp_path / "x.tsv").write_text("\n\n")
    with pytest.raises(NothingConverted, match=r"no image converted: the sources \(.*x\.tsv\) hold no records; "
                                               r"no store written at .*s\.h5"):
        run([tmp_path / "x.tsv"], "tsv", tmp_path / "s.h5", feat_dim=DIM)
    assert not (tmp_path / "s.h5").exists() and not partial_path(tmp_path / "s.h5").exists()


def test_report_summary_quotes_reasons_verbatim_and_keeps_kinds_apart(tmp_path, capsys):
    ims = make_images(8, seed=23)
    lines = [butd_line(*ims[0])]
    i, f, bx, w, h, _ = ims[1]
    lines.append(butd_line("d9", np.zeros((len(bx), DIM + 1)), bx, w, h))
    lines.append(butd_line("d12", np.zeros((len(bx), DIM + 4)), bx, w, h))
    lines.append(butd_line("big", np.full_like(f, 1e6), bx, w, h))                      # "float16" must survive
    lines.append(butd_line("out", f, bx + np.array([0, 0, w, 0], np.float32), w, h))   # "--box-tol" must survive
    flat = bx.copy()
    flat[0, 2] = flat[0, 0]
    lines.append(butd_line("flat", f, flat, w, h))
    lines.append(butd_line(*ims[2]))
    (tmp_path / "x.tsv").write_text("\n".join(lines) + "\n")
    assert cli_main(["features", "--src", str(tmp_path / "x.tsv"), "--format", "tsv", "--out", str(tmp_path / "s.h5"),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    records = {r["id"]: r for r in read_report(tmp_path / "s.h5.report.jsonl")}
    summary = read_summary(tmp_path / "s.h5.report.jsonl")
    kinds = {r["kind"]: r for r in summary["reasons"]}
    assert summary["rejected"] == 5 and sum(r["count"] for r in summary["reasons"]) == 5
    assert kinds["features are #-d, expected #-d like the rest of the store"]["count"] == 2
    assert kinds["features exceed the float16 range of the store (|x| <= #)"]["count"] == 1
    assert kinds["box # = [#, #, #, #] lies outside the # x # image by more than --box-tol # of its side"]["count"] == 1
    assert kinds["box # = [#, #, #, #] has no width or height"]["count"] == 1
    for r in summary["reasons"]:  # each example is a record's reason, byte for byte
        assert r["example"] in {rec["reason"] for rec in records.values()}
        assert r["where"] == next(rec["where"] for rec in records.values() if rec["reason"] == r["example"])
    assert kinds["features are #-d, expected #-d like the rest of the store"]["example"] == records["d9"]["reason"]
    # on the console: every kind on its own line, with its reason quoted exactly
    for r in summary["reasons"]:
        assert f"{r['count']:>7}  {r['kind']}\n" in out
        assert f"e.g. {r['where']}: {json.dumps(r['example'])}\n" in out
    assert "rejected 5 records (4 kinds; every one in " in out


def test_reasons_with_newlines_and_quotes_stay_on_one_line(tmp_path, capsys, monkeypatch):
    d = tmp_path / "npz"
    d.mkdir()
    for name in ("a.npz", "ok.npz"):
        np.savez(d / name, features=np.ones((2, DIM)), boxes=np.array([[0, 0, 5, 5], [1, 1, 2, 3]]),
                 image_w=10, image_h=10)
    real = S.NpzSource._record
    library_message = 'npz cannot be read (ValueError: bad header:\n  expected "descr", got \'shape\'\n)'

    def record(path):  # a decoder whose exception message spans lines and holds quotes
        return S.Record(id=path.name, where=str(path), error=library_message) if path.name == "a.npz" else real(path)

    monkeypatch.setattr(S.NpzSource, "_record", staticmethod(record))
    assert cli_main(["features", "--src", str(d), "--format", "npz", "--out", str(tmp_path / "s.h5"),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    [rec] = read_report(tmp_path / "s.h5.report.jsonl")
    assert rec["reason"] == library_message  # the report keeps it exactly
    [r] = read_summary(tmp_path / "s.h5.report.jsonl")["reasons"]
    assert r["example"] == library_message
    assert r["kind"] == 'npz cannot be read (ValueError: bad header: expected \'...\', got \'...\' )'
    example_lines = [line for line in out.splitlines() if line.strip().startswith("e.g.")]
    assert len(example_lines) == 1 and example_lines[0].endswith(json.dumps(library_message))
    assert json.loads(example_lines[0].split(": ", 1)[1]) == library_message
    assert len(out.splitlines()) == 7  # counts, selection (2), soft labels, rejected, kind, example


def test_reason_kind_groups_numbers_and_quoted_values_only():
    from data_modules.convert.features import reason_kind

    assert reason_kind("features are 9-d, expected 8-d") == "features are #-d, expected #-d"
    assert reason_kind("duplicate: key '42' was already converted") == "duplicate: key '...' was already converted"
    assert reason_kind("image size unknown (not in data/sizes2014.json)") == "image size unknown (not in data/sizes2014.json)"
    assert reason_kind("the image's size doesn't fit --box-tol 0.01") == "the image's size doesn't fit --box-tol #"
    assert reason_kind("a\n  b\tc") == "a b c"
    assert reason_kind("/x/s.h5: image 'k': features contain NaN", "/x/s.h5: image 'k'") == "features contain NaN"


# ---------------------------------------------------------------------------------------- soft labels

def uniter_npz(d, ims, classes=5, soft=True):
    """UNITER's extractor output: norm_bb, conf (N, 1) and soft_labels (N, C), float16."""
    d.mkdir(exist_ok=True)
    sizes = {}
    for img_id, f, bx, w, h, conf in ims:
        norm = np.concatenate([bx / [w, h, w, h], (bx[:, 2:] - bx[:, :2]) / [w, h]], 1)
        extra = {"soft_labels": soft_labels_of(img_id, len(f), classes).astype(np.float16)} if soft else {}
        np.savez(d / f"coco_val2014_{int(img_id):012d}.npz", features=f.astype(np.float16),
                 norm_bb=norm.astype(np.float16), conf=conf[:, None].astype(np.float16), **extra)
        sizes[img_id] = [w, h]
    return sizes


def test_npz_soft_labels_follow_the_box_selection_and_can_be_named_or_dropped(tmp_path):
    ims = make_images(3, seed=12, nb=(12, 16))
    sizes = uniter_npz(tmp_path / "npz", ims)
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    (tmp_path / "names.txt").write_text("__background__\nred cube\nblue cube\n\ngreen cone\nbig sphere\n")
    kw = dict(key_format="{num}", image_sizes=tmp_path / "sizes.json", conf_th=0.5, min_boxes=10, max_boxes=11)
    s = run([tmp_path / "npz"], "npz", tmp_path / "s.h5", soft_label_names=tmp_path / "names.txt", **kw)
    assert s.soft_label_dim == 5 and "named from" in s.soft_labels
    store = RegionFeatureStore(tmp_path / "s.h5")
    assert store.soft_label_names == ["__background__", "red cube", "blue cube", "green cone", "big sphere"]
    for img_id, f, bx, w, h, conf in ims:
        keep = select_boxes(len(f), conf.astype(np.float16).astype(np.float64), 0.5, 10, 11)
        expected = soft_labels_of(img_id, len(f)).astype(np.float16)[keep].astype(np.float32)
        np.testing.assert_array_equal(store.get_soft_labels(img_id).numpy(), expected)
    dropped = run([tmp_path / "npz"], "npz", tmp_path / "d.h5", soft_labels=False, **kw)
    assert not RegionFeatureStore(tmp_path / "d.h5").has_soft_labels and "dropped (--no-soft-labels)" in dropped.soft_labels
    assert json.loads(h5py.File(tmp_path / "d.h5").attrs["meta"])["soft_labels"].startswith("dropped")
    (tmp_path / "short.json").write_text('["a", "b"]')
    with pytest.raises(NothingConverted, match=r"soft_labels have shape \(#, #\), expected \(#, #\)"):
        run([tmp_path / "npz"], "npz", tmp_path / "n.h5", soft_label_names=tmp_path / "short.json", **kw)
    with pytest.raises(ConvertError, match="--soft-label-names names the soft labels that --no-soft-labels leaves out"):
        run([tmp_path / "npz"], "npz", tmp_path / "x.h5", soft_labels=False, soft_label_names=tmp_path / "names.txt",
            **kw)


def test_soft_labels_all_or_none_bad_rows_and_the_cli(tmp_path, capsys):
    ims = make_images(4, seed=13)
    sizes = uniter_npz(tmp_path / "npz", ims[:2])
    sizes.update(uniter_npz(tmp_path / "npz", ims[2:3], soft=False))  # sorts last: lacks them
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    s = run([tmp_path / "npz"], "npz", tmp_path / "s.h5", key_format="{num}", image_sizes=tmp_path / "sizes.json")
    assert (s.converted, s.rejected) == (2, 1)
    [rec] = read_report(tmp_path / "s.h5.report.jsonl")
    assert rec["key"] == ims[2][0] and "no soft_labels, but the images converted before have them" in rec["reason"]
    assert "--no-soft-labels" in rec["reason"]
    # the other way round: the first image has none, so neither has the store
    first = [(f"{int(im[0]) - 1}", *im[1:]) for im in ims[:1]]  # id 99: sorts first
    sizes.update(uniter_npz(tmp_path / "npz", first, soft=False))
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    s = run([tmp_path / "npz"], "npz", tmp_path / "t.h5", key_format="{num}", image_sizes=tmp_path / "sizes.json")
    assert s.rejected == 0 and s.soft_labels_ignored == 2 and "not kept: the first image converted had none" in s.soft_labels
    assert not RegionFeatureStore(tmp_path / "t.h5").has_soft_labels
    bad = tmp_path / "bad"
    sizes = uniter_npz(bad, ims[3:])
    with np.load(next(bad.iterdir())) as z:
        arrays = dict(z)
    arrays["soft_labels"] = arrays["soft_labels"] * 0.5  # rows summing to 0.5
    np.savez(next(bad.iterdir()), **arrays)
    (tmp_path / "bad.json").write_text(json.dumps(sizes))
    assert cli_main(["features", "--src", str(bad), "--format", "npz", "--out", str(tmp_path / "b.h5"),
                     "--key-format", "{num}", "--image-sizes", str(tmp_path / "bad.json"), "--no-progress"]) == 1
    assert "(--no-soft-labels leaves them out)" in capsys.readouterr().out
    assert cli_main(["features", "--src", str(bad), "--format", "npz", "--out", str(tmp_path / "b.h5"),
                     "--key-format", "{num}", "--image-sizes", str(tmp_path / "bad.json"), "--no-progress",
                     "--no-soft-labels"]) == 0
    assert "soft labels: dropped (--no-soft-labels)" in capsys.readouterr().out


def test_concat_and_merge_keep_soft_labels_only_when_every_store_has_them(tmp_path, capsys):
    from data_modules.convert.__main__ import main as convert_main

    rng = np.random.default_rng(3)

    def store(name, keys, classes=4, n=2):
        with RegionFeatureWriter(tmp_path / name, 8, soft_label_names=None) as w:
            for key in keys:
                soft = rng.dirichlet(np.ones(classes), size=n) if classes else None
                w.add(key, rng.standard_normal((n, 8)), [[0, 0, 10, 10]] * n, 20, 20, soft_labels=soft)
        return str(tmp_path / name)

    gt, det, plain = store("gt.h5", ["a", "b"]), store("det.h5", ["a"], n=3), store("plain.h5", ["a"], classes=0)
    assert convert_main(["concat", "--src", gt, det, "--out", str(tmp_path / "c.h5")]) == 0
    assert "soft labels kept: 4 classes per region" in capsys.readouterr().out
    joined = RegionFeatureStore(tmp_path / "c.h5")
    expected = np.concatenate([RegionFeatureStore(gt).get_soft_labels("a"), RegionFeatureStore(det).get_soft_labels("a")])
    np.testing.assert_array_equal(joined.get_soft_labels("a").numpy(), expected)
    assert convert_main(["concat", "--src", gt, plain, "--out", str(tmp_path / "d.h5")]) == 0
    assert "soft labels dropped: " in capsys.readouterr().out and not RegionFeatureStore(tmp_path / "d.h5").has_soft_labels
    coco, vg = store("coco.h5", ["coco_1", "coco_2"]), store("vg.h5", ["vg_1"], n=3)
    assert convert_main(["merge", "--src", coco, vg, "--out", str(tmp_path / "m.h5")]) == 0
    assert "3 images (2 from" in capsys.readouterr().out
    merged = RegionFeatureStore(tmp_path / "m.h5")
    assert merged.ids == ["coco_1", "coco_2", "vg_1"] and merged.soft_label_dim == 4
    for key, src in (("coco_2", coco), ("vg_1", vg)):
        assert torch_equal(merged.get(key)[0], RegionFeatureStore(src).get(key)[0])
        assert torch_equal(merged.get_soft_labels(key), RegionFeatureStore(src).get_soft_labels(key))
        assert merged.image_size(key) == (20, 20)
    assert convert_main(["merge", "--src", coco, gt, coco, "--out", str(tmp_path / "x.h5")]) == 2
    assert "image 'coco_1' is in both" in capsys.readouterr().err and not (tmp_path / "x.h5").exists()


def torch_equal(a, b):
    return bool((a == b).all()) and a.shape == b.shape
