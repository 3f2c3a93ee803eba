"""Reading a JSON-lines annotation file (NLVR2, SNLI-VE, VCR) with errors that name the line."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def read_json_lines(path: str | Path, what: str, fields: str, missing_hint: str = "") -> Iterator[tuple[int, str, dict]]:
    """``(line number, "<path>, line <n>", record)`` for every non-blank line of ``path``.

    ``what`` names the format in messages ("NLVR2"), ``fields`` what each object should hold.
    A missing file, a line that is not JSON, or JSON that is not an object is a ``ValueError``
    (``FileNotFoundError`` for the file) naming the file, the line and the expectation."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist{missing_hint}")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
                                 f"expected one {what} JSON object per line") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: a JSON {type(rec).__name__}, expected an object with {fields}")
            yield lineno, where, rec
