"""The ``bana`` host: builds one Typer command per discovered stage (wiring only).

Each stage's config-section fields become its options; every stage also takes --data, --run,
--config, --set, --device and --quiet. Errors caused by the user's input print one line and
exit non-zero; config errors exit with code 2 before any work starts.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, Union

import typer
from pydantic import BaseModel
from rich.console import Console

from banacli import __version__
from banacli.config import resolve_config, root_model
from banacli.errors import BanaError, ConfigError, os_error_line
from banacli.stage import Stage, StageContext, discover_stages, setup_stage_logging
from banacli.threads import configure_threads, prepare_openmp_env

COMMON = ("data", "run", "config", "set_", "device", "quiet")
_err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)  # user text is never markup


def _unwrap_optional(ann: Any) -> Any:
    origin = typing.get_origin(ann)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        if all(typing.get_origin(a) is Literal or a is str for a in args):
            return str
    return ann


def _option_for(section: str, name: str, field: Any, positional: bool) -> inspect.Parameter | None:
    """A typer parameter for one config field, or None when the field is --set only."""
    ann = _unwrap_optional(field.annotation)
    default_txt = field.default if field.default is not None else "none"
    help_text = f"{field.description or ''} (config {section}.{name}; default {default_txt})"
    help_text = help_text.replace("[", "(").replace("]", ")")
    flag = "--" + name.replace("_", "-")
    if typing.get_origin(ann) is Literal or ann in (int, float, str, Path, bool):
        py_type: Any = ann
    elif typing.get_origin(ann) is list and positional:
        py_type = list[Path] if typing.get_args(ann)[0] is Path else list[str]
    else:
        return None
    if positional:
        info = typer.Argument(None, help=help_text, show_default=False, metavar=name.upper())
    elif py_type is bool:
        info = typer.Option(None, f"{flag}/--no-{name.replace('_', '-')}", help=help_text, show_default=False)
    else:
        info = typer.Option(None, flag, help=help_text, show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=Optional[py_type])


def _common_params(stage: Stage) -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter("data", kw, annotation=Optional[Path], default=typer.Option(
            None, "--data", help="Dataset root (PASCAL VOC layout)." + ("" if stage.needs_data else " Optional for this stage."),
            show_default=False)),
        inspect.Parameter("run", kw, annotation=Optional[Path], default=typer.Option(
            None, "--run", "--run-dir", show_default=False,
            help="Run directory; this stage writes to RUN/" + stage.section + "/. Under torchrun write "
                 "`torchrun ... -m banacli -- STAGE --run RUN` (or --run-dir): without the --, torchrun "
                 "takes --run for its own --run-path.")),
        inspect.Parameter("config", kw, annotation=Optional[Path], default=typer.Option(
            None, "--config", help="YAML config file with sections data, cls, labels, seg, eval, export.",
            show_default=False)),
        inspect.Parameter("set_", kw, annotation=Optional[list[str]], default=typer.Option(
            None, "--set", help="Override one key, e.g. --set cls.grid_size=4 (repeatable).", show_default=False,
            metavar="SECTION.KEY=VALUE")),
        inspect.Parameter("device", kw, annotation=str, default=typer.Option(
            "auto", "--device", help="auto, cpu, cuda or cuda:N.", show_default=True)),
        inspect.Parameter("quiet", kw, annotation=bool, default=typer.Option(
            False, "--quiet", "-q", help="No progress bars or messages; errors still print.")),
    ]


OVERRIDES_ENV = "BANA_OVERRIDES"


def env_overrides() -> list[str]:
    """``section.key=value`` items from $BANA_OVERRIDES (whitespace-separated), applied after every
    --set: a way to shrink documented commands for a smoke test without editing them."""
    return os.environ.get(OVERRIDES_ENV, "").split()


def run_stage(stage: Stage, model: type[BaseModel], values: dict[str, Any]) -> int:
    """Resolve the config, validate paths, then call the stage. Returns the exit code."""
    section_vals = {k: v for k, v in values.items() if k not in COMMON and v is not None}
    overrides: dict[str, dict[str, Any]] = {stage.section: section_vals}
    if values.get("data") is not None:
        overrides.setdefault("data", {})["root"] = str(values["data"])
    held = contextlib.ExitStack()  # the run-directory lock, released however the stage ends
    ctx: StageContext | None = None
    try:
        cfg = resolve_config(model, config_file=values.get("config"), overrides=overrides,
                             sets=[*(values.get("set_") or []), *env_overrides()])
        data_root = cfg.data.root
        if stage.needs_data:
            if data_root is None:
                raise ConfigError(f"bana {stage.name}: --data ROOT is required (or data.root in the config)")
            if not Path(data_root).is_dir():
                raise ConfigError(f"{data_root}: dataset root not found")
        run_dir = values.get("run")
        if stage.needs_run and run_dir is None:
            raise ConfigError(f"bana {stage.name}: --run DIR is required")
        if run_dir is not None and Path(run_dir).exists() and not Path(run_dir).is_dir():
            raise ConfigError(f"{run_dir}: --run names a file, not a directory")
        device = values.get("device") or "auto"
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
        # under torchrun only rank 0 prints, logs and writes the resolved config
        main_rank = int(os.environ.get("RANK", "0")) == 0
        ctx = StageContext(stage=stage, config=cfg, data_root=Path(data_root) if data_root else None,
                           run_dir=Path(run_dir) if run_dir else None, device=device,
                           quiet=bool(values.get("quiet")) or not main_rank, console=_err)
        if ctx.run_dir is not None and main_rank and stage.locks_run:
            from banacli.runs import RunDir  # loads torch, which `bana --help` and stage discovery do not

            part = getattr(ctx.section, "shard", None)  # gen-labels --shard K/N: one lock per shard
            held.enter_context(RunDir(ctx.run_dir).lock(stage.section, stage.name, part))  # one process per stage and run
        handler = setup_stage_logging(ctx) if main_rank else None
        try:
            ctx.logger.info("bana %s %s: %s", __version__, stage.name, " ".join(sys.argv[1:]))
            ctx.logger.info(configure_threads())
            if env_overrides():
                ctx.logger.info("%s: %s", OVERRIDES_ENV, " ".join(env_overrides()))
            stage.run(ctx)
            # RUN/<section>/config.yaml describes what is there: a refused or failed run leaves the
            # last one as it was. Long stages write it themselves once accepted (writes_own_config).
            if ctx.run_dir is not None and main_rank and not getattr(stage.run, "writes_own_config", False):
                ctx.save_resolved_config()
        finally:
            if handler is not None:
                ctx.logger.removeHandler(handler)
                handler.close()
    except BanaError as exc:
        if not _already_shown(exc, ctx):
            _err.print(f"bana {stage.name}: error: {exc}", markup=False)
        return exc.exit_code
    except OSError as exc:  # a read-only or full disk, a path that is a file, ...: one line, no traceback
        _err.print(f"bana {stage.name}: error: {os_error_line(exc)}", markup=False)
        return 1
    except KeyboardInterrupt:
        _err.print(f"bana {stage.name}: interrupted; finished outputs are kept", markup=False)
        return 130
    finally:
        held.close()
    return 0


def _already_shown(exc: BanaError, ctx: StageContext | None) -> bool:
    """True for a training run stopped by SIGTERM / SIGINT whose stop line the loop has printed
    already: it prints it through ``banacli.engine.logs.log_line_for``, which writes to stderr when that
    is not a terminal and --quiet is off (on a terminal the progress bar has it, so the host prints it)."""
    stop = sys.modules.get("banacli.engine.stop")  # not imported: the error cannot be a training stop
    return (stop is not None and isinstance(exc, stop.Stopped) and ctx is not None
            and not ctx.quiet and not ctx.console.is_terminal)


def _make_command(stage: Stage, model: type[BaseModel]):
    params: list[inspect.Parameter] = []
    fields = stage.config.model_fields
    taken = set(COMMON) | {"set"}
    for name in stage.arguments:
        p = _option_for(stage.section, name, fields[name], positional=True)
        if p is not None:
            params.append(p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD))
    for name, field in fields.items():
        if name in stage.arguments or name in taken:
            continue
        p = _option_for(stage.section, name, field, positional=False)
        if p is not None:
            params.append(p)
    params += _common_params(stage)

    def command(**values: Any) -> None:
        code = run_stage(stage, model, values)
        if code:
            raise typer.Exit(code)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = stage.name.replace("-", "_")
    command.__doc__ = stage.help
    return command


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bana {__version__}")
        raise typer.Exit()


def build_stage_model(stages: dict[str, Stage]) -> type[BaseModel]:
    """The config model of the whole YAML file for these stages (built-in + plugin sections)."""
    return root_model({s.section: s.config for s in stages.values()})


def build_app(stages: dict[str, Stage] | None = None) -> typer.Typer:
    """The Typer app with one subcommand per stage (discovered from entry points by default)."""
    if stages is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stages = discover_stages()
        for w in caught:
            _err.print(f"warning: {w.message}", markup=False)
    model = build_stage_model(stages)
    app = typer.Typer(
        name="bana",
        help="Bounding boxes to semantic segmentation: BAP classifier -> pseudo labels -> DeepLab with NAL.",
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit.")) -> None:
        """Bounding boxes to semantic segmentation (BANA, CVPR 2021)."""

    for stage in stages.values():
        app.command(name=stage.name, help=stage.help)(_make_command(stage, model))
    return app


def main() -> None:
    prepare_openmp_env()  # before torch is imported: idle OpenMP threads sleep (docs/usage.md)
    logging.getLogger("bana").propagate = False
    # `torchrun ... -m banacli -- gen-labels --run RUN`: the "--" keeps torchrun's parser off
    # our options (it reads --run as an ambiguous abbreviation of its --run-path); drop it here.
    if len(sys.argv) > 1 and sys.argv[1] == "--":
        del sys.argv[1]
    logging.raiseExceptions = False  # a full disk must not print logging tracebacks; the error line says it
    app = build_app()
    app()


if __name__ == "__main__":
    main()
