"""Multi-scale, flipped inference."""

from __future__ import annotations

import pytest
import torch

from banacli.models.deeplab import build_segmenter
from banacli.ops.infer import predict_logits, predict_probs


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmenter("tiny", 4).eval()


def test_probs_shape_and_sum(model: torch.nn.Module) -> None:
    x = torch.randn(3, 37, 45)
    probs = predict_probs(model, x)
    assert probs.shape == (4, 37, 45)
    assert torch.allclose(probs.sum(0), torch.ones(37, 45), atol=1e-5)
    assert (probs >= 0).all()
    batch = predict_probs(model, torch.stack([x, x.flip(-1)]), scales=(1.0, 0.5))
    assert batch.shape == (2, 4, 37, 45)


def test_flip_averaging_is_flip_equivariant(model: torch.nn.Module) -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 40, 48)
    p = predict_probs(model, x, scales=(1.0, 0.75), flip=True)
    p_flipped_input = predict_probs(model, x.flip(-1), scales=(1.0, 0.75), flip=True)
    assert torch.allclose(p_flipped_input, p.flip(-1), atol=1e-5)
    # on a mirror-symmetric image the prediction is mirror-symmetric
    sym = torch.cat([x[..., :24], x[..., :24].flip(-1)], dim=-1)
    ps = predict_probs(model, sym, scales=(1.0,), flip=True)
    assert torch.allclose(ps, ps.flip(-1), atol=1e-5)
    # without flips, the model alone is not symmetric: the flip averaging matters
    p1 = predict_probs(model, x, scales=(1.0,), flip=False)
    assert not torch.allclose(predict_probs(model, x.flip(-1), scales=(1.0,), flip=False), p1.flip(-1), atol=1e-4)


def test_logits_are_the_mean_over_scales_and_flips(model: torch.nn.Module) -> None:
    x = torch.randn(3, 32, 32)
    per = [predict_logits(model, x, scales=(s,), flip=False) for s in (1.0, 0.5)]
    per += [predict_logits(model, x.flip(-1), scales=(s,), flip=False).flip(-1) for s in (1.0, 0.5)]
    both = predict_logits(model, x, scales=(1.0, 0.5), flip=True)
    assert torch.allclose(both, torch.stack(per).mean(0), atol=1e-5)
    assert torch.allclose(predict_probs(model, x, scales=(1.0, 0.5)), torch.softmax(both, 0), atol=1e-6)
    with pytest.raises(ValueError):
        predict_logits(model, x, scales=())
