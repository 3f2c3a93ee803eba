"""The study's tables (lightning_vl.analysis.tables) against the paper's own numbers
(Gan et al., AAAI 2022, Tables 1-3), plus missing cells, failed runs and the record schema."""
import csv
import math

import pytest

from lightning_vl.analysis.tables import (Cell, Record, aggregate, normalise, passes, rewind_table, table1, table2,
                                          table3, ticket_sparsity, transfer_matrix)

TASKS = ["vqa", "gqa", "vcr", "nlvr2", "snli-ve", "refcoco+", "flickr30k-ir", "flickr30k-tr"]

# paper Table 1: ticket sparsity, row 2 (dense, mean ± std of 3 runs), row 3 (99% of row 2),
# row 4 (IMP ticket, mean ± std), rows 5-7 (random pruning, BERT θ'0, shuffled θ''0; one number)
PAPER_T1 = {
    "vqa": (0.7, (70.64, 0.06), 69.93, (69.98, 0.05), 60.45, 67.98, 60.46),
    "gqa": (0.7, (59.64, 0.15), 59.04, (59.26, 0.09), 55.95, 58.45, 47.49),
    "vcr": (0.5, (54.37, 0.31), 53.83, (53.15, 1.02), 25.35, 50.39, 6.25),
    "nlvr2": (0.6, (76.75, 0.19), 75.98, (76.32, 0.41), 52.42, 54.15, 51.52),
    "snli-ve": (0.6, (78.47, 0.10), 77.69, (77.69, 0.07), 71.30, 76.45, 69.32),
    "refcoco+": (0.7, (74.73, 0.06), 73.98, (74.06, 0.27), 72.95, 71.09, 67.34),
    "flickr30k-ir": (0.6, (71.25, 0.11), 70.54, (70.15, 0.71), 61.44, 63.38, 38.94),
    "flickr30k-tr": (0.6, (84.63, 1.02), 83.78, (83.77, 0.76), 76.80, 79.30, 48.00),
}

PAPER_T2 = """\
0% | 70.64 | 59.64 | 54.37 | 76.75 | 78.47 | 74.73 | 71.25 | 84.63 | — | —
10% | 70.69 | 59.24 | 54.24 | 77.08 | 78.44 | 74.75 | 70.60 | 84.30 | 0.22 | 0.21
20% | 70.72 | 59.21 | 53.90 | 76.45 | 78.60 | 74.54 | 71.12 | 84.50 | 0.29 | 0.20
30% | 70.66 | 59.45 | 53.48 | 76.48 | 78.27 | 74.43 | 71.84 | 86.10 | 0.05 | -0.18
40% | 70.46 | 59.34 | 52.62 | 76.94 | 78.12 | 74.34 | 71.40 | 86.00 | 0.36 | -0.05
50% | 70.52 | 59.41 | 52.01 | 76.71 | 78.08 | 74.12 | 70.62 | 83.90 | 1.00 | 0.52
60% | 70.41 | 59.44 | 50.37 | 75.52 | 77.79 | 74.41 | 70.18 | 82.40 | 1.88 | 1.10
70% | 69.45 | 59.02 | 47.52 | 74.29 | 77.34 | 73.45 | 68.36 | 80.00 | 3.90 | 2.66
80% | 68.38 | 58.01 | 42.99 | 69.98 | 76.32 | 72.58 | 65.82 | 80.00 | 6.80 | 4.78
90% | 64.69 | 54.91 | 11.74 | 52.76 | 72.28 | 70.02 | 56.68 | 71.40 | 22.04 | 13.98
"""

PAPER_T3 = {  # VQA, GQA, VCR, NLVR2, VE, RefCOCO+
    (0.6, "standard"): (70.41, 59.44, 50.37, 75.52, 77.79, 74.41),
    (0.6, "adversarial"): (70.80, 59.85, 51.07, 76.70, 77.99, 74.74),
    (0.7, "standard"): (69.45, 59.02, 47.52, 74.29, 77.34, 73.45),
    (0.7, "adversarial"): (69.79, 59.37, 48.50, 75.29, 77.51, 74.08),
}


def rec(task, row, sparsity, metric_pct, seed=0, **kw):
    return {"task": task, "row": row, "sparsity": sparsity, "level": round(sparsity * 10), "seed": seed,
            "metric": None if metric_pct is None else metric_pct / 100, "monitor": "val/acc",
            "path": f"runs/{task}/{row}/{seed}/{sparsity}", **kw}


def three_runs(task, row, sparsity, mean, std, **kw):
    """Three runs whose mean is ``mean`` and sample std (ddof=1) is ``std``: mean−std, mean, mean+std."""
    return [rec(task, row, sparsity, mean + d, seed=i, **kw) for i, d in enumerate((-std, 0.0, std))]


def paper_table1_records():
    out = []
    for task, (s, dense, _, imp, rp, bert, shuffled) in PAPER_T1.items():
        out += three_runs(task, "imp", 0.0, *dense)
        for lower in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
            if lower < s:
                out += three_runs(task, "imp", lower, dense[0], 0.1)
        out += three_runs(task, "imp", s, *imp)
        out += three_runs(task, "imp", round(s + 0.1, 1), imp[0] - 5, 0.1)   # no longer a ticket
        out += [rec(task, "random", s, rp), rec(task, "bert", s, bert), rec(task, "shuffled", s, shuffled)]
    return out


def test_three_runs_helper_gives_the_stated_mean_and_sample_std():
    c = aggregate([r["metric"] for r in three_runs("vqa", "imp", 0.0, 70.64, 0.06)])
    assert c.mean == pytest.approx(70.64) and c.std == pytest.approx(0.06) and c.n == 3


def test_table1_rows_2_and_3_reproduce_the_paper():
    t = table1(paper_table1_records())
    assert t.columns == TASKS
    for task, (_, (mean, std), ninety_nine, *_rest) in PAPER_T1.items():
        assert t.cell("dense (level 0)", task).text() == f"{mean:.2f} ± {std:.2f} (n=3)"
        assert t.cell("99% of dense", task).text() == f"{ninety_nine:.2f}", task


def test_table1_ticket_sparsity_and_controls_follow_the_paper():
    t = table1(paper_table1_records())
    for task, (s, _, _, (imp, imp_std), rp, bert, shuffled) in PAPER_T1.items():
        assert t.cell("sparsity", task) == f"{s:.0%}", task
        assert t.cell("IMP ticket, θ0", task).text() == f"{imp:.2f} ± {imp_std:.2f} (n=3)"
        assert t.cell("random pruning, θ0", task).text() == f"{rp:.2f}"
        assert t.cell("IMP mask, BERT θ'0", task).text() == f"{bert:.2f}"
        assert t.cell("IMP mask, shuffled θ''0", task).text() == f"{shuffled:.2f}"
        assert t.cell("metric", task) == "val/acc"
    assert t.records_used == 8 * 9   # dense, IMP (3 runs each) and the 3 controls; lower sparsities show nothing
    md = t.to_markdown()
    assert "| sparsity | 70% | 70% | 50% | 60% | 60% | 70% | 60% | 60% |" in md


def test_table1_accounts_for_the_std_as_the_paper_does():
    # VCR, Flickr30k IR and TR are tickets only with mean + std >= 99% of dense
    records = normalise(paper_table1_records())
    for task in ("vcr", "flickr30k-ir", "flickr30k-tr"):
        s = PAPER_T1[task][0]
        assert ticket_sparsity(records, task) == s
        assert ticket_sparsity(records, task, criterion="mean") == pytest.approx(s - 0.1), task
    for task in ("vqa", "gqa", "nlvr2", "snli-ve", "refcoco+"):
        assert ticket_sparsity(records, task, criterion="mean") == PAPER_T1[task][0]
    assert passes(Cell(77.69, 0.07, 3), 0.99 * 78.47)            # SNLI-VE: 77.69 >= 77.6853
    assert not passes(Cell(53.15, None, 1), 0.99 * 54.37)        # one run has no std to lean on
    with pytest.raises(ValueError):
        passes(Cell(1.0), 1.0, criterion="median")


def test_table1_highest_passing_sparsity_even_after_a_dip():
    records = [rec("nlvr2", "imp", 0.0, 80), rec("nlvr2", "imp", 0.1, 70), rec("nlvr2", "imp", 0.2, 79.5),
               rec("nlvr2", "imp", 0.3, 60)]
    assert ticket_sparsity(records, "nlvr2") == 0.2


def test_table1_missing_cells_are_missing_not_zero():
    records = [r for r in paper_table1_records() if not (r["task"] == "gqa" and r["row"] == "bert")]
    records = [r for r in records if r["task"] != "vcr" or r["sparsity"] != 0.0]      # no dense VCR run
    records.append(rec("snli-ve", "random", 0.6, None, seed=1))                        # a failed run
    t = table1(records)
    assert t.cell("IMP mask, BERT θ'0", "gqa").text() == "—"
    for row in ("sparsity", "dense (level 0)", "99% of dense", "IMP ticket, θ0", "random pruning, θ0"):
        cell = t.cell(row, "vcr")
        assert (cell if isinstance(cell, str) else cell.text()) == "—"
    assert t.cell("random pruning, θ0", "snli-ve").text() == "71.30"                 # the failed run left out
    assert any("vcr: no dense" in n for n in t.notes)
    assert any("1 run(s) without a metric" in n for n in t.notes)
    md = t.to_markdown()
    assert "0.00" not in md
    # a task whose IMP never reaches 99%
    t = table1([rec("vqa", "imp", 0.0, 70), rec("vqa", "imp", 0.1, 60)])
    assert t.cell("sparsity", "vqa") == "none" and t.cell("IMP ticket, θ0", "vqa").text() == "—"


def test_table1_prefers_random_records_at_exactly_the_ticket_sparsity():
    ticket = 0.7 + 1 / 196608                                        # one weight of the demo model off 70%
    records = [rec("nlvr2", "imp", 0.0, 80), rec("nlvr2", "imp", ticket, 79.9),
               rec("nlvr2", "random", 0.7, 60.0),                    # e.g. a random-pruning lottery run's level 7
               rec("nlvr2", "random", ticket, 55.0)]                 # the random branch of the ticket's round
    t = table1(records)
    assert t.cell("sparsity", "nlvr2") == "70%"
    assert t.cell("random pruning, θ0", "nlvr2").text() == "55.00"
    t = table1(records[:3])                                          # no exact one: the same level
    assert t.cell("random pruning, θ0", "nlvr2").text() == "60.00"


def test_table1_extra_controls_only_when_present_and_rewound_runs_excluded():
    records = [rec("nlvr2", "imp", 0.0, 80), rec("nlvr2", "imp", 0.5, 79.5),
               rec("nlvr2", "imp", 0.6, 79.9, rewind_step=100), rec("nlvr2", "omp", 0.5, 77.0)]
    t = table1(records)
    labels = [label for label, _ in t.rows]
    assert "OMP (one-shot magnitude), θ0" in labels and "LAMP, θ0" not in labels
    assert t.cell("sparsity", "nlvr2") == "50%"                     # the rewound run is not Table 1's
    assert t.cell("OMP (one-shot magnitude), θ0", "nlvr2").text() == "77.00"


def _paper_table2_records():
    out = []
    for line in PAPER_T2.splitlines():
        cells = [c.strip() for c in line.split("|")]
        s = float(cells[0].rstrip("%")) / 100
        for task, v in zip(TASKS, cells[1:9]):
            if s == 0:
                out.append(rec(task, "imp", 0.0, float(v)))
            else:
                out.append(rec(task, "universal", s, float(v), source_task="pretrain"))
    return out


def test_table2_reproduces_every_average_drop_of_the_paper():
    t = table2(_paper_table2_records())
    assert t.header[-2:] == ["avg drop % (all)", "w/o VCR"]
    md_rows = {label: cells for label, cells in t.rows}
    for line in PAPER_T2.splitlines():
        paper = [c.strip() for c in line.split("|")]
        ours = md_rows[paper[0]]
        assert [c.text() for c in ours[:8]] == paper[1:9], paper[0]
        got = [c if isinstance(c, str) else c.text() for c in ours[8:]]
        assert got == paper[9:11], f"{paper[0]}: ours {got}, paper {paper[9:11]}"
    # e.g. 70%: 3.90 with VCR, 2.66 without (unrounded 3.9010 and 2.6585)
    assert md_rows["70%"][8].mean == pytest.approx(3.9010, abs=1e-4)
    assert md_rows["70%"][9].mean == pytest.approx(2.6585, abs=1e-4)


def test_table2_missing_task_is_named_in_the_average():
    records = [r for r in _paper_table2_records() if not (r["task"] == "gqa" and r["sparsity"] == 0.7)]
    t = table2(records)
    cells = dict(t.rows)["70%"]
    assert cells[1].text() == "—"
    assert cells[8].text().endswith("(7/8 tasks)") and cells[9].text().endswith("(6/7 tasks)")
    assert t.records_used == len(records)
    empty = table2([rec("vqa", "imp", 0.0, 70)])
    assert empty.empty and "No 'universal' records" in empty.to_markdown()


def test_table3_standard_vs_adversarial_from_the_paper():
    records = []
    for (s, training), values in PAPER_T3.items():
        for task, v in zip(TASKS[:6], values):
            records.append(rec(task, "universal", s, v, source_task="pretrain", training=training))
    records.append(rec("vqa", "universal", 0.5, 70.0, source_task="pretrain"))   # no Adv. at 50%: no row
    records.append(rec("flickr30k-ir", "universal", 0.6, 70.0, source_task="pretrain"))  # no Adv.: no column
    t = table3(records)
    assert [label for label, _ in t.rows] == ["60% Std.", "60% Adv.", "70% Std.", "70% Adv."]
    assert t.header == ["VQA", "GQA", "VCR", "NLVR2", "SNLI-VE", "RefCOCO+"]
    for (s, training), values in PAPER_T3.items():
        label = f"{s:.0%} {'Std.' if training == 'standard' else 'Adv.'}"
        assert [c.text() for c in dict(t.rows)[label]] == [f"{v:.2f}" for v in values]
    assert table3(records[:6]).empty and "No adversarially" in table3(records[:6]).to_markdown()


def test_table3_of_a_tasks_own_tickets_takes_std_from_the_imp_rounds():
    """``ticket`` branches trained adversarially against the IMP rounds they hang off."""
    records = [rec("refcoco+", "imp", 0.6, 88.0), rec("refcoco+", "imp", 0.6, 90.0, seed=1),
               rec("refcoco+", "imp", 0.7, 87.0), rec("refcoco+", "imp", 0.7, 80.0, training="adversarial"),
               rec("refcoco+", "ticket", 0.6, 91.0, training="adversarial"),
               rec("refcoco+", "ticket", 0.6, 89.0, training="adversarial", seed=1),
               rec("refcoco+", "ticket", 0.7, 50.0)]  # a standard ticket branch is not the Std. row here
    t = table3(records, row="ticket", standard_row="imp", name="table3_tickets")
    assert t.name == "table3_tickets" and [label for label, _ in t.rows] == ["60% Std.", "60% Adv."]
    assert [c.text() for _, (c,) in t.rows] == ["89.00 ± 1.41 (n=2)", "90.00 ± 1.41 (n=2)"]
    assert "Std. rows: IMP ticket" in t.description


def test_transfer_matrix_diagonal_is_the_targets_own_ticket():
    records = [rec("vqa", "imp", 0.7, 69.0), rec("nlvr2", "imp", 0.7, 76.0),
               rec("nlvr2", "transfer", 0.7, 74.0, source_task="vqa"),
               rec("nlvr2", "transfer", 0.7, 72.0, source_task="vqa", seed=1),
               rec("vqa", "universal", 0.7, 68.5, source_task="pretrain")]
    t = transfer_matrix(records, 0.7)
    assert t.columns == ["vqa", "nlvr2"] and t.row_keys == ["vqa", "nlvr2", "pretrain"]
    assert t.cell("VQA", "vqa").text() == "69.00"
    assert t.cell("VQA", "nlvr2").text() == "73.00 ± 1.41 (n=2)"
    assert t.cell("NLVR2", "nlvr2").text() == "76.00"
    assert t.cell("NLVR2", "vqa").text() == "—"
    assert t.cell("pre-training", "vqa").text() == "68.50"
    assert t.name == "transfer_70"


def test_rewind_table():
    records = [rec("vqa", "imp", s, v, rewind_step=step) for step, base in ((0, 70), (500, 71))
               for s, v in ((0.0, base), (0.5, base - 1), (0.7, base - 3))]
    t = rewind_table(records, "vqa")
    assert t.header == ["rewind 0", "rewind 500"] and [label for label, _ in t.rows] == ["0%", "50%", "70%"]
    assert [c.text() for c in dict(t.rows)["70%"]] == ["67.00", "68.00"]


def test_records_schema_validation_and_extra_keys():
    r = Record.from_dict({**rec("vqa", "imp", 0.7, 70.0), "wandb_id": "x", "anything": [1]}, 0)
    assert r.task == "vqa" and r.training == "standard" and r.rewind_step == 0 and r.metric == pytest.approx(0.7)
    assert Record.from_dict({**rec("vqa", "imp", 0.7, None)}).metric is None
    assert Record.from_dict({**rec("vqa", "imp", 0.7, 1.0), "metric": math.nan}).metric is None
    with pytest.raises(ValueError, match="outside \\[0, 1\\].*0.7064, not 70.64"):
        Record.from_dict({**rec("vqa", "imp", 0.7, 1.0), "metric": 70.64}, 3)
    with pytest.raises(ValueError, match="record 2.*'sparsity'"):
        Record.from_dict({"task": "vqa", "row": "imp", "metric": 0.5}, 2)
    with pytest.raises(ValueError, match="'training'"):
        Record.from_dict({**rec("vqa", "imp", 0.7, 1.0), "training": "villa"})


def test_table_csv_and_markdown(tmp_path):
    t = table1(paper_table1_records())
    path = t.to_csv(tmp_path / "t1.csv")
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["row", "VQA", "GQA", "VCR", "NLVR2", "SNLI-VE", "RefCOCO+", "F30k IR R@1", "F30k TR R@1"]
    assert rows[3][1] == "70.64 ± 0.06 (n=3)"
    long = list(csv.DictReader(t.to_long_csv(tmp_path / "t1.long.csv").open()))
    dense = next(r for r in long if r["row"] == "dense (level 0)" and r["column"] == "vqa")
    assert float(dense["mean"]) == pytest.approx(70.64) and float(dense["std"]) == pytest.approx(0.06)
    assert dense["n"] == "3"
    assert t.to_markdown().splitlines()[0].startswith("|  | VQA | GQA |")


# the published Table 3 (LXMERT at 70%): dense, 99%, ticket, random pruning (mean ± std of 3 runs)
PAPER_LXMERT = {"vqa": ((69.95, 0.03), 69.25, (69.29, 0.10), (65.22, 0.05)),
                "gqa": ((59.91, 0.07), 59.31, (59.40, 0.17), (47.88, 0.55)),
                "nlvr2": ((74.90, 0.26), 74.15, (74.03, 0.71), (51.38, 0.45))}


def lxmert_table3_records():
    out = []
    for task, (dense, _, imp, rnd) in PAPER_LXMERT.items():
        out += three_runs(task, "imp", 0.0, *dense, backbone="lxmert")
        out += three_runs(task, "imp", 0.7, *imp, backbone="lxmert")
        out += three_runs(task, "random", 0.7, *rnd, backbone="lxmert")
        out += three_runs(task, "imp", 0.8, imp[0] - 3.0, 0.1, backbone="lxmert")  # no longer a ticket
    return out


def test_backbone_table_gives_the_published_table3_from_its_runs():
    from lightning_vl.analysis.tables import backbone_table

    t = backbone_table(lxmert_table3_records(), "lxmert")
    assert t.name == "backbone_lxmert" and "70%" in t.title and "Table 3" in t.title
    assert t.columns == ["vqa", "gqa", "nlvr2"]
    for task, (dense, ninety_nine, imp, rnd) in PAPER_LXMERT.items():
        for label, (mean, std) in (("LXMERT (dense)", dense), ("lottery ticket (IMP)", imp), ("random pruning", rnd)):
            cell = t.cell(label, task)
            assert cell.n == 3 and cell.mean == pytest.approx(mean) and cell.std == pytest.approx(std)
        assert t.cell("99%", task).mean == pytest.approx(ninety_nine, abs=0.01)  # the paper rounds 0.99 × dense
        assert t.cell("highest relaxed ticket", task) == "70%"  # NLVR2 74.03 ± 0.71 passes by mean + std
        assert t.cell("IMP there", task).mean == pytest.approx(imp[0])
    gap = t.cell("ticket − random", "gqa")
    assert gap.startswith("+11.52") and "(+20.9 std)" in gap  # (59.40 − 47.88) / 0.55
    assert t.records_used == 27  # dense, ticket and random of 3 tasks × 3 seeds; "there" = the same 70% runs


def test_backbone_tables_keep_backbones_apart_and_say_when_one_has_no_runs():
    from lightning_vl.analysis.tables import backbone_table, backbones, main_backbone

    uniter = three_runs("vqa", "imp", 0.0, 80.0, 0.1) + three_runs("vqa", "imp", 0.7, 10.0, 0.1)
    records = lxmert_table3_records() + uniter
    assert backbones(records) == ["uniter", "lxmert"] and main_backbone(records) == "uniter"
    assert main_backbone(lxmert_table3_records()) == "lxmert"
    t = backbone_table(records, "uniter")
    assert t.columns == ["vqa"] and t.cell("UNITER (dense)", "vqa").mean == pytest.approx(80.0)
    assert t.cell("highest relaxed ticket", "vqa") == "none"  # 10% at 70% is no ticket
    assert backbone_table(records, "lxmert").cell("LXMERT (dense)", "vqa").mean == pytest.approx(69.95)
    empty = backbone_table(records, "vilt")
    assert empty.empty and "No ViLT records." in empty.to_markdown() and "30%" in empty.title
    assert normalise(uniter)[0].backbone == "uniter"  # records from before the seam name none: UNITER's
