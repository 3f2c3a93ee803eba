"""Word-piece tokenisation the way UNITER prepares text, through transformers' BERT tokenizer.

Tokenizers are read from a local directory holding ``vocab.txt`` (e.g. a copy of
``bert-base-cased``); nothing is fetched from a hub. transformers 5 silently ignores
``BertTokenizer(vocab_file=...)`` and, offline, turns a missing hub id into a 5-token
tokenizer, so the loaded size is checked against the file.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import BertTokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def read_vocab(path: str | Path) -> list[str]:
    """The tokens of a ``vocab.txt``, one per line, in id order."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def _bert_tokenizer_class():
    """transformers' BERT tokenizer, imported on first use (it costs ~2 s; the demo generator
    only needs the special-token names)."""
    from transformers import BertTokenizer

    return BertTokenizer


def load_tokenizer(path: str | Path, do_lower_case: bool = False) -> "BertTokenizer":
    """A BERT WordPiece tokenizer from ``path``: a directory with ``vocab.txt``, or that file.

    The special-token ids are recorded as ``tokenizer.uniter_special_ids`` (name → id).
    """
    path = Path(path)
    vocab_path = path / "vocab.txt" if path.is_dir() else path
    if not vocab_path.is_file():
        raise FileNotFoundError(
            f"tokenizer {path}: no {vocab_path.name if path.is_dir() else 'file'} at {vocab_path}; expected a local "
            "directory holding a WordPiece vocab.txt (e.g. a copy of bert-base-cased); nothing is downloaded")
    tokens = read_vocab(vocab_path)
    if "" in tokens:
        raise ValueError(f"tokenizer vocabulary {vocab_path}: line {tokens.index('') + 1} is empty; "
                         "expected one token per line")
    if len(set(tokens)) != len(tokens):
        dup = next(t for i, t in enumerate(tokens) if t in tokens[:i])
        raise ValueError(f"tokenizer vocabulary {vocab_path}: token {dup!r} listed twice; ids would be ambiguous")
    lacking = [t for t in SPECIAL_TOKENS if t not in tokens]
    if lacking:
        raise ValueError(f"tokenizer vocabulary {vocab_path} lacks the special tokens {lacking}; "
                         f"expected all of {list(SPECIAL_TOKENS)}")
    # vocab=, not vocab_file=: transformers 5 ignores the latter without a word.
    tokenizer = _bert_tokenizer_class()(vocab=str(vocab_path), do_lower_case=do_lower_case)
    if len(tokenizer) != len(tokens) or tokenizer.convert_tokens_to_ids(tokens[-1]) != len(tokens) - 1:
        raise ValueError(
            f"tokenizer from {vocab_path} has {len(tokenizer)} tokens but the file lists {len(tokens)}: "
            "transformers did not read the vocabulary")
    tokenizer.uniter_special_ids = special_token_ids(tokenizer)
    tokenizer.uniter_vocab_path = str(vocab_path)
    return tokenizer


def special_token_ids(tokenizer) -> dict[str, int]:
    """``{"pad": .., "unk": .., "cls": .., "sep": .., "mask": ..}`` (bert-base-cased: 0, 100, 101, 102, 103)."""
    return {name.strip("[]").lower(): int(tokenizer.convert_tokens_to_ids(name)) for name in SPECIAL_TOKENS}


def encode_uniter_batch(tokenizer, texts: Sequence[str], max_txt_len: int) -> list[list[int]]:
    """``[CLS] word-pieces [SEP]`` per text, as UNITER's prepro: every whitespace word tokenised on
    its own (words giving no pieces vanish), the first ``max_txt_len`` pieces kept. One batched
    call into the Rust tokenizer — per-word calls cost ~25 µs each."""
    if max_txt_len < 0:
        raise ValueError(f"max_txt_len must be >= 0, got {max_txt_len}")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    words = [text.split() for text in texts]
    nonempty = [i for i, w in enumerate(words) if w]
    pieces: list[list[int]] = [[] for _ in texts]
    if nonempty:
        enc = tokenizer([words[i] for i in nonempty], is_split_into_words=True, add_special_tokens=False)
        for i, ids in zip(nonempty, enc["input_ids"]):
            pieces[i] = list(ids)
    return [[cls, *ids[:max_txt_len], sep] for ids in pieces]
