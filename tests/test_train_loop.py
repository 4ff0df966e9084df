"""train_loop's gradient clipping (seg.grad_clip) on a model small enough to check by hand."""

import torch
from torch import nn

from banacli.engine import DistInfo, train_loop


def _run(tmp_path, clip):
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False)
    nn.init.zeros_(model.weight)
    x, y = torch.ones(1, 4), torch.tensor([[100.0]])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    def step(batch, it):
        return ((model(x) - y) ** 2).mean(), {}

    res = train_loop(model=model, optimizer=opt, batches=lambda start: iter([None]), step=step,
                     lr_factor=lambda it: 1.0, iterations=1, out_dir=tmp_path, info=DistInfo(),
                     checkpoint_every=10, log_every=1, resume=False, amp=False, clip_grad_norm=clip)
    return model.weight.detach().clone(), res.losses


def test_clipping_scales_the_step_to_the_norm_and_logs_the_norm_before(tmp_path):
    # loss (w.x - 100)^2 at w = 0: gradient -200 x = (-200, -200, -200, -200), norm 400
    w, rows = _run(tmp_path / "a", None)
    assert torch.allclose(w, torch.full((1, 4), 200.0)) and "grad_norm" not in rows[0]
    w, rows = _run(tmp_path / "b", 2.0)
    # clipped to norm 2: each component 2 / sqrt(4) = 1; SGD with lr 1 moves w by +1
    assert torch.allclose(w, torch.ones(1, 4), atol=1e-5)
    assert abs(rows[0]["grad_norm"] - 400.0) < 1e-3


def test_seeded_draws_the_stream_of_torch_manual_seed_and_restores_the_outer_state():
    """seeded(s) gives the CPU draws torch.manual_seed(s) gives (so the per-sample augmentation
    is what it was before seeded stopped seeding the GPUs) and leaves the outer streams as they were."""
    import random

    import numpy as np

    from banacli.runs import seeded

    def seed_all(seed):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    seed_all(7)
    outer = torch.rand(3)
    seed_all(7)
    with seeded(123):
        inner = torch.rand(5), np.random.rand(2), random.random()
    expected = torch.Generator().manual_seed(123)
    assert torch.equal(inner[0], torch.rand(5, generator=expected))
    np.random.seed(123)
    assert np.array_equal(inner[1], np.random.rand(2))
    random.seed(123)
    assert inner[2] == random.random()
    seed_all(7)
    with seeded(123):
        torch.rand(5), np.random.rand(2), random.random()
    assert torch.equal(torch.rand(3), outer)
