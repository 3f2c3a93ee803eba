"""Reading initial weights for a task module, and loading them with a report (``LoadReport``).

The backbone decides what an ``init`` value means (``Backbone.read_init``); the readers here are the
shared parts. UNITER's (``UniterModel.read_init``) accepts:

* a plain UNITER state dict (``uniter-base.pt``; fp16 or fp32; pre-training heads such as
  ``cls.*`` / ``itm_output.*`` are reported and ignored) — θ_0 of the study;
* a Lightning checkpoint of this project (``{"state_dict": ...}``) or an IMP ``init.pt``/``rewind.pt``;
* a HuggingFace BERT directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``):
  BERT's weights in the UNITER core, image embeddings left at their fresh init — θ'_0;
* ``shuffled:<any of the above>``: every core tensor's values randomly permuted (seeded) — θ''_0.

Files are read with ``weights_only=True`` (or safetensors) — never unpickling code. Missing and
unexpected keys are reported; a shape mismatch is an error naming the file, the key and both shapes.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def head(keys):
            return ", ".join(keys[:6]) + (" …" if len(keys) > 6 else "")

        lines = [f"loaded {len(self.loaded)} tensors from {self.path}"]
        if self.missing:
            lines.append(f"  missing (left at init): {len(self.missing)}: {head(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {len(self.unexpected)}: {head(self.unexpected)}")
        return "\n".join(lines)


SHUFFLED = "shuffled:"


def shuffle_prefixed(state: dict[str, torch.Tensor], seed: int, prefix: str) -> dict[str, torch.Tensor]:
    """Permute the values inside every ``<prefix>.*`` tensor (the backbone's): same value
    distribution per layer, structure destroyed (the study's θ''_0 control); in the state's order,
    from one generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for k, v in state.items():
        if k.startswith(prefix + ".") and v.is_floating_point():
            flat = v.reshape(-1)
            out[k] = flat[torch.randperm(flat.numel(), generator=g)].reshape(v.shape)
    return out


def read_bert_directory(path: Path, prefix: str = "uniter") -> dict[str, torch.Tensor]:
    """BERT weights (HuggingFace layout) renamed ``bert.*`` → ``<prefix>.*`` as UNITER's
    ``convert_ckpt.py`` does; ``cls.*`` and the position-id buffer are left for the report."""
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        raw = load_file(str(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").is_file():
        raw = read_state_dict(path / "pytorch_model.bin")
    else:
        raise FileNotFoundError(
            f"BERT directory {path} has neither model.safetensors nor pytorch_model.bin"
        )
    core = ("embeddings.", "encoder.", "pooler.")
    out = {}
    for k, v in raw.items():
        if k.startswith("bert."):
            k = f"{prefix}." + k[len("bert."):]
        elif k.startswith(core):
            k = f"{prefix}." + k
        out[k] = v.float() if v.is_floating_point() else v
    if not any(k.startswith(f"{prefix}.encoder.") for k in out):
        raise ValueError(f"{path} holds no BERT encoder weights (expected keys like bert.encoder.layer.0...)")
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A float32 state dict from any accepted file, with TF-era ``gamma``/``beta`` renamed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled code, truncated file, not a torch file
        raise ValueError(f"cannot read checkpoint {path} as plain tensors: {err}") from err
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]  # Lightning checkpoint
    elif isinstance(raw, dict) and isinstance(raw.get("model_state"), dict):
        raw = raw["model_state"]  # UNITER training checkpoint
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"checkpoint {path} is not a state dict of tensors")
    out = {}
    for k, v in raw.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[k] = v.float() if v.is_floating_point() else v
    return out


def map_head_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """UNITER keeps head parameters at the top level (``nlvr2_output.weight``); ours live under
    ``head.``. Map a key when the ``head.``-prefixed name exists in the model."""
    own = set(model.state_dict())
    return {(f"head.{k}" if f"head.{k}" in own and k not in own else k): v for k, v in state.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Non-strict load that refuses shape mismatches; returns what was loaded/missing/ignored."""
    own = model.state_dict()
    report = LoadReport(path=source)
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{source}: {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
        else:
            report.loaded.append(k)
    report.missing = [k for k in own if k not in state]
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report


# transformers folders -------------------------------------------------------------------------------
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a save_pretrained folder holds


def read_folder_config(path: str | os.PathLike, model_type: str, what: str) -> dict:
    """The ``config.json`` of a transformers ``save_pretrained`` folder, checked to be ``model_type``.

    Example::

        sizes = read_folder_config("pretrained/lxmert-base-uncased", "lxmert", "an LXMERT")

    Raises:
        FileNotFoundError: no ``config.json`` in ``path``.
        ValueError: a config whose ``model_type`` is another.
    """
    import json

    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a transformers folder of {what})")
    raw = json.loads(file.read_text(encoding="utf-8"))
    if raw.get("model_type") != model_type:
        raise ValueError(f"{file}: model_type is {raw.get('model_type')!r}, not {model_type!r}")
    return raw


def weights_source(spec: str) -> Path:
    """The file an ``init`` value reads (a folder's weights file), for messages.

    Example:
        >>> weights_source("shuffled:ckpt.pt").name
        'ckpt.pt'

    Raises:
        Nothing of its own: a folder without weights gives the folder.
    """
    path = Path(spec[len(SHUFFLED):] if spec.startswith(SHUFFLED) else spec)
    if path.is_dir():
        return next((path / f for f in WEIGHT_FILES if (path / f).is_file()), path)
    return path


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A float32 state dict from a ``.safetensors`` file or any file ``checkpoints.read_state_dict`` reads.

    Example::

        read_weights_file(Path("pretrained/lxmert-base-uncased/model.safetensors"))

    Raises:
        FileNotFoundError: no such file.
        ValueError: not plain tensors.
    """
    if path.suffix != ".safetensors":
        return read_state_dict(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    from safetensors.torch import load_file

    return {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
