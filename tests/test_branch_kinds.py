"""Branch kinds and head resets are declared once: the CLI's choices, the config's check and the
runner all read ``lightning_vl/lottery/kinds.py:BRANCH_KINDS`` and ``config.py:HEAD_RESETS``."""
import typing

import pytest

from lightning_vl.lottery import kinds
from lightning_vl.lottery.config import HEAD_RESETS, BranchConfig, ImpConfig
from lightning_vl.lottery.kinds import BRANCH_KINDS, BranchKind, branch_kind


def test_the_registry_holds_the_study_kinds_in_order():
    assert tuple(BRANCH_KINDS) == ("random", "shuffle", "reinit", "ticket", "transfer")
    assert all(isinstance(k, BranchKind) and k.name == name for name, k in BRANCH_KINDS.items())
    assert [n for n, k in BRANCH_KINDS.items() if k.uses_strategy] == ["random"]
    assert [n for n, k in BRANCH_KINDS.items() if k.other_task] == ["transfer"]


def test_the_cli_choices_are_the_registry():
    hints = typing.get_type_hints(BranchConfig)
    assert typing.get_args(hints["kind"]) == tuple(BRANCH_KINDS)
    assert typing.get_args(typing.get_type_hints(ImpConfig)["head_reset"]) == tuple(HEAD_RESETS)
    with pytest.raises(ValueError, match=r"branch.kind must be one of \('random', 'shuffle'"):
        BranchConfig(source="runs/x/round_01", kind="inverted")
    with pytest.raises(ValueError, match=r"imp.head_reset must be one of \('init', 'rewind', 'keep'\)"):
        ImpConfig(head_reset="fresh")


def test_a_new_kind_is_one_class(monkeypatch):
    monkeypatch.setattr(kinds, "BRANCH_KINDS", dict(BRANCH_KINDS))

    @branch_kind
    class Dense(BranchKind):
        name = "dense-probe"

    assert isinstance(kinds.BRANCH_KINDS["dense-probe"], Dense)
    with pytest.raises(ValueError, match="registered twice"):
        branch_kind(Dense)
    with pytest.raises(TypeError, match="needs a name"):
        branch_kind(type("Nameless", (BranchKind,), {}))


def test_reinit_refuses_the_source_init():
    class Source:
        config = {"model": {"init": "theta0.pt"}}

    with pytest.raises(ValueError, match="reinit needs another --model.init"):
        BRANCH_KINDS["reinit"].check(None, Source(), "theta0.pt")
    BRANCH_KINDS["reinit"].check(None, Source(), None)
