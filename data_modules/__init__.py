"""LightningDataModules that stream precomputed region features from HDF5, one per task.

Names are imported on first use, so ``python -m data_modules.demo`` does not pay for importing
pytorch_lightning and transformers. Each task's DataModule is the ``data_module`` of its
``TaskInfo`` (``lightning_vl/tasks/names.py``), exported here under its class name.
"""
from importlib import import_module

from lightning_vl.tasks.names import TASK_INFO

_EXPORTS = {
    "MissingImageError": "data_modules.features",
    "NonFiniteFeaturesError": "data_modules.features",
    "StoreError": "data_modules.features",
    "UnreadableStoreError": "data_modules.features",
    "RegionFeatureStore": "data_modules.features",
    "RegionFeatureWriter": "data_modules.convert.writer",
    "collate_rows": "data_modules.batching",
    "get_gather_index": "data_modules.batching",
    "load_tokenizer": "data_modules.tokenization",
    "encode_uniter_batch": "data_modules.tokenization",
    "VLDataModule": "data_modules.base",
    "Nlvr2Dataset": "data_modules.nlvr2",
    **{path.rpartition(".")[2]: path.rpartition(".")[0] for path in (t.data_module for t in TASK_INFO.values())},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
