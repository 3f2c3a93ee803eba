"""The masked-training callback: pruned weights stay exactly zero, θ_i is captured exactly, the
mask survives Lightning checkpoints, and the optimizer recipe is UNITER's."""
import pytest
import pytorch_lightning as pl
import torch

from callbacks import MaskedTraining, PrunedWeightMoved
from lightning_vl.pruning import Mask, random_prune
from lightning_vl.training.module import VLModule, adamw_kernel, warmup_linear

from .synthetic import TINY, RandomPairsDataModule, tiny_trainer


def make_model(**kw):
    pl.seed_everything(0, verbose=False)
    return VLModule(**{"uniter": TINY, "lr": 1e-3, "warmup_steps": 2, **kw})


def half_mask(model, seed=0):
    names = model.prunable_parameter_names()
    dense = Mask.ones_like({n: model.get_parameter(n).detach() for n in names})
    return random_prune(dense, 0.5, torch.Generator().manual_seed(seed))


class RecordZeros(pl.Callback):
    """Checks after every optimizer step that pruned weights are exactly zero (the masking callback
    zeroes only their gradients: AdamW itself must leave them at zero)."""

    def __init__(self, mask):
        self.mask, self.checked = mask, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for n in self.mask.keys():
            w = pl_module.get_parameter(n).detach()
            assert bool((w[~self.mask[n]] == 0).all()), f"{n} regrew at step {trainer.global_step}"
        self.checked += 1


def test_pruned_weights_stay_exactly_zero_through_training():
    model = make_model()
    mask = half_mask(model)
    before = {n: model.get_parameter(n).detach().clone() for n in mask.keys()}
    recorder = RecordZeros(mask)
    trainer = tiny_trainer(12, callbacks=[MaskedTraining(mask), recorder])
    trainer.fit(model, datamodule=RandomPairsDataModule())
    assert recorder.checked == 12
    changed = 0
    for n in mask.keys():
        w = model.get_parameter(n).detach()
        assert bool((w[~mask[n]] == 0).all())
        changed += int((w[mask[n]] != before[n][mask[n]]).sum())
    assert changed > 0.9 * mask.num_kept  # the kept weights did train


def test_without_masking_the_same_weights_regrow(tmp_path, monkeypatch):
    """Guards the test above: zeroing once is not enough, training revives pruned weights.
    (A fit without a logger also writes no run records into the working directory.)"""
    monkeypatch.chdir(tmp_path)
    model = make_model()
    mask = half_mask(model)
    mask.apply_({n: model.get_parameter(n) for n in mask.keys()})
    tiny_trainer(3).fit(model, datamodule=RandomPairsDataModule())
    assert list(tmp_path.iterdir()) == []
    n = next(iter(mask.keys()))
    assert bool((model.get_parameter(n).detach()[~mask[n]] != 0).any())


@pytest.mark.parametrize("rewind_step", [0, 5])
def test_rewind_captures_exactly_the_weights_after_i_steps(tmp_path, rewind_step):
    model = make_model(warmup_steps=100)  # lr(step) then does not depend on the fit's length
    dense = Mask.ones_like({n: model.get_parameter(n).detach() for n in model.prunable_parameter_names()})
    cb = MaskedTraining(dense, rewind_step=rewind_step, rewind_path=tmp_path / "rewind.pt")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    tiny_trainer(rewind_step + 3, callbacks=[cb]).fit(model, datamodule=RandomPairsDataModule())
    rewind = torch.load(tmp_path / "rewind.pt", weights_only=True)
    if rewind_step == 0:
        expected = initial
    else:  # the same seeded run stopped after i steps
        reference = make_model(warmup_steps=100)
        tiny_trainer(rewind_step).fit(reference, datamodule=RandomPairsDataModule())
        expected = reference.state_dict()
    assert rewind.keys() == expected.keys()
    for k in expected:
        assert torch.equal(rewind[k], expected[k]), k
    assert not torch.equal(rewind["head.nlvr2_output.weight"], model.state_dict()["head.nlvr2_output.weight"])


def test_rewind_step_never_reached_is_an_error(tmp_path):
    model = make_model()
    dense = Mask.ones_like({n: model.get_parameter(n).detach() for n in model.prunable_parameter_names()})
    cb = MaskedTraining(dense, rewind_step=50, rewind_path=tmp_path / "rewind.pt")
    with pytest.raises(RuntimeError, match="rewind step 50 was never reached"):
        tiny_trainer(4, callbacks=[cb]).fit(model, datamodule=RandomPairsDataModule())


def test_mask_travels_in_lightning_checkpoints(tmp_path):
    model = make_model()
    mask = half_mask(model, seed=3)
    trainer = tiny_trainer(2, callbacks=[MaskedTraining(mask)])
    trainer.fit(model, datamodule=RandomPairsDataModule())
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("MaskedTraining"))
    restored = MaskedTraining(half_mask(model, seed=9))
    restored.load_state_dict(state)
    assert restored.mask == mask
    # checkpoint weights keep plain UNITER names: no *_orig / *_mask keys
    assert not [k for k in ckpt["state_dict"] if k.endswith(("_orig", "_mask"))]


def test_module_mask_argument_fine_tunes_a_ticket(tmp_path):
    model = make_model()
    mask = half_mask(model, seed=4)
    mask.save(tmp_path / "ticket.pt")
    ticket = make_model(mask=str(tmp_path / "ticket.pt"))
    tiny_trainer(3).fit(ticket, datamodule=RandomPairsDataModule())
    for n in mask.keys():
        assert bool((ticket.get_parameter(n).detach()[~mask[n]] == 0).all())


def test_optimizer_groups_and_schedule_follow_uniter():
    model = make_model(head_lr_mult=10.0)
    trainer = tiny_trainer(2)
    trainer.fit(model, datamodule=RandomPairsDataModule())
    opt = trainer.optimizers[0]
    by_name = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        names = [by_name[id(p)] for p in g["params"]]
        assert all(n.startswith("head.") for n in names) or not any(n.startswith("head.") for n in names)
        if names[0].startswith("head."):
            assert g["initial_lr"] == pytest.approx(1e-2)
        if any("bias" in n or "LayerNorm.weight" in n for n in names):
            assert g["weight_decay"] == 0.0
        else:
            assert g["weight_decay"] == 0.01
    assert opt.defaults["eps"] == 1e-6 and opt.defaults["betas"] == (0.9, 0.98)
    assert opt.defaults["fused"] is True  # adamw_impl auto, full precision
    assert [warmup_linear(s, 4, 10) for s in (1, 2, 4, 7, 10)] == pytest.approx([0.25, 0.5, 1.0, 0.5, 1e-8])


def test_module_pickles_for_spawned_ranks():
    import pickle

    model = make_model()
    clone = pickle.loads(pickle.dumps(model))
    assert clone.spec.name == "nlvr2" and set(clone.state_dict()) == set(model.state_dict())


class FirstBatchOnly(RandomPairsDataModule):
    """The same first training batch every time (no shuffling), for step-by-step comparisons."""

    def train_dataloader(self):
        from torch.utils.data import DataLoader, Subset

        from .synthetic import collate_pairs

        return DataLoader(Subset(self.train_set, range(self.batch_size)), batch_size=self.batch_size,
                          collate_fn=collate_pairs)


class GradNorm(pl.Callback):
    """The global gradient norm the clipping sees (runs after MaskedTraining's hook)."""

    norm = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def test_one_clipped_adamw_step_equals_the_same_subnetwork_trained_with_torch_prune():
    """At 90% sparsity the gradient norm that clipping sees and the weights after one AdamW step
    are those of the sub-network trained with ``torch.nn.utils.prune`` (real zeros: pruned entries
    get no gradient), not those of the dense network with its pruned gradients counted."""
    import dataclasses

    import torch.nn.utils.prune as tprune

    from lightning_vl.training.module import NO_DECAY

    cfg = dataclasses.replace(TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = make_model(uniter=cfg, warmup_steps=1)
    reference = make_model(uniter=cfg, warmup_steps=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    names = model.prunable_parameter_names()
    mask = random_prune(Mask.ones_like({n: model.get_parameter(n).detach() for n in names}), 0.9,
                        torch.Generator().manual_seed(0))
    data = FirstBatchOnly()
    clip = 0.01

    probe = GradNorm()
    tiny_trainer(1, gradient_clip_val=clip, callbacks=[MaskedTraining(mask), probe]).fit(model, datamodule=data)

    for n in names:  # the same sub-network by torch.nn.utils.prune: weight = weight_orig * mask
        module_name, attr = n.rsplit(".", 1)
        tprune.custom_from_mask(reference.get_submodule(module_name), attr, mask[n])
    groups: dict = {}
    for name, p in reference.named_parameters():
        if p.requires_grad:
            plain = name.replace("_orig", "")
            groups.setdefault((plain.startswith("head."), any(nd in plain for nd in NO_DECAY)), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "lr": 1e-3, "weight_decay": 0.0 if nd else 0.01}
                             for (_, nd), ps in sorted(groups.items())], lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    reference.train()
    batch = next(iter(data.train_dataloader()))
    reference.training_loss(batch).backward()
    kept_norm = float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(reference.get_submodule(n.rsplit(".", 1)[0]).weight_orig.grad) for n in names])))
    params = [p for p in reference.parameters() if p.grad is not None]
    norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    opt.step()

    assert probe.norm == pytest.approx(norm, rel=1e-5)
    assert norm > 5 * clip  # clipping was active, so the norm decides the step size
    after = reference.state_dict()
    for k, v in model.state_dict().items():
        expected = after[k + "_orig"] * after[k + "_mask"] if k + "_orig" in after else after[k]
        torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-7, msg=k)

    # guard: counting the pruned entries' gradients (what clipping saw before they were masked)
    # gives a ~sqrt(1 / 0.1) times larger norm over the prunable weights at 90% sparsity
    dense = make_model(uniter=cfg, warmup_steps=1)
    mask.apply_({n: dense.get_parameter(n) for n in names})
    dense.train()
    dense.training_loss(batch).backward()
    dense_norm = float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(dense.get_parameter(n).grad) for n in names])))
    assert dense_norm > 2 * kept_norm


def test_pruned_weights_get_no_gradient_and_no_adam_moments():
    model = make_model()
    mask = half_mask(model)
    masking = MaskedTraining(mask)
    trainer = tiny_trainer(3, callbacks=[masking])
    trainer.fit(model, datamodule=RandomPairsDataModule())
    state = trainer.optimizers[0].state
    for n in mask.keys():
        p = model.get_parameter(n)
        assert bool((state[p]["exp_avg"][~mask[n]] == 0).all()) and bool((state[p]["exp_avg_sq"][~mask[n]] == 0).all())


def test_fused_adamw_trains_the_same_masked_model_as_torchs_default():
    """``adamw_impl`` changes how AdamW is computed, not what: four clipped, masked steps with the
    fused kernel and with torch's default end at the same weights up to float rounding, pruned
    weights exactly zero in both, every parameter group's decay and learning rate honoured."""
    weights = {}
    for impl in ("fused", "torch"):
        model = make_model(adamw_impl=impl, head_lr_mult=10.0)
        mask = half_mask(model)
        trainer = tiny_trainer(4, callbacks=[MaskedTraining(mask)], gradient_clip_val=0.05)
        trainer.fit(model, datamodule=RandomPairsDataModule())
        assert trainer.optimizers[0].defaults["fused"] is (True if impl == "fused" else None)
        weights[impl] = {n: p.detach().clone() for n, p in model.named_parameters()}
        for n in mask.keys():
            assert not weights[impl][n][~mask[n]].any()
    start = {n: p.detach() for n, p in make_model().named_parameters()}
    for n, w in weights["fused"].items():
        torch.testing.assert_close(w, weights["torch"][n], rtol=1e-5, atol=1e-7, msg=n)
    moved = [n for n, w in weights["fused"].items() if not torch.equal(w, start[n])]
    assert len(moved) > len(weights["fused"]) // 2  # the steps did train


def test_adamw_impl_choices_and_mixed_precision():
    assert adamw_kernel("auto", mixed_precision=False) == {"fused": True}
    assert adamw_kernel("auto", mixed_precision=True) == {}
    assert adamw_kernel("torch", mixed_precision=False) == {}
    with pytest.raises(ValueError, match="mixed precision.*adamw_impl auto"):
        adamw_kernel("fused", mixed_precision=True)
    with pytest.raises(ValueError, match="'adam'.*auto, fused, torch"):
        make_model(adamw_impl="adam")


def test_auto_adamw_clips_under_bf16_mixed_precision():
    """Lightning refuses to clip for a fused optimizer under mixed precision; ``auto`` falls back."""
    model = make_model()
    trainer = tiny_trainer(2, precision="bf16-mixed", gradient_clip_val=1.0)
    trainer.fit(model, datamodule=RandomPairsDataModule())
    assert trainer.gradient_clip_val and trainer.optimizers[0].defaults["fused"] is None


class DriftingAdamW(torch.optim.AdamW):
    """An optimizer that moves weights whose gradient is zero (as a bias-to-prior or noise-injecting
    optimizer would): MaskedTraining must not train a sub-network with it silently."""

    def __init__(self, params, drift_from: int):
        super().__init__(params, lr=1e-3)
        self.drift_from, self.steps = drift_from, 0

    @torch.no_grad()
    def step(self, closure=None):
        out = super().step(closure)
        self.steps += 1
        if self.steps > self.drift_from:
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(1e-3)
        return out


@pytest.mark.parametrize("drift_from, when", [(0, "after the first optimizer step"), (2, "at the end of the fit")])
def test_an_optimizer_that_moves_pruned_weights_stops_the_fit_naming_them(drift_from, when):
    model = make_model()
    model.configure_optimizers = lambda: DriftingAdamW(model.parameters(), drift_from)
    mask = half_mask(model)
    with pytest.raises(PrunedWeightMoved, match=rf"non-zero pruned weights {when}.*"
                                                r"uniter\.encoder.*DriftingAdamW changed weights"):
        tiny_trainer(3, callbacks=[MaskedTraining(mask)]).fit(model, datamodule=RandomPairsDataModule())


class ReapplyEveryStep(MaskedTraining):
    """The callback as it was: the weights re-zeroed after every optimizer step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.mask.apply_(self._params)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


@pytest.mark.parametrize("adamw_impl", ["auto", "torch"])
def test_not_re_zeroing_after_each_step_changes_no_bit(adamw_impl):
    """With weight decay, clipping and warm-up, a masked fit ends at the same bits whether or not the
    weights are re-zeroed after every step: zero weights with zero gradients stay zero in AdamW."""
    finals = []
    for callback in (MaskedTraining, ReapplyEveryStep):
        model = make_model(adamw_impl=adamw_impl)
        mask = half_mask(model)
        tiny_trainer(6, callbacks=[callback(mask)], gradient_clip_val=0.05).fit(model, datamodule=RandomPairsDataModule())
        finals.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert finals[0].keys() == finals[1].keys()
    for n in finals[0]:
        assert torch.equal(finals[0][n], finals[1][n]), n
        assert torch.equal(finals[0][n].signbit(), finals[1][n].signbit()), n
