"""Wanda (Sun et al., ICLR 2024) as a registry strategy: scores by hand, exact per-row counts,
nested masks, hooks that do not outlive calibration, and a lottery run end to end."""
import pytest
import pytorch_lightning as pl
import torch

from lightning_vl.lottery import ImpConfig, LotteryRunner, RunFolder
from lightning_vl.training.module import VLModule
from lightning_vl.pruning import Mask, get_strategy
from lightning_vl.pruning.strategies.wanda import InputNorms, WandaInputs, wanda_scores

from .synthetic import TINY, RandomPairsDataModule, tiny_trainer


class FakeRun:
    """A ``PruningRun`` over a bare model: calibration batches are given tensors."""

    def __init__(self, model, names, batches):
        self.model, self.names, self.batches, self.level, self.seed = model, names, batches, 1, 0

    def trained_weights(self):
        return {n: self.model.get_parameter(n).detach().clone() for n in self.names}

    def calibrate(self, step, finish, batches, state=None, label="calibration"):
        for batch in self.batches[:batches]:
            step(self.model, batch)
        return finish(self.model)


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2, bias=False)

    def training_loss(self, batch):
        return self.fc(batch).sum()


def test_wanda_scores_equal_a_hand_computation():
    """Two batches of tokens through a 3→2 Linear: ‖X_j‖₂ over all 3 tokens, times |W_ij|."""
    net = TinyNet()
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-0.5, 4.0, 0.25]]))
    batches = [torch.tensor([[[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]]]), torch.tensor([[0.0, 2.0, 1.0]])]
    inputs = get_strategy("wanda", batches=2).inputs(FakeRun(net, ["fc.weight"], batches))
    # feature norms: sqrt(1+9+0)=√10, sqrt(0+1+4)=√5, sqrt(4+0+1)=√5
    norms = torch.tensor([10.0, 5.0, 5.0]).sqrt()
    assert torch.allclose(inputs.input_norms["fc.weight"], norms)
    expected = torch.tensor([[1.0, 2.0, 3.0], [0.5, 4.0, 0.25]]) * norms
    assert torch.allclose(wanda_scores(inputs.weights, inputs.input_norms)["fc.weight"], expected)
    assert not net.fc._forward_hooks  # removed right after calibration
    # per row: each row drops its lowest score (row 0: 1·√10 ≈ 3.16 < 2√5 ≈ 4.47; row 1: 0.25√5 ≈ 0.56)
    mask = get_strategy("wanda").prune(inputs, Mask.ones_like(inputs.weights), 1 / 3)
    assert mask["fc.weight"].tolist() == [[False, True, True], [True, True, False]]
    # global: one threshold over all six (0.25√5 ≈ 0.56, 0.5√10 ≈ 1.58 go at 1/3)
    glob = get_strategy("wanda", comparison="global").prune(inputs, Mask.ones_like(inputs.weights), 1 / 3)
    assert glob["fc.weight"].tolist() == [[True, True, True], [False, True, False]]


def test_hooks_are_removed_when_calibration_fails():
    net = TinyNet()

    class Failing(FakeRun):
        def calibrate(self, step, finish, batches, state=None, label="calibration"):
            step(self.model, torch.ones(1, 3))
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        get_strategy("wanda").inputs(Failing(net, ["fc.weight"], []))
    assert not net.fc._forward_hooks


def test_wanda_per_row_counts_are_exact_and_masks_nest():
    g = torch.Generator().manual_seed(0)
    w = {"a.weight": torch.randn(7, 13, generator=g), "b.weight": torch.randn(5, 10, generator=g)}
    norms = {"a.weight": torch.rand(13, generator=g), "b.weight": torch.rand(10, generator=g)}
    wanda = get_strategy("wanda")
    mask = Mask.ones_like(w)
    for sparsity in (0.1, 0.2, 0.3, 0.5, 0.7):
        nxt = wanda.prune(WandaInputs(weights={k: v * 1.1 for k, v in w.items()}, input_norms=norms), mask, sparsity)
        for k, t in nxt.items():
            pruned_per_row = (~t).sum(1)
            assert pruned_per_row.tolist() == [round(sparsity * t.shape[1])] * t.shape[0], (k, sparsity)
            assert bool((t <= mask[k]).all())  # nested: pruned weights stay pruned
        mask = nxt
    glob = get_strategy("wanda", comparison="global")
    dense = Mask.ones_like(w)
    gmask = glob.prune(WandaInputs(weights=w, input_norms=norms), dense, 0.3)
    assert gmask.num_total - gmask.num_kept == round(0.3 * dense.num_total)


def test_wanda_options_are_checked():
    with pytest.raises(ValueError, match="comparison"):
        get_strategy("wanda", comparison="tensor")
    with pytest.raises(ValueError, match="batches >= 1"):
        get_strategy("wanda", batches=0)
    with pytest.raises(ValueError, match="not the weight of a torch.nn.Linear"):
        InputNorms(TinyNet(), ["fc.bias"])
    with pytest.raises(ValueError, match="imp.method: .*wanda"):
        ImpConfig(method="wanda", options={"comparison": "layer"}, wandb="disabled")


def test_a_lottery_run_with_wanda(tmp_path):
    """Levels 0, 10%, 20% with per-row exact counts, nested masks, and the model left without hooks."""
    pl.seed_everything(0, verbose=False)
    model = VLModule(uniter=TINY, lr=1e-3, warmup_steps=1)
    cfg = ImpConfig(wandb="disabled", method="wanda", target_sparsity=0.2, options={"batches": 2})
    runner = LotteryRunner(cfg, model, RandomPairsDataModule(), lambda d, cbs: tiny_trainer(4, callbacks=cbs),
                           RunFolder(tmp_path / "run"), config_yaml="x: 1\n", seed=7)
    results = runner.run()
    assert [r["method"] for r in results] == ["wanda"] * 3
    masks = [Mask.load(runner.folder.mask_path(r)) for r in range(3)]
    for level, sparsity in ((1, 0.1), (2, 0.2)):
        for k, t in masks[level].items():
            assert (~t).sum(1).tolist() == [round(sparsity * t.shape[1])] * t.shape[0], k
            assert bool((t <= masks[level - 1][k]).all())
        assert results[level]["sparsity"] == masks[level].sparsity
    assert all(not m._forward_hooks for m in model.modules())
