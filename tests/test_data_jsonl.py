"""One JSON reader for every annotation file: missing files, invalid JSON and non-UTF-8 bytes
give errors that name the file (and line) and what the file should have been."""
import json
import re
from pathlib import Path

import pytest

from data_modules.answers import read_ans2label
from data_modules.convert.features import load_image_sizes
from data_modules.convert.sources import load_imgid2idx
from data_modules.flickr30k import read_karpathy
from data_modules.gqa import read_gqa_questions
from data_modules.jsonl import read_json, read_json_lines
from data_modules.refcoco import load_refs_file, read_instances
from data_modules.vqa import read_question_ids, read_vqa_annotations, read_vqa_questions


def test_read_json_returns_the_document(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"x": [1, 2]}', encoding="utf-8")
    assert read_json(path, "a test file") == {"x": [1, 2]}
    path.write_bytes(b"\xef\xbb\xbf" + '["caf\u00e9"]'.encode())  # a byte-order mark is tolerated
    assert read_json(str(path), "a test file") == ["caf\u00e9"]


def test_missing_file_names_the_file_and_the_expectation(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        read_json(tmp_path / "nope.json", "a VQA questions file")
    assert str(err.value) == f"{tmp_path / 'nope.json'} does not exist; expected a VQA questions file"
    with pytest.raises(FileNotFoundError, match="is a folder, not a file; expected a VQA questions file"):
        read_json(tmp_path, "a VQA questions file")


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "a": 1,\n  "b": ,\n}\n', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_json(path, "an ans2label file")
    msg = str(err.value)
    assert msg.startswith(f"{path}: not valid JSON at line 3, column 8 (")
    assert msg.endswith("expected an ans2label file")
    path.write_text("  \n")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: the file is empty; expected X"):
        read_json(path, "X")


def test_non_utf8_bytes_name_file_line_and_column(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"a": 1,\n "b": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(ValueError) as err:
        read_json(path, "a GQA question file")
    msg = str(err.value)
    assert msg.startswith(f"{path}, line 2, column 11: not UTF-8 text (byte e9")
    assert msg.endswith("expected a GQA question file as UTF-8 JSON")


def test_json_lines_reader_names_the_line_of_a_non_utf8_byte(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    rows = read_json_lines(path, "NLVR2", "a")
    assert next(rows)[0] == 1
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}, line 2, column 8: not UTF-8 text \(byte ff.*"
                                         "expected one NLVR2 JSON object per line"):
        next(rows)


READERS = {  # reader, what its messages say the file should be (a regex)
    "vqa questions": (read_vqa_questions, "a VQA questions file"),
    "vqa annotations": (read_vqa_annotations, "a VQA annotations file"),
    "question ids": (read_question_ids, "question.id"),  # a regex: "question-id file" / "question ids"
    "gqa": (read_gqa_questions, "a GQA question file"),
    "ans2label": (read_ans2label, "an ans2label file"),
    "refs.json": (load_refs_file, "a refs file"),
    "instances": (read_instances, "a COCO instances file"),
    "karpathy": (read_karpathy, "a Karpathy split file"),
    "image sizes": (lambda p: load_image_sizes(Path(p)), "an image-size file"),
    "imgid2idx": (lambda p: load_imgid2idx(Path(p)), "an image-id mapping"),
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_every_whole_file_reader_uses_it(tmp_path, name):
    read, expected = READERS[name]
    path = tmp_path / "in.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path)) + ".*" + expected):
        read(path)
    path.write_text('[1,\n 2,,\n]' if name == "question ids" else '{"a":\n [1,,]}')
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": not valid JSON at line 2, column .*" + expected):
        read(path)
    path.write_bytes(b'[\n"\xe9"]' if name == "question ids" else b'{\n"\xe9": 1}')
    with pytest.raises(ValueError, match=re.escape(str(path)) + ", line 2, column 2: not UTF-8 text .*" + expected):
        read(path)


def test_callers_keep_their_own_schema_messages(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"questions": {"not": "a list"}}))
    with pytest.raises(ValueError, match="expected a JSON object with a 'questions' list"):
        read_vqa_questions(path)
    path.write_text('[1, "2"]')
    with pytest.raises(ValueError, match="entry 1 is '2'; expected an int question id"):
        read_question_ids(path)
    path.write_text("[1, 2]")
    assert read_question_ids(path) == {1, 2}
