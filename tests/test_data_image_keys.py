"""One store-key pattern check for every task: ``ImageKeyPattern`` refuses a bad ``image_key``
when the data module is built, naming the option, the pattern and the allowed fields."""
import re

import pytest

from data_modules.flickr30k import Flickr30kDataModule
from data_modules.gqa import GqaDataModule
from data_modules.image_keys import ImageKeyPattern, key_pattern
from data_modules.nlvr2 import Nlvr2DataModule
from data_modules.refcoco import RefcocoDataModule
from data_modules.snli_ve import SnliVeDataModule
from data_modules.vcr import VcrDataModule
from data_modules.vqa import VqaDataModule

FIELDS = {"stem": "dev-850-0", "side": 0}


def test_formats_keys_with_the_allowed_fields():
    p = ImageKeyPattern("nlvr2_{stem}-img{side}.npz", FIELDS, where="NLVR2 image_key")
    assert p.format(stem="dev-1-0", side=1) == p(stem="dev-1-0", side=1) == "nlvr2_dev-1-0-img1.npz"
    assert p.used == ("stem", "side") and str(p) == "nlvr2_{stem}-img{side}.npz"
    assert ImageKeyPattern("{side:03d}/{stem!r}", FIELDS).format(stem="a", side=2) == "002/'a'"
    assert key_pattern(p, FIELDS) is p and key_pattern("{stem}", FIELDS) is key_pattern("{stem}", FIELDS)


@pytest.mark.parametrize("pattern, problem", [
    ("{annot_id}", r"unknown field \{annot_id\}"),
    ("{stem}-{a}-{b}", r"unknown fields \{a\}, \{b\}"),
    ("{0}", r"unknown field \{0\}"),
    ("{}", r"unknown field \{\}"),
    ("{stem.upper}", r"unknown field \{stem.upper\}"),
    ("{stem:{width}}", r"unknown field \{width\}"),
])
def test_a_bad_field_names_option_pattern_and_allowed_fields(pattern, problem):
    with pytest.raises(ValueError) as err:
        ImageKeyPattern(pattern, FIELDS, where="NLVR2 image_key")
    msg = str(err.value)
    assert msg.startswith(f"NLVR2 image_key {pattern!r}: ")
    assert re.search(problem, msg), msg
    assert "using only {stem}, {side}" in msg


@pytest.mark.parametrize("pattern, problem", [
    ("{stem", "not valid format syntax (expected '}' before end of string)"),
    ("stem}", "not valid format syntax (Single '}' encountered in format string)"),
    ("", "empty"),
    ("img", "uses no field, so every image would get the same store key"),
    ("{side:x<}{stem!z}", "cannot format stem='dev-850-0', side=0"),
    ("{stem:d}", "cannot format"),
    ("{stem:.0}", "gives an empty store key"),
])
def test_bad_syntax_and_unusable_patterns(pattern, problem):
    with pytest.raises(ValueError) as err:
        ImageKeyPattern(pattern, FIELDS, where="NLVR2 image_key")
    msg = str(err.value)
    assert msg.startswith(f"NLVR2 image_key {pattern!r}: {problem}"), msg
    assert "using only {stem}, {side}" in msg


def test_a_non_string_is_refused():
    with pytest.raises(ValueError, match="NLVR2 image_key 5: a int, not a string"):
        key_pattern(5, FIELDS, "NLVR2 image_key")


# every task's data module with a bad pattern: the files need not exist, the check comes first
COMMON = dict(features="missing.h5", tokenizer="missing-tokenizer")
MODULES = {
    "NLVR2": (Nlvr2DataModule, dict(train_file="t.json", val_file="v.json"), "{stem}, {side}"),
    "VQA": (VqaDataModule, dict(train_questions=["q.json"], train_annotations=["a.json"], val_questions="vq.json",
                                val_annotations="va.json", ans2label="ans.json"), "{image_id}"),
    "GQA": (GqaDataModule, dict(train_file="t.json", val_file="v.json", ans2label="ans.json"), "{image_id}"),
    "VCR": (VcrDataModule, dict(train_file="t.jsonl", val_file="v.jsonl"), "{img_id}, {img_fn}, {img_fn_stem}, {movie}"),
    "SNLI-VE": (SnliVeDataModule, dict(train_file="t.jsonl", val_file="v.jsonl"), "{flickr_id}"),
    "RefCOCO": (RefcocoDataModule, dict(refs_file="refs.p", instances_file="instances.json"), "{image_id}"),
    "Flickr30k": (Flickr30kDataModule, dict(karpathy_file="k.json"), "{stem}, {filename}, {imgid}"),
}


@pytest.mark.parametrize("task", sorted(MODULES))
@pytest.mark.parametrize("pattern", ["{nope}", "{oops", "", "constant"])
def test_every_data_module_refuses_a_bad_pattern_at_construction(task, pattern):
    cls, args, allowed = MODULES[task]
    with pytest.raises(ValueError) as err:
        cls(**args, **COMMON, image_key=pattern)
    msg = str(err.value)
    assert msg.startswith(f"{task} image_key {pattern!r}: ") and f"using only {allowed} (" in msg, msg


@pytest.mark.parametrize("task", sorted(MODULES))
def test_every_data_module_accepts_its_default_and_keeps_the_pattern(task):
    cls, args, _ = MODULES[task]
    dm = cls(**args, **COMMON)
    assert isinstance(dm.key_pattern, ImageKeyPattern) and dm.key_pattern.pattern == dm.image_key
    assert dm.key_pattern.where == f"{task} image_key"
