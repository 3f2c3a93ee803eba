"""Run identity: which settings determine a run's results, hashed into its folder name.

open_lth's idea with an *allowlist*: a run folder is named by the MD5 of exactly the settings that
change what a level computes — the model (size, init, recipe), the data, the optimisation and
training length, the seed, and the pruning method, schedule, rate, rewind step, head reset and
prunable set. Everything else is presentation or reach: where runs go, loggers, progress bars,
evaluation batch size, data-loading workers, and the target sparsity, which only says how many
levels to run (so ``SPARSITY=0.9`` after ``SPARSITY=0.7`` continues the same folder).

Settings equal to their parser default are left out of the hash (``defaults``), so adding a new
option with a neutral default never orphans existing runs. Changing a default's *value* is a
breaking change: bump ``IDENTITY_VERSION``, or, for a new option whose default computes something
new, list it in ``MODEL_ADDED_RESULTS_KEYS`` with the value earlier runs used (new runs get new
folders; an earlier run resumes when that value is passed). ``tests/test_identity.py`` pins hashes.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

IDENTITY_VERSION = 1

# Trainer flags that change what a fit computes (the effective batch, the steps, clipping,
# precision, which validations run — each iterator creation draws from the RNG — and callbacks).
TRAINER_KEYS = (
    "devices", "num_nodes", "precision", "callbacks", "fast_dev_run", "max_epochs", "min_epochs", "max_steps",
    "min_steps", "max_time", "limit_train_batches", "limit_val_batches", "overfit_batches", "val_check_interval",
    "check_val_every_n_epoch", "num_sanity_val_steps", "accumulate_grad_batches", "gradient_clip_val",
    "gradient_clip_algorithm", "use_distributed_sampler", "sync_batchnorm", "reload_dataloaders_every_n_epochs",
    "plugins",
)
# Data-module arguments that only change how fast data arrives or how evaluation is batched.
DATA_DISPLAY_KEYS = ("num_workers", "eval_batch_size", "pin_memory", "persistent_workers", "prefetch_factor",
                     "image_index_cache")
# Data-module arguments added after identity version 1, left out at these values (data arguments
# are hashed with their defaults, so a new one would otherwise rename every existing run folder):
# the pixel path's, neutral for region-feature runs.
DATA_ADDED_DEFAULTS = {"images": None, "image_size": 384, "max_image_size": None, "size_divisor": 32}
# Model arguments that change results and were added after identity version 1, with the value
# every run made before them used: an identity holds one exactly when its value differs from that
# (so the default of a new option may be a new behaviour, giving new run folders, while a run made
# before it resumes by passing the old value).
MODEL_ADDED_RESULTS_KEYS = {"adamw_impl": "torch"}
# Lottery settings that determine levels (target_sparsity, root, name and W&B do not).
IMP_KEYS = ("method", "schedule", "rate", "rewind_step", "head_reset", "prunable", "snip_batches", "options")
BRANCH_KEYS = ("kind", "strategy", "seed")
# Classes that moved, new path -> the path identities were first made with: a configuration naming
# either hashes the same, so run folders made before the move resume (the old path stays importable).
MOVED_CLASS_PATHS = {"lightning_vl.model.export.ExportWeights": "lightning_vl.export.ExportWeights"}


def _prune_defaults(node: Any, default: Any) -> Any:
    """``node`` without the entries equal to ``default``'s (recursively for dicts)."""
    if isinstance(node, dict) and isinstance(default, dict):
        out = {}
        for k, v in node.items():
            if k in default and _canonical(v) == _canonical(default[k]):
                continue
            out[k] = _prune_defaults(v, default.get(k))
        return out
    return node


def _first_class_paths(node: Any) -> Any:
    """``node`` with every moved ``class_path`` spelled as before the move (``MOVED_CLASS_PATHS``)."""
    if isinstance(node, dict):
        return {k: MOVED_CLASS_PATHS.get(v, v) if k == "class_path" and isinstance(v, str) else _first_class_paths(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_first_class_paths(v) for v in node]
    return node


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def results_identity(config: dict, defaults: Optional[dict] = None, section: str = "imp",
                     keys: tuple[str, ...] = IMP_KEYS) -> dict:
    """The part of a resolved CLI configuration that determines results.

    Args:
        config: the resolved configuration (``seed_everything``, ``model``, ``data``,
            ``trainer``, ``optimizer``, ``lr_scheduler`` and the lottery section).
        defaults: the parser's defaults in the same shape; entries equal to them are dropped.
        section, keys: the lottery section (``imp`` or ``branch``) and its identity fields.
    """
    defaults = defaults or {}
    ident: dict[str, Any] = {"identity_version": IDENTITY_VERSION}
    if config.get("seed_everything") is not None:
        ident["seed_everything"] = config["seed_everything"]
    for name in ("model", "optimizer", "lr_scheduler"):
        if config.get(name) is not None:
            ident[name] = _prune_defaults(config[name], defaults.get(name))
    if isinstance(config.get("model"), dict) and isinstance(ident.get("model"), dict):
        for key, before in MODEL_ADDED_RESULTS_KEYS.items():
            value = config["model"].get(key, before)
            if _canonical(value) == _canonical(before):
                ident["model"].pop(key, None)
            else:
                ident["model"][key] = value
    data = config.get("data")
    if isinstance(data, dict):
        init_args = {k: v for k, v in (data.get("init_args") or {}).items() if k not in DATA_DISPLAY_KEYS
                     and not (k in DATA_ADDED_DEFAULTS and _canonical(v) == _canonical(DATA_ADDED_DEFAULTS[k]))}
        ident["data"] = {"class_path": data.get("class_path"), "init_args": init_args}
    elif data is not None:
        ident["data"] = data
    trainer = {k: v for k, v in (config.get("trainer") or {}).items() if k in TRAINER_KEYS}
    ident["trainer"] = _prune_defaults(trainer, defaults.get("trainer"))
    lottery = {k: v for k, v in (config.get(section) or {}).items() if k in keys}
    ident[section] = _prune_defaults(lottery, defaults.get(section))
    return _first_class_paths(ident)


def identity_hash(identity: dict) -> str:
    """Short, stable hash of an identity (8 hex digits of its canonical JSON's MD5)."""
    return hashlib.md5(_canonical(identity).encode()).hexdigest()[:8]


def config_hash(config: dict, defaults: Optional[dict] = None) -> str:
    """The hash of a lottery run's configuration (its folder is ``<method>-<hash>``)."""
    return identity_hash(results_identity(config, defaults))


def differing_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities (for error messages)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differing_keys(va, vb, f"{prefix}{k}.")
        elif _canonical(va) != _canonical(vb):
            out.append(f"{prefix}{k}")
    return out
