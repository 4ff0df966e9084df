"""Learning-rate schedules as pure functions of the iteration: the loop sets
``lr = initial_lr × factor(it)`` before each step, so a resumed run needs no scheduler state.

Hand-written rather than ``torch.optim.lr_scheduler``: ``StepLR`` / ``LambdaLR`` would give the
same numbers only with their state saved in the checkpoint, and ``PolynomialLR`` updates the
rate multiplicatively (``lr × ((1 - it/T) / (1 - (it-1)/T))^p`` each step), whose float rounding
differs from the closed form ``base × (1 - it/T)^p`` used here, so trained weights would change.
"""

from __future__ import annotations


def step_lr(base: float, iteration: int, step: int) -> float:
    """Step schedule (train-cls): divided by 10 after ``step`` iterations."""
    return base * (0.1 if iteration >= step else 1.0)


def warmup_factor(iteration: int, warmup: int) -> float:
    """Linear warm-up: (iteration + 1) / warmup for the first ``warmup`` iterations, then 1."""
    return min(1.0, (iteration + 1) / warmup) if warmup > 0 else 1.0


def poly_lr(base: float, iteration: int, total: int, power: float = 0.9) -> float:
    """Poly schedule (train-seg): base * (1 - it/total)^power."""
    return base * (1.0 - iteration / total) ** power
