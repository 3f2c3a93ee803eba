"""The report folder (lightning_vl.analysis.report, run by `lightning-vl report`) and the figures: every file the index links
exists, sections without records say so, and figures render without a display."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_vl.pruning import Mask
from lightning_vl.analysis import figures
from lightning_vl.analysis.overlap import OverlapAnalysis
from lightning_vl.analysis.report import write_report
from lightning_vl.analysis.tables import transfer_matrix
from lightning_vl.cli import main as cli_main

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def rec(task, row, s, metric, seed=0, **kw):
    return {"task": task, "row": row, "sparsity": s, "level": round(s * 10), "seed": seed, "metric": metric,
            "monitor": "val/score" if task == "vqa" else "val/acc", "path": f"runs/{task}/{row}-{seed}/{s}", **kw}


def study_records():
    out = []
    for task, dense in (("vqa", 0.70), ("refcoco+", 0.75)):
        for seed in (0, 1):
            for i in range(8):
                s = i / 10
                out.append(rec(task, "imp", s, dense - 0.002 * i * i + 0.002 * seed, seed))
                out.append(rec(task, "random", s, dense - 0.02 * i + 0.003 * seed, seed))
            for s in (0.5, 0.7):
                out.append(rec(task, "bert", s, dense - 0.05, seed))
                out.append(rec(task, "shuffled", s, dense - 0.2, seed))
                out.append(rec(task, "universal", s, dense - 0.01 * s, seed, source_task="pretrain"))
                out.append(rec(task, "universal", s, dense - 0.005 * s, seed, source_task="pretrain",
                               training="adversarial"))
        for i in range(0, 8, 2):
            out.append(rec(task, "imp", i / 10, dense - 0.001 * i, 0, rewind_step=100))
    out.append(rec("vqa", "transfer", 0.7, 0.66, source_task="refcoco+"))
    out.append(rec("refcoco+", "transfer", 0.7, 0.70, source_task="vqa"))
    out.append(rec("vqa", "lamp", 0.5, None, extra_key="ignored"))       # a failed run
    return out


def small_masks():
    g = torch.Generator().manual_seed(0)
    names = [f"uniter.encoder.layer.{i}.attention.self.query.weight" for i in range(2)]
    return {t: Mask({n: torch.rand(8, 8, generator=g) < 0.3 for n in names}) for t in ("vqa", "refcoco+", "pretrain")}


def linked_files(index: Path) -> list[Path]:
    text = index.read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links
    return [index.parent / link for link in links]


def test_report_writes_every_table_and_figure_and_links_them(tmp_path):
    out = tmp_path / "reports"
    index = write_report(study_records(), out, overlaps=OverlapAnalysis.compute(small_masks()))
    assert index == out / "index.md"
    for path in linked_files(index):
        assert path.is_file(), path
    text = index.read_text()
    for name in ("table1", "table2", "table3", "transfer_70", "rewind_vqa", "rewind_refcocoplus"):
        assert (out / "tables" / f"{name}.csv").is_file() and (out / "tables" / f"{name}.md").is_file(), name
        assert f"tables/{name}.csv" in text
    for name in ("accuracy_all", "accuracy_vqa", "accuracy_refcocoplus", "transfer_70", "rewind_vqa"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == PNG, name
        assert f"![" in text and f"figures/{name}.png" in text
    assert (out / "overlap" / "overlap_iou.png").read_bytes()[:8] == PNG and "overlap/overlap_iou.png" in text
    assert "1 without a metric" in text and "Built from" in text
    assert "| sparsity |" in text and "60% Std." not in text and "50% Std." in text and "70% Adv." in text
    t = transfer_matrix(study_records(), 0.7)
    assert t.cell("VQA", "refcoco+").text() == "70.00" and t.cell("pre-training", "vqa").text().startswith("69.30")


def test_report_shows_other_backbones_beside_uniter_and_keeps_them_out_of_table1(tmp_path):
    uniter = [rec(t, row, s, m - (0.02 * s * 10 if row == "random" else 0.0), seed)
              for t in ("vqa", "nlvr2") for row in ("imp", "random") for s in (0.0, 0.7) for seed in (0, 1)
              for m in [0.75 + 0.001 * seed]]
    lxmert = [{**r, "metric": r["metric"] - 0.2, "backbone": "lxmert", "path": "lx/" + r["path"]}
              for r in uniter if r["task"] == "vqa"]
    index = write_report(uniter + lxmert, tmp_path / "r")
    text = index.read_text()
    assert f"{len(uniter + lxmert)} records" in text and "The main tables are UNITER's (16 records); LXMERT's 8" in text
    section = text[text.index("## Backbones"):text.index("## Mask overlap")]
    assert "### UNITER at 70% sparsity" in section and "### LXMERT at 70% sparsity (published Table 3's form)" in section
    assert "| LXMERT (dense) | 55.05 ± 0.07 (n=2) |" in section  # VQA only: the backbones' tasks are LXMERT's
    assert "NLVR2" not in section and "figures/backbones.png" in section
    assert "### Highest relaxed-ticket sparsity per backbone" in section
    assert "| UNITER | 70% |" in section and "| LXMERT | 70% |" in section
    assert (tmp_path / "r" / "figures" / "backbones.png").read_bytes()[:8] == PNG
    table1_md = (tmp_path / "r" / "tables" / "table1.md").read_text()
    assert "55.05" not in table1_md and "75.05" in table1_md  # Table 1 is UNITER's alone
    for path in linked_files(index):
        assert path.is_file(), path
    alone = write_report(uniter, tmp_path / "u").read_text()
    assert "## Backbones" not in alone
    lxmert_alone = write_report(lxmert, tmp_path / "l").read_text()  # a Table 3 study's own report
    assert "### LXMERT at 70% sparsity (published Table 3's form)" in lxmert_alone


def test_report_sections_without_records_say_so(tmp_path):
    index = write_report([rec("nlvr2", "imp", 0.0, 0.8), rec("nlvr2", "imp", 0.1, 0.79)], tmp_path / "r")
    text = index.read_text()
    assert "No 'universal' records" in text
    assert "No adversarially fine-tuned 'universal' records." in text
    assert "No `transfer` records." in text and "No records with a rewind step > 0." in text
    assert "No masks given" in text
    for path in linked_files(index):
        assert path.is_file(), path
    empty = write_report([], tmp_path / "empty").read_text()
    assert "0 records" in empty and "_No records for this table._" in empty


def test_report_command_reads_json_and_json_lines(tmp_path, capsys):
    """`lightning-vl report --records` (the one report command) rebuilds a report from saved records."""
    records = study_records()
    (tmp_path / "r.json").write_text(json.dumps(records))
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    cli_main(["report", "--records", str(tmp_path / "r.json"), "--out", str(tmp_path / "a")])
    cli_main(["report", "--records", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "b")])
    assert (tmp_path / "a" / "tables" / "table1.csv").read_text() == (tmp_path / "b" / "tables" / "table1.csv").read_text()
    assert json.loads((tmp_path / "a" / "records.json").read_text()) == records
    (tmp_path / "bad.json").write_text(json.dumps([{**records[0], "metric": 70.0}]))
    with pytest.raises(SystemExit) as stop:
        cli_main(["report", "--records", str(tmp_path / "bad.json"), "--out", str(tmp_path / "c")])
    assert stop.value.code == 2 and "outside [0, 1]" in capsys.readouterr().err


def test_the_report_has_one_front_door():
    """`lightning-vl report` is the report's command; the module is not a second one."""
    import lightning_vl.analysis.report as report

    assert not hasattr(report, "main") and "__main__" not in (ROOT / "lightning_vl/analysis/report.py").read_text()


def test_figures_individually(tmp_path):
    records = study_records()
    assert figures.accuracy_figure(records, "vqa", tmp_path / "a.png").read_bytes()[:8] == PNG
    assert figures.accuracy_figure(records, "gqa", tmp_path / "none.png").is_file()   # no records: an empty panel
    assert figures.rewind_figure(records, "vqa", tmp_path / "r.png").read_bytes()[:8] == PNG
    assert figures.transfer_heatmap(transfer_matrix(records, 0.7), tmp_path / "t.png").read_bytes()[:8] == PNG
    an = OverlapAnalysis.compute(small_masks())
    assert an.heatmap(tmp_path / "o.png", "overlap").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_figures_need_no_display(tmp_path):
    """A fresh interpreter with no DISPLAY and an interactive default backend: the Agg canvas is used."""
    code = ("import sys, json; from lightning_vl.analysis.report import write_report; "
            "write_report(json.load(open(sys.argv[1])), sys.argv[2])")
    (tmp_path / "r.json").write_text(json.dumps(study_records()))
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(MPLBACKEND="tkagg", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.json"), str(tmp_path / "out")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "figures" / "accuracy_all.png").read_bytes()[:8] == PNG
