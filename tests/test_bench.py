"""make bench (lightning_vl.tools.bench) at tiny size: every backbone, every variant, one JSON."""
import json

from lightning_vl.tools import bench


def test_bench_times_every_variant_of_every_backbone(tmp_path):
    out = tmp_path / "results.json"
    result = bench.main(["--size", "tiny", "--steps", "1", "--warmup", "0", "--adversarial-steps", "2",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert list(result["backbones"]) == ["uniter", "lxmert", "vilt"]
    for name, r in result["backbones"].items():
        variants = r["variants"]
        assert list(variants) == ["dense", "masked", "torch-prune", "masked+adv K=2"], name
        assert variants["dense"]["ratio_to_dense"] == 1.0 and variants["dense"]["extra_memory_mb"] == 0
        assert variants["masked"]["extra_memory_mb"] > 0 and variants["masked"]["mask_apply_median_s"] > 0
        assert [v["forward_passes_per_step"] for v in variants.values()] == [1, 1, 1, 3], name  # K=2: 1 + 2
        assert variants["dense"]["paired_ratio_to_dense"] == 1.0 and variants["masked+adv K=2"]["paired_ratio_to_dense"] is None
        assert variants["masked"]["paired_ratio_to_dense"] > 0
    assert result["config"]["adamw_impl"] == "auto"
    assert result["backbones"]["vilt"]["tokens"] == 40 + 1 + 4 * 6  # text, image [CLS], 128×192 px in 32 px patches
