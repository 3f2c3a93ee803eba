"""Paths that moved keep working for what was written with them: ``ExportWeights`` moved from
``lightning_vl/export.py`` to ``lightning_vl/model/export.py``; a run folder's ``config.yaml`` and a
command may name the old class path, which still imports, and a run identity hashes the same
whichever path its command names (so run folders made before the move resume)."""
import copy

from lightning_vl.lottery.identity import MOVED_CLASS_PATHS, identity_hash, results_identity

from .test_identity import CONFIG, DEFAULTS


def with_callback(class_path):
    config = copy.deepcopy(CONFIG)
    config["trainer"]["callbacks"] = [{"class_path": class_path,
                                       "init_args": {"path": "runs/exported.pt", "layout": "uniter"}}]
    return config


def test_the_old_export_path_is_the_same_class():
    from lightning_vl import export as old
    from lightning_vl.model import export as new

    assert old.ExportWeights is new.ExportWeights and old.export is new.export and old.LAYOUTS == new.LAYOUTS


def test_every_moved_class_path_imports_under_both_names():
    import importlib

    for new, old in MOVED_CLASS_PATHS.items():
        classes = [getattr(importlib.import_module(p.rpartition(".")[0]), p.rpartition(".")[2]) for p in (new, old)]
        assert classes[0] is classes[1], (new, old)


def test_a_callback_hashes_as_before_under_either_path():
    old = results_identity(with_callback("lightning_vl.export.ExportWeights"), DEFAULTS)
    new = results_identity(with_callback("lightning_vl.model.export.ExportWeights"), DEFAULTS)
    assert new == old
    assert old["trainer"]["callbacks"][0]["class_path"] == "lightning_vl.export.ExportWeights"
    # pinned before the move (as tests/test_identity.py pins the others)
    assert identity_hash(old) == "57cb1975"
    other = results_identity(with_callback("callbacks.health.TrainingHealth"), DEFAULTS)
    assert other["trainer"]["callbacks"][0]["class_path"] == "callbacks.health.TrainingHealth"
