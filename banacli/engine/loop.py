"""The training loop of train-cls, train-seg and train-inst: SGD with a learning-rate factor per
iteration, AMP on CUDA, progress, metric logs, checkpoints, validation and stop signals.

A stage describes its run in one :class:`LoopSpec` and calls :func:`train_loop` with it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from banacli.engine.checkpoint import CHECKPOINT, check_restart, load_checkpoint, save_checkpoint
from banacli.engine.dist import DistInfo, barrier, max_over_ranks, unwrap
from banacli.engine.logs import MetricsLog, eta, write_loss_log
from banacli.engine.stop import Stopped, StopSignals
from banacli.errors import BanaError


@dataclass
class LoopSpec:
    """One training run, as :func:`train_loop` runs it.

    - ``batches(start)`` yields one batch per iteration from ``start``; ``step(batch, it)`` returns
      the loss and extra numbers to log. Learning rates are ``initial_lr × lr_factor(it)`` per group.
    - An existing checkpoint in ``out_dir`` without ``resume`` is refused unless ``force``; resuming
      one made with another config (``config_meta``) is refused naming the keys that differ
      (``iterations`` may grow).
    - Every ``log_every`` iterations: a row in loss.csv (and TensorBoard under ``tensorboard_dir``)
      and a line (iteration, loss, lr, images/s from ``images_per_iteration``, ETA) to ``log_line``,
      prefixed with ``label``.
    - ``on_start()`` runs once, after the first iteration of this invocation succeeded.
    - ``validate(done)`` runs on rank 0 every ``val_every`` iterations and at the end, with the
      model in eval mode and the RNG states restored afterwards (training is unchanged by it).
    - ``clip_grad_norm``: the gradients' global L2 norm (after the DDP all-reduce and, with a
      float16 scaler, after unscaling) is clipped to it; the norm before clipping is logged
      as ``grad_norm``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Callable[[int], Iterator[Any]]
    step: Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]]
    lr_factor: Callable[[int], float]
    iterations: int
    out_dir: Path
    info: DistInfo
    checkpoint_every: int
    log_every: int
    resume: bool
    amp: bool
    progress: Any = None
    config_meta: dict | None = None
    force: bool = True
    label: str = "train"
    log_line: Callable[[str], None] | None = None
    images_per_iteration: int = 0
    on_start: Callable[[], None] | None = None
    validate: Callable[[int], None] | None = None
    val_every: int = 0
    tensorboard_dir: Path | None = None
    clip_grad_norm: float | None = None


@dataclass
class LoopResult:
    iteration: int
    losses: list[dict[str, float]]
    resumed_from: int


def _clip(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm of ``model`` to ``max_norm``; the norm before clipping."""
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


def _backward_and_step(spec: LoopSpec, loss: torch.Tensor, extra: dict, scaler: Any) -> dict:
    """zero_grad, backward (scaled under float16 AMP), optional clipping, optimizer step; the
    extra numbers to log (with ``grad_norm`` when clipping)."""
    optimizer = spec.optimizer
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if spec.clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            extra = {**extra, "grad_norm": _clip(spec.model, spec.clip_grad_norm)}
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if spec.clip_grad_norm is not None:
            extra = {**extra, "grad_norm": _clip(spec.model, spec.clip_grad_norm)}
        optimizer.step()
    return extra


def _validate(model: nn.Module, validate: Callable[[int], None], done: int) -> None:
    net = unwrap(model)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        net.eval()
        try:
            with torch.no_grad():
                validate(done)
        finally:
            net.train()


def _spec_from(spec: LoopSpec | None, fields: dict[str, Any]) -> LoopSpec:
    if spec is None:
        return LoopSpec(**fields)
    if fields:
        raise TypeError(f"train_loop: pass a LoopSpec or keywords, not both ({', '.join(fields)})")
    return spec


@dataclass
class _Amp:
    """Autocast on CUDA when ``spec.amp``: bfloat16 where supported, else float16 with a scaler."""

    enabled: bool
    dtype: torch.dtype
    scaler: Any


def _amp_for(spec: LoopSpec) -> _Amp:
    enabled = spec.amp and spec.info.device.type == "cuda"
    dtype = torch.bfloat16 if enabled and torch.cuda.is_bf16_supported() else torch.float16
    return _Amp(enabled, dtype, torch.amp.GradScaler("cuda") if enabled and dtype == torch.float16 else None)


def _resume_state(spec: LoopSpec, ckpt: Path, scaler: Any) -> tuple[int, list[dict[str, float]]]:
    """(first iteration, loss log so far): from the checkpoint with ``spec.resume``, else (0, [])."""
    if spec.resume and ckpt.is_file():
        state = load_checkpoint(ckpt, spec.model, spec.optimizer, scaler=scaler, device=spec.info.device)
        return int(state["iteration"]), list(state["losses"])
    return 0, []


def _forward(spec: LoopSpec, batch: Any, it: int, amp: _Amp) -> tuple[torch.Tensor, dict]:
    """Set this iteration's learning rates, run ``spec.step`` under autocast; a non-finite loss stops."""
    factor = spec.lr_factor(it)
    for g in spec.optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    with torch.autocast(device_type=spec.info.device.type, dtype=amp.dtype, enabled=amp.enabled):
        loss, extra = spec.step(batch, it)
    if not torch.isfinite(loss):
        raise BanaError(f"loss is {loss.item()} at iteration {it}; lower the learning rate (cls.lr / seg.lr)")
    return loss, extra


def _log_iteration(spec: LoopSpec, losses: list, it: int, value: float, extra: dict, metrics: MetricsLog | None,
                   log_line: Callable[[str], None] | None, *, start: int, t0: float) -> None:
    """One row of the loss log (loss.csv, TensorBoard) and one progress line."""
    done, iterations = it + 1, spec.iterations
    row = {"iteration": it, "loss": value, "lr": spec.optimizer.param_groups[0]["lr"]}
    row.update({k: float(v) for k, v in extra.items()})
    losses.append(row)
    if metrics is not None:
        metrics.add(losses)
    if log_line is not None:
        per_it = (time.perf_counter() - t0) / (done - start)
        ips = spec.images_per_iteration / per_it if per_it > 0 else 0.0
        log_line(f"{spec.label}: iteration {done}/{iterations} loss {value:.4f} lr {row['lr']:.3g} "
                 f"{ips:.1f} images/s ETA {eta(per_it * (iterations - done))}")


def _validate_if_due(spec: LoopSpec, done: int) -> None:
    if spec.validate is not None and spec.val_every and (done % spec.val_every == 0 or done == spec.iterations):
        if spec.info.is_main:
            _validate(spec.model, spec.validate, done)
        barrier(spec.info)


def _stop_if_signalled(spec: LoopSpec, signum: int, done: int, saved: bool, checkpoint: Callable[[], None],
                       log_line: Callable[[str], None] | None, ckpt: Path) -> None:
    """After SIGTERM / SIGINT (on any rank): checkpoint unless just written, then :class:`Stopped`."""
    if signum and done < spec.iterations:
        if not saved:
            checkpoint()
        msg = (f"{spec.label}: stopped by {signal.Signals(signum).name} at iteration {done}/{spec.iterations}; "
               f"checkpoint {ckpt} written; rerun with --resume to continue")
        if log_line is not None:
            log_line(msg)
        barrier(spec.info)
        raise Stopped(msg, signum)


def train_loop(spec: LoopSpec | None = None, /, **fields: Any) -> LoopResult:
    """Run SGD from the checkpoint (``spec.resume``) or from scratch to ``spec.iterations`` (see
    :class:`LoopSpec`). Only rank 0 writes. Returns the loss log (every ``log_every`` iterations
    and the last). SIGTERM / SIGINT: checkpoint at the next iteration boundary, then :class:`Stopped`.

    ``train_loop(LoopSpec(...))``; ``train_loop(model=..., ...)`` builds the spec from the keywords.
    """
    spec = _spec_from(spec, fields)
    info, optimizer, iterations = spec.info, spec.optimizer, spec.iterations
    ckpt = spec.out_dir / CHECKPOINT
    check_restart(ckpt, resume=spec.resume, force=spec.force, iterations=iterations, config_meta=spec.config_meta)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    amp = _amp_for(spec)
    start, losses = _resume_state(spec, ckpt, amp.scaler)
    spec.model.train()
    progress = spec.progress
    task = progress.add_task("train", total=iterations, completed=start, status="") if progress else None
    done = start
    metrics = MetricsLog(spec.out_dir / "loss.csv", spec.tensorboard_dir if info.is_main else None) if info.is_main else None
    meta = {"config": spec.config_meta} if spec.config_meta is not None else None
    log_line = spec.log_line if info.is_main else None
    t0 = time.perf_counter()

    def checkpoint() -> None:
        if info.is_main:
            save_checkpoint(ckpt, spec.model, optimizer, iteration=done, losses=losses, scaler=amp.scaler, meta=meta)
            write_loss_log(spec.out_dir / "loss.csv", losses)

    try:
        with StopSignals() as stop:
            for it, batch in zip(range(start, iterations), spec.batches(start)):
                loss, extra = _forward(spec, batch, it, amp)
                extra = _backward_and_step(spec, loss, extra, amp.scaler)
                done = it + 1
                if done == start + 1 and spec.on_start is not None and info.is_main:
                    spec.on_start()
                value = float(loss.detach())
                if it % spec.log_every == 0 or done == iterations:
                    _log_iteration(spec, losses, it, value, extra, metrics, log_line, start=start, t0=t0)
                if task is not None:
                    progress.update(task, advance=1, status=f"loss {value:.4f}")
                saved = done % spec.checkpoint_every == 0 or done == iterations
                if saved:
                    checkpoint()
                    barrier(info)
                _validate_if_due(spec, done)
                signum = max_over_ranks(stop.signum, info)  # all ranks stop at the same iteration
                _stop_if_signalled(spec, signum, done, saved, checkpoint, log_line, ckpt)
    finally:
        if metrics is not None:
            metrics.close()
    return LoopResult(iteration=done, losses=losses, resumed_from=start)
