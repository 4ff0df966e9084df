"""Fixtures for the data tests: a tiny synthetic VOC tree and a hand-built one."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from banacli.data.synthetic import generate


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 training and 2 validation images of 64 px, seed 0 (read-only for the tests)."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, images=6, size=64, seed=0, val=2)
    return root


def jpeg_bytes(arr: np.ndarray, mode: str | None = None, quality: int = 95) -> bytes:
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def voc_xml(objects: list[tuple[str, float, float, float, float]], size: tuple[int, int] | None = None) -> str:
    """VOC XML text; objects are (name, xmin, ymin, xmax, ymax) in VOC's 1-based inclusive units."""
    parts = ["<annotation><filename>x.jpg</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, x0, y0, x1, y1 in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


class HandVOC:
    """Builds a VOC tree item by item, for the bad-input tests."""

    def __init__(self, root: Path, classes: list[str]) -> None:
        self.root = root
        self.classes = classes
        for d in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
        self.ids: list[str] = []

    jpeg = staticmethod(jpeg_bytes)
    xml = staticmethod(voc_xml)

    def add(self, image_id: str, *, image: bytes | None = None, xml: str | None = None,
            suffix: str = ".jpg", w: int = 48, h: int = 32) -> None:
        if image is None:
            rng = np.random.default_rng(len(self.ids))
            image = jpeg_bytes(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))
        if image:
            (self.root / "JPEGImages" / f"{image_id}{suffix}").write_bytes(image)
        if xml is None:
            xml = voc_xml([(self.classes[0], 5, 5, 20, 20)], size=(w, h))
        if xml:
            (self.root / "Annotations" / f"{image_id}.xml").write_text(xml)
        self.ids.append(image_id)
        self.write_split()

    def write_split(self, split: str = "train") -> None:
        path = self.root / "ImageSets/Segmentation" / f"{split}.txt"
        path.write_text("".join(f"{i}\n" for i in self.ids))


@pytest.fixture
def hand_voc(tmp_path: Path) -> HandVOC:
    return HandVOC(tmp_path / "voc", ["cat", "dog"])
