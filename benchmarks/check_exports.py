"""Load every ``bana export-labels`` format with the real readers and compare with bana's labels.

Makes a tiny run of its own (synthetic VOC and COCO sets, a tiny classifier trained for a few
iterations, ``gen-labels``: real Ycrf / Yret with their empty masks), exports it in every format,
then reads the files back in a separate virtual environment that holds the tools users import
them with (``pip install datumaro label-studio-sdk``, created once under ``--venv``):

* datumaro ``coco_instances``: RLE and polygon COCO files (built from VOC, and the user's own COCO
  file), each annotation's mask by annotation id;
* datumaro ``voc_segmentation`` (one mask per class) and ``voc_instance_segmentation`` (one mask per
  object);
* Label Studio's own brush decoder, ``label_studio_sdk.converter.brush.decode_rle``, on every brush
  result of the tasks JSON; polygon results through percent -> pixel arithmetic and pycocotools,
  and through Label Studio's own ``Converter.convert_to_coco`` (the tasks taken as annotations);
* YOLO segmentation: datumaro (1.13) reads only ``class cx cy w h`` box lines, so there is no real
  reader here; the lines are parsed and filled with ``cv2.fillPoly`` (a second rasteriser, not
  pycocotools) and compared with the hole-filled masks.

Each mask is compared with bana's own (``banacli.interop.label_export.image_labels``: the box's
instance mask after the fallback; polygons against the mask with holes filled), and those, on the
host side, with gen-labels' own ``RUN/labels/instances_<SET>.json`` (the non-empty ones). Exits 1 on any
mismatch and prints a summary with the time spent installing, exporting and reading.

    python benchmarks/check_exports.py                     # venv in .cache/interop-venv
    python benchmarks/check_exports.py --venv /tmp/iv --keep /tmp/check-exports
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["datumaro", "label-studio-sdk"]
SPLIT = "train"


# ----------------------------------------------------------------------------- host side (bana's venv)


def ensure_venv(venv: Path) -> dict:
    """The readers' virtual environment; created (and timed) when it is missing."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import datumaro, label_studio_sdk.converter.brush"]
    if py.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return {"created": False}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PACKAGES], check=True)
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    return {"created": True, "install_s": round(seconds, 1), "venv_mb": round(size / 2**20)}


def bana(*args) -> None:
    cmd = [sys.executable, "-m", "banacli", *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        sys.exit(f"check_exports: {' '.join(cmd[2:])} failed:\n{res.stdout}{res.stderr}")
    return res.stderr + res.stdout


# 150 iterations: enough for most boxes to get a real (non-empty, non-rectangular) mask; a few stay
# empty and exercise the fallback
TINY = ["--backbone", "tiny", "--set", "cls.weights=null", "--crop-size", "64", "--batch-size", "8",
        "--iterations", "150", "--lr", "0.01", "--checkpoint-every", "1000", "-q"]

# (name, dataset, export options)
EXPORTS = [
    ("voc:coco-rle", "voc", ["--format", "coco", "--copy-images"]),
    ("voc:coco-polygons", "voc", ["--format", "coco", "--polygons", "--copy-images"]),
    ("voc:voc", "voc", ["--format", "voc", "--labels", "agreement"]),
    ("voc:yolo", "voc", ["--format", "yolo"]),
    ("voc:labelstudio-brush", "voc", ["--format", "labelstudio"]),
    ("voc:labelstudio-polygons", "voc", ["--format", "labelstudio", "--polygons"]),
    ("coco:coco-rle", "coco", ["--format", "coco", "--labels", "yret", "--copy-images"]),
    ("coco:labelstudio-brush", "coco", ["--format", "labelstudio"]),
]


def make_runs(work: Path, images: int, size: int) -> dict:
    t0 = time.perf_counter()
    bana("synth", work / "voc", "--images", images, "--size", size, "--seed", 4, "-q")
    bana("synth", work / "coco", "--images", images, "--size", size, "--seed", 5, "--format", "coco", "-q")
    for kind in ("voc", "coco"):
        bana("train-cls", "--data", work / kind, "--run", work / f"run-{kind}", *TINY)
        bana("gen-labels", "--data", work / kind, "--run", work / f"run-{kind}", "-q")
    return {"runs_s": round(time.perf_counter() - t0, 1)}


def expected_masks(work: Path) -> dict:
    """bana's masks for every export, saved as NPZ files the reader compares against."""
    import cv2
    import numpy as np

    from banacli.config import DataConfig
    from banacli.data.coco import open_data
    from banacli.interop.label_export import image_labels, open_label_set, voc_class_map, voc_object_map

    def filled(m):
        out = np.zeros(m.shape, np.uint8)
        cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, cs, -1, 1, -1)
        return out.astype(bool)

    t0 = time.perf_counter()
    stats = {}
    for name, kind, opts in EXPORTS:
        out = work / "out" / name.replace(":", "-")
        log = bana("export-labels", "--data", work / kind, "--run", work / f"run-{kind}", "--out", out, *opts)
        stats[name] = [ln for ln in log.splitlines() if ln.startswith("export-labels:")]
        which = opts[opts.index("--labels") + 1] if "--labels" in opts else None
        ds = open_data(work / kind, SPLIT, DataConfig(), with_gt=False)
        labels = open_label_set(work / f"run-{kind}", "bana", which)
        arrays: dict[str, np.ndarray] = {}
        polygons = "--polygons" in opts or "yolo" in opts
        for i, sid in enumerate(ds.ids):
            img = image_labels(ds, labels, i, "box")
            masks = np.stack([filled(m) for m in img.masks]) if polygons else img.masks
            arrays[f"masks/{sid}"] = masks
            arrays[f"labels/{sid}"] = img.labels
            arrays[f"status/{sid}"] = np.array(img.status)
            arrays[f"class/{sid}"] = voc_class_map(img)
            arrays[f"object/{sid}"] = voc_object_map(img)
        if which is None and not polygons:  # bana's masks are gen-labels' own instance masks
            stats[name].append(_against_instances(work / f"run-{kind}", ds, labels, arrays))
        if "coco" in opts:  # annotation id -> (image id, box index), as the file lists them
            doc = json.loads((out / "annotations" / f"instances_{SPLIT}.json").read_text())
            file_of = {im["id"]: Path(im["file_name"]).stem for im in doc["images"]}
            seen: dict[str, int] = {}
            ids = []
            for ann in doc["annotations"]:
                if ann.get("iscrowd"):
                    continue
                sid = file_of[ann["image_id"]]
                ids.append((ann["id"], sid, seen.get(sid, 0)))
                seen[sid] = seen.get(sid, 0) + 1
            arrays["coco_ids"] = np.array([a for a, _, _ in ids])
            arrays["coco_images"] = np.array([s for _, s, _ in ids])
            arrays["coco_boxes"] = np.array([k for _, _, k in ids])
        np.savez_compressed(out / "expected.npz", **arrays)
        (out / "kind.json").write_text(json.dumps({"name": name, "opts": opts, "classes": ds.class_names}))
    return {"export_s": round(time.perf_counter() - t0, 1), "reports": stats}


def _against_instances(run: Path, ds, labels, arrays) -> str:
    """Compare the masks with status "mask" with RUN/labels/instances_<SET>.json (gen-labels)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from banacli.instances.pseudo_masks import dataset_image_id

    theirs: dict = {}
    for r in json.loads((run / "labels" / f"instances_{labels.name}.json").read_text()):
        theirs.setdefault(r["image_id"], []).append(mask_utils.decode(r["segmentation"]).astype(bool))
    differ = 0
    for sid in ds.ids:
        ours = [m for m, st in zip(arrays[f"masks/{sid}"], arrays[f"status/{sid}"]) if st == "mask"]
        got = theirs.get(dataset_image_id(ds, sid), [])
        differ += len(ours) != len(got) or not all(np.array_equal(a, b) for a, b in zip(ours, got))
    if differ:
        raise SystemExit(f"check_exports: {differ} images' masks differ from {run}/labels/instances_{labels.name}.json")
    return f"check: masks equal gen-labels' instances_{labels.name}.json"


# ----------------------------------------------------------------------------- reader side (the readers' venv)


def _read_all(out_root: Path) -> dict:
    import numpy as np

    results = {}
    for out in sorted(p for p in out_root.iterdir() if p.is_dir()):
        meta = json.loads((out / "kind.json").read_text())
        exp = np.load(out / "expected.npz")
        name, opts = meta["name"], meta["opts"]
        t0 = time.perf_counter()
        try:
            if "coco" in opts:
                r = _read_coco(out, exp)
            elif "voc" in opts:
                r = _read_voc(out, exp)
            elif "yolo" in opts:
                r = _read_yolo(out, exp)
            else:
                r = _read_labelstudio(out, exp, meta["classes"])
                if "--polygons" in opts:  # and through Label Studio's own converter to COCO
                    more = _read_labelstudio_converter(out, exp, meta["classes"])
                    r = {"reader": f"{r['reader']}; {more['reader']}", "checked": r["checked"] + more["checked"],
                         "mismatches": r["mismatches"] + more["mismatches"]}
        except Exception as exc:  # noqa: BLE001 - a reader that fails is a failed check
            r = {"reader": "?", "checked": 0, "mismatches": [f"{type(exc).__name__}: {exc}"]}
        r["read_s"] = round(time.perf_counter() - t0, 2)
        results[name] = r
    return results


def _read_coco(out: Path, exp) -> dict:
    import numpy as np
    from datumaro.components.annotation import AnnotationType
    from datumaro.components.dataset import Dataset
    from pycocotools import mask as mask_utils

    ds = Dataset.import_from(str(out), "coco_instances")
    where = {int(a): (str(s), int(k)) for a, s, k in zip(exp["coco_ids"], exp["coco_images"], exp["coco_boxes"])}
    read: dict[int, np.ndarray] = {}  # annotation id -> its mask as datumaro gives it
    for item in ds:
        h, w = item.media.data.shape[:2]
        for ann in item.annotations:
            if ann.type not in (AnnotationType.mask, AnnotationType.polygon) or ann.attributes.get("is_crowd"):
                continue
            if ann.type == AnnotationType.mask:
                got = np.asarray(ann.image).astype(bool)
            else:  # datumaro reads the polygon's points; pycocotools fills them as COCO does
                rles = mask_utils.frPyObjects([[float(v) for v in ann.points]], h, w)
                got = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
            # an annotation with several polygons comes back as several shapes with its id
            read[int(ann.id)] = read[int(ann.id)] | got if int(ann.id) in read else got
    bad = []
    for ann_id, got in read.items():
        sid, k = where[ann_id]
        want = exp[f"masks/{sid}"][k]
        if not np.array_equal(got, want):
            bad.append(f"annotation {ann_id} ({sid} box {k + 1}): {int((got != want).sum())} pixels differ")
    bad += [f"annotation {a} ({s} box {k + 1}): no mask read" for a, (s, k) in where.items()
            if a not in read and exp[f"masks/{s}"][k].any()]
    checked = len(read)
    return {"reader": "datumaro coco_instances", "checked": checked, "mismatches": bad}


def _read_voc(out: Path, exp) -> dict:
    import numpy as np
    from datumaro.components.annotation import AnnotationType
    from datumaro.components.dataset import Dataset

    checked, bad = 0, []
    cls_ds = Dataset.import_from(str(out), "voc_segmentation")
    names = [c.name for c in cls_ds.categories()[AnnotationType.label]]
    for item in cls_ds:
        want = exp[f"class/{item.id}"]
        got = np.zeros(want.shape, np.int64)
        for ann in item.annotations:  # datumaro names void "ignored", as in its own VOC label map
            got[np.asarray(ann.image).astype(bool)] = 255 if names[ann.label] == "ignored" else ann.label
        checked += 1
        if not np.array_equal(got, want.astype(np.int64)):
            bad.append(f"{item.id}: SegmentationClass differs in {int((got != want).sum())} pixels")
    inst_ds = Dataset.import_from(str(out), "voc_instance_segmentation")
    for item in inst_ds:
        want = exp[f"object/{item.id}"]
        for ann in item.annotations:
            got = np.asarray(ann.image).astype(bool)
            checked += 1
            if not np.array_equal(got, want == ann.group):
                bad.append(f"{item.id}: instance {ann.group} differs")
    return {"reader": "datumaro voc_segmentation + voc_instance_segmentation", "checked": checked, "mismatches": bad}


def _read_yolo(out: Path, exp) -> dict:
    import cv2
    import numpy as np

    checked, bad = 0, []
    for txt in sorted((out / "labels" / SPLIT).glob("*.txt")):
        sid = txt.stem
        masks, labels = exp[f"masks/{sid}"], exp[f"labels/{sid}"]
        h, w = masks.shape[1:]
        got = np.zeros((int(labels.max(initial=0)) + 1, h, w), np.uint8)
        for line in txt.read_text().splitlines():
            cls, *coords = line.split()
            xy = np.array(coords, dtype=np.float64).reshape(-1, 2) * (w, h)
            # fillPoly fills pixel (x, y) when its integer corner lies inside; shift by half a
            # pixel so that it tests pixel centres, as COCO's rasteriser does
            pts = np.round((xy - 0.5) * 256).astype(np.int32)
            cv2.fillPoly(got[int(cls) + 1], [pts], 1, lineType=cv2.LINE_8, shift=8)
        for c in range(1, got.shape[0]):
            want = np.any(masks[labels == c], axis=0) if (labels == c).any() else np.zeros((h, w), bool)
            checked += 1
            if not np.array_equal(got[c].astype(bool), want):
                bad.append(f"{sid} class {c}: {int((got[c].astype(bool) != want).sum())} pixels differ")
    return {"reader": "own parser + cv2.fillPoly (datumaro's yolo reads boxes only)", "checked": checked,
            "mismatches": bad}


def _read_labelstudio(out: Path, exp, classes) -> dict:
    import numpy as np
    from label_studio_sdk.converter.brush import decode_rle
    from pycocotools import mask as mask_utils

    checked, bad = 0, []
    for task in json.loads((out / "tasks.json").read_text()):
        sid = task["data"]["bana_id"]
        masks, labels = exp[f"masks/{sid}"], exp[f"labels/{sid}"]
        got: dict[int, np.ndarray] = {}
        for r in task["predictions"][0]["result"]:
            if not r["id"].startswith("mask"):
                continue
            k = int(r["id"][4:].split("_")[0]) - 1
            h, w = r["original_height"], r["original_width"]
            if r["type"] == "brushlabels":
                m = np.reshape(decode_rle(r["value"]["rle"]), (h, w, 4))[:, :, 3] > 0
                label = r["value"]["brushlabels"][0]
            else:
                poly = [c for x, y in r["value"]["points"] for c in (x * w / 100, y * h / 100)]
                m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w))).astype(bool)
                label = r["value"]["polygonlabels"][0]
            if label != classes[int(labels[k])]:
                bad.append(f"{sid} box {k + 1}: label {label!r}, not {classes[int(labels[k])]!r}")
            got[k] = got.get(k, np.zeros((h, w), bool)) | m
        for k in range(len(masks)):
            checked += 1
            m = got.get(k)
            if m is None:
                if masks[k].any():
                    bad.append(f"{sid} box {k + 1}: no mask in the task")
            elif not np.array_equal(m, masks[k]):
                bad.append(f"{sid} box {k + 1}: {int((m != masks[k]).sum())} pixels differ")
    brush = "brushlabels" in (out / "tasks.json").read_text()
    reader = "label_studio_sdk.converter.brush.decode_rle" if brush else "percent points + pycocotools"
    return {"reader": reader, "checked": checked, "mismatches": bad}


def _read_labelstudio_converter(out: Path, exp, classes) -> dict:
    """The polygon tasks as a Label Studio export (predictions taken as annotations), converted
    to COCO by ``label_studio_sdk.converter.Converter``; per image and class, the union of its
    polygons against the union of bana's hole-filled masks of that class."""
    import numpy as np
    from label_studio_sdk.converter import Converter
    from pycocotools import mask as mask_utils

    tasks = json.loads((out / "tasks.json").read_text())
    work = out / "ls-converter"
    work.mkdir(exist_ok=True)
    export = [{"id": n + 1, "data": t["data"], "annotations": [{"id": n + 1, "result": t["predictions"][0]["result"]}]}
              for n, t in enumerate(tasks)]
    (work / "export.json").write_text(json.dumps(export))
    conv = Converter(config=(out / "label_config.xml").read_text(), project_dir=str(work), download_resources=False)
    conv.convert_to_coco(str(work / "export.json"), str(work / "coco"), is_dir=False)
    doc = json.loads((work / "coco" / "result.json").read_text())
    name_of = {c["id"]: c["name"] for c in doc["categories"]}
    checked, bad = 0, []
    for n, img in enumerate(doc["images"]):
        sid = tasks[n]["data"]["bana_id"]
        masks, labels = exp[f"masks/{sid}"], exp[f"labels/{sid}"]
        h, w = img["height"], img["width"]
        for c in sorted(set(int(v) for v in labels)):
            polys = [a["segmentation"][0] for a in doc["annotations"] if a["image_id"] == img["id"]
                     and a["segmentation"] and name_of[a["category_id"]] == classes[c]]
            got = (mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
                   if polys else np.zeros((h, w), bool))
            want = masks[labels == c].any(axis=0)
            checked += 1
            if not np.array_equal(got, want):
                bad.append(f"{sid} class {classes[c]}: {int((got != want).sum())} pixels differ (LS converter)")
    return {"reader": "label_studio_sdk Converter.convert_to_coco", "checked": checked, "mismatches": bad}


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=REPO / ".cache" / "interop-venv",
                    help="the readers' virtual environment (created when missing)")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--read", type=Path, default=None, help=argparse.SUPPRESS)  # reader side, in the venv
    args = ap.parse_args()
    if args.read is not None:
        print(json.dumps(_read_all(args.read)))
        return 0

    t_all = time.perf_counter()
    install = ensure_venv(args.venv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="check-exports-"))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        timing = make_runs(work, args.images, args.size)
        timing.update(expected_masks(work))
        t0 = time.perf_counter()
        res = subprocess.run([str(args.venv / "bin" / "python"), __file__, "--read", str(work / "out")],
                             capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stdout + res.stderr, file=sys.stderr)
            return 1
        results = json.loads(res.stdout.strip().splitlines()[-1])
        timing["read_s"] = round(time.perf_counter() - t0, 1)
        versions = subprocess.run([str(args.venv / "bin" / "python"), "-c",
                                   "import importlib.metadata as m; print(m.version('datumaro'), "
                                   "m.version('label-studio-sdk'))"], capture_output=True, text=True).stdout.split()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    failed = 0
    print(f"check_exports: datumaro {versions[0]}, label-studio-sdk {versions[1]} in {args.venv}")
    for name, r in results.items():
        ok = not r["mismatches"] and r["checked"] > 0
        failed += not ok
        print(f"  {'ok ' if ok else 'BAD'} {name:26s} {r['checked']:4d} masks checked with {r['reader']}")
        for line in r["mismatches"][:5]:
            print(f"        {line}")
    for name, lines in timing.pop("reports").items():
        for ln in lines:
            if "empty mask" in ln or ln.startswith("check:"):
                print(f"  {name}: {ln.removeprefix('export-labels: ')}")
    inst = (f"venv created: {install['install_s']} s, {install['venv_mb']} MB" if install["created"]
            else "venv reused")
    print(f"check_exports: {inst}; runs {timing['runs_s']} s, exports {timing['export_s']} s, "
          f"reading {timing['read_s']} s; total {time.perf_counter() - t_all:.1f} s; "
          f"{'FAILED ' + str(failed) if failed else 'all passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
