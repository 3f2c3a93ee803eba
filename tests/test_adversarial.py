"""Adversarial training (VILLA): the embedding seam, δ's steps, the symmetric KL, exact masks,
plain training when off, and 1 + K passes per batch."""
import dataclasses

import pytest
import pytorch_lightning as pl
import torch

from callbacks import MaskedTraining
from lightning_vl.pruning import Mask, random_prune
from lightning_vl.training.adversarial import AdversarialConfig, adversarial_loss, ascend, symmetric_kl
from lightning_vl.training.module import VLModule

from .synthetic import TINY, RandomPairsDataModule, collate_pairs, tiny_trainer

NO_DROPOUT = dataclasses.replace(TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def model(**adv):
    pl.seed_everything(0, verbose=False)
    return VLModule(uniter=NO_DROPOUT, lr=1e-3, warmup_steps=1, adversarial=AdversarialConfig(**adv))


def batch(seed=0):
    data = RandomPairsDataModule()
    b = collate_pairs(data.train_set.items[:4])
    b["num_bbs"] = [int(n) for n in (b["img_pos_feat"].abs().sum(-1) > 0).sum(1)]
    return b


def test_the_seam_changes_outputs_exactly_as_perturbing_the_inputs_by_hand():
    m = model().eval()
    b = batch()
    d_img = torch.randn_like(b["img_feat"])
    torch.testing.assert_close(m(b, img_delta=d_img), m({**b, "img_feat": b["img_feat"] + d_img}), rtol=0, atol=0)
    emb = m.uniter.embeddings
    d_txt = torch.randn(*b["input_ids"].shape, TINY.hidden_size)
    by_hand = emb.LayerNorm(emb.word_embeddings(b["input_ids"]) + d_txt + emb.position_embeddings(b["position_ids"])
                            + emb.token_type_embeddings(torch.zeros_like(b["input_ids"])))
    torch.testing.assert_close(emb(b["input_ids"], b["position_ids"], delta=d_txt), by_hand)
    assert not torch.allclose(m(b, txt_delta=d_txt), m(b))


def test_one_step_gives_delta_the_configured_norm_per_example():
    cfg = AdversarialConfig(enabled=True, lr=0.25).resolved("nlvr2")
    grad = torch.randn(3, 5, 8)
    valid = torch.ones(3, 5, 1)
    valid[1, 3:] = 0
    delta = ascend(torch.zeros_like(grad), grad, cfg, valid)
    assert delta.reshape(3, -1).norm(dim=1).tolist() == pytest.approx([0.25] * 3)
    assert float(delta[1, 3:].abs().sum()) == 0.0
    bounded = AdversarialConfig(enabled=True, lr=1.0, max_norm=0.1).resolved("nlvr2")
    assert ascend(torch.zeros_like(grad), grad, bounded, valid).reshape(3, -1).norm(dim=1).tolist() == \
        pytest.approx([0.1] * 3)
    linf = AdversarialConfig(enabled=True, lr=0.5, norm="linf").resolved("nlvr2")
    assert ascend(torch.zeros_like(grad), grad, linf, valid).reshape(3, -1).abs().amax(1).tolist() == \
        pytest.approx([0.5] * 3)


@pytest.mark.parametrize("task", ["vqa", "nlvr2", "vcr", "flickr30k-ir"])
def test_symmetric_kl_is_symmetric_and_zero_without_a_perturbation(task):
    g = torch.Generator().manual_seed(1)
    shape = (6,) if task.startswith("flickr30k") else (6, 4)
    a, b = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    assert float(symmetric_kl(a, b, task)) == pytest.approx(float(symmetric_kl(b, a, task)), rel=1e-6)
    assert float(symmetric_kl(a, b, task)) > 0
    assert float(symmetric_kl(a, a, task)) == pytest.approx(0.0, abs=1e-7)


def test_task_defaults_are_villas():
    assert AdversarialConfig(enabled=True).resolved("vqa") == AdversarialConfig(True, "text", 3, 1e-3, 1.5)
    assert AdversarialConfig(enabled=True).resolved("vcr").modality == "image+text"
    assert AdversarialConfig(enabled=True).resolved("vcr").lr == 1e-2
    with pytest.raises(ValueError, match="modality"):
        AdversarialConfig(enabled=True, modality="audio").resolved("vqa")


@pytest.mark.parametrize("off", [dict(enabled=False), dict(enabled=True, steps=0)])
def test_off_or_zero_steps_is_plain_training_bit_for_bit(off):
    plain, adv = model(), model(**off)
    for m in (plain, adv):
        pl.seed_everything(1, verbose=False)
        tiny_trainer(3, deterministic=True).fit(m, datamodule=RandomPairsDataModule())
    for (k, a), b in zip(plain.state_dict().items(), adv.state_dict().values()):
        assert torch.equal(a, b), k


def test_pruned_weights_stay_zero_and_get_no_gradient_under_adversarial_training():
    m = model(enabled=True, modality="image+text")
    names = m.prunable_parameter_names()
    mask = random_prune(Mask.ones_like({n: m.get_parameter(n).detach() for n in names}), 0.8,
                        torch.Generator().manual_seed(0))
    trainer = tiny_trainer(4, callbacks=[MaskedTraining(mask)], gradient_clip_val=1.0)
    trainer.fit(m, datamodule=RandomPairsDataModule())
    state = trainer.optimizers[0].state
    for n in names:
        p = m.get_parameter(n)
        assert bool((p.detach()[~mask[n]] == 0).all())
        assert bool((state[p]["exp_avg"][~mask[n]] == 0).all())
    assert any(bool((m.get_parameter(n).detach()[mask[n]] != 0).all()) for n in names)


@pytest.mark.parametrize("modality, passes", [("text", 1 + 3), ("image+text", 1 + 3), ("alter", 1 + 2 * 3)])
def test_a_batch_costs_one_plus_k_passes(modality, passes):
    m = model(enabled=True, modality=modality).train()
    calls = []
    hook = m.uniter.register_forward_hook(lambda *_: calls.append(1))
    loss, parts = adversarial_loss(m, batch(), m.adversarial)
    hook.remove()
    assert len(calls) == passes
    loss.backward()
    assert torch.isfinite(loss) and parts["kl"] >= 0
    assert m.uniter.encoder.layer[0].output.dense.weight.grad is not None
