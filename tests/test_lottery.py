"""The lottery runner: level structure, exact sparsities, rewinding, files, resume equivalence,
continuing to a larger target, and every pruning strategy end to end."""
import csv
import json

import pytest
import pytorch_lightning as pl
import torch

from lightning_vl.pruning import Mask
from lightning_vl.lottery import ImpConfig, LotteryRunner, RunFolder
from lightning_vl.training.module import VLModule

from .synthetic import TINY, RandomPairsDataModule, tiny_trainer


class RoundStart(pl.Callback):
    """Records the weights each round starts from (after the mask is applied)."""

    def __init__(self, log):
        self.starts = log

    def on_train_start(self, trainer, pl_module):
        self.starts.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


class Crash(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        raise RuntimeError("simulated crash")


def run(tmp_path, name="run", steps=4, crash_round=None, starts=None, **imp):
    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    cfg = ImpConfig(wandb="disabled", **{"target_sparsity": 0.3, **imp})
    rounds = []

    def make_trainer(round_dir, callbacks):
        rounds.append(round_dir.name)
        extra = [RoundStart(starts)] if starts is not None else []
        if crash_round is not None and len(rounds) - 1 == crash_round:
            extra.append(Crash())
        return tiny_trainer(steps, callbacks=callbacks + extra)

    runner = LotteryRunner(cfg, model, RandomPairsDataModule(), make_trainer, RunFolder(tmp_path / name),
                           config_yaml="x: 1\n", seed=7)
    runner.rounds_run = rounds
    return runner, runner.run()


def stable(results):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in results]


@pytest.mark.parametrize("method", ["imp", "random", "random-layerwise"])
def test_rounds_reach_each_scheduled_sparsity_with_nested_masks(tmp_path, method):
    runner, results = run(tmp_path, method=method, target_sparsity=0.3)
    assert [r["target_sparsity"] for r in results] == pytest.approx([0, 0.1, 0.2, 0.3])
    masks = [Mask.load(runner.folder.round_dir(r) / "mask.pt") for r in range(4)]
    for r, (res, mask) in enumerate(zip(results, masks)):
        assert mask.sparsity == pytest.approx(res["target_sparsity"], abs=len(mask) / mask.num_total)  # per-tensor rounding
        assert res["sparsity"] == mask.sparsity and res["metric"] is not None
        if r:
            assert all(bool((mask[k] <= masks[r - 1][k]).all()) for k in mask.keys())
    if method == "random-layerwise":
        assert set(round(s, 3) for s in masks[-1].layer_sparsity().values()) == {0.3}
    with open(runner.folder.path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["sparsity"]) for r in rows] == pytest.approx([0, 0.1, 0.2, 0.3], abs=1e-3)
    assert "val/acc" in rows[0]
    for name in ["config.yaml", "init.pt", "summary.json"]:
        assert (runner.folder.path / name).exists()
    assert json.loads((runner.folder.round_dir(2) / "sparsity.json").read_text())["tensors"] == 12


def test_imp_prunes_by_trained_magnitude(tmp_path):
    starts = []
    runner, _ = run(tmp_path, target_sparsity=0.1, starts=starts)
    mask = Mask.load(runner.folder.round_dir(1) / "mask.pt")
    # the round-1 mask removed the weights smallest in magnitude *after* round 0's training —
    # recompute from the trained weights: they are what round 1 did not start from, so rerun round 0
    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    model.load_state_dict(torch.load(runner.folder.path / "init.pt", weights_only=True))
    pl.seed_everything(7, workers=True, verbose=False)
    from callbacks import MaskedTraining
    from lightning_vl.pruning import magnitude_prune

    dense = Mask.load(runner.folder.round_dir(0) / "mask.pt")
    tiny_trainer(4, callbacks=[MaskedTraining(dense)]).fit(model, datamodule=RandomPairsDataModule())
    weights = {k: model.get_parameter(k).detach() for k in dense.keys()}
    assert magnitude_prune(weights, dense, 0.1) == mask


@pytest.mark.parametrize("rewind_step", [0, 2])
def test_every_round_starts_from_the_rewind_weights(tmp_path, rewind_step):
    starts = []
    runner, _ = run(tmp_path, starts=starts, rewind_step=rewind_step, target_sparsity=0.2)
    theta0 = torch.load(runner.folder.path / "init.pt", weights_only=True)
    theta_i = torch.load(runner.folder.path / "rewind.pt", weights_only=True) if rewind_step else theta0
    assert (runner.folder.path / "rewind.pt").exists() == bool(rewind_step)
    for r in (1, 2):
        mask = Mask.load(runner.folder.round_dir(r) / "mask.pt")
        for k, v in starts[r].items():
            if k.startswith("head."):
                expected = theta0[k]  # head_reset=init: φ_0 every round
            elif k in mask:
                expected = theta_i[k] * mask[k]
            else:
                expected = theta_i[k]
            assert torch.equal(v, expected), (r, k)
    if rewind_step:
        assert not torch.equal(theta_i["uniter.encoder.layer.0.output.dense.weight"],
                               theta0["uniter.encoder.layer.0.output.dense.weight"])


def test_head_reset_keep_carries_the_trained_head(tmp_path):
    starts = []
    runner, _ = run(tmp_path, starts=starts, head_reset="keep", target_sparsity=0.1)
    kept = torch.load(runner.folder.round_dir(0) / "head.pt", weights_only=True)
    for k, v in kept.items():
        assert torch.equal(starts[1][k], v)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    _, full = run(tmp_path, "full", target_sparsity=0.3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, "resumed", crash_round=2, target_sparsity=0.3)
    assert not (tmp_path / "resumed" / "round_02" / "metrics.json").exists()
    assert (tmp_path / "resumed" / "round_02" / "mask.pt").exists()
    runner, resumed = run(tmp_path, "resumed", target_sparsity=0.3)
    assert stable(resumed) == stable(full)
    for r in range(4):
        assert Mask.load(runner.folder.round_dir(r) / "mask.pt") == Mask.load(tmp_path / "full" / f"round_{r:02d}" / "mask.pt")
    assert not list((tmp_path / "resumed").rglob(".*.tmp"))


def test_a_missing_or_torn_mask_redoes_the_round_that_made_it(tmp_path):
    _, full = run(tmp_path, "full", target_sparsity=0.2)
    runner, _ = run(tmp_path, target_sparsity=0.2)
    (runner.folder.round_dir(2) / "metrics.json").unlink()
    (runner.folder.round_dir(2) / "mask.pt").write_bytes(b"")  # torn: empty
    again, results = run(tmp_path, target_sparsity=0.2)
    assert again.rounds_run == ["round_01", "round_02"]
    assert stable(results) == stable(full)


def test_bad_imp_config_is_rejected():
    with pytest.raises(ValueError, match="imp.method"):
        ImpConfig(method="magnitude")
    with pytest.raises(ValueError, match="target sparsity"):
        ImpConfig(target_sparsity=1.2)
    with pytest.raises(ValueError, match="rewind_step"):
        ImpConfig(rewind_step=-1)


class CountValidations(pl.Callback):
    def __init__(self):
        self.in_fit = 0
        self.standalone = 0

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "fit":
            self.in_fit += 1
        else:
            self.standalone += 1


@pytest.mark.parametrize("val_every, standalone_per_round", [(4, 0), (3, 1)])
def test_round_score_reuses_a_validation_at_the_fits_last_step(tmp_path, val_every, standalone_per_round):
    """A fit that ends on a validation is not scored twice; one that does not is validated after it.
    Either way the round's metrics are those of its final weights."""
    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    data = RandomPairsDataModule()
    count = CountValidations()

    def make_trainer(round_dir, callbacks):
        return tiny_trainer(4, val_check_interval=val_every, check_val_every_n_epoch=None,
                            callbacks=callbacks + [count])

    runner = LotteryRunner(ImpConfig(wandb="disabled", target_sparsity=0.2), model, data, make_trainer,
                           RunFolder(tmp_path / "run"), config_yaml="x: 1\n", seed=7)
    results = runner.run()
    assert count.in_fit == len(results)
    assert count.standalone == standalone_per_round * len(results)
    final = tiny_trainer(4).validate(model, datamodule=data, verbose=False)[0]
    assert results[-1]["metrics"].keys() == final.keys()
    for key, value in final.items():
        assert results[-1]["metrics"][key] == pytest.approx(value, abs=1e-6), key


def test_a_larger_target_continues_the_same_levels(tmp_path):
    """SPARSITY=0.4 after SPARSITY=0.2: only the new levels train, and the result equals one
    uninterrupted run to 0.4."""
    short, _ = run(tmp_path, "cont", target_sparsity=0.2)
    assert short.rounds_run == ["round_00", "round_01", "round_02"]
    assert (short.folder.mask_path(3)).exists()  # the next level's mask is always written
    longer, continued = run(tmp_path, "cont", target_sparsity=0.4)
    assert longer.rounds_run == ["round_03", "round_04"]
    _, full = run(tmp_path, "full", target_sparsity=0.4)
    assert stable(continued) == stable(full)
    # a smaller target afterwards trains nothing and reports the levels it asks for
    again, fewer = run(tmp_path, "cont", target_sparsity=0.1)
    assert again.rounds_run == [] and [r["round"] for r in fewer] == [0, 1]
    with open(again.folder.path / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 5  # the summary shows every finished level


@pytest.mark.parametrize("method", ["omp", "lamp", "snip"])
def test_every_strategy_runs_its_levels(tmp_path, method):
    runner, results = run(tmp_path, method=method, target_sparsity=0.2)
    masks = [Mask.load(runner.folder.mask_path(r)) for r in range(3)]
    assert [round(m.sparsity, 2) for m in masks] == [0.0, 0.1, 0.2]
    assert all(r["method"] == method and r["metric"] is not None for r in results)
    if method == "omp":  # every level one-shot from the dense level's fine-tuned weights
        from lightning_vl.pruning import magnitude_prune

        dense_trained = torch.load(runner.folder.weights_path(0), weights_only=True)
        assert masks[2] == magnitude_prune(dense_trained, masks[0], 0.2)
    if method == "snip":  # scores at θ_0: independent of training, recomputed identically
        from lightning_vl.lottery.fitting import init_gradients
        from lightning_vl.pruning import get_strategy, PruningInputs

        theta0, grads = init_gradients(runner.module, runner.datamodule, runner.init_state, runner.names, 4, 7)
        assert masks[2] == get_strategy("snip").prune(PruningInputs(init_weights=theta0, gradients=grads),
                                                      masks[0], 0.2)


def test_head_reset_rewind_starts_every_level_from_phi_i(tmp_path):
    starts = []
    runner, _ = run(tmp_path, starts=starts, rewind_step=2, head_reset="rewind", target_sparsity=0.1)
    theta_i = torch.load(runner.folder.rewind, weights_only=True)
    for k, v in starts[1].items():
        if k.startswith("head."):
            assert torch.equal(v, theta_i[k]), k


def test_save_trained_keeps_every_levels_fine_tuned_model_beside_its_mask(tmp_path):
    runner, results = run(tmp_path, save_trained=True, target_sparsity=0.2)
    init = torch.load(runner.folder.init, weights_only=True)
    for level in range(len(results)):
        trained = torch.load(runner.folder.trained_path(level), weights_only=True)
        mask = Mask.load(runner.folder.mask_path(level))
        assert trained.keys() == runner.module.state_dict().keys()  # the whole model, head included
        assert all(bool((trained[n][~mask[n]] == 0).all()) for n in mask.keys())  # pruned weights at zero
        assert any(not torch.equal(trained[n], init[n] * mask[n]) for n in mask.keys())  # trained, not θ_0
    last = runner.module.state_dict()
    assert all(torch.equal(trained[k], last[k].cpu()) for k in trained)  # the level's own weights
    plain, _ = run(tmp_path, "plain", target_sparsity=0.2)
    assert not plain.folder.trained_path(0).exists()  # off by default

