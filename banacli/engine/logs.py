"""What a training run reports while it runs: loss.csv (and TensorBoard when asked) and the
progress line to the stage log / stderr."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from banacli.artifacts import atomic_write_text
from banacli.errors import BanaError


def write_loss_log(path: Path, losses: list[dict[str, float]]) -> None:
    if not losses:
        return
    keys = list(losses[0].keys())
    lines = [",".join(keys)] + [",".join(f"{row.get(k, '')}" for k in keys) for row in losses]
    atomic_write_text(path, "\n".join(lines) + "\n")


def eta(seconds: float) -> str:
    """``H:MM:SS`` of a (non-negative, rounded) number of seconds."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class MetricsLog:
    """loss.csv appended every ``log_every`` iterations (rank 0), and TensorBoard if asked.

    The first write of a run rewrites the file from the rows the run started with (the
    checkpoint's on resume), so rows logged after the last checkpoint of a killed run vanish."""

    def __init__(self, path: Path, tensorboard_dir: Path | None) -> None:
        self.path, self.fresh, self.keys = path, True, None
        self.writer = None
        if tensorboard_dir is not None:
            try:  # optional dependency (bana[tensorboard])
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise BanaError("tensorboard logging needs the tensorboard package: pip install 'bana[tensorboard]'") from None
            self.writer = SummaryWriter(log_dir=str(tensorboard_dir))

    def add(self, rows: list[dict[str, float]]) -> None:
        row = rows[-1]
        if self.fresh or not self.path.is_file():
            write_loss_log(self.path, rows)
            self.fresh = False
        else:
            keys = list(rows[0].keys())
            with open(self.path, "a") as fh:
                fh.write(",".join(f"{row.get(k, '')}" for k in keys) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "iteration":
                    self.writer.add_scalar(k, v, int(row["iteration"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def log_line_for(ctx: Any) -> Callable[[str], None]:
    """A progress line to the stage log always, and to stderr when it is not a terminal (batch
    jobs, output to a file) unless --quiet; on a terminal the progress bar shows it instead."""

    def emit(message: str) -> None:
        ctx.logger.info(message)
        if not ctx.quiet and not ctx.console.is_terminal:
            ctx.console.print(message, markup=False, highlight=False)

    return emit
