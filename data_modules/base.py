"""What every task's DataModule shares: the region-feature store (or, for pixel models, the
images), the tokenizer, the loaders.

A task subclass states its own constructor arguments, names its split files (``set_split_files``)
and its image-key pattern (``set_image_key``), and reads one split into a
``torch.utils.data.Dataset`` that has a ``collate`` method; everything else — the shared
arguments, lazy HDF5 per worker, dimension and vocabulary checks, seeded shuffling, worker
settings — lives here once.
"""
from __future__ import annotations

from typing import Callable, Optional

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from .features import RegionFeatureStore
from .image_keys import ImageKeyPattern
from .images import ImageSource, open_images
from .pixels import ImageTransform
from .tokenization import load_tokenizer

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class VLDataModule(pl.LightningDataModule):
    """Arguments shared by all tasks.

    Args:
        features: the HDF5 region-feature store (see ``data_modules.features``); or instead
        images: raw images for a pixel model (ViLT): a folder of the public image files or a
            pre-resized image store (``data_modules.images``). Batches then carry ``pixel_values``
            and ``pixel_mask`` instead of regions (``data_modules.batching.collate_pixel_rows``);
            only tasks with ``supports_images`` take it.
        image_size, max_image_size, size_divisor: ViLT's resize (``data_modules.pixels.ImageTransform``):
            shorter side 384, longer side at most ``int(1333 / 800 * image_size)`` (None), both
            rounded down to a multiple of 32; batches are padded to multiples of ``size_divisor``.
        image_index_cache: where a read-only image folder's index is cached (default
            ``~/.cache/lightning-vl/image-index``).
        tokenizer: a local directory with the WordPiece ``vocab.txt`` (bert-base-cased for UNITER).
        img_dim: feature dimension the model expects; checked against the store.
        batch_size: training examples per batch (per device); ``eval_batch_size`` for val/test
            (default: ``batch_size``).
        num_workers: DataLoader worker processes (each opens the store itself).
        max_txt_len: word-pieces kept per text, without [CLS]/[SEP] (UNITER: 60).
        max_boxes: regions kept per image (None = all stored).
        do_lower_case: lower-case text before WordPiece (False for bert-base-cased).
        pin_memory: pin batches for faster host-to-GPU copies.
    """

    # Label strings in index order for classification heads (VQA/GQA answers, SNLI-VE classes);
    # the CLI hands them to the model at instantiation, and they are saved with its checkpoints.
    labels: Optional[list[str]] = None
    # whether the task's datasets can read images (``images:``) as well as region features
    supports_images: bool = False
    reads_no_images: bool = False  # an instance without features or images (pre-training's text_only)

    def __init__(
        self,
        features: Optional[str] = None,
        tokenizer: Optional[str] = None,
        img_dim: int = 2048,
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        max_txt_len: int = 60,
        max_boxes: Optional[int] = None,
        do_lower_case: bool = False,
        pin_memory: bool = False,
        images: Optional[str] = None,
        image_size: int = 384,
        max_image_size: Optional[int] = None,
        size_divisor: int = 32,
        image_index_cache: Optional[str] = None,
    ):
        super().__init__()
        if tokenizer is None:
            raise ValueError(f"{type(self).__name__}: tokenizer is required (a folder with vocab.txt)")
        if (features is None) == (images is None) and not (features is None and self.reads_no_images):
            raise ValueError(f"{type(self).__name__}: give exactly one of features (a region-feature store) and "
                             f"images (a folder of image files or an image store), got features={features!r}, "
                             f"images={images!r}")
        if images is not None and not self.supports_images:
            raise ValueError(f"{type(self).__name__} reads region features only; images={images!r} is for the tasks "
                             "whose data modules read pixels (NLVR2, VQA, GQA)")
        if images is not None and max_boxes is not None:
            raise ValueError(f"max_boxes={max_boxes} limits regions; it has no meaning with images={images!r}")
        self.images = images
        self.image_transform = ImageTransform(image_size, max_image_size, size_divisor)
        self.image_index_cache = image_index_cache
        if batch_size <= 0 or (eval_batch_size is not None and eval_batch_size <= 0):
            raise ValueError(f"batch sizes must be positive, got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
        if num_workers < 0 or max_txt_len <= 0:
            raise ValueError(f"need num_workers >= 0 and max_txt_len > 0, got {num_workers} and {max_txt_len}")
        self.features = features
        self.tokenizer_path = tokenizer
        self.img_dim = img_dim
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_txt_len = max_txt_len
        self.max_boxes = max_boxes
        self.do_lower_case = do_lower_case
        self.pin_memory = pin_memory
        self.datasets: dict[str, Dataset] = {}
        self._split_files: Optional[dict[str, Optional[str]]] = None
        self._store: RegionFeatureStore | None = None
        self._tokenizer = None

    @property
    def reads_images(self) -> bool:
        """Whether batches carry pixels (``images:``) rather than region features."""
        return self.images is not None

    @property
    def store(self) -> RegionFeatureStore | ImageSource:
        """The region-feature store (its dimension checked), or the image source with ``images:``;
        opened on first use."""
        if self._store is None:
            if self.images is not None:
                self._store = open_images(self.images, self.image_transform, self.image_index_cache)
            else:
                store = RegionFeatureStore(self.features, max_boxes=self.max_boxes)
                store.check_dim(self.img_dim)
                self._store = store
        return self._store

    @property
    def tokenizer(self):
        """The WordPiece tokenizer, loaded (and its size checked) on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path, self.do_lower_case)
        return self._tokenizer

    @property
    def tokenizer_size(self) -> int:
        """``len(tokenizer)``: the word-piece ids the data uses are 0 .. tokenizer_size - 1 (the
        model's ``vocab_size`` must cover them; VCR's object tokens come after, see
        ``VcrDataModule.object_token_ids``). Loads the tokenizer."""
        return len(self.tokenizer)

    @property
    def special_ids(self) -> dict[str, int]:
        return self.tokenizer.uniter_special_ids

    def set_split_files(self, train: Optional[str], val: Optional[str], test: Optional[str] = None) -> None:
        """Name the file each split reads (None: the split has none); a task's constructor calls it.
        A file may serve several splits (Karpathy's, RefCOCO's refs), or stand for several files
        (``a + b``): ``build_dataset`` gets it back as ``path``."""
        self._split_files = {"train": train, "val": val, "test": test}

    def split_files(self) -> dict[str, Optional[str]]:
        """``{"train": path, "val": path, "test": path or None}``, as ``set_split_files`` named them."""
        if self._split_files is None:
            raise NotImplementedError(f"{type(self).__name__} must name its split files (set_split_files in its "
                                      "constructor)")
        return dict(self._split_files)

    def set_image_key(self, image_key: str, check: Callable[[str], ImageKeyPattern]) -> None:
        """Keep ``image_key`` (the config's pattern) and ``key_pattern``, the pattern ``check``
        parses it into: a bad pattern fails here, at start-up, not at the first missing image."""
        self.key_pattern = check(image_key)
        self.image_key = image_key

    def build_dataset(self, split: str, path: str) -> Dataset:
        """Read one split; every image it needs must already be checked to be in the store."""
        raise NotImplementedError(f"{type(self).__name__} must read its split files")

    def setup(self, stage: Optional[str] = None) -> None:
        """Read (once) the splits the stage needs; missing images fail here, not mid-training."""
        for split in STAGE_SPLITS.get(stage, ("train", "val", "test")):
            path = self.split_files().get(split)
            if path and split not in self.datasets:
                self.datasets[split] = self.build_dataset(split, path)

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            configured = self.split_files().get(split)
            hint = "call setup() first" if configured else f"no {split} file configured"
            raise RuntimeError(f"{type(self).__name__}: the {split} split is not loaded ({hint})")
        dataset = self.datasets[split]
        # shuffle=True draws from torch's global generator, which seed_everything seeds.
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=dataset.collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)
