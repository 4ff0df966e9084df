"""Stages: the typed spec every ``bana.stages`` entry point loads, and the context a stage runs in.

A third party adds a subcommand by declaring an entry point in the group ``bana.stages`` that
names a :class:`Stage` object; nothing in ``banacli`` changes. An entry point that fails to
load, or loads something other than a Stage, is skipped with one warning naming it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from banacli.artifacts import atomic_write_text
from banacli.config import config_reference_markdown, dump_config, root_model

STAGE_GROUP = "bana.stages"


@dataclass(frozen=True)
class Stage:
    """What a ``bana.stages`` entry point must load.

    ``section`` names the config section the stage owns; its fields become the command's
    options (``labels.workers`` -> ``--workers``) and the stage's files go to ``RUN/section/``.
    ``config`` is that section's pydantic model (``extra="forbid"``, a description per field).
    ``arguments`` lists section fields taken as positional arguments instead of options.
    """

    name: str
    help: str
    run: Callable[[StageContext], Any]
    section: str
    config: type[BaseModel]
    arguments: tuple[str, ...] = ()
    needs_data: bool = True
    needs_run: bool = True
    locks_run: bool = True  # hold RUN/<section>/.lock while running (RunDir.lock); off for read-only stages

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").isalnum():
            raise ValueError(f"stage name {self.name!r} must be letters, digits and dashes")
        if not callable(self.run):
            raise TypeError(f"stage {self.name!r}: run must be callable")
        if not (isinstance(self.config, type) and issubclass(self.config, BaseModel)):
            raise TypeError(f"stage {self.name!r}: config must be a pydantic model class")
        for arg in self.arguments:
            if arg not in self.config.model_fields:
                raise ValueError(f"stage {self.name!r}: argument {arg!r} is not a field of its config")


def _load_entry_point(ep: EntryPoint) -> Stage | None:
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the host
        warnings.warn(f"bana: stage plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
        return None
    if not isinstance(obj, Stage):
        warnings.warn(
            f"bana: stage plugin {ep.name!r} ({ep.value}) is a {type(obj).__name__}, not a banacli.stage.Stage; skipped",
            stacklevel=2,
        )
        return None
    return obj


def discover_stages(eps: Iterable[EntryPoint] | None = None) -> dict[str, Stage]:
    """Load every stage of the ``bana.stages`` group, in name order; duplicates are skipped with a warning."""
    if eps is None:
        eps = entry_points(group=STAGE_GROUP)
    stages: dict[str, Stage] = {}
    for ep in sorted(eps, key=lambda e: e.name):
        stage = _load_entry_point(ep)
        if stage is None:
            continue
        if stage.name in stages:
            warnings.warn(f"bana: stage {stage.name!r} is registered twice; keeping the first", stacklevel=2)
            continue
        stages[stage.name] = stage
    return stages


@dataclass
class StageContext:
    """Everything a stage's run function gets: the resolved config, paths, device and output."""

    stage: Stage
    config: BaseModel
    data_root: Path | None
    run_dir: Path | None
    device: str = "auto"
    quiet: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True))
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("bana"))

    @property
    def section(self) -> Any:
        return getattr(self.config, self.stage.section)

    @property
    def stage_dir(self) -> Path:
        if self.run_dir is None:
            raise RuntimeError(f"stage {self.stage.name} has no run directory")
        return self.run_dir / self.stage.section

    def torch_device(self):
        from banacli.engine.dist import resolve_device  # loads torch

        return resolve_device(self.device)

    def info(self, message: str) -> None:
        """Log to the stage's log file, and print unless --quiet."""
        self.logger.info(message)
        if not self.quiet:
            self.console.print(message, highlight=False, markup=False)  # user text: no rich markup

    def progress(self) -> Progress:
        """A rich progress display (disabled with --quiet); use as a context manager."""
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}", markup=False),
            console=self.console,
            disable=self.quiet,
            transient=False,
        )

    def save_resolved_config(self) -> Path:
        """Write the resolved config (all sections) to RUN/<section>/config.yaml."""
        path = self.stage_dir / "config.yaml"
        atomic_write_text(path, dump_config(self.config))
        return path


def setup_stage_logging(ctx: StageContext) -> logging.Handler | None:
    """Attach a log file RUN/<section>/<stage>.log to the 'bana' logger."""
    if ctx.run_dir is None:
        return None
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(ctx.stage_dir / f"{ctx.stage.name}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    ctx.logger.addHandler(handler)
    ctx.logger.setLevel(logging.INFO)
    return handler


def config_reference() -> str:
    """docs/config.md: the config reference of the built-in sections and those of every stage found."""
    stages = discover_stages()
    return config_reference_markdown(root_model({s.section: s.config for s in stages.values()}))


if __name__ == "__main__":
    # import the package module, not this __main__ copy, so Stage and section classes compare equal
    from banacli import stage as _stage

    print(_stage.config_reference(), end="")

