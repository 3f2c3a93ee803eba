"""Task heads, losses and metrics on hand-computed cases; every task model builds and loads UNITER."""
import pickle

import pytest
import torch
import torch.nn.functional as F

from data_modules.batching import collate_rows
from lightning_vl.model.heads import RankHead, region_outputs
from lightning_vl.tasks.metrics import GroundingAccuracy, RetrievalRecall, SoftScore, VcrAccuracy, box_iou
from lightning_vl.training.module import VLModule
from lightning_vl.tasks.specs import TASKS, instance_bce, one_hot_bce, ranking_hinge, vcr_cross_entropy, vcr_targets
from lightning_vl.model.uniter import UniterConfig, UniterModel

TINY = UniterConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, img_dim=16, max_position_embeddings=64)
LABELS = {"vqa": [f"a{i}" for i in range(7)], "gqa": [f"g{i}" for i in range(5)]}


# ---- metrics on hand-computed cases ----------------------------------------------------------------
def test_vqa_soft_score_for_zero_to_four_matching_answers():
    # soft target of the predicted answer when 0..4 of 10 annotators gave it: 0, .3, .6, .9, 1
    targets = torch.zeros(5, 3)
    for m, score in enumerate([0.0, 0.3, 0.6, 0.9, 1.0]):
        targets[m, 2] = score
        targets[m, 0] = 1.0 - score  # another answer holds the rest
    logits = torch.tensor([[0.0, 0.0, 1.0]]).repeat(5, 1)  # always predicts answer 2
    metric = SoftScore()
    metric.update(logits, targets)
    assert metric.compute().item() == pytest.approx((0 + 0.3 + 0.6 + 0.9 + 1.0) / 5)
    metric.update(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0]]))  # answer not in vocab
    assert metric.compute().item() == pytest.approx(2.8 / 6)
    with pytest.raises(ValueError, match="differ"):
        metric.update(logits, targets[:, :2])


def test_vcr_accuracy_counts_qa_qar_and_both():
    # 3 questions; class-1 logits of the 8 rows decide: q0 both right, q1 answer only, q2 rationale only
    def rows(a_pick, r_pick):
        s = torch.zeros(8, 2)
        s[a_pick, 1] = 5.0
        s[4 + r_pick, 1] = 5.0
        return s
    logits = torch.cat([rows(1, 2), rows(0, 3), rows(3, 0)])
    targets = torch.tensor([[1, 2], [0, 1], [2, 0]])
    got = {}
    for part in ("qa", "qar", "both"):
        m = VcrAccuracy(part)
        m.update(logits, targets)
        got[part] = m.compute().item()
    assert got == pytest.approx({"qa": 2 / 3, "qar": 2 / 3, "both": 1 / 3})
    with pytest.raises(ValueError, match="8 rows"):
        VcrAccuracy().update(logits[:12], targets)
    assert vcr_targets(torch.tensor([[1, 3]])).tolist() == [0, 1, 0, 0, 0, 0, 0, 1]


def test_box_iou_edges_and_grounding_threshold():
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    assert box_iou(a, a).item() == 1.0
    assert box_iou(a, torch.tensor([10.0, 0.0, 20.0, 10.0])).item() == 0.0  # touching edges
    half = torch.tensor([0.0, 0.0, 10.0, 5.0])  # inside a, half its area: IoU exactly 0.5
    assert box_iou(a, half).item() == 0.5
    below = torch.tensor([0.0, 0.0, 10.0, 4.99])
    assert box_iou(a, below).item() < 0.5
    # region 1 chosen each time; GT = a; region boxes = [far, half/below]
    scores = torch.tensor([[0.0, 1.0, -1e4], [0.0, 1.0, -1e4]])
    far = torch.tensor([50.0, 50.0, 60.0, 60.0])
    boxes = torch.stack([torch.stack([far, half, torch.zeros(4)]), torch.stack([far, below, torch.zeros(4)])])
    m = GroundingAccuracy()
    m.update(scores, boxes, torch.stack([a, a]))
    assert m.compute().item() == 0.5  # ">= 0.5" counts the exact boundary, not the one below it


def _pairs(scores, match):
    t, i = torch.meshgrid(torch.arange(scores.size(0)), torch.arange(scores.size(1)), indexing="ij")
    return scores.reshape(-1), t.reshape(-1), i.reshape(-1), match.reshape(-1).long()


def test_retrieval_recall_on_a_small_score_matrix():
    # 4 captions (2 per image) x 2 images... use 3 images to make ranks interesting
    scores = torch.tensor([
        [0.9, 0.1, 0.2],   # caption 0 of image 0: rank 0
        [0.3, 0.5, 0.4],   # caption 1 of image 0: rank 2
        [0.2, 0.8, 0.1],   # caption 2 of image 1: rank 0
        [0.6, 0.1, 0.5],   # caption 3 of image 2: rank 1
    ])
    match = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    m = RetrievalRecall(ks=(1, 2))
    s, t, i, y = _pairs(scores, match)
    m.update(s[:5], t[:5], i[:5], y[:5], 4, 3)  # batches, with a repeated pair (DDP padding)
    m.update(s[4:], t[4:], i[4:], y[4:], 4, 3)
    out = {k: round(v.item(), 4) for k, v in m.compute().items()}
    # image retrieval ranks per caption: 0, 2, 0, 1 → R@1 2/4, R@2 3/4
    # text retrieval, best caption rank per image: image0 col [.9,.3,.2,.6] best match .9 → 0;
    # image1 [.1,.5,.8,.1] → 0; image2 [.2,.4,.1,.5] match .5 → 0 → R@1 = 1
    assert out == {"ir_r1": 0.5, "ir_r2": 0.75, "tr_r1": 1.0, "tr_r2": 1.0, "r_mean": round((0.5 + 0.75 + 2) / 4, 4)}


def test_retrieval_ties_are_pessimistic_and_missing_pairs_are_an_error():
    scores, match = torch.zeros(2, 2), torch.eye(2, dtype=torch.bool)
    m = RetrievalRecall(ks=(1, 2))
    m.update(*_pairs(scores, match), 2, 2)
    out = m.compute()
    assert out["ir_r1"].item() == 0.0 and out["ir_r2"].item() == 1.0  # constant scores do not win
    m = RetrievalRecall()
    s, t, i, y = _pairs(torch.rand(2, 2), match)
    m.update(s[:3], t[:3], i[:3], y[:3], 2, 2)
    with pytest.raises(ValueError, match="scored 3 of 2×2"):
        m.compute()


# ---- losses ---------------------------------------------------------------------------------------
def test_losses_follow_uniter():
    logits, soft = torch.randn(4, 6), torch.rand(4, 6)
    expected = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").sum(1).mean()
    assert instance_bce(logits, {"targets": soft}).item() == pytest.approx(expected.item(), rel=1e-5)
    labels = torch.tensor([0, 2, 1, 2])
    onehot = F.one_hot(labels, 3).float()
    assert one_hot_bce(logits[:, :3], {"targets": labels}).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits[:, :3], onehot, reduction="none").sum(1).mean().item(), rel=1e-5)
    # hinge: sigmoid scores (pos, neg1, neg2) per group, margin 0.2, mean over negatives
    raw = torch.logit(torch.tensor([0.9, 0.8, 0.5, 0.3, 0.6, 0.2]))
    hinge = ranking_hinge(raw, {"group_size": 3})
    assert hinge.item() == pytest.approx((0.1 + 0.0 + 0.5 + 0.1) / 4, abs=1e-6)
    assert ranking_hinge(raw, {}) is None  # full-evaluation batches carry no loss
    row_logits = torch.randn(16, 2)
    targets = torch.tensor([[0, 1], [3, 2]])
    assert vcr_cross_entropy(row_logits, {"targets": targets}).item() == pytest.approx(
        F.cross_entropy(row_logits, vcr_targets(targets)).item())


# ---- heads ----------------------------------------------------------------------------------------
def test_region_outputs_pick_each_rows_regions():
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.arange(1, 1 + tl), "img_feat": torch.randn(nb, 16, generator=g),
             "img_pos_feat": torch.rand(nb, 7, generator=g)} for tl, nb in ((4, 3), (6, 5))]
    batch = collate_rows(rows)
    seq = torch.randn(2, batch["attn_masks"].size(1), 8, generator=g)
    regions, pad = region_outputs(seq, batch)
    assert regions.shape == (2, 5, 8) and pad.tolist() == [[False] * 3 + [True] * 2, [False] * 5]
    assert torch.equal(regions[0, :3], seq[0, 4:7]) and torch.equal(regions[1], seq[1, 6:11])
    assert regions[0, 3:].abs().sum() == 0


def test_rank_head_starts_from_the_itm_match_row():
    itm_w, itm_b = torch.randn(2, 32), torch.randn(2)
    state = RankHead.adapt_init_state({"itm_output.weight": itm_w, "itm_output.bias": itm_b})
    assert torch.equal(state["rank_output.weight"], itm_w[1:2]) and torch.equal(state["rank_output.bias"], itm_b[1:2])
    own = {"rank_output.weight": torch.zeros(1, 32), "itm_output.weight": itm_w}
    assert RankHead.adapt_init_state(own) is own  # a fine-tuned rank head is kept


def _released_state(config: UniterConfig, extra: dict | None = None) -> dict:
    torch.manual_seed(0)
    state = {f"uniter.{k}": v.half() for k, v in UniterModel(config).state_dict().items()}
    h = config.hidden_size
    state.update({"itm_output.weight": torch.randn(2, h), "itm_output.bias": torch.randn(2),
                  "cls.predictions.bias": torch.zeros(config.vocab_size)})
    state.update(extra or {})
    return state


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_model_loads_a_released_uniter_checkpoint(task, tmp_path):
    path = tmp_path / "uniter.pt"
    torch.save(_released_state(TINY), path)
    model = VLModule(task=task, uniter=TINY, labels=LABELS.get(task), init=str(path))
    assert not [k for k in model.init_report.missing if k.startswith("uniter.") and "img_embeddings.mask" not in k
                and "token_type" not in k]
    spec = TASKS[task]
    emb = model.uniter.embeddings
    assert emb.token_type_embeddings.num_embeddings == 2 + len(spec.type_rows_from)
    assert emb.word_embeddings.num_embeddings == TINY.vocab_size + spec.extra_word_rows
    if task.startswith("flickr30k"):
        assert torch.equal(model.head.rank_output.weight, _released_state(TINY)["itm_output.weight"][1:2])
    if task == "vcr":  # new types copy the text type; new words are fresh rows
        assert torch.equal(emb.token_type_embeddings.weight[2], emb.token_type_embeddings.weight[0])


def test_vcr_second_stage_checkpoint_with_extended_tables_loads(tmp_path):
    big = UniterConfig(**{**vars(TINY), "vocab_size": TINY.vocab_size + 81, "type_vocab_size": 4})
    torch.manual_seed(1)
    state = {f"uniter.{k}": v for k, v in UniterModel(big).state_dict().items()}
    torch.save(state, tmp_path / "vcr2.pt")
    model = VLModule(task="vcr", uniter=TINY, init=str(tmp_path / "vcr2.pt"))
    assert torch.equal(model.uniter.embeddings.word_embeddings.weight, state["uniter.embeddings.word_embeddings.weight"])
    assert torch.equal(model.uniter.embeddings.token_type_embeddings.weight,
                       state["uniter.embeddings.token_type_embeddings.weight"])


def test_label_errors_are_clear():
    with pytest.raises(ValueError, match="model.labels"):
        VLModule(task="vqa", uniter=TINY)
    with pytest.raises(ValueError, match="contradiction"):
        VLModule(task="snli-ve", uniter=TINY, labels=["entailment", "neutral", "contradiction"])
    model = VLModule(task="gqa", uniter=TINY, labels=LABELS["gqa"])
    assert model.head.vqa_output[3].out_features == 5 and model.hparams.labels == LABELS["gqa"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_modules_pickle_for_ddp_spawn(task):
    model = VLModule(task=task, uniter=TINY, labels=LABELS.get(task))
    clone = pickle.loads(pickle.dumps(model))
    assert clone.spec.name == task


def test_released_base_checkpoint_loads_into_every_task_model(tmp_path):
    """UNITER-base's released key names and shapes (fp16, pre-training heads included) load into
    every task model with nothing of the core missing."""
    base = UniterConfig()
    path = tmp_path / "uniter-base.pt"
    torch.save(_released_state(base), path)
    labels = {"vqa": [f"a{i}" for i in range(3129)], "gqa": [f"g{i}" for i in range(1842)]}
    for task in sorted(TASKS):
        model = VLModule(task=task, uniter=UniterConfig(), labels=labels.get(task), init=str(path))
        core_missing = [k for k in model.init_report.missing if k.startswith("uniter.")]
        assert core_missing == [], (task, core_missing)
        assert len(model.init_report.loaded) >= 199, task
        del model


def test_unlabelled_splits_are_refused_not_scored_as_zero():
    model = VLModule(task="vqa", uniter=TINY, labels=LABELS["vqa"])
    with pytest.raises(ValueError, match="no labels.*predict"):
        model.validation_step({"unlabeled": True, "ids": ["1"]}, 0)


def test_metrics_survive_a_validate_then_fit_cycle():
    """IMP validates each round under inference mode, then fits again: states reset inside
    inference mode must still accept updates outside it."""
    cases = [
        (SoftScore(), (torch.randn(2, 3), torch.rand(2, 3))),
        (VcrAccuracy(), (torch.randn(8, 2), torch.tensor([[0, 1]]))),
        (GroundingAccuracy(), (torch.randn(1, 2), torch.rand(1, 2, 4), torch.rand(1, 4))),
    ]
    for metric, args in cases:
        with torch.inference_mode():
            metric.update(*args)
            metric.compute()
            metric.reset()
        with torch.no_grad():
            metric.update(*args)
        assert 0.0 <= float(metric.compute()) <= 1.0
