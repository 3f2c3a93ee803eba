"""The HDF5 region-feature store: values round-trip, bad input is refused with names."""
import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from data_modules.convert.writer import RegionFeatureWriter
from data_modules.features import MissingImageError, NonFiniteFeaturesError, RegionFeatureStore, UnreadableStoreError


def write_store(path, n_images=5, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    truth = {}
    with RegionFeatureWriter(path, dim) as w:
        for i in range(n_images):
            n = int(rng.integers(1, 6))
            x1, y1 = rng.uniform(0, 50, n), rng.uniform(0, 40, n)
            boxes = np.stack([x1, y1, x1 + rng.uniform(1, 50, n), y1 + rng.uniform(1, 40, n)], 1)
            feats = rng.standard_normal((n, dim))
            w.add(f"img{i}", feats, boxes, 100, 80)
            truth[f"img{i}"] = (feats, boxes)
    return truth


def test_roundtrip_features_and_uniter_position_feature(tmp_path):
    truth = write_store(tmp_path / "s.h5")
    store = RegionFeatureStore(tmp_path / "s.h5")
    assert len(store) == 5 and store.feat_dim == 8 and "img3" in store and "nope" not in store
    for img, (feats, boxes) in truth.items():
        f, p = store.get(img)
        assert f.dtype == torch.float32 and p.shape == (len(feats), 7)
        np.testing.assert_array_equal(f.numpy(), feats.astype(np.float16).astype(np.float32))
        x1, y1, x2, y2 = boxes.T
        w, h = (x2 - x1) / 100, (y2 - y1) / 80
        expected = np.stack([x1 / 100, y1 / 80, x2 / 100, y2 / 80, w, h, w * h], 1)
        np.testing.assert_allclose(p.numpy(), expected, rtol=1e-5, atol=1e-6)
        assert store.image_size(img) == (100, 80)


def test_max_boxes_truncates(tmp_path):
    write_store(tmp_path / "s.h5", n_images=20)
    store = RegionFeatureStore(tmp_path / "s.h5", max_boxes=2)
    assert max(len(store.get(i)[0]) for i in store.ids) == 2


def test_reader_pickles_without_a_handle_and_reopens(tmp_path):
    write_store(tmp_path / "s.h5")
    store = RegionFeatureStore(tmp_path / "s.h5")
    before = store.get("img1")[0]
    clone = pickle.loads(pickle.dumps(store))  # what a DataLoader worker receives
    assert clone._h5 is None
    assert torch.equal(clone.get("img1")[0], before)
    store._pid = -1  # as if we were a forked worker: the handle must be reopened
    assert torch.equal(store.get("img1")[0], before)


def test_missing_image_names_file_and_id(tmp_path):
    write_store(tmp_path / "s.h5")
    store = RegionFeatureStore(tmp_path / "s.h5")
    with pytest.raises(MissingImageError, match=r"s\.h5.*'dev-1-0-img0'"):
        store.get("dev-1-0-img0")


def test_wrong_feature_dimension_is_named(tmp_path):
    write_store(tmp_path / "s.h5")
    with pytest.raises(ValueError, match=r"s\.h5.*8-d.*img_dim=2048"):
        RegionFeatureStore(tmp_path / "s.h5").check_dim(2048)


def test_not_a_store(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"other\.h5.*not a lightning-vl region-feature store"):
        RegionFeatureStore(tmp_path / "other.h5")
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        RegionFeatureStore(tmp_path / "absent.h5")


@pytest.mark.parametrize("bad, message", [
    (dict(features=np.zeros((2, 5))), r"features have shape \(2, 5\), expected \(n, 8\)"),
    (dict(boxes=np.array([[0, 0, 10, 10]])), r"boxes have shape \(1, 4\), expected \(2, 4\)"),
    (dict(boxes=np.array([[0, 0, 10, 10], [5, 5, 120, 10]])), r"box 1 .* outside"),
    (dict(boxes=np.array([[10, 0, 5, 10], [0, 0, 1, 1]])), r"box 0 .* outside"),
    (dict(features=np.full((2, 8), np.nan)), "NaN"),
    (dict(width=0), "not positive"),
])
def test_writer_refuses_bad_records_naming_file_and_image(tmp_path, bad, message):
    args = dict(img_id="im7", features=np.zeros((2, 8)), boxes=np.array([[0, 0, 10, 10], [1, 1, 5, 5]]),
                width=100, height=80)
    args.update(bad)
    with pytest.raises(ValueError, match=rf"s\.h5: image 'im7'.*{message}"):
        with RegionFeatureWriter(tmp_path / "s.h5", 8) as w:
            w.add(**args)
    assert not (tmp_path / "s.h5").exists()  # nothing half-written
    assert not list(tmp_path.glob(".*tmp"))


def test_duplicate_image_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'a' was added twice"):
        with RegionFeatureWriter(tmp_path / "s.h5", 2) as w:
            w.add("a", np.zeros((1, 2)), np.array([[0, 0, 1, 1]]), 2, 2)
            w.add("a", np.zeros((1, 2)), np.array([[0, 0, 1, 1]]), 2, 2)


def test_file_layout_is_flat_and_uncompressed(tmp_path):
    write_store(tmp_path / "s.h5", n_images=4)
    with h5py.File(tmp_path / "s.h5") as f:
        assert f.attrs["format"] == "lightning-vl/region-features" and int(f.attrs["version"]) == 1
        assert int(f.attrs["feat_dim"]) == 8
        nbb, off = f["num_boxes"][:], f["offsets"][:]
        assert off.tolist() == [0, *np.cumsum(nbb)[:-1].tolist()] and f["features"].shape == (nbb.sum(), 8)
        assert f["features"].dtype == np.float16 and f["features"].compression is None
        assert f["features"].chunks is not None and f["norm_bb"].shape == (nbb.sum(), 6)
        assert f["img_wh"][:].tolist() == [[100, 80]] * 4


def test_missing_image_error_is_a_keyerror_listing_known_ids(tmp_path):
    write_store(tmp_path / "s.h5", n_images=5)
    store = RegionFeatureStore(tmp_path / "s.h5")
    with pytest.raises(KeyError) as err:
        store.get("nope")
    assert "5 images, e.g. 'img0', 'img1', 'img2'" in str(err.value)


class _ReadInWorker(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return len(self.store)

    def __getitem__(self, i):
        import os

        return os.getpid(), self.store.get(f"img{i}")[0].sum()


def test_dataloader_workers_reopen_the_file(tmp_path):
    import multiprocessing
    import os

    write_store(tmp_path / "s.h5", n_images=6)
    store = RegionFeatureStore(tmp_path / "s.h5")
    expected = [float(store.get(f"img{i}")[0].sum()) for i in range(6)]  # the parent has the file open
    loader = torch.utils.data.DataLoader(_ReadInWorker(store), batch_size=None, num_workers=2,
                                         multiprocessing_context=multiprocessing.get_context("fork"))
    got = list(loader)
    assert all(int(pid) != os.getpid() for pid, _ in got)
    assert [float(s) for _, s in got] == expected


def test_other_version_is_refused(tmp_path):
    write_store(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f.attrs["version"] = 2
    with pytest.raises(ValueError, match=r"s\.h5: store version 2, expected 1"):
        RegionFeatureStore(tmp_path / "s.h5")


def test_nothing_at_the_path_until_close(tmp_path):
    w = RegionFeatureWriter(tmp_path / "s.h5", 2)
    w.add("a", np.zeros((1, 2)), np.array([[0, 0, 1, 1]]), 2, 2)
    assert not (tmp_path / "s.h5").exists()
    w.close()
    assert RegionFeatureStore(tmp_path / "s.h5").ids == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]


def test_empty_store_has_no_images(tmp_path):
    with RegionFeatureWriter(tmp_path / "s.h5", 4):
        pass
    store = RegionFeatureStore(tmp_path / "s.h5")
    assert len(store) == 0 and store.ids == [] and "x" not in store


# ------------------------------------------------------------------ faults in a store at read time

def corrupt(path, img_id, dataset="features", value=np.nan, region=1):
    """Write ``value`` into one region of ``img_id`` with h5py directly, bypassing the writer."""
    with h5py.File(path, "a") as f:
        row = list(f["img_ids"].asstr()[:]).index(img_id)
        f[dataset][int(f["offsets"][row]) + region, 0] = value


@pytest.mark.parametrize("dataset, value, what", [
    ("features", np.nan, "region features hold NaN"),
    ("features", np.inf, "region features hold inf"),
    ("norm_bb", -np.inf, "norm_bb boxes hold inf"),
])
def test_non_finite_rows_are_an_error_naming_store_image_and_example(tmp_path, dataset, value, what):
    truth = write_store(tmp_path / "s.h5", n_images=5, seed=3)
    img = next(k for k, (f, _) in truth.items() if len(f) >= 2)
    corrupt(tmp_path / "s.h5", img, dataset, value)
    store = RegionFeatureStore(tmp_path / "s.h5")  # opening stays cheap: values are checked as read
    with pytest.raises(NonFiniteFeaturesError) as err:
        store.get(img, example="question 7")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 's.h5'}: image {img!r} (used by question 7): {what} in 1 of ")
    assert "first: region 1" in msg and f"python -m data_modules.check_store {tmp_path / 's.h5'}" in msg
    assert isinstance(err.value, ValueError)  # what the data preparation checks catch
    with pytest.raises(NonFiniteFeaturesError, match=rf"s\.h5: image {img!r}: {what}"):
        store.get(img)  # without an example: still the store and the image
    others = [k for k in truth if k != img]
    for k in others:  # the other images read as before
        np.testing.assert_array_equal(store.get(k)[0].numpy(), truth[k][0].astype(np.float16).astype(np.float32))
    if dataset == "norm_bb":
        with pytest.raises(NonFiniteFeaturesError, match=rf"s\.h5: image {img!r}: norm_bb boxes hold NaN or inf"):
            store.pixel_boxes([img])


def test_a_datasets_read_names_its_example(tmp_path):
    from data_modules.vqa import QaDataset, QaExample

    write_store(tmp_path / "s.h5", n_images=3)
    corrupt(tmp_path / "s.h5", "img1", region=0)
    ds = QaDataset([QaExample("q0", (1, 2), "img0", ()), QaExample("q1", (1, 2), "img1", ())],
                   RegionFeatureStore(tmp_path / "s.h5"), num_labels=2)
    assert ds[0]["id"] == "q0"
    with pytest.raises(NonFiniteFeaturesError, match=r"s\.h5: image 'img1' \(used by question q1\)"):
        ds[1]


def _damaged(tmp_path, how):
    write_store(tmp_path / "s.h5", n_images=20)
    path = tmp_path / "s.h5"
    if how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "empty":
        os.truncate(path, 0)
    else:
        path.write_text("image_id\tboxes\n1\t2\n")
    return path


DAMAGE = {
    "truncated": r"s\.h5 is truncated: [\d,]+ bytes on disk, but its HDF5 header says [\d,]+ .*copy or convert it again",
    "empty": r"s\.h5 is empty \(0 bytes\)",
    "not-hdf5": r"s\.h5 is not an HDF5 file \([\d,]+ bytes starting b'image_id', no HDF5 signature\)",
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_unreadable_store_at_open_names_the_file_and_what_is_wrong(tmp_path, how):
    path = _damaged(tmp_path, how)
    with pytest.raises(UnreadableStoreError, match=DAMAGE[how]) as err:
        RegionFeatureStore(path)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no h5py traceback attached
    assert "Unable to synchronously open" not in str(err.value)


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_store_damaged_after_open_fails_at_read_in_a_worker(tmp_path, how):
    write_store(tmp_path / "s.h5", n_images=20)
    store = RegionFeatureStore(tmp_path / "s.h5")  # the parent checked it; a worker opens it later
    worker = pickle.loads(pickle.dumps(store))
    _damaged(tmp_path, how)
    with pytest.raises(UnreadableStoreError, match=DAMAGE[how] + r".*\[while reading image 'img3' for question 9\]"):
        worker.get("img3", example="question 9")


def test_read_failing_mid_file_names_file_image_and_rows(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "s.h5"
    with RegionFeatureWriter(path, 64) as w:
        for i in range(400):
            w.add(f"img{i}", rng.standard_normal((30, 64)), np.tile([0, 0, 10, 10], (30, 1)), 20, 20)
    store = RegionFeatureStore(path)
    before = store.get("img0")[0]
    os.truncate(path, path.stat().st_size // 2)  # cut while open: later chunks' index is gone
    with pytest.raises(UnreadableStoreError) as err:
        store.get("img399", example="caption sentid 5")
    msg = str(err.value)
    assert msg.startswith(f"{path}: image 'img399' (used by caption sentid 5): rows 11970..11999 cannot be read (")
    assert "the file is damaged" in msg and "check_store" in msg and "Traceback" not in msg
    assert torch.equal(store.get("img0")[0], before)  # what is still readable reads right


def test_data_module_img_dim_against_the_stores_feat_dim(tmp_path):
    from data_modules.base import VLDataModule

    write_store(tmp_path / "s.h5", dim=8)
    dm = VLDataModule(features=str(tmp_path / "s.h5"), tokenizer=str(tmp_path / "tok"), img_dim=2048)
    assert dm.img_dim == 2048
    with pytest.raises(ValueError, match=r"s\.h5: the store's feat_dim is 8 .*but data\.init_args\.img_dim is 2048.*"
                                         r"set data\.init_args\.img_dim and model\.uniter\.img_dim to 8"):
        dm.store
    dm = VLDataModule(features=str(tmp_path / "s.h5"), tokenizer=str(tmp_path / "tok"), img_dim=8)
    assert dm.store.feat_dim == 8


# ---------------------------------------------------------------------------------- soft labels

def soft_rows(rng, n, classes=4):
    return rng.dirichlet(np.ones(classes), size=n)


def write_soft_store(path, n_images=4, dim=8, classes=4, names=None, seed=0, **kw):
    rng = np.random.default_rng(seed)
    truth = {}
    with RegionFeatureWriter(path, dim, soft_label_names=names, **kw) as w:
        for i in range(n_images):
            n = int(rng.integers(1, 5))
            soft = soft_rows(rng, n, classes)
            w.add(f"img{i}", rng.standard_normal((n, dim)), [[0, 0, 10 + j, 10] for j in range(n)], 50, 40,
                  soft_labels=soft)
            truth[f"img{i}"] = soft
    return truth


def test_soft_labels_round_trip_with_names_and_max_boxes(tmp_path):
    names = ["__background__", "red cube", "blue cube", "green cone"]
    truth = write_soft_store(tmp_path / "s.h5", names=names)
    store = RegionFeatureStore(tmp_path / "s.h5")
    assert store.has_soft_labels and store.soft_label_dim == 4 and store.soft_label_names == names
    for img, soft in truth.items():
        got = store.get_soft_labels(img, example="caption 1")
        assert got.dtype == torch.float32 and got.shape == (len(store.get(img)[0]), 4)
        np.testing.assert_array_equal(got.numpy(), soft.astype(np.float16).astype(np.float32))
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["soft_labels"].dtype == np.float16 and int(f.attrs["soft_label_dim"]) == 4
    clipped = RegionFeatureStore(tmp_path / "s.h5", max_boxes=1)
    assert all(clipped.get_soft_labels(i).shape == (1, 4) for i in truth)
    clone = pickle.loads(pickle.dumps(store))  # a worker's copy knows them too
    assert clone.soft_label_names == names and torch.equal(clone.get_soft_labels("img1"), store.get_soft_labels("img1"))
    assert "soft_label_dim=4" in repr(store)


def test_a_store_without_soft_labels_says_so(tmp_path):
    write_store(tmp_path / "s.h5")
    store = RegionFeatureStore(tmp_path / "s.h5")
    assert not store.has_soft_labels and store.soft_label_dim is None and store.soft_label_names is None
    with pytest.raises(ValueError, match=r"s\.h5: image 'img1' \(used by caption 3\): the store has no soft labels"):
        store.get_soft_labels("img1", example="caption 3")


@pytest.mark.parametrize("soft, message", [
    (np.full((2, 3), 1 / 3)[:1], r"soft_labels have shape \(1, 3\), expected \(2, C\)"),
    (np.array([[0.5, 0.5, np.nan], [1, 0, 0]]), "soft_labels contain NaN or inf"),
    (np.array([[1.2, -0.2, 0], [1, 0, 0]]), "soft_labels of region 0 hold negative values"),
    (np.array([[0.2, 0.2, 0.2], [1, 0, 0]]), r"soft_labels of region 0 sum to 0\.6; expected a class distribution"),
    (np.array([["a", "b", "c"]] * 2), "soft_labels must be a numeric array"),
])
def test_writer_refuses_bad_soft_labels(tmp_path, soft, message):
    with RegionFeatureWriter(tmp_path / "s.h5", 2) as w:
        with pytest.raises(ValueError, match=rf"s\.h5: image 'x': {message}"):
            w.add("x", np.ones((2, 2)), [[0, 0, 1, 1], [0, 0, 2, 2]], 4, 4, soft_labels=soft)


def test_soft_labels_are_all_or_none_across_a_store(tmp_path):
    boxes = [[0, 0, 1, 1]]
    with RegionFeatureWriter(tmp_path / "a.h5", 2) as w:
        w.add("a", np.ones((1, 2)), boxes, 4, 4, soft_labels=[[0.5, 0.5]])
        with pytest.raises(ValueError, match="image 'b': no soft labels, but the images added before have them"):
            w.add("b", np.ones((1, 2)), boxes, 4, 4)
        with pytest.raises(ValueError, match=r"image 'c': soft_labels have shape \(1, 3\), expected \(1, 2\).*like the"):
            w.add("c", np.ones((1, 2)), boxes, 4, 4, soft_labels=[[0.2, 0.3, 0.5]])
        assert w.has_soft_labels and w.soft_label_dim == 2
    with RegionFeatureWriter(tmp_path / "b.h5", 2) as w:
        w.add("a", np.ones((1, 2)), boxes, 4, 4)
        with pytest.raises(ValueError, match="image 'b': soft labels given, but the images added before have none"):
            w.add("b", np.ones((1, 2)), boxes, 4, 4, soft_labels=[[0.5, 0.5]])
        assert w.has_soft_labels is False and w.soft_label_dim is None
    with RegionFeatureWriter(tmp_path / "c.h5", 2, soft_label_names=["bg", "cube", "cone"]) as w:
        with pytest.raises(ValueError, match=r"image 'a': soft_labels have shape \(1, 2\), expected \(1, 3\).*names"):
            w.add("a", np.ones((1, 2)), boxes, 4, 4, soft_labels=[[0.5, 0.5]])
        with pytest.raises(ValueError, match="image 'a': no soft labels, but soft_label_names"):
            w.add("a", np.ones((1, 2)), boxes, 4, 4)
        w.add("a", np.ones((1, 2)), boxes, 4, 4, soft_labels=[[0.5, 0.25, 0.25]])
    with pytest.raises(ValueError, match="lists 'x' twice"):
        RegionFeatureWriter(tmp_path / "d.h5", 2, soft_label_names=["x", "x"])


def test_resumed_writer_keeps_the_soft_labels(tmp_path):
    path = tmp_path / "s.h5"
    w = RegionFeatureWriter(path, 2, resume=True, flush_rows=1, soft_label_names=["bg", "obj"])
    w.add("a", np.ones((1, 2)), [[0, 0, 1, 1]], 2, 2, soft_labels=[[0.25, 0.75]])
    w.suspend()
    with RegionFeatureWriter(path, 2, resume=True, soft_label_names=["bg", "obj"]) as w:
        assert w.resumed == 1 and w.has_soft_labels and w.soft_label_dim == 2
        with pytest.raises(ValueError, match="no soft labels, but the images added before have them"):
            w.add("b", np.ones((1, 2)), [[0, 0, 1, 1]], 2, 2)
        w.add("b", np.ones((1, 2)), [[0, 0, 1, 1]], 2, 2, soft_labels=[[1.0, 0.0]])
    store = RegionFeatureStore(path)
    assert store.soft_label_names == ["bg", "obj"]
    assert store.get_soft_labels("a").tolist() == [[0.25, 0.75]] and store.get_soft_labels("b").tolist() == [[1.0, 0.0]]
    w = RegionFeatureWriter(tmp_path / "t.h5", 2, resume=True, flush_rows=1, soft_label_names=["bg", "obj"])
    w.add("a", np.ones((1, 2)), [[0, 0, 1, 1]], 2, 2, soft_labels=[[0.25, 0.75]])
    w.suspend()
    with pytest.raises(ValueError, match="other soft_label_names"):
        RegionFeatureWriter(tmp_path / "t.h5", 2, resume=True, soft_label_names=["bg", "thing"])


@pytest.mark.parametrize("how, message", [
    ("dim", r"attribute soft_label_dim=5 but soft_labels have 4 classes"),
    ("rows", r"soft_labels have shape \(\d+, 4\), expected \(\d+, C\)"),
    ("names", "soft_label_names lists 2 names for 4 soft-label classes"),
    ("orphan", "attribute soft_label_dim=4 but no soft_labels dataset"),
])
def test_inconsistent_soft_labels_are_refused_at_open(tmp_path, how, message):
    write_soft_store(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "a") as f:
        if how == "dim":
            f.attrs["soft_label_dim"] = 5
        elif how == "rows":
            data = f["soft_labels"][:-1]
            del f["soft_labels"]
            f["soft_labels"] = data
        elif how == "names":
            f.attrs["soft_label_names"] = '["a", "b"]'
        else:
            del f["soft_labels"]
    with pytest.raises(ValueError, match=message):
        RegionFeatureStore(tmp_path / "s.h5")


def test_non_finite_soft_labels_name_store_image_and_example(tmp_path):
    write_soft_store(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f["soft_labels"][0, 1] = np.inf
    with pytest.raises(NonFiniteFeaturesError, match=r"image 'img0' \(used by line 4\): soft labels hold NaN or inf"):
        RegionFeatureStore(tmp_path / "s.h5").get_soft_labels("img0", example="line 4")
