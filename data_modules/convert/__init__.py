"""Converters from public data formats to the project's own files.

``python -m data_modules.convert features ...`` turns region features in any of the common public
layouts (bottom-up-attention TSV, bottom-up-attention-vqa / ban-vqa HDF5, UNITER's LMDB img_db,
per-image ``.npz``) into the HDF5 store of ``data_modules.features``; see
``data_modules.convert.features`` for the options and the key flags per task (soft labels, the
per-region class distributions of UNITER's img_db and npz files, are kept where the source has
them). ``concat`` joins stores region by region (VCR), ``merge`` image by image (COCO + VG).
``images`` pre-resizes a folder of image files into an image store for pixel models (ViLT;
``data_modules.convert.images``).
"""
from .features import ConvertError, ConvertSummary, NothingConverted, SourceError, convert_features

__all__ = ["ConvertError", "ConvertSummary", "NothingConverted", "SourceError", "convert_features"]
