"""Reading JSON files — a whole document (``read_json``) or JSON lines (``read_json_lines``:
NLVR2, SNLI-VE, VCR) — with errors that name the file, the line and what was expected.

Every annotation file of ``data_modules`` is read through here; callers keep their own schema
checks (which name the field). A missing file is a ``FileNotFoundError``; text that is not UTF-8
or not JSON is a ``ValueError`` naming file, line and column."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _check_file(path: Path, expected: str) -> None:
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not a file; expected {expected}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected {expected}")


def _decode_error(where: str, raw: bytes, err: UnicodeDecodeError, expected: str, line_offset: int = 0) -> ValueError:
    """A ``ValueError`` for bytes that are not UTF-8, naming the line and column of the bad byte."""
    line = raw.count(b"\n", 0, err.start) + 1 + line_offset
    column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
    bad = raw[err.start:err.end].hex(" ")
    return ValueError(f"{where}, line {line}, column {column}: not UTF-8 text (byte {bad}: {err.reason}); "
                      f"expected {expected} as UTF-8 JSON")


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark is dropped). ``what`` says what the
    file should be, as it reads after "expected" ("a VQA questions file")."""
    path = Path(path)
    _check_file(path, what)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _decode_error(str(path), raw, err, what) from None


def parse_json(text: str, path: str | Path, what: str) -> Any:
    """``json.loads(text)``; invalid JSON is a ``ValueError`` naming ``path``, line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if not text.strip():
            raise ValueError(f"{path}: the file is empty; expected {what}") from None
        raise ValueError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}); "
                         f"expected {what}") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read; expected {what}") from None


def read_json(path: str | Path, what: str) -> Any:
    """The JSON document in ``path``. ``what`` says what the file should be, as it reads after
    "expected" — e.g. ``"a VQA questions file (v2_OpenEnded_mscoco_<split>_questions.json)"``.

    A missing file is a ``FileNotFoundError``; bytes that are not UTF-8 and text that is not JSON
    are a ``ValueError``; each names the file (line and column where they apply) and ``what``."""
    return parse_json(read_text(path, what), path, what)


def read_json_lines(path: str | Path, what: str, fields: str, missing_hint: str = "") -> Iterator[tuple[int, str, dict]]:
    """``(line number, "<path>, line <n>", record)`` for every non-blank line of ``path``.

    ``what`` names the format in messages ("NLVR2"), ``fields`` what each object should hold.
    A missing file, a line that is not UTF-8 or not JSON, or JSON that is not an object is a
    ``ValueError`` (``FileNotFoundError`` for the file) naming the file, the line and the expectation."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist{missing_hint}")
    expected = f"one {what} JSON object per line"
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}, line {lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise _decode_error(str(path), raw, err, expected, line_offset=lineno - 1) from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
                                 f"expected {expected}") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: a JSON {type(rec).__name__}, expected an object with {fields}")
            yield lineno, where, rec
