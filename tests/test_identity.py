"""Run identity: the allowlist of settings that name a run folder, pinned hashes, and what stays out."""
import copy

import pytest

from lightning_vl.lottery.identity import (BRANCH_KEYS, config_hash, differing_keys, identity_hash,
                                           results_identity)

CONFIG = {
    "seed_everything": 0,
    "model": {"task": "nlvr2", "uniter": {"hidden_size": 64, "num_hidden_layers": 4}, "init": "data/demo/uniter-tiny.pt",
              "lr": 5e-4, "head_lr_mult": 1.0, "warmup_steps": 30, "mask": None},
    "data": {"class_path": "data_modules.nlvr2.Nlvr2DataModule",
             "init_args": {"train_file": "data/demo/nlvr2/train.json", "batch_size": 32, "eval_batch_size": 128,
                           "num_workers": 0, "max_txt_len": 40}},
    "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 300, "val_check_interval": 150,
                "gradient_clip_val": 2.0, "log_every_n_steps": 20, "enable_progress_bar": True, "logger": None,
                "default_root_dir": None, "enable_model_summary": False},
    "imp": {"method": "imp", "target_sparsity": 0.7, "schedule": "linear", "rate": 0.1, "rewind_step": 0,
            "head_reset": "init", "prunable": ["encoder"], "snip_batches": 4, "root": "runs", "name": None,
            "wandb": "offline", "wandb_project": "lightning-vl"},
    "config": ["configs/task/nlvr2.yaml"],
}
DEFAULTS = {
    "model": {"task": "nlvr2", "uniter": {"hidden_size": 768, "num_hidden_layers": 12}, "init": None, "lr": 3e-5,
              "head_lr_mult": 1.0, "warmup_steps": 800, "mask": None},
    "trainer": {"devices": "auto", "max_steps": -1, "val_check_interval": None, "gradient_clip_val": None},
    "imp": {"method": "imp", "target_sparsity": 0.7, "schedule": "linear", "rate": 0.1, "rewind_step": 0,
            "head_reset": "init", "prunable": ["encoder"], "snip_batches": 4},
}


def changed(path, value, config=CONFIG):
    out = copy.deepcopy(config)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_golden_hashes():
    """These pin the folder names of existing runs: if a refactor changes them, every user's
    finished runs would silently start again. Change them only with IDENTITY_VERSION."""
    assert config_hash(CONFIG, DEFAULTS) == "b24f15fd"
    assert config_hash(CONFIG) == "52d5aac1"
    branch = {**{k: v for k, v in CONFIG.items() if k != "imp"}, "branch": {"source": "x", "kind": "shuffle",
                                                                             "strategy": "global", "seed": 0}}
    assert identity_hash(results_identity(branch, DEFAULTS, section="branch", keys=BRANCH_KEYS)) == "37b87c97"


@pytest.mark.parametrize("path, value", [
    (("imp", "target_sparsity"), 0.9), (("imp", "root"), "elsewhere"), (("imp", "name"), "mine"),
    (("imp", "wandb"), "disabled"), (("imp", "wandb_project"), "other"),
    (("trainer", "log_every_n_steps"), 5), (("trainer", "enable_progress_bar"), False),
    (("trainer", "logger"), False), (("trainer", "default_root_dir"), "/tmp/x"), (("trainer", "accelerator"), "gpu"),
    (("trainer", "enable_model_summary"), True), (("trainer", "strategy"), "ddp_spawn"),
    (("data", "init_args", "eval_batch_size"), 7), (("data", "init_args", "num_workers"), 8),
    (("config",), ["another.yaml"]),
])
def test_display_and_reach_settings_keep_the_folder(path, value):
    assert config_hash(changed(path, value), DEFAULTS) == config_hash(CONFIG, DEFAULTS)


@pytest.mark.parametrize("path, value", [
    (("model", "lr"), 1e-3), (("model", "init"), "shuffled:data/demo/uniter-tiny.pt"), (("model", "uniter", "hidden_size"), 128),
    (("data", "init_args", "batch_size"), 16), (("data", "class_path"), "data_modules.vqa.VqaDataModule"),
    (("trainer", "max_steps"), 600), (("trainer", "devices"), 2), (("trainer", "gradient_clip_val"), 1.0),
    (("trainer", "val_check_interval"), 300), (("seed_everything",), 1),
    (("imp", "method"), "random"), (("imp", "schedule"), "geometric"), (("imp", "rate"), 0.2),
    (("imp", "rewind_step"), 50), (("imp", "head_reset"), "keep"), (("imp", "prunable"), ["encoder", "pooler"]),
])
def test_results_determining_settings_change_the_folder(path, value):
    assert config_hash(changed(path, value), DEFAULTS) != config_hash(CONFIG, DEFAULTS)


def test_a_new_option_at_its_default_keeps_every_hash():
    """Adding a setting with a neutral default (say ``model.adversarial``) orphans no run."""
    new_config = changed(("model", "adversarial"), None)
    new_defaults = changed(("model", "adversarial"), None, DEFAULTS)
    assert config_hash(new_config, new_defaults) == config_hash(CONFIG, DEFAULTS)
    assert config_hash(changed(("model", "adversarial"), "text"), new_defaults) != config_hash(CONFIG, DEFAULTS)


def test_differing_keys_name_the_settings():
    a = results_identity(CONFIG, DEFAULTS)
    b = results_identity(changed(("model", "lr"), 1e-3, changed(("trainer", "max_steps"), 5)), DEFAULTS)
    assert differing_keys(a, b) == ["model.lr", "trainer.max_steps"]


def test_the_pixel_paths_data_arguments_at_their_defaults_keep_region_runs_names():
    """Data arguments are hashed with their values; the ones the image pipeline added must drop out at
    their defaults, or every region-feature run folder made before them would be orphaned."""
    from lightning_vl.lottery.identity import results_identity

    before = {"seed_everything": 0, "data": {"class_path": "data_modules.nlvr2.Nlvr2DataModule",
                                             "init_args": {"features": "f.h5", "batch_size": 32}}}
    after = {**before, "data": {**before["data"], "init_args": {
        **before["data"]["init_args"], "images": None, "image_size": 384, "max_image_size": None, "size_divisor": 32,
        "image_index_cache": "/tmp/cache"}}}
    assert identity_hash(results_identity(after)) == identity_hash(results_identity(before))
    pixels = {**before, "data": {**before["data"], "init_args": {"images": "i.h5", "image_size": 128}}}
    assert identity_hash(results_identity(pixels)) != identity_hash(results_identity(before))


def test_the_adamw_kernel_names_new_runs_and_lets_earlier_ones_resume():
    """``model.adamw_impl`` changes results in the last bits, so its new default (``auto``: fused)
    names new folders, while ``torch`` (what every run before it used) hashes as before, default or not."""
    defaults = changed(("model", "adamw_impl"), "auto", DEFAULTS)
    before = config_hash(CONFIG, DEFAULTS)
    assert config_hash(changed(("model", "adamw_impl"), "torch"), defaults) == before
    assert config_hash(changed(("model", "adamw_impl"), "torch"), changed(("model", "adamw_impl"), "torch",
                                                                            DEFAULTS)) == before
    auto = config_hash(changed(("model", "adamw_impl"), "auto"), defaults)
    fused = config_hash(changed(("model", "adamw_impl"), "fused"), defaults)
    assert len({before, auto, fused}) == 3
    a = results_identity(changed(("model", "adamw_impl"), "auto"), defaults)
    assert a["model"]["adamw_impl"] == "auto"
    assert differing_keys(a, results_identity(CONFIG, DEFAULTS)) == ["model.adamw_impl"]


def test_keeping_the_trained_weights_names_the_same_run_folder():
    """``imp.save_trained`` writes more files but changes no result: a run made without it resumes with it."""
    kept = changed(("imp", "save_trained"), True)
    assert config_hash(kept, DEFAULTS) == config_hash(CONFIG, DEFAULTS) == "b24f15fd"
    assert config_hash(changed(("imp", "rate"), 0.2), DEFAULTS) != "b24f15fd"  # a results key does change it
