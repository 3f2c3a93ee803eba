"""check_store scans a whole region-feature store: faults injected with h5py directly (bypassing
the writer, as another tool or a damaged copy would) are each reported with their image keys,
and the exit status is 1; a sound store passes with 0."""
import json
import re
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from data_modules.check_store import check_store, main
from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import partial_path


def write_store(path, n_images=12, dim=8, seed=0, boxes_per_image=3):
    rng = np.random.default_rng(seed)
    with RegionFeatureWriter(path, dim) as w:
        for i in range(n_images):
            n = boxes_per_image
            x1, y1 = rng.uniform(0, 50, n), rng.uniform(0, 40, n)
            boxes = np.stack([x1, y1, x1 + rng.uniform(1, 50, n), y1 + rng.uniform(1, 40, n)], 1)
            w.add(f"img{i}", rng.standard_normal((n, dim)), boxes, 100, 80)
    return path


def edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


def rows_of(f, key):
    i = list(f["img_ids"].asstr()[:]).index(key)
    return int(f["offsets"][i]), int(f["num_boxes"][i])


def test_a_sound_store_passes(tmp_path, capsys):
    path = write_store(tmp_path / "s.h5")
    report = check_store(path)
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.info["images"] == 12 and report.info["rows"] == 36 and report.info["feat_dim"] == 8
    assert report.info["format"] == "lightning-vl/region-features" and report.info["version"] == 1
    assert main([str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: OK\n") and "feat_dim 8" in out
    assert "12 images, 36 regions (per image: min 3, mean 3.0, max 3), features float16" in out


def test_non_finite_values_are_listed_by_image_and_exit_1(tmp_path, capsys):
    path = write_store(tmp_path / "s.h5")

    def inject(f):
        for key in ("img3", "img7"):
            start, _ = rows_of(f, key)
            f["features"][start + 1, 2] = np.nan
        start, _ = rows_of(f, "img9")
        f["features"][start, 0] = np.inf
        f["norm_bb"][start + 2, 1] = np.nan

    edit(path, inject)
    report = check_store(path)
    assert not report.ok
    assert report.problems["nonfinite_features"]["images"] == 3
    assert report.problems["nonfinite_features"]["examples"] == ["img3", "img7", "img9"]
    assert report.problems["nonfinite_boxes"]["examples"] == ["img9"]
    assert "features hold NaN or inf: 3 rows in 3 images: 'img3', 'img7', 'img9'" in report.errors
    assert "norm_bb holds NaN or inf: 1 rows in 1 images: 'img9'" in report.errors
    assert main([str(path), "--no-progress", "--max-examples", "2"]) == 1
    out = capsys.readouterr().out
    assert f"{path}: 2 PROBLEMS" in out
    assert "error: features hold NaN or inf: 3 rows in 3 images: 'img3', 'img7', ..." in out


def test_box_problems_are_listed(tmp_path):
    path = write_store(tmp_path / "s.h5")

    def inject(f):
        bb = f["norm_bb"]
        s, _ = rows_of(f, "img1")
        bb[s, 2] = 1.5              # x2 outside [0, 1] (w no longer agrees either)
        s, _ = rows_of(f, "img4")
        row = bb[s]
        row[0], row[2] = row[2], row[0]  # x2 < x1
        bb[s] = row
        s, _ = rows_of(f, "img5")
        bb[s, 5] = bb[s, 5] + 0.3   # h column disagrees with y2 - y1

    edit(path, inject)
    report = check_store(path)
    assert report.problems["box_outside"]["examples"] == ["img1"]
    assert report.problems["box_inverted"]["examples"] == ["img4"]
    assert report.problems["box_wh"]["examples"] == ["img1", "img4", "img5"]
    assert any(e.startswith("boxes have x2 <= x1 or y2 <= y1 (empty or inverted): 1 rows in 1 images: 'img4'")
               for e in report.errors)
    assert not report.ok


def test_index_problems_duplicates_zero_boxes_overlap_and_overrun(tmp_path):
    path = write_store(tmp_path / "s.h5")

    def inject(f):
        ids = f["img_ids"]
        ids[5] = "img2"                       # duplicate id
        f["num_boxes"][7] = 0                 # zero-box image
        f["offsets"][9] = f["offsets"][8] + 1  # overlaps img8's rows
        f["offsets"][11] = 35                 # 3 rows from 35: past the 36 rows

    edit(path, inject)
    report = check_store(path)
    text = "\n".join(report.errors)
    assert "1 duplicate image ids (a lookup finds only one of each): 'img2' at index rows [2, 5]" in text
    assert "1 images with zero boxes (num_boxes 0: no regions to attend to): 'img7'" in text
    assert "1 images whose rows run past the features dataset (36 rows): 'img11'" in text
    assert "1 images share feature rows with another image (offsets/num_boxes overlap): 'img9' (rows 25..27)" in text
    assert any("belong to no image" in w for w in report.warnings)  # img7's and img9's old rows
    assert main([str(path), "--no-progress"]) == 1


def test_attribute_problems(tmp_path):
    path = write_store(tmp_path / "s.h5")
    edit(path, lambda f: f.attrs.__setitem__("feat_dim", 16))
    assert "attribute feat_dim=16 but features are 8-d (shape (36, 8))" in check_store(path).errors
    edit(path, lambda f: (f.attrs.__setitem__("feat_dim", 8), f.attrs.__setitem__("version", 3)))
    assert check_store(path).errors == ["store version 3, expected 1"]
    edit(path, lambda f: (f.attrs.__setitem__("version", 1), f.attrs.__setitem__("format", "other")))
    assert check_store(path).errors[0].startswith("attribute format='other', expected 'lightning-vl/region-features'")


def test_an_unfinished_conversion_is_named(tmp_path):
    w = RegionFeatureWriter(tmp_path / "s.h5", 4, resume=True, flush_rows=1)
    w.add("a", np.ones((1, 4)), [[0, 0, 1, 1]], 2, 2)
    w.suspend()
    report = check_store(partial_path(tmp_path / "s.h5"))
    assert not report.ok and "an unfinished conversion" in report.errors[0] and "1 images committed" in report.errors[0]


@pytest.mark.parametrize("how, message", [
    ("truncated", r"s\.h5 is truncated: [\d,]+ bytes on disk, but its HDF5 header says [\d,]+"),
    ("empty", r"s\.h5 is empty \(0 bytes\)"),
    ("text", r"s\.h5 is not an HDF5 file"),
    ("absent", r"s\.h5 does not exist"),
])
def test_unreadable_files_exit_1_with_a_message_naming_them(tmp_path, capsys, how, message):
    import re

    path = write_store(tmp_path / "s.h5", n_images=40)
    if how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "empty":
        os.truncate(path, 0)
    elif how == "text":
        path.write_text("not a store")
    else:
        path.unlink()
    report = check_store(path)
    assert not report.ok and len(report.errors) == 1 and re.search(message, report.errors[0])
    assert main([str(path), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert re.search(message, captured.out) and "Traceback" not in captured.out + captured.err


def test_scans_in_chunks_with_progress_lines(tmp_path):
    path = write_store(tmp_path / "s.h5", n_images=200, dim=64)
    edit(path, lambda f: f["features"].__setitem__((599, 3), np.nan))  # the very last row
    lines = []
    report = check_store(path, chunk_mb=0.02, progress=lines.append)  # ~150 rows per chunk
    assert report.problems["nonfinite_features"]["examples"] == ["img199"]
    assert 4 <= len(lines) <= 11 and lines[-1].endswith("100% of rows (600 / 600)")
    assert all(line.startswith(f"check-store: {path}: ") for line in lines)
    assert check_store(path, progress=lines.append).problems == report.problems  # one chunk: no lines
    assert len(lines) <= 11


def test_json_output_and_several_files(tmp_path, capsys):
    good = write_store(tmp_path / "a.h5")
    bad = write_store(tmp_path / "b.h5")
    edit(bad, lambda f: f["features"].__setitem__((0, 0), np.inf))
    assert main([str(good), str(bad), "--json", "--no-progress"]) == 1
    a, b = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert a["ok"] and not b["ok"] and b["problems"]["nonfinite_features"]["examples"] == ["img0"]


def test_python_dash_m_entry_point(tmp_path):
    path = write_store(tmp_path / "s.h5")
    edit(path, lambda f: f["features"].__setitem__((4, 0), np.nan))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "data_modules.check_store", str(path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "features hold NaN or inf: 1 rows in 1 images: 'img1'" in done.stdout and not done.stderr


def test_usage_names_the_command_it_is_wired_as(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--help"], prog="lightning-vl check-store")
    assert err.value.code == 0 and capsys.readouterr().out.startswith("usage: lightning-vl check-store")
    with pytest.raises(SystemExit) as err:
        main([])
    assert err.value.code == 2 and "python -m data_modules.check_store" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- soft labels

def write_soft_store(path, n_images=6, classes=5, names=True, seed=1):
    rng = np.random.default_rng(seed)
    label_names = [f"class {i}" for i in range(classes)] if names else None
    with RegionFeatureWriter(path, 4, soft_label_names=label_names) as w:
        for i in range(n_images):
            w.add(f"img{i}", rng.standard_normal((3, 4)), [[0, 0, 5, 5], [1, 1, 9, 9], [2, 0, 4, 7]], 10, 10,
                  soft_labels=rng.dirichlet(np.ones(classes), size=3))
    return path


def test_a_sound_store_with_soft_labels_passes_and_shows_them(tmp_path, capsys):
    path = write_soft_store(tmp_path / "s.h5")
    report = check_store(path)
    assert report.ok and report.warnings == [] and report.info["soft_label_dim"] == 5
    assert report.info["soft_label_names"][:2] == ["class 0", "class 1"]
    assert main([str(path), "--no-progress"]) == 0
    assert "soft labels: 5 classes per region (named: 'class 0', 'class 1', 'class 2', ...)" in capsys.readouterr().out
    assert check_store(write_soft_store(tmp_path / "u.h5", names=False)).ok


def test_soft_label_values_are_scanned_by_image(tmp_path):
    path = write_soft_store(tmp_path / "s.h5")

    def inject(f):
        soft = f["soft_labels"]
        s, _ = rows_of(f, "img1")
        soft[s, 0] = np.nan
        s, _ = rows_of(f, "img2")
        soft[s + 1] = [1.5, -0.5, 0, 0, 0]
        s, _ = rows_of(f, "img4")
        soft[s + 2] = [0.1, 0.1, 0.1, 0.1, 0.1]

    edit(path, inject)
    report = check_store(path, chunk_mb=1e-4)  # several chunks
    assert report.problems["nonfinite_soft_labels"]["examples"] == ["img1"]
    assert report.problems["negative_soft_labels"]["examples"] == ["img2"]
    assert report.problems["soft_label_sum"]["examples"] == ["img4"]
    assert "soft_labels rows do not sum to 1 (within 0.02): 1 rows in 1 images: 'img4'" in report.errors
    assert not report.ok and main([str(path), "--no-progress"]) == 1


@pytest.mark.parametrize("how, message", [
    ("dim", "attribute soft_label_dim=7 but soft_labels have 5 classes"),
    ("rows", r"soft_labels have shape \(17, 5\), expected \(18, C\)"),
    ("names", "attribute soft_label_names lists 2 names for 5 soft-label classes"),
    ("bad names", "attribute soft_label_names is not JSON"),
    ("orphan", "attribute soft_label_dim=5 but no soft_labels dataset"),
])
def test_soft_label_layout_problems(tmp_path, how, message):
    path = write_soft_store(tmp_path / "s.h5")

    def inject(f):
        if how == "dim":
            f.attrs["soft_label_dim"] = 7
        elif how == "rows":
            data = f["soft_labels"][:-1]
            del f["soft_labels"]
            f["soft_labels"] = data
        elif how == "names":
            f.attrs["soft_label_names"] = '["a", "b"]'
        elif how == "bad names":
            f.attrs["soft_label_names"] = "a, b"
        else:
            del f["soft_labels"]

    edit(path, inject)
    report = check_store(path)
    assert not report.ok and any(re.search(message, e) for e in report.errors), report.errors
