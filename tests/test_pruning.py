"""The pruning algorithm and the Mask object (pure functions, no training)."""
import math

import pytest
import torch

from lightning_vl.pruning import (STRATEGIES, Mask, PruningInputs, get_strategy, lamp_scores, magnitude_prune,
                                  prune_count, random_prune, schedule_level, shuffle_mask, snip_scores,
                                  sparsity_schedule)


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "l0.weight": torch.randn(40, 30, generator=g),
        "l1.weight": torch.randn(30, 30, generator=g) * 0.1,  # small: IMP should hit it hardest
        "l2.weight": torch.randn(25, generator=g),
    }


def test_linear_schedule_is_the_papers_axis():
    assert sparsity_schedule(0.9) == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert sparsity_schedule(0.0) == [0.0]


def test_a_level_does_not_depend_on_the_target():
    """The target only says how many levels run: 0.75 runs up to the first level past it, and the
    levels of a shorter run are the first levels of a longer one."""
    assert sparsity_schedule(0.75) == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert sparsity_schedule(0.7) == sparsity_schedule(0.9)[:8]
    assert sparsity_schedule(0.5, "geometric") == sparsity_schedule(0.9, "geometric")[:8]
    assert [schedule_level(k) for k in range(10)] == sparsity_schedule(0.9)


def test_geometric_schedule_prunes_a_fraction_of_what_remains():
    levels = sparsity_schedule(0.5, "geometric")
    assert levels[:4] == pytest.approx([0, 0.1, 0.19, 0.271])
    assert levels[-1] == pytest.approx(1 - 0.9 ** 7) and levels[-2] < 0.5 <= levels[-1]
    remaining = [1 - s for s in levels]
    assert all(math.isclose(b / a, 0.9) for a, b in zip(remaining, remaining[1:]))


@pytest.mark.parametrize("bad", [dict(target=1.0), dict(target=-0.1), dict(target=0.5, schedule="cubic"),
                                 dict(target=0.5, rate=0.0), dict(target=0.95)])
def test_schedule_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        sparsity_schedule(**bad)


@pytest.mark.parametrize("schedule", ["linear", "geometric"])
def test_iterated_magnitude_pruning_hits_each_level_exactly_and_nests(schedule):
    w = weights()
    mask = Mask.ones_like(w)
    for level in sparsity_schedule(0.8, schedule)[1:]:
        new = magnitude_prune(w, mask, level)
        assert new.num_total - new.num_kept == prune_count(new.num_total, level)
        assert all(bool((new[k] <= mask[k]).all()) for k in w)  # never revives a weight
        mask = new


def test_magnitude_pruning_is_global_and_removes_the_smallest():
    w = weights()
    mask = magnitude_prune(w, Mask.ones_like(w), 0.3)
    kept = torch.cat([w[k][mask[k]].abs().flatten() for k in w])
    pruned = torch.cat([w[k][~mask[k]].abs().flatten() for k in w])
    assert pruned.max() <= kept.min()
    per_layer = mask.layer_sparsity()
    assert per_layer["l1.weight"] > 0.5 and per_layer["l0.weight"] < 0.1  # one global threshold


def test_magnitude_pruning_handles_ties_exactly():
    w = {"a": torch.zeros(10, 10)}  # all tied
    mask = magnitude_prune(w, Mask.ones_like(w), 0.37)
    assert mask.num_kept == 63


def test_magnitude_pruning_prunes_already_pruned_first_even_if_weights_were_not_zeroed():
    w = weights()
    first = magnitude_prune(w, Mask.ones_like(w), 0.2)
    w2 = {k: torch.randn_like(v) for k, v in w.items()}  # magnitudes reshuffled, pruned not zero
    second = magnitude_prune(w2, first, 0.4)
    assert all(bool((second[k] <= first[k]).all()) for k in w)


@pytest.mark.parametrize("layerwise", [False, True])
def test_random_pruning_counts_nesting_and_seed(layerwise):
    w = weights()
    dense = Mask.ones_like(w)
    a = random_prune(dense, 0.4, torch.Generator().manual_seed(1), layerwise=layerwise)
    b = random_prune(dense, 0.4, torch.Generator().manual_seed(1), layerwise=layerwise)
    c = random_prune(dense, 0.4, torch.Generator().manual_seed(2), layerwise=layerwise)
    assert a == b and a != c
    assert a.num_total - a.num_kept == prune_count(a.num_total, 0.4)
    if layerwise:
        for k, s in a.layer_sparsity().items():
            assert s == pytest.approx(prune_count(w[k].numel(), 0.4) / w[k].numel())
    deeper = random_prune(a, 0.6, torch.Generator().manual_seed(3), layerwise=layerwise)
    assert all(bool((deeper[k] <= a[k]).all()) for k in w)


def test_shuffle_mask_keeps_per_tensor_counts():
    w = weights()
    imp = magnitude_prune(w, Mask.ones_like(w), 0.5)
    shuffled = shuffle_mask(imp, torch.Generator().manual_seed(0), layerwise=True)
    assert shuffled.layer_sparsity() == pytest.approx(imp.layer_sparsity())
    assert shuffled != imp
    glob = shuffle_mask(imp, torch.Generator().manual_seed(0), layerwise=False)
    assert glob.num_kept == imp.num_kept


def test_mask_rejects_non_bool_and_validates_against_params():
    with pytest.raises(TypeError, match="bool"):
        Mask({"w": torch.ones(3)})
    m = Mask({"enc.w": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(KeyError, match="enc.w"):
        m.validate({"other": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(4, 3\)"):
        m.validate({"enc.w": torch.zeros(4, 3)})


def test_mask_save_load_roundtrip_is_bit_packed(tmp_path):
    w = {"a": torch.randn(1000, 33), "b": torch.randn(7)}
    mask = random_prune(Mask.ones_like(w), 0.55, torch.Generator().manual_seed(0))
    path = tmp_path / "mask.pt"
    mask.save(path)
    assert Mask.load(path) == mask
    assert path.stat().st_size < 33_000 / 8 * 1000 / 1000 * 1.3 + 2000  # ~1 bit per weight
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves nothing behind
    report = mask.report()
    assert report["kept"] == mask.num_kept and set(report["per_tensor"]) == {"a", "b"}


def test_mask_load_rejects_foreign_files(tmp_path):
    torch.save({"a": torch.ones(3)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="x.pt"):
        Mask.load(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        Mask.load(tmp_path / "nope.pt")


def test_apply_zeroes_in_place_without_copies():
    w = weights()
    mask = magnitude_prune(w, Mask.ones_like(w), 0.5)
    ptrs = {k: v.data_ptr() for k, v in w.items()}
    mask.apply_(w)
    for k in w:
        assert w[k].data_ptr() == ptrs[k]
        assert bool((w[k][~mask[k]] == 0).all()) and bool((w[k][mask[k]] != 0).all())


def test_lamp_scores_by_hand():
    """Weights 1, -2, 3 (squares 1, 4, 9): suffix sums 14, 13, 9 give 1/14, 4/13, 1; a pruned
    entry scores 0 and is left out of the sums."""
    w = {"a": torch.tensor([3.0, 1.0, -2.0]), "b": torch.tensor([0.5, 5.0])}
    mask = Mask({"a": torch.ones(3, dtype=torch.bool), "b": torch.tensor([True, False])})
    s = lamp_scores(w, mask)
    assert s["a"].tolist() == pytest.approx([1.0, 1 / 14, 4 / 13])
    assert s["b"].tolist() == pytest.approx([1.0, 0.0])  # every tensor keeps its largest kept weight


def test_lamp_prunes_layer_adaptively_but_keeps_every_layers_largest_weight():
    w = weights()
    lamp = get_strategy("lamp").prune(PruningInputs(weights=w), Mask.ones_like(w), 0.9)
    imp = get_strategy("imp").prune(PruningInputs(weights=w), Mask.ones_like(w), 0.9)
    assert lamp.num_kept == imp.num_kept
    for k in w:
        assert bool(lamp[k].reshape(-1)[w[k].abs().reshape(-1).argmax()])
    assert imp.layer_sparsity()["l1.weight"] == 1.0 and lamp.layer_sparsity()["l1.weight"] < 1.0


def test_snip_scores_are_weight_times_gradient():
    w = {"a": torch.tensor([1.0, -2.0, 0.5])}
    g = {"a": torch.tensor([0.1, 0.1, -4.0])}
    assert snip_scores(w, g)["a"].tolist() == pytest.approx([0.1, 0.2, 2.0])
    mask = get_strategy("snip").prune(PruningInputs(init_weights=w, gradients=g), Mask.ones_like(w), 1 / 3)
    assert mask["a"].tolist() == [False, True, True]


def test_one_shot_strategies_prune_from_dense_and_iterative_ones_from_the_previous_mask():
    w = weights()
    previous = random_prune(Mask.ones_like(w), 0.5, torch.Generator().manual_seed(0))
    omp = get_strategy("omp").prune(PruningInputs(weights=w), previous, 0.6)
    assert omp == magnitude_prune(w, Mask.ones_like(w), 0.6)  # ignores the previous mask
    imp = get_strategy("imp").prune(PruningInputs(weights=w), previous, 0.6)
    assert all(bool((imp[k] <= previous[k]).all()) for k in w) and imp != omp


def test_strategy_registry_and_missing_inputs():
    assert set(STRATEGIES) == {"imp", "omp", "lamp", "snip", "random", "random-layerwise", "wanda"}
    with pytest.raises(ValueError, match="unknown pruning strategy 'magnitude'"):
        get_strategy("magnitude")
    with pytest.raises(ValueError, match="needs trained"):
        get_strategy("imp").prune(PruningInputs(), Mask.ones_like(weights()), 0.5)
    with pytest.raises(ValueError, match="not finite"):
        w = weights()
        w["l0.weight"][0, 0] = float("nan")
        magnitude_prune(w, Mask.ones_like(w), 0.5)


def test_every_new_mask_is_checked_against_its_target():
    from lightning_vl.pruning import check_mask

    w = weights()
    dense = Mask.ones_like(w)
    good = magnitude_prune(w, dense, 0.3)
    check_mask(good, dense, 0.3)
    with pytest.raises(RuntimeError, match="prunes 638 of 2,125 weights, its target 40.0000% needs 850"):
        check_mask(good, dense, 0.4)
    revived = random_prune(dense, 0.3, torch.Generator().manual_seed(9))
    with pytest.raises(RuntimeError, match="keeps weights its base had pruned"):
        check_mask(revived, good, 0.3)


def test_every_strategy_is_a_registered_class_with_its_options():
    from lightning_vl.pruning import Strategy

    for name, cls in STRATEGIES.items():
        assert issubclass(cls, Strategy) and cls.name == name and cls.description
    assert get_strategy("snip", batches=2).batches == 2
    with pytest.raises(ValueError, match="'imp' takes the options {}"):
        get_strategy("imp", batches=2)
    with pytest.raises(ValueError, match="batches >= 1"):
        get_strategy("snip", batches=0)


class HalfByMagnitude:  # not a Strategy
    pass


def test_a_class_path_names_a_strategy_defined_anywhere():
    """``--imp.method my_pkg.MyStrategy``: any importable Strategy subclass, with its options."""
    strategy = get_strategy("tests.strategy_example.SmallestRowFirst", rows=1)
    w = {"a": torch.tensor([[3.0, 1.0], [0.5, 2.0]])}
    assert strategy.name == "smallest-row-first"
    assert strategy.prune(PruningInputs(weights=w), Mask.ones_like(w), 0.5)["a"].tolist() == [[True, True],
                                                                                            [False, False]]
    with pytest.raises(ValueError, match="not a subclass"):
        get_strategy("tests.test_pruning.HalfByMagnitude")
    with pytest.raises(ValueError, match="cannot be imported"):
        get_strategy("tests.nowhere.Strategy")
    with pytest.raises(ValueError, match="unknown pruning strategy 'magnitude'; one of"):
        get_strategy("magnitude")


def test_row_granularity_prunes_every_row_exactly_and_ties_by_position():
    from lightning_vl.pruning import prune_by_scores

    scores = {"a": torch.tensor([[1.0, 1.0, 1.0, 0.0], [4.0, 3.0, 2.0, 1.0]]), "b": torch.tensor([2.0, 1.0, 1.0])}
    mask = prune_by_scores(scores, Mask.ones_like(scores), 0.5, granularity="row")
    assert mask["a"].tolist() == [[False, True, True, False], [True, True, False, False]]
    assert mask["b"].tolist() == [True, False, False]  # round(1.5) = 2 of a 1-D tensor's one row
    # pruned entries go first and stay pruned
    deeper = prune_by_scores(scores, mask, 0.75, granularity="row")
    assert deeper["a"].tolist() == [[False, False, True, False], [True, False, False, False]]


def test_the_pruning_core_imports_no_lightning_and_no_model_code():
    """``lightning_vl.pruning`` is pure: torch and numpy, never Lightning, transformers or the model."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = ("import json, sys\nimport lightning_vl.pruning, lightning_vl.io\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('pytorch_lightning', 'lightning', 'lightning_fabric', 'transformers', 'callbacks', 'data_modules') "
              "or (m.startswith('lightning_vl.') and not m.startswith(('lightning_vl.pruning', 'lightning_vl.io'))))))")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_pruned_nonzero_names_exactly_the_tensors_whose_pruned_weights_moved():
    params = {"a": torch.randn(4, 4), "b": torch.randn(3)}
    mask = random_prune(Mask.ones_like(params), 0.5, torch.Generator().manual_seed(0))
    mask.apply_(params)
    assert mask.pruned_nonzero(params) == []
    params["b"][~mask["b"]] = -1e-30  # any non-zero, however small
    assert mask.pruned_nonzero(params) == ["b"]
    params["b"][~mask["b"]] = -0.0  # a signed zero is zero
    assert mask.pruned_nonzero(params) == []
