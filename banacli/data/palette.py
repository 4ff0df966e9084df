"""The PASCAL VOC colour palette and label PNGs.

Label maps are ``uint8`` arrays of class ids: 0 background, 1..L the object classes, 255 void.
They are stored as palette ("P" mode) PNGs like VOC's ``SegmentationClass``, so the file holds
the class ids and an image viewer shows the VOC colours.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from banacli.artifacts import atomic_path
from banacli.errors import DataError

VOID = 255


def _voc_palette() -> np.ndarray:
    """(256, 3) uint8: entry i spreads the bits of i over R, G, B, from the high bit down."""
    ids = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for ch in range(3):
            pal[:, ch] |= ((ids >> (3 * bit + ch)) & 1) << (7 - bit)
    return pal.astype(np.uint8)


PALETTE: np.ndarray = _voc_palette()  # (256, 3) uint8; PALETTE[255] = (224, 224, 192)
PALETTE.setflags(write=False)


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an (H, W) uint8 label map as a palette PNG, atomically."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label must be an (H, W) uint8 array, got {label.shape} {label.dtype}")
    img = Image.fromarray(np.ascontiguousarray(label))  # mode "L"
    img.putpalette(PALETTE.tobytes())  # turns it into mode "P" with the VOC colours
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


# colour -> id, for label PNGs that were saved as RGB in the VOC colours
_COLOUR_TO_ID = {tuple(int(v) for v in PALETTE[i]): i for i in range(256)}


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG into an (H, W) uint8 array of class ids.

    Palette ("P") and grayscale ("L") files hold the ids directly. An RGB file is mapped back
    through the VOC palette; a colour that is not in the palette is an error.
    Raises DataError naming the file when it is missing, unreadable or truncated.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L"):
                return np.array(img, dtype=np.uint8)
            if mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.array(img)
                if arr.size and (arr.min() < 0 or arr.max() > 255):
                    raise DataError(f"{path}: label values outside 0..255")
                return arr.astype(np.uint8)
            rgb = np.array(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read label image ({exc})") from None
    return _rgb_to_ids(rgb, path)


def _rgb_to_ids(rgb: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(code.ravel(), return_inverse=True)
    ids = np.empty(len(colours), dtype=np.uint8)
    for k, c in enumerate(colours):
        key = (int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255)
        if key not in _COLOUR_TO_ID:
            raise DataError(f"{path}: RGB label colour {key} is not a VOC palette colour")
        ids[k] = _COLOUR_TO_ID[key]
    return ids[inverse].reshape(rgb.shape[:2])


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 VOC colours (void 255 is light grey-beige)."""
    return PALETTE[np.asarray(label, dtype=np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the class colours over an (H, W, 3) uint8 image.

    Background (0) pixels show the image unchanged; object pixels are mixed with their class
    colour and void (255) pixels with the void colour, ``alpha`` being the colour's weight.
    """
    image = np.asarray(image)
    label = np.asarray(label, dtype=np.uint8)
    if image.shape[:2] != label.shape or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {image.shape} and label {label.shape} do not match")
    colours = colorize(label).astype(np.float32)
    out = image.astype(np.float32)
    fg = label != 0
    out[fg] = (1.0 - alpha) * out[fg] + alpha * colours[fg]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
