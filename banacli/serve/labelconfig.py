"""A Label Studio project's labeling config, read for what ``bana serve`` needs.

The config is XML (``<View>`` with object tags such as ``<Image name="image" value="$image"/>``
and control tags such as ``<RectangleLabels name="box" toName="image">`` holding
``<Label value="cat"/>`` children). ``bana serve`` reads:

* the Image tags: their ``name`` (a result's ``to_name``) and the task data key of their
  ``value`` (``$image`` -> ``task["data"]["image"]``);
* the RectangleLabels tags: where the boxes come from;
* the BrushLabels and PolygonLabels tags: what it answers with, one region per box in each
  mask tag drawn on the same Image (``from_name`` the mask tag, ``to_name`` the Image), with
  the tag's own label values.

Tag names are matched case-insensitively, as Label Studio does.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from banacli.errors import DataError

__all__ = ["ControlTag", "LabelConfig", "parse_label_config", "MASK_TYPES"]

MASK_TYPES = ("brushlabels", "polygonlabels")


@dataclass(frozen=True)
class ControlTag:
    name: str
    type: str  # lower case: rectanglelabels, brushlabels, polygonlabels, ...
    to_name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelConfig:
    images: dict[str, str]  # Image tag name -> task data key
    controls: tuple[ControlTag, ...]

    def of_type(self, kind: str) -> list[ControlTag]:
        return [c for c in self.controls if c.type == kind]

    def mask_tags(self, to_name: str, output: str = "auto") -> list[ControlTag]:
        """The BrushLabels / PolygonLabels tags on Image ``to_name`` that the answer fills
        (``output``: auto = all of them, brush or polygon = that kind only)."""
        kinds = MASK_TYPES if output == "auto" else (f"{output}labels",)
        return [c for c in self.controls if c.type in kinds and c.to_name == to_name]


def parse_label_config(xml: str) -> LabelConfig:
    """DataError (one line) when the text is not XML or holds no Image tag."""
    if not isinstance(xml, str) or not xml.strip():
        raise DataError("label_config is empty")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DataError(f"label_config is not valid XML ({exc})") from None
    images: dict[str, str] = {}
    controls: list[ControlTag] = []
    for el in root.iter():
        tag = el.tag.lower() if isinstance(el.tag, str) else ""
        name = el.get("name")
        if not name:
            continue
        if tag == "image":
            value = (el.get("value") or "").strip()
            images[name] = value[1:] if value.startswith("$") else value
        elif tag.endswith("labels") and el.get("toName"):
            labels = tuple(lab.get("value") for lab in el if isinstance(lab.tag, str)
                           and lab.tag.lower() == "label" and lab.get("value") is not None)
            for to_name in el.get("toName").split(","):
                controls.append(ControlTag(name=name, type=tag, to_name=to_name.strip(), labels=labels))
    if not images:
        raise DataError("label_config has no <Image> tag; bana serve labels images")
    return LabelConfig(images=images, controls=tuple(controls))
