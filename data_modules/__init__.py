"""LightningDataModules that stream precomputed region features from HDF5, one per task.

Names are imported on first use, so ``python -m data_modules.demo`` does not pay for importing
pytorch_lightning and transformers.
"""
from importlib import import_module

_EXPORTS = {
    "MissingImageError": "features",
    "NonFiniteFeaturesError": "features",
    "StoreError": "features",
    "UnreadableStoreError": "features",
    "RegionFeatureStore": "features",
    "RegionFeatureWriter": "features",
    "collate_rows": "batching",
    "get_gather_index": "batching",
    "load_tokenizer": "tokenization",
    "encode_uniter": "tokenization",
    "VLDataModule": "base",
    "Nlvr2DataModule": "nlvr2",
    "Nlvr2Dataset": "nlvr2",
    "VqaDataModule": "vqa",
    "GqaDataModule": "gqa",
    "VcrDataModule": "vcr",
    "SnliVeDataModule": "snli_ve",
    "RefcocoDataModule": "refcoco",
    "Flickr30kDataModule": "flickr30k",
    "PretrainDataModule": "pretrain",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
