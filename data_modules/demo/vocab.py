"""A WordPiece vocabulary built from the demo's own text, in BERT's ``vocab.txt`` format.

Plurals whose singular also occurs are left out as whole words, so ``cubes`` tokenises as
``cube ##s`` — the demo exercises real word-piece continuation, as rarer words do in BERT.
Every ASCII letter and digit is present as a word start and as a ``##`` piece, so text the
demo never generated still tokenises (into characters) instead of becoming [UNK].

``vocab_size`` pads the vocabulary to exactly the model's word table (``model.uniter.vocab_size``)
with ``[unused0]``, ``[unused1]``, … after the real tokens, as BERT's vocabulary carries unused
entries. Then ``len(tokenizer)`` equals the model's ``vocab_size``, and the ids a task appends past
the tokenizer (VCR's object tokens, ``object_token_offset = len(tokenizer)``) land in the rows the
model appends for them instead of in unused word rows.
"""
from __future__ import annotations

import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from ..tokenization import SPECIAL_TOKENS

SUFFIXES = ("s",)
_WORD_OR_PUNCT = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")


def unused_token(i: int) -> str:
    """BERT's name for the i-th unused vocabulary entry."""
    return f"[unused{i}]"


def build_vocab(texts: Iterable[str], vocab_size: Optional[int] = None) -> list[str]:
    """Tokens in id order: [PAD] [UNK] [CLS] [SEP] [MASK], punctuation, characters, words, pieces;
    then, with ``vocab_size``, ``[unused0]`` … up to exactly ``vocab_size`` tokens (an error if the
    real tokens are already more)."""
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
    return pad_vocab(vocab, vocab_size)


def pad_vocab(vocab: list[str], vocab_size: Optional[int]) -> list[str]:
    """``vocab`` followed by ``[unused0]``, ``[unused1]``, … up to ``vocab_size`` tokens (None: as is)."""
    if vocab_size is None:
        return list(vocab)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive int or None, got {vocab_size!r}")
    if len(vocab) > vocab_size:
        raise ValueError(f"the demo vocabulary has {len(vocab)} real tokens, more than the requested vocab_size "
                         f"{vocab_size} (the model's word table, model.uniter.vocab_size); give a vocab_size of at "
                         f"least {len(vocab)}")
    taken = set(vocab)
    padding, i = [], 0
    while len(vocab) + len(padding) < vocab_size:
        if unused_token(i) not in taken:
            padding.append(unused_token(i))
        i += 1
    return [*vocab, *padding]


def write_vocab(out_dir: str | Path, texts: Iterable[str], vocab_size: Optional[int] = None) -> Path:
    """Write ``vocab.txt`` (padded to ``vocab_size`` tokens if given, see ``build_vocab``) and a
    ``tokenizer_config.json`` (cased, like bert-base-cased)."""
    import json

    vocab = build_vocab(texts, vocab_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": False,
                    "model_max_length": 512}, indent=1) + "\n")
    return out
