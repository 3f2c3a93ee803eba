"""``lightning-vl``: LightningCLI with YAML configs, plus ``prune`` (lottery rounds), ``branch``
(controls and transfers of a trained round), ``demo`` (generate the offline demo world) and
``data`` (link, build and check a task's public files).

    lightning-vl fit    --config configs/task/nlvr2.yaml --config configs/model/uniter-tiny.yaml \
                        --config configs/demo.yaml --config configs/demo/nlvr2.yaml
    lightning-vl prune  (the same configs) --imp.method random
    lightning-vl branch --from runs/nlvr2/imp-…/round_07 --kind shuffle
    lightning-vl branch --from runs/nlvr2/imp-…/round_07 --kind transfer (the target task's configs)
    lightning-vl demo   --out data/demo
    lightning-vl data   --task vqa --src ~/downloads/vqa
    lightning-vl check-store data/features/coco.h5      (scan a region-feature store for damage)
    lightning-vl study  configs/study/table1-demo.yaml   (a grid of runs and branches; many workers may share it)
    lightning-vl report --runs runs --out reports        (tables and figures of every run folder)
    lightning-vl overlap vqa=runs/vqa/imp-…/round_07 nlvr2=runs/nlvr2/imp-…/round_07   (mask overlap)

Every Trainer flag passes through (``--trainer.max_steps 500``, ``--trainer.strategy ddp``…).
"""
from __future__ import annotations

import copy
import json
import importlib
import os
import signal
import sys
import warnings
from pathlib import Path

import yaml
from pytorch_lightning import LightningDataModule
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .launchers import ForkedRanksRefused, check_launcher
from .lottery import BranchConfig, BranchRunner, ImpConfig, LotteryRunner, RunFolder
from .lottery.identity import BRANCH_KEYS, identity_hash, results_identity
from .module import VLModule

ROOT = Path(__file__).resolve().parents[1]
LOTTERY_COMMANDS = {"prune": "prune", "branch": "run_branch"}  # subcommand -> method of VLCli


class SaveConfigToRunDir(SaveConfigCallback):
    """Saves the resolved config beside the run's logs. A fit without a logger has no run folder,
    so nothing is written (Lightning would otherwise drop ``config.yaml`` into the working
    directory, where the next run overwrites it)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.logger is None:
            return
        super().setup(trainer, pl_module, stage)


class _StepCountedRichProgressBar(RichProgressBar):
    """Lightning 2.6's rich bar: "Epoch 1" when training is counted in steps, not "Epoch 1/-2"
    (``max_epochs`` -1 printed as its last index; fixed upstream after 2.6, Lightning PR #21924)."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is None or self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"  # padded as Lightning's, so it does not flicker


def with_step_counted_bar(trainer):
    """``trainer`` with its rich progress bar (Lightning's default or the user's, settings kept)
    showing the epoch without a negative total."""
    for callback in trainer.callbacks:
        if type(callback) is RichProgressBar:
            callback.__class__ = _StepCountedRichProgressBar
    return trainer


class VLCli(LightningCLI):
    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        check_launcher(trainer)  # before anything runs: fork-based launchers are refused (lightning_vl/launchers.py)
        return with_step_counted_bar(trainer)

    def add_arguments_to_parser(self, parser) -> None:
        """The data module knows the label strings (e.g. VQA's answer vocabulary); the model gets
        them when both are instantiated."""
        parser.link_arguments("data.labels", "model.labels", apply_on="instantiate")

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), **{name: {"model", "datamodule"} for name in LOTTERY_COMMANDS}}

    def _add_subcommands(self, parser, **kwargs) -> None:
        """Lightning adds the Trainer-method subcommands; ``prune`` and ``branch`` are methods of this class."""
        self._subcommand_parsers = {}
        subcommands = parser.add_subcommands()
        for name in self.subcommands():
            klass = type(self) if name in LOTTERY_COMMANDS else self.trainer_class
            description = (getattr(klass, LOTTERY_COMMANDS.get(name, name)).__doc__ or "").strip().splitlines()[0]
            sub_kwargs = {**kwargs.get(name, {}), "description": description}
            sub_parser = self._prepare_subcommand_parser(klass, name, **sub_kwargs)
            self._subcommand_parsers[name] = sub_parser
            subcommands.add_subcommand(name, sub_parser, help=description)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        """As Lightning's, with the method of a lottery subcommand named by ``LOTTERY_COMMANDS``
        (``branch`` is run by ``run_branch``: its ``--branch.*`` group cannot share the method's name)."""
        if subcommand not in LOTTERY_COMMANDS:
            return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser = self.init_parser(**kwargs)
        self._add_arguments(parser)
        skip = set(self.subcommands()[subcommand])
        self._subcommand_method_arguments[subcommand] = parser.add_method_arguments(
            klass, LOTTERY_COMMANDS[subcommand], skip=skip)
        return parser

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand not in LOTTERY_COMMANDS:
            return super()._run_subcommand(subcommand)
        getattr(self, LOTTERY_COMMANDS[subcommand])(**self._prepare_subcommand_kwargs(subcommand))

    def before_instantiate_classes(self) -> None:
        """A bad ``--imp.*`` (an unknown strategy, options it does not take) is a usage error,
        reported before any model is built (the strategy names are the registry's, not a Literal)."""
        if self.subcommand != "prune":
            return
        imp = self.config["prune"].get("imp")
        if imp is None or isinstance(imp, ImpConfig):
            return
        try:
            ImpConfig(**(imp.as_dict() if hasattr(imp, "as_dict") else dict(imp)))
        except (TypeError, ValueError) as err:
            self._parser("prune").error(str(err))

    def _resolved(self, subcommand: str) -> tuple[str, dict, dict]:
        """The subcommand's resolved configuration as YAML and as a dict, and the parser's defaults."""
        parser = self._parser(subcommand)
        config_yaml = parser.dump(self.config[subcommand], skip_none=False)
        defaults = yaml.safe_load(parser.dump(parser.get_defaults(), skip_none=False, skip_validation=True))
        return config_yaml, yaml.safe_load(config_yaml), defaults

    def prune(self, model: VLModule, datamodule: LightningDataModule, imp: ImpConfig = ImpConfig()) -> None:
        """Find lottery tickets: levels of fine-tuning and pruning (IMP or another strategy), resumable."""
        if isinstance(imp, dict):  # jsonargparse may hand the group over as a namespace/dict
            imp = ImpConfig(**imp)
        config_yaml, config, defaults = self._resolved("prune")
        identity = results_identity(config, defaults)
        folder = RunFolder(Path(imp.root) / model.task_name / (imp.name or f"{imp.method}-{identity_hash(identity)}"))
        results = LotteryRunner(imp, model, datamodule, self._round_trainer, folder, config_yaml=config_yaml,
                                identity=identity, command=self._command("prune"), seed=self._seed("prune"),
                                wandb_config=config).run()
        self._report_outcome({"run_dir": str(folder.path), "results": results})

    def run_branch(self, model: VLModule, datamodule: LightningDataModule, branch: BranchConfig) -> None:
        """Fine-tune a variant of a trained round's ticket: random or shuffled mask, other init, other task."""
        if isinstance(branch, dict):
            branch = BranchConfig(**branch)
        config_yaml, config, defaults = self._resolved("branch")
        identity = results_identity(config, defaults, section="branch", keys=BRANCH_KEYS)
        kind = f"transfer-{model.task_name}" if branch.kind == "transfer" else branch.kind
        runner = BranchRunner(branch, model, datamodule, self._round_trainer,
                              branch.name or f"{kind}-{identity_hash(identity)}", config_yaml=config_yaml,
                              identity=identity, command=self._command("branch"), seed=self._seed("branch"),
                              wandb_config=config)
        result = runner.run()
        self._report_outcome({"run_dir": str(runner.folder.path), "result": result})

    @staticmethod
    def _report_outcome(outcome: dict) -> None:
        """For ``lightning-vl study``: where the command's results are (``$LIGHTNING_VL_RESULT_FILE``)."""
        from pytorch_lightning.utilities import rank_zero_only

        target = os.environ.get("LIGHTNING_VL_RESULT_FILE")
        if target and rank_zero_only.rank == 0:
            Path(target).write_text(json.dumps(outcome, default=str))

    def _command(self, subcommand: str) -> dict:
        """How the run was started (``command.json``): the command line and its config files."""
        files = self.config[subcommand].get("config") or []
        return {"argv": list(sys.argv), "cwd": os.getcwd(),
                "config_files": [p for p in (str(getattr(f, "absolute", f)) for f in files) if os.path.isfile(p)]}

    def _seed(self, subcommand: str) -> int:
        return int(self.config[subcommand].get("seed_everything") or 0)

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
        trainer = self.trainer_class(**cfg)
        check_launcher(trainer)
        return with_step_counted_bar(trainer)


def _option(args: list[str], *names: str) -> str | None:
    """The value of the last ``--name value`` / ``--name=value`` among ``args``."""
    value = None
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                value = args[i + 1]
            elif a.startswith(n + "="):
                value = a[len(n) + 1:]
    return value


def branch_arguments(args: list[str]) -> list[str]:
    """``branch`` shorthands and base configuration.

    ``--from R`` = ``--branch.source R``, ``--kind K`` = ``--branch.kind K``. For every kind but
    ``transfer`` the source run's own configuration comes first (its ``imp`` section dropped), so
    the branch trains as the source's rounds did unless told otherwise. ``transfer`` trains another
    task: ``--task T`` takes the config files the source was run with, the source task's own files
    swapped for T's (``configs/task/nlvr2.yaml`` → ``configs/task/vqa.yaml``, the same for
    ``configs/demo/``), and the source's ``model.init``; or give T's configs with ``--config``.
    """
    out, task = [], None
    renames = {"--from": "--branch.source", "--kind": "--branch.kind"}
    it = iter(args)
    for a in it:
        key, eq, value = a.partition("=")
        if key == "--task":
            task = value if eq else next(it, None)
            continue
        out.append(renames[key] + eq + value if key in renames else a)
    source = _option(out, "--branch.source")
    kind = _option(out, "--branch.kind") or "random"
    if source is None:
        raise SystemExit("lightning-vl branch: --from (--branch.source) is required: a round folder such as "
                         "runs/nlvr2/imp-…/round_07")
    run = Path(source).resolve().parent
    config_file = run / "config.yaml"
    if not config_file.exists():
        raise SystemExit(f"lightning-vl branch: {config_file} is missing; is {source} a round of a lottery run?")
    config = yaml.safe_load(config_file.read_text())
    if kind != "transfer":
        if task is not None:
            raise SystemExit(f"lightning-vl branch: --task is for --kind transfer (this branch is {kind!r})")
        for key in ("imp", "config", "branch"):
            config.pop(key, None)
        return ["--config", yaml.safe_dump(config), *out]
    if task is not None:
        return [*_swapped_configs(config, task, run), *out]
    if _option(out, "--config") is None:
        raise SystemExit("lightning-vl branch --kind transfer: name the target task with --task (or give its "
                         "configs with --config)")
    return out


def _swapped_configs(config: dict, task: str, run: Path) -> list[str]:
    """The config files the source run was started with (its ``command.json``), its task's files
    swapped for ``task``'s, plus the source's init."""
    from .tasks import get_task

    get_task(task)  # a clear error for an unknown name
    source_task = (config.get("model") or {}).get("task")
    command = run / "command.json"
    files = json.loads(command.read_text()).get("config_files", []) if command.exists() else []
    args = []
    for f in files:
        path = Path(f)
        if path.stem == source_task:
            path = path.with_name(f"{task}{path.suffix}")
            if not path.exists():
                raise SystemExit(f"lightning-vl branch --task {task}: {path} does not exist (swapped from {f}, a "
                                 f"config file of the source run {run}); give the target's configs with --config")
        args += ["--config", str(path)]
    if not any(Path(a).stem == task for a in args[1::2]):
        raise SystemExit(f"lightning-vl branch --task {task}: {command} names no config file of the source's task "
                         f"{source_task!r} to swap; give the target's configs with --config")
    init = (config.get("model") or {}).get("init")
    return args + (["--model.init", str(init)] if init else [])


def make_demo(argv: list[str]) -> Path:
    """``lightning-vl demo``: the demo world — every task's files in its public schema, the
    pre-training corpus and the region-feature stores — sized for the demo model of
    ``--model-config`` (its ``img_dim`` sets the feature size, its ``vocab_size`` the vocabulary's).
    The demo models are pre-trained on it afterwards (``make pretrain``). ``.complete`` is
    written last; the Makefile regenerates a world without it."""
    from data_modules.demo import argument_parser, generate_from_args

    from .uniter import UniterConfig

    ap = argument_parser("lightning-vl demo", "Generate the offline demo world.")
    ap.add_argument("--model-config", default=str(ROOT / "configs" / "model" / "uniter-tiny.yaml"),
                    help="YAML with model.uniter sizes of the demo model (its img_dim sets --feat-dim, its "
                         "vocab_size --vocab-size; default: the project's configs/model/uniter-tiny.yaml)")
    args = ap.parse_args(argv)
    sizes = yaml.safe_load(Path(args.model_config).read_text())["model"]["uniter"]
    config = UniterConfig(**sizes)
    args.feat_dim = config.img_dim
    if args.vocab_size is not None and args.vocab_size != config.vocab_size:
        ap.error(f"--vocab-size {args.vocab_size} differs from the demo model's vocab_size {config.vocab_size} "
                 f"({args.model_config}); leave it out, the model's is used")
    args.vocab_size = config.vocab_size  # the demo vocabulary fills the model's word table exactly
    generate_from_args(args)
    out = Path(args.out)
    print(f"demo world written to {out}")
    return out


# name -> (module, function(argv, **options) -> exit code, options); imported on use
SUBCOMMANDS = {
    "study": ("lightning_vl.study.command", "study_main", {}),
    "overlap": ("lightning_vl.analysis.overlap", "main", {"prog": "lightning-vl overlap"}),
    "report": ("lightning_vl.study.command", "report_main", {}),
    "check-store": ("data_modules.check_store", "main", {"prog": "lightning-vl check-store"}),
}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args[:1] == ["demo"]:
        make_demo(args[1:])
        return
    if args[:1] and args[0] in SUBCOMMANDS:  # commands of their own, outside LightningCLI
        module, function, options = SUBCOMMANDS[args[0]]
        code = getattr(importlib.import_module(module), function)(args[1:], **options)
        if code:
            raise SystemExit(code)
        return
    if args[:1] == ["branch"]:
        args = ["branch", *branch_arguments(args[1:])]
        argv = args
    if args[:1] == ["data"]:
        from data_modules.prepare import main as prepare_main

        code = prepare_main(args[1:])
        if code:
            raise SystemExit(code)
        return
    try:
        with warnings.catch_warnings():
            # ``branch`` (and a caller of main(argv)) hands LightningCLI its argument list on purpose;
            # Lightning warns whenever that and sys.argv are both given, printing the whole config
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended", category=UserWarning)
            VLCli(
                VLModule,
                LightningDataModule,
                subclass_mode_data=True,
                save_config_callback=SaveConfigToRunDir,
                save_config_kwargs={"overwrite": True},
                args=argv,  # None: Lightning reads sys.argv itself
            )
    except ForkedRanksRefused as e:
        raise SystemExit(f"lightning-vl: {e}") from None
    except SIGTERMException:
        # Lightning stops a fit on SIGTERM with a bare SystemExit, i.e. exit status 0: a scheduler
        # that preempted the job would read "finished". Nothing of the unfinished round was recorded.
        print("lightning-vl: stopped by SIGTERM; the unfinished round was not recorded — re-run the same command "
              "to resume", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None


if __name__ == "__main__":
    main()
