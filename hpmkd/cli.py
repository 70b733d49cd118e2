"""`hpmkd <command>`: train (a Hydra app), models, store, report, acm, export, bench."""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, NoReturn

from hpmkd.errors import UserError
from hpmkd.process_exit import exit_status, exit_without_teardown, observed

if TYPE_CHECKING:
    from rich.table import Table

    from hpmkd.store import ArtifactStore

USAGE = """usage: hpmkd <command> [args]   (hpmkd --version; shell completion:
       eval "$(hpmkd train -sc install=bash)")

commands:
  train    train or distil (Hydra overrides; `hpmkd train --help` lists config groups)
  models   list the model zoo with parameter counts
  store    list (ls) or prune (gc) the shared store of trained models and the run history
  report   tables (mean +- std over seeds) from finished runs
  acm      what HPM-KD's configuration manager would choose for a setting (train overrides)
  export   a run's student as ONNX, TorchScript or torch.export files for raw inputs; a card
  bench    latency and throughput of a run's student and teacher (or of a zoo model)
"""


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


# Hydra plugins that come with one of hpmkd's optional extras: option -> extra
PLUGIN_EXTRAS = {
    "hydra/sweeper/optuna": "optuna",
    "hydra/launcher/submitit_slurm": "slurm",
    "hydra/launcher/submitit_local": "slurm",
}


def _hydra_error_message(err: Exception) -> str:
    from hydra.errors import MissingConfigException

    from hpmkd.config import needs_extra

    if isinstance(err, MissingConfigException) and err.options is not None:
        option = err.missing_cfg_file or ""
        if option in PLUGIN_EXTRAS:
            name = option.rsplit("/", 1)
            return needs_extra(f"{name[0]}={name[1]}", PLUGIN_EXTRAS[option])
        group = option.rsplit("/", 1)
        if len(group) == 2:
            return f"unknown {group[0]} '{group[1]}'; valid: {', '.join(sorted(err.options))}"
    message = _one_line(str(err))
    # Hydra's hint to add the key with `+` is wrong wherever the node does not accept new keys
    # (config_keys), so it is not repeated.
    missing = re.match(r"Could not override '([^']+)'\. To append to your config use \+", message)
    if missing:
        return f"Could not override '{missing[1]}': no such key"
    return message


def _pack_switch(args: list[str]) -> list[str]:
    """``pack=true`` (conf/train.yaml) as the override it stands for: ``hydra/launcher=packed``
    under -m; without -m it does nothing (one run has nothing to pack) and says so in one line,
    so that scripts can pass it to every command alike."""
    given = [a for a in args if a.startswith("pack=")]
    if not given:
        return args
    rest = [a for a in args if not a.startswith("pack=")]
    value = given[-1].removeprefix("pack=").strip().lower()
    if value not in ("true", "false"):
        raise UserError(f"pack takes true or false; got '{given[-1]}'")
    if value == "false":
        return rest
    if not {"-m", "--multirun"} & set(args):
        print("hpmkd: pack=true has no effect on a single run (only -m sweeps are packed)",
              file=sys.stderr)  # fmt: skip
        return rest
    launchers = [a for a in rest if a.startswith("hydra/launcher=")]
    if launchers and launchers[-1] != "hydra/launcher=packed":
        raise UserError(f"pack=true means hydra/launcher=packed; it cannot go with {launchers[-1]}")
    return rest if launchers else [*rest, "hydra/launcher=packed"]


def train(args: list[str]) -> int:
    """Run the Hydra app with ``args`` as its command line."""
    import hydra
    from hydra.errors import CompactHydraException
    from omegaconf import DictConfig

    from hpmkd import config

    config.setup()

    user_errors: list[UserError] = []
    started: list[bool] = []

    @hydra.main(version_base="1.3", config_path=str(config.config_dir()), config_name="train")
    def app(cfg: DictConfig) -> float | None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        started.append(True)
        single_run = HydraConfig.get().mode != RunMode.MULTIRUN
        try:
            if cfg.get("pack"):  # from a config file: pack=true on the command line is a launcher
                raise UserError(
                    "pack: true works on the command line only (hpmkd train -m ... pack=true); "
                    "in a config file, select hydra/launcher: packed"
                )
            if single_run:  # a sweep member's failure is recorded by run_train (failure.json)
                config.check_values(cfg)
            # torch and Lightning only from here on: --help, --cfg and config errors answer fast
            from hpmkd.engine.fit import quiet_lightning
            from hpmkd.train import run_train

            quiet_lightning()
            return objective(run_train(cfg), cfg.get("optimized_metric"))
        except UserError as err:
            # A sweep member fails on its own (Hydra names it); a single run reports one line.
            if not single_run:
                raise
            user_errors.append(err)
            return None

    # Hydra must not print its own multi-line report: user errors become one line, bugs keep
    # their traceback.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # Hydra's completion script names the program by sys.argv[0]; it calls `hpmkd -sc query=...`
    if _shell_completion(args):
        sys.argv = ["hpmkd", *args]
    else:
        sys.argv = ["hpmkd train", *_pack_switch(args)]
    try:
        app()
    except UserError as err:
        return _fail(str(err))
    except CompactHydraException as err:
        return _fail(_hydra_error_message(err))
    except OSError as err:
        if started or err.filename is None:
            raise
        # Hydra creates the run directory (HPMKD_OUTPUTS, hydra.run.dir) before the app starts
        return _fail(f"cannot create the run directory '{err.filename}': {err.strerror}")
    return _fail(str(user_errors[0])) if user_errors else 0


def objective(results: dict[str, Any], metric: str | None) -> float | None:
    """What a Hydra sweeper optimises: ``results[metric]`` as a float.

    None where the run has no such value (``acc_best`` without a validation split), which only a
    sweeper other than Hydra's basic one (Optuna) cannot take: a UserError then.
    """
    value = results.get(metric) if metric else None
    if value is not None:
        return float(value)
    if metric and _optimising_sweeper():
        raise UserError(
            f"optimized_metric '{metric}' has no value in this run's results "
            f"(acc_best and acc_last need a validation split); pick another optimized_metric"
        )
    return None


def _optimising_sweeper() -> bool:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    target = HydraConfig.get().sweeper.get("_target_", "")
    return bool(target) and not target.endswith(".BasicSweeper")


_COMPLETION_FLAGS = ("-sc", "--shell-completion")


def _shell_completion(args: list[str]) -> bool:
    return any(a in _COMPLETION_FLAGS or a.startswith("--shell-completion=") for a in args)


def complete(args: list[str]) -> int:
    """``hpmkd -sc query=<shell>``, as the script of ``hpmkd train -sc install=<shell>`` calls it
    with the line being completed in COMP_LINE: the command names, then train's overrides."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    new_word = line.endswith(" ")
    if len(words) >= 2 and words[1] == "train" and (new_word or len(words) > 2):
        # Hydra completes the line after the program's name: `train` is not an override
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]]) + (" " if new_word else "")
        return train(args)
    if len(words) == 1 + (not new_word):
        prefix = "" if new_word else words[1]
        print("\n".join(name for name in COMMANDS if name.startswith(prefix)))
    return 0


def _fail(message: str) -> int:
    print(f"hpmkd: error: {_one_line(message)}", file=sys.stderr)
    return 2


def models(args: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from hpmkd.models import build_model, count_parameters, list_models, model_info

    parser = argparse.ArgumentParser(prog="hpmkd models", description="List the model zoo.")
    parser.add_argument(
        "--input-shape", default="3,32,32", help="per-sample shape, e.g. 3,32,32 or 64"
    )
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument(
        "names", nargs="*", help="models to count (default: the zoo); also timm:<name>, "
        "hf:<id>, a callable's dotted path such as torchvision.models.resnet18",
    )  # fmt: skip
    opts = parser.parse_args(args)
    shape = tuple(int(v) for v in opts.input_shape.split(","))
    table = Table(title=f"hpmkd models (input {shape}, {opts.classes} classes)")
    for column in ("name", "family", "params"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for name in opts.names or list_models():
        info = model_info(name)
        if info.needs_image and len(shape) != 3:
            count = "needs image input"
        else:
            model = build_model(name, num_classes=opts.classes, input_shape=shape)
            count = f"{count_parameters(model):,}"
        table.add_row(name, info.family, count)
    Console().print(table)
    return 0


def store(args: list[str]) -> int:
    from rich.console import Console

    from hpmkd.config import register_resolvers
    from hpmkd.store import ArtifactStore

    parser = argparse.ArgumentParser(prog="hpmkd store", description="Inspect or prune the store.")
    parser.add_argument("action", choices=["ls", "gc"])
    parser.add_argument("--root", default=None, help="store directory (default: the config's)")
    parser.add_argument(
        "--older-than", type=float, metavar="DAYS", help="gc: artifacts created over DAYS ago"
    )
    parser.add_argument(
        "--role", action="append", default=[], help="gc: artifacts of this role (teacher, link1...)"
    )
    parser.add_argument("--dry-run", action="store_true", help="gc: say what would go")
    opts = parser.parse_args(args)
    register_resolvers()
    artifacts = ArtifactStore(opts.root or _default_store_root())
    console = Console()
    if opts.action == "ls":
        console.print(_store_table(artifacts))
        return 0
    removed = artifacts.gc(older_than_days=opts.older_than, roles=opts.role, dry_run=opts.dry_run)
    verb = "would remove" if opts.dry_run else "removed"
    console.print(f"{verb} {len(removed)} artifacts from {artifacts.root}")
    for artifact in removed:
        meta = artifact.meta
        console.print(f"  {artifact.key[:12]} {meta.get('role')} {meta.get('arch')}")
    return 0


def _store_table(artifacts: ArtifactStore) -> Table:
    from rich.table import Table

    items = artifacts.list()
    table = Table(title=f"hpmkd store: {len(items)} artifacts", caption=str(artifacts.root))
    for column in ("key", "role", "arch", "seed", "val acc %", "test acc %", "MB"):
        table.add_column(column, overflow="fold", no_wrap=column in ("key", "role"))
    for artifact in items:
        meta = artifact.meta
        table.add_row(
            artifact.key[:12],
            str(meta.get("role", "")),
            str(meta.get("arch")),
            str(meta.get("seed")),
            _fmt(meta.get("val_acc")),
            _fmt(meta.get("test_acc")),
            f"{artifact.size_bytes() / 1e6:.1f}",
        )
    return table


def _default_store_root() -> str:
    import platformdirs

    cache = os.environ.get("HPMKD_CACHE") or platformdirs.user_cache_dir("hpmkd")
    return os.path.join(cache, "store")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(args: list[str]) -> int:
    from hpmkd.report.command import report as run_report

    return run_report(args)


def acm(args: list[str]) -> int:
    from hpmkd.hpm.inspect import show_acm

    show_acm(args)
    return 0


def export(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hpmkd export",
        description="Export a run's student with its input preprocessing and class names baked "
        "in (raw uint8 images or raw table rows in, probabilities out), and a model_card.md.",
    )
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("--format", default="onnx", help="onnx, torchscript, exported or all")
    parser.add_argument(
        "--quantize",
        choices=["dynamic", "static", "none"],
        default="none",
        help="int8: dynamic (Linear layers; TorchScript file) or static "
        "(onnxruntime, calibrated on training rows); accuracy before and after",
    )
    parser.add_argument("--out", default=None, help="output directory (default: <run>/export)")
    parser.add_argument(
        "--check-test",
        action="store_true",
        help="load the run's data and check the files on the test split",
    )
    opts = parser.parse_args(args)
    from pathlib import Path

    from rich.console import Console

    from hpmkd.deploy.artefacts import export_run, parse_formats

    formats = parse_formats(opts.format)
    record = export_run(
        Path(opts.run_dir),
        formats,
        opts.quantize,
        Path(opts.out) if opts.out else None,
        use_data=opts.check_test,
    )
    console = Console()
    for entry in record["files"].values():
        console.print(
            f"{entry['path']}: {entry['bytes']:,} bytes, max difference to PyTorch "
            f"{entry['max_diff']:.2g} on {record['check_rows']} {record['checked_on']}"
        )
    if quantized := record["quantized"]:
        console.print(
            f"{quantized['path']}: int8 ({quantized['mode']}), test accuracy "
            f"{quantized['acc_before']:.2f} % -> {quantized['acc_after']:.2f} %"
        )
    console.print(f"model card: {record['card']}")
    return 0


def bench(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hpmkd bench",
        description="Latency (batch 1: p50, p95) and throughput (--batch) of a run's student and "
        "teacher, or of a zoo model, in eager PyTorch and each exported format.",
    )
    parser.add_argument("target", help="a finished run directory, or a model of `hpmkd models`")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=64, help="batch size for throughput")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls at batch 1")
    parser.add_argument(
        "--runtimes",
        default="all",
        help="eager, onnx (onnxruntime), torchscript, exported; comma-separated or all",
    )
    parser.add_argument("--input-shape", default="3,32,32", help="a zoo model's per-sample shape")
    parser.add_argument("--classes", type=int, default=10, help="a zoo model's classes")
    opts = parser.parse_args(args)
    if opts.batch < 1 or opts.repeats < 1 or (opts.threads is not None and opts.threads < 1):
        raise UserError("--batch, --repeats and --threads must be positive integers")
    from rich.console import Console

    from hpmkd.deploy.bench import bench as run_bench
    from hpmkd.deploy.bench_table import bench_table, parse_runtimes

    record = run_bench(
        opts.target,
        runtimes=parse_runtimes(opts.runtimes),
        batch=opts.batch,
        device=opts.device,
        threads=opts.threads,
        repeats=opts.repeats,
        input_shape=tuple(int(v) for v in opts.input_shape.split(",")),
        classes=opts.classes,
    )
    console = Console()
    console.width = max(console.width, 110)  # ten numeric columns: no folding in narrow pipes
    console.print(bench_table(record))
    return 0


COMMANDS = {
    "train": train, "models": models, "store": store, "report": report, "acm": acm,
    "export": export, "bench": bench,
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"hpmkd {version('hpmkd')}")
        sys.exit(0)
    command, rest = argv[0], argv[1:]
    if command in _COMPLETION_FLAGS:
        sys.exit(complete(argv))
    if command not in COMMANDS:
        sys.exit(_fail(f"unknown command '{command}'; valid: {', '.join(COMMANDS)}"))
    try:
        sys.exit(COMMANDS[command](rest))
    except UserError as err:
        sys.exit(_fail(str(err)))


def console_main() -> NoReturn:
    """The ``hpmkd`` command (and ``python -m hpmkd.cli``): :func:`main`, then the process ends
    without the interpreter's teardown (``hpmkd.process_exit``). Exceptions other than
    SystemExit (bugs, KeyboardInterrupt) take Python's own exit: traceback, status 1 (an
    interrupt: SIGINT's)."""
    try:
        main()
        status = 0
    except SystemExit as stop:
        if observed():
            raise
        status = exit_status(stop.code)
    exit_without_teardown(status)


if __name__ == "__main__":
    console_main()
