"""A WordPiece vocabulary built from the demo's own text, in BERT's ``vocab.txt`` format.

Plurals whose singular also occurs are left out as whole words, so ``cubes`` tokenises as
``cube ##s`` — the demo exercises real word-piece continuation, as rarer words do in BERT.
Every ASCII letter and digit is present as a word start and as a ``##`` piece, so text the
demo never generated still tokenises (into characters) instead of becoming [UNK].
"""
from __future__ import annotations

import re
import string
from collections.abc import Iterable
from pathlib import Path

from ..tokenization import SPECIAL_TOKENS

SUFFIXES = ("s",)
_WORD_OR_PUNCT = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")


def build_vocab(texts: Iterable[str]) -> list[str]:
    """Tokens in id order: [PAD] [UNK] [CLS] [SEP] [MASK], punctuation, characters, words, pieces."""
    words: set[str] = set()
    for text in texts:
        words.update(_WORD_OR_PUNCT.findall(text))
    punct = sorted(w for w in words if not w.isalnum()) + [p for p in string.punctuation if p not in words]
    whole, pieces = set(), set()
    for w in (w for w in words if w.isalnum()):
        for suffix in SUFFIXES:
            stem = w[: -len(suffix)]
            if w.endswith(suffix) and len(stem) >= 3 and stem in words:
                pieces.add("##" + suffix)
                break
        else:
            whole.add(w)
    chars = list(string.ascii_letters + string.digits)
    char_pieces = ["##" + c for c in chars]
    vocab = list(SPECIAL_TOKENS)
    for token in [*punct, *chars, *sorted(whole), *sorted(pieces), *char_pieces]:
        if token not in vocab:
            vocab.append(token)
    return vocab


def write_vocab(out_dir: str | Path, texts: Iterable[str]) -> Path:
    """Write ``vocab.txt`` and a ``tokenizer_config.json`` (cased, like bert-base-cased)."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(texts)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": False,
                    "model_max_length": 512}, indent=1) + "\n")
    return out
