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
    lightning-vl report --records reports/records.json   (the same from saved records)
    lightning-vl overlap vqa=runs/vqa/imp-…/round_07 nlvr2=runs/nlvr2/imp-…/round_07   (mask overlap)

Every Trainer flag passes through (``--trainer.max_steps 500``, ``--trainer.strategy ddp``…).

How a command reaches its code (``main``): ``fit``/``validate``/``test``/``predict`` are
LightningCLI's own subcommands; ``prune`` and ``branch`` build ``VLCli(run=False, command=…)``, whose
``add_arguments_to_parser`` adds the ``--imp``/``--branch`` group, then call ``VLCli.prune`` /
``VLCli.branch``, which hand the instantiated model and data to the lottery runners; the tools
(``demo``, ``data``, ``study``, ``report``, ``overlap``, ``check-store``) have parsers of their own.
Every command runs in ``quiet_console`` (``console.py``): Lightning's banner once, no adverts.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import yaml
from pytorch_lightning import LightningDataModule
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple, SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.optim import Optimizer
from typing_extensions import override

from .console import quiet_console
from .launchers import ForkedRanksRefused, check_launcher
from .lottery import BranchConfig, BranchRunner, ImpConfig, LotteryRunner, RunFolder
from .lottery.identity import BRANCH_KEYS, identity_hash, results_identity
from .lottery.report import branch_summary, prune_summary
from .training.module import VLModule

ROOT = Path(__file__).resolve().parents[1]
# the lottery commands: name -> (their argument group, its settings class)
LOTTERY_COMMANDS = {"prune": ("imp", ImpConfig), "branch": ("branch", BranchConfig)}
TRAINER_COMMANDS = tuple(LightningCLI.subcommands())  # fit, validate, test, predict: Lightning's own


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


class VLArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose dumps (``--print_config``, ``config.yaml``, the run identity)
    leave out ``model.backbone`` while it is None (UNITER from ``--model.uniter``): the resolved
    configuration of every UNITER command stays as it was before backbones were selectable.

    Example:
        ``lightning-vl fit --config … --print_config`` shows no ``backbone:`` line unless one is given.

    Raises:
        Whatever ``LightningArgumentParser.dump`` raises.
    """

    def dump(self, cfg, *args: Any, **kwargs: Any) -> str:
        keys = [k for k in ("model.backbone", *(f"{c}.model.backbone" for c in ("fit", "validate", "test", "predict")))
                if cfg.get(k, "") is None]
        if keys:
            cfg = cfg.clone()
            for key in keys:
                del cfg[key]
        return super().dump(cfg, *args, **kwargs)


class VLCli(LightningCLI):
    """LightningCLI for UNITER on the project's tasks, with the two lottery commands beside Trainer's.

    ``fit``, ``validate``, ``test`` and ``predict`` are Lightning's own subcommands (``run=True``).
    ``prune`` and ``branch`` are built on LightningCLI's public ``run=False`` mode: the parser holds
    the model, data and Trainer arguments plus the command's group (``--imp.*`` for ``prune``,
    ``--branch.*`` for ``branch``, added in :meth:`add_arguments_to_parser`), the classes are
    instantiated as for ``fit``, and :meth:`prune` / :meth:`branch` then hand ``config_init`` to
    the lottery runner, which builds a fresh Trainer per round with :meth:`_round_trainer`.
    Every Trainer of a command is made by :meth:`instantiate_trainer` or :meth:`_round_trainer`.

    Example:
        >>> cli = VLCli(VLModule, LightningDataModule, subclass_mode_data=True, run=False,
        ...             command="prune", args=["--config", "configs/task/nlvr2.yaml", ...])  # doctest: +SKIP
        >>> cli.prune()  # doctest: +SKIP

    Args:
        command: ``prune`` or ``branch`` (with ``run=False``), or ``None`` for Lightning's own
            subcommands; every other argument is LightningCLI's.

    Raises:
        ValueError: ``command`` is not a lottery command, or is given with ``run=True``.
    """

    def __init__(self, *args: Any, command: Optional[str] = None, **kwargs: Any) -> None:
        if command is not None and command not in LOTTERY_COMMANDS:
            raise ValueError(f"VLCli: command must be one of {sorted(LOTTERY_COMMANDS)} or None, got {command!r}")
        if command is not None and kwargs.get("run", True):
            raise ValueError(f"VLCli(command={command!r}) parses the lottery command's own arguments: pass run=False")
        self.command = command
        kwargs.setdefault("parser_class", VLArgumentParser)
        super().__init__(*args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The data module knows the label strings (e.g. VQA's answer vocabulary); the model gets
        them when both are instantiated. A lottery command adds its group: ``--imp.*``
        (:class:`ImpConfig`) or ``--branch.*`` (:class:`BranchConfig`).

        Example:
            ``lightning-vl prune --config … --imp.method random --imp.target_sparsity 0.5``
        """
        parser.link_arguments("data.labels", "model.labels", apply_on="instantiate")
        if self.command is not None:
            key, config_class = LOTTERY_COMMANDS[self.command]
            # Lightning adds --optimizer/--lr_scheduler after this hook unless they are here already; added
            # first, as Lightning would, they keep their place before the lottery group in config.yaml
            parser.add_optimizer_args((Optimizer,))
            parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
            parser.add_class_arguments(config_class, key, help=_first_line(config_class))

    @override
    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The command's Trainer, as Lightning builds it, with the step-counted progress bar.

        Example:
            ``lightning-vl fit --trainer.max_steps 300`` trains with ``self.instantiate_trainer()``.

        Raises:
            ForkedRanksRefused: the strategy launches ranks by forking (``ddp_fork``, ``ddp_notebook``).
            MisconfigurationException: (Lightning's) the Trainer flags do not fit together.
        """
        trainer = super().instantiate_trainer(**kwargs)
        check_launcher(trainer)  # before anything runs: fork-based launchers are refused (lightning_vl/launchers.py)
        return with_step_counted_bar(trainer)

    @override
    def before_instantiate_classes(self) -> None:
        """A bad ``--imp.*`` (an unknown strategy, options it does not take) is a usage error,
        reported before any model is built (the strategy names are the registry's, not a Literal).

        Raises:
            SystemExit: (the parser's usage error) the ``--imp`` group does not make an ImpConfig.
        """
        if self.command != "prune":
            return
        imp = self.config.get("imp")
        if imp is None or isinstance(imp, ImpConfig):
            return
        try:
            ImpConfig(**(imp.as_dict() if hasattr(imp, "as_dict") else dict(imp)))
        except (TypeError, ValueError) as err:
            self.parser.error(str(err))

    def prune(self) -> list[dict]:
        """Find lottery tickets: levels of fine-tuning and pruning (IMP or another strategy), resumable.

        The run folder ``<imp.root>/<task>/<method>-<hash>`` is named by the results-determining part
        of the resolved configuration (``lottery/identity.py``), so the same command resumes it.
        Ends with a summary: the sparsest round that kept ≥ 99% of the dense score, the folder, and
        the next commands.

        Example:
            ``lightning-vl prune --config configs/task/nlvr2.yaml … --imp.target_sparsity 0.7``

        Raises:
            RunSettingsChanged: a named run (``--imp.name``) or an existing folder holds other settings.
            RunFolderBusy: another process is running the same folder.
        """
        imp = _as(ImpConfig, self.config_init["imp"])
        config_yaml, config, defaults = self._resolved()
        identity = results_identity(config, defaults)
        folder = RunFolder(Path(imp.root) / self.model.task_name
                           / (imp.name or f"{imp.method}-{identity_hash(identity)}"))
        results = LotteryRunner(imp, self.model, self.datamodule, self._round_trainer, folder, config_yaml=config_yaml,
                                identity=identity, command=self._command(), seed=self._seed(),
                                wandb_config=config).run()
        self._report_outcome({"run_dir": str(folder.path), "results": results})
        for line in prune_summary(results, folder.path, self.model.task_name, imp.method, _make_settings(imp)):
            rank_zero_info(line)
        return results

    def branch(self) -> dict:
        """Fine-tune a variant of a trained round's ticket: random or shuffled mask, other init, other task.

        The branch folder ``<run>/branches/<kind>-<hash>`` sits in the source run; the summary at the
        end gives its score beside the source round's.

        Example:
            ``lightning-vl branch --from runs/nlvr2/imp-…/round_04 --kind shuffle``

        Raises:
            RunSettingsChanged: the branch folder holds other settings.
            ValueError: the source round is not a finished round of a lottery run, or the kind does
                not fit it (e.g. ``reinit`` with the source's own ``--model.init``).
        """
        branch = _as(BranchConfig, self.config_init["branch"])
        config_yaml, config, defaults = self._resolved()
        identity = results_identity(config, defaults, section="branch", keys=BRANCH_KEYS)
        kind = f"transfer-{self.model.task_name}" if branch.kind == "transfer" else branch.kind
        runner = BranchRunner(branch, self.model, self.datamodule, self._round_trainer,
                              branch.name or f"{kind}-{identity_hash(identity)}", config_yaml=config_yaml,
                              identity=identity, command=self._command(), seed=self._seed(),
                              wandb_config=config)
        result = runner.run()
        self._report_outcome({"run_dir": str(runner.folder.path), "result": result})
        if result:
            for line in branch_summary(result, runner.folder.path):
                rank_zero_info(line)
        return result

    def _resolved(self) -> tuple[str, dict, dict]:
        """The resolved configuration as YAML and as a dict, and the parser's defaults."""
        config_yaml = self.parser.dump(self.config, skip_none=False)
        defaults = yaml.safe_load(self.parser.dump(self.parser.get_defaults(), skip_none=False, skip_validation=True))
        return config_yaml, yaml.safe_load(config_yaml), defaults

    @staticmethod
    def _report_outcome(outcome: dict) -> None:
        """For ``lightning-vl study``: where the command's results are (``$LIGHTNING_VL_RESULT_FILE``)."""
        target = os.environ.get("LIGHTNING_VL_RESULT_FILE")
        if target and rank_zero_only.rank == 0:
            Path(target).write_text(json.dumps(outcome, default=str))

    def _command(self) -> dict:
        """How the run was started (``command.json``): the command line and its config files."""
        files = self.config.get("config") or []
        return {"argv": list(sys.argv), "cwd": os.getcwd(),
                "config_files": [p for p in (str(getattr(f, "absolute", f)) for f in files) if os.path.isfile(p)]}

    def _seed(self) -> int:
        return int(self.config.get("seed_everything") or 0)

    def _round_trainer(self, round_dir: Path, callbacks: list) -> pl.Trainer:
        """A fresh Trainer per round from the configured flags: own callbacks copied, a CSV log
        in the round folder unless another logger was configured."""
        cfg = dict(self.config_init.get("trainer") or {})
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


def _as(config_class: type, value: Any) -> Any:
    """``value`` as ``config_class`` (jsonargparse may hand a group over as a namespace or a dict)."""
    if isinstance(value, config_class):
        return value
    return config_class(**(value.as_dict() if hasattr(value, "as_dict") else dict(value)))


def _first_line(obj: Any) -> str:
    return (inspect.getdoc(obj) or "").strip().splitlines()[0] if inspect.getdoc(obj) else ""


def _make_settings(imp: ImpConfig) -> str:
    """The ``make prune`` settings a comparable run repeats: those of ``imp`` that differ from the defaults."""
    default = ImpConfig()
    out = []
    for var, field in (("SPARSITY", "target_sparsity"), ("SCHEDULE", "schedule"), ("REWIND", "rewind_step"),
                       ("RUNS", "root")):
        if getattr(imp, field) != getattr(default, field):
            out.append(f"{var}={getattr(imp, field)}")
    return " ".join(out)


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
    from .tasks.specs import get_task

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

    from .model.uniter import UniterConfig

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
TOOL_HELP = {
    "demo": "Generate the offline demo world (every task's files, the pre-training corpus, region features).",
    "data": "Link, build and check a task's public files (--task vqa --src ~/downloads/vqa).",
    "study": "Run a study's grid of runs and branches; many workers may share it.",
    "report": "Tables and figures of every run folder (--runs runs --out reports).",
    "overlap": "Mask overlap of tickets (vqa=runs/vqa/imp-…/round_07 nlvr2=…).",
    "check-store": "Scan a region-feature store for damage.",
}


def usage() -> str:
    """``lightning-vl --help``: every command with its one-line description."""
    lines = ["usage: lightning-vl COMMAND [options]        (lightning-vl COMMAND --help: the command's options)", "",
             "Lottery tickets in vision-and-language transformers (UNITER), with PyTorch Lightning.", "",
             "training (LightningCLI: --config files, every Trainer flag, --print_config):"]
    for name in TRAINER_COMMANDS:
        lines.append(f"  {name:<12} {_first_line(getattr(pl.Trainer, name))}")
    lines.append(f"  {'prune':<12} {_first_line(VLCli.prune)}")
    lines.append(f"  {'branch':<12} {_first_line(VLCli.branch)}")
    lines += ["", "tools:"] + [f"  {name:<12} {text}" for name, text in TOOL_HELP.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``lightning-vl COMMAND …``: Lightning's subcommands, the lottery commands and the tools.

    Example:
        >>> main(["prune", "--config", "configs/task/nlvr2.yaml", "--imp.method", "random"])  # doctest: +SKIP

    Raises:
        SystemExit: a tool's non-zero exit code, 2 for an unknown command or bad arguments, 128 + 15
            when a fit was stopped by SIGTERM.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = args[0] if args else None
    if command in (None, "-h", "--help"):
        print(usage(), file=sys.stdout if command else sys.stderr)
        if command is None:
            raise SystemExit(2)
        return
    if command == "demo":
        make_demo(args[1:])
        return
    if command in SUBCOMMANDS:  # commands of their own, outside LightningCLI
        module, function, options = SUBCOMMANDS[command]
        code = getattr(importlib.import_module(module), function)(args[1:], **options)
        if code:
            raise SystemExit(code)
        return
    if command == "data":
        from data_modules.prepare import main as prepare_main

        code = prepare_main(args[1:])
        if code:
            raise SystemExit(code)
        return
    if command == "branch" and not {"-h", "--help"} & set(args[1:]):
        args = ["branch", *branch_arguments(args[1:])]
    try:
        with quiet_console(), warnings.catch_warnings():
            # the lottery commands (and a caller of main(argv)) hand LightningCLI their argument list on
            # purpose; Lightning warns whenever that and sys.argv are both given, printing the whole config
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended", category=UserWarning)
            options = dict(subclass_mode_data=True, save_config_callback=SaveConfigToRunDir,
                           save_config_kwargs={"overwrite": True})
            if command in LOTTERY_COMMANDS:
                cli = VLCli(VLModule, LightningDataModule, **options, run=False, command=command, args=args[1:],
                            parser_kwargs={"prog": f"lightning-vl {command}",
                                           "description": _first_line(getattr(VLCli, command))})
                getattr(cli, command)()
            else:  # Lightning's own subcommands (fit, validate, test, predict) and their errors
                VLCli(VLModule, LightningDataModule, **options, args=argv)  # None: Lightning reads sys.argv
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
