"""``lightning-vl``: LightningCLI with YAML configs, plus ``prune`` (IMP / random pruning rounds)
and ``demo`` (generate the offline demo world).

    lightning-vl fit   --config configs/task/nlvr2.yaml --config configs/demo.yaml --config configs/demo/nlvr2.yaml
    lightning-vl prune --config configs/task/nlvr2.yaml --config configs/demo.yaml --config configs/demo/nlvr2.yaml --imp.method random
    lightning-vl demo  --out data/demo
    lightning-vl data  --task vqa --src ~/downloads/vqa     (link, build and check a task's files)

Every Trainer flag passes through (``--trainer.max_steps 500``, ``--trainer.strategy ddp``…).
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import yaml
from pytorch_lightning import LightningDataModule
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger

from .imp import ImpConfig, ImpRunner, config_hash
from .module import VLModule


class VLCli(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        """The data module knows the label strings (e.g. VQA's answer vocabulary); the model gets
        them when both are instantiated."""
        parser.link_arguments("data.labels", "model.labels", apply_on="instantiate")

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "prune": {"model", "datamodule"}}

    def _add_subcommands(self, parser, **kwargs) -> None:
        """Lightning adds the Trainer-method subcommands; ``prune`` is a method of this class."""
        self._subcommand_parsers = {}
        subcommands = parser.add_subcommands()
        for name in self.subcommands():
            klass = type(self) if name == "prune" else self.trainer_class
            description = (getattr(klass, name).__doc__ or "").strip().splitlines()[0]
            sub_kwargs = {**kwargs.get(name, {}), "description": description}
            sub_parser = self._prepare_subcommand_parser(klass, name, **sub_kwargs)
            self._subcommand_parsers[name] = sub_parser
            subcommands.add_subcommand(name, sub_parser, help=description)

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand != "prune":
            return super()._run_subcommand(subcommand)
        self.prune(**self._prepare_subcommand_kwargs(subcommand))

    def prune(self, model: VLModule, datamodule: LightningDataModule, imp: ImpConfig = ImpConfig()) -> None:
        """Find lottery tickets: rounds of fine-tuning and pruning (IMP or random), resumable."""
        if isinstance(imp, dict):  # jsonargparse may hand the group over as a namespace/dict
            imp = ImpConfig(**imp)
        parser = self._parser("prune")
        config_yaml = parser.dump(self.config["prune"], skip_none=False)
        config = yaml.safe_load(config_yaml)
        run_name = imp.name or f"{imp.method}-{config_hash(config)}"
        run_dir = Path(imp.root) / model.spec.name / run_name
        runner = ImpRunner(
            imp,
            model,
            datamodule,
            make_trainer=self._round_trainer,
            run_dir=run_dir,
            config=config,
            config_yaml=config_yaml,
            seed=int(self.config["prune"].get("seed_everything") or 0),
        )
        runner.run()

    def _round_trainer(self, round_dir: Path, callbacks: list):
        """A fresh Trainer per round from the configured flags: own callbacks copied, a CSV log
        in the round folder unless another logger was configured."""
        cfg = dict(self._get(self.config_init, "trainer", default={}))
        user_callbacks = cfg.pop("callbacks", None) or []
        if not isinstance(user_callbacks, list):
            user_callbacks = [user_callbacks]
        cfg["callbacks"] = copy.deepcopy(user_callbacks) + list(callbacks)
        if cfg.get("logger") in (None, True):
            cfg["logger"] = CSVLogger(str(round_dir), name="logs", version="")
        cfg["default_root_dir"] = str(round_dir)
        return self.trainer_class(**cfg)


def make_demo(argv: list[str]) -> Path:
    """``lightning-vl demo``: the demo world plus a seeded tiny UNITER saved in UNITER's released
    checkpoint format (so the demo's ``init:`` walks the same path as ``uniter-base.pt``).
    ``.complete`` is written last; the Makefile regenerates anything without it."""
    import torch

    from data_modules.demo import argument_parser, generate_from_args

    from .uniter import UniterConfig, UniterModel

    ap = argument_parser("lightning-vl demo", "Generate the offline demo world and model.")
    ap.add_argument("--model-config", default="configs/model/uniter-tiny.yaml",
                    help="YAML with model.uniter sizes of the demo model (its img_dim sets --feat-dim)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    (out / ".complete").unlink(missing_ok=True)
    sizes = yaml.safe_load(Path(args.model_config).read_text())["model"]["uniter"]
    config = UniterConfig(**sizes)
    args.feat_dim = config.img_dim
    paths = generate_from_args(args, mark_complete=False)
    torch.manual_seed(args.seed)
    core = UniterModel(config)
    torch.save({f"uniter.{k}": v for k, v in core.state_dict().items()}, out / "uniter-tiny.pt")
    (out / ".complete").write_text(json.dumps({**paths, "model": str(out / "uniter-tiny.pt")}, indent=1))
    print(f"demo world and model written to {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args[:1] == ["demo"]:
        make_demo(args[1:])
        return
    if args[:1] == ["data"]:
        from data_modules.prepare import main as prepare_main

        code = prepare_main(args[1:])
        if code:
            raise SystemExit(code)
        return
    VLCli(
        VLModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=argv,  # None: Lightning reads sys.argv itself
    )


if __name__ == "__main__":
    main()
