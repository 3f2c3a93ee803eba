"""Random NLVR2-shaped batches for tests that exercise training mechanics, not data reading."""
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_vl.model.uniter import UniterConfig

TINY = UniterConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, img_dim=16, max_position_embeddings=32)


class RandomPairs(Dataset):
    def __init__(self, n: int, cfg: UniterConfig, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            tl = int(torch.randint(3, 8, (1,), generator=g))
            nbs = torch.randint(2, 6, (2,), generator=g).tolist()
            self.items.append({
                "ids": torch.randint(1, cfg.vocab_size, (tl,), generator=g),
                "feats": [torch.randn(nb, cfg.img_dim, generator=g) for nb in nbs],
                "pos": [torch.rand(nb, 7, generator=g) for nb in nbs],
                "target": i % 2,
            })

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate_pairs(items):
    rows = [(it["ids"], it["feats"][s], it["pos"][s], s + 1) for it in items for s in (0, 1)]
    lt = max(len(r[0]) for r in rows)
    nb = max(len(r[1]) for r in rows)
    ltot = max(len(r[0]) + len(r[1]) for r in rows)
    n, d = len(rows), rows[0][1].shape[1]
    batch = {
        "input_ids": torch.zeros(n, lt, dtype=torch.long),
        "position_ids": torch.arange(lt)[None],
        "img_feat": torch.zeros(n, nb, d),
        "img_pos_feat": torch.zeros(n, nb, 7),
        "img_type_ids": torch.zeros(n, nb, dtype=torch.long),
        "attn_masks": torch.zeros(n, ltot, dtype=torch.long),
        "gather_index": torch.arange(ltot).repeat(n, 1),
        "targets": torch.tensor([it["target"] for it in items]),
        "txt_lens": [len(r[0]) for r in rows],
        "num_bbs": [len(r[1]) for r in rows],
    }
    for i, (ids, feat, pos, side) in enumerate(rows):
        t, b = len(ids), len(feat)
        batch["input_ids"][i, :t] = ids
        batch["img_feat"][i, :b] = feat
        batch["img_pos_feat"][i, :b] = pos
        batch["img_type_ids"][i, :b] = side
        batch["attn_masks"][i, : t + b] = 1
        batch["gather_index"][i, t: t + b] = torch.arange(lt, lt + b)
    return batch


class RandomPairsDataModule(pl.LightningDataModule):
    def __init__(self, n_train: int = 32, n_val: int = 16, batch_size: int = 4, cfg: UniterConfig = TINY):
        super().__init__()
        self.train_set = RandomPairs(n_train, cfg, seed=0)
        self.val_set = RandomPairs(n_val, cfg, seed=1)
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=collate_pairs)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=collate_pairs)


def tiny_trainer(max_steps: int, **kwargs) -> pl.Trainer:
    defaults = dict(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=2, deterministic=True,
    )
    return pl.Trainer(**{**defaults, **kwargs})
