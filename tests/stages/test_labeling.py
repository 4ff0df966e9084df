"""gen-labels orchestration: identical bytes whatever the workers, placement or backend; shards
and torchrun ranks into one run directory; workers that die with their parent; pictures."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from banacli.labeling import parse_shard, part_indices
from banacli.errors import ConfigError

from .conftest import invoke


def _digests(run: Path) -> dict[str, str]:
    """sha256 of every label PNG under RUN/labels/{Ycrf,Yret} (the bytes, not the pixels)."""
    out = {}
    for name in ("Ycrf", "Yret"):
        for p in sorted((run / "labels" / name).glob("*.png")):
            out[f"{name}/{p.name}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_part_indices_cover_every_image_exactly_once():
    for n_images in (0, 1, 7, 10, 23):
        for n in (1, 2, 3):
            for world in (1, 2, 4):
                seen = [i for k in range(1, n + 1) for r in range(world)
                        for i in part_indices(n_images, (k, n), r, world)]
                assert sorted(seen) == list(range(n_images))
    # rank r of W takes i % W == r
    assert part_indices(10, (1, 1), 1, 3) == [1, 4, 7]
    # shard 2/2 of a 2-rank job: parts (shard-1)*W + r = 2, 3 of 4
    assert part_indices(10, (2, 2), 0, 2) == [2, 6] and part_indices(10, (2, 2), 1, 2) == [3, 7]
    assert parse_shard("3/4") == (3, 4) and parse_shard(None) == (1, 1)
    for bad in ("0/2", "3/2", "a/b", "2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_bytes_identical_across_workers_placement_and_dask(tiny_data, cls_run, tmp_path, app):
    runs = {}
    variants = {
        "w1": ["--workers", 1],
        "w2": ["--workers", 2],
        "main2": ["--workers", 2, "--features", "main"],
    }
    try:
        import distributed  # noqa: F401

        variants["dask2"] = ["--workers", 2, "--backend", "dask"]
    except ImportError:
        pass
    for name, extra in variants.items():
        run = _copy(cls_run, tmp_path / name)
        res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "-q", *extra])
        assert res.exit_code == 0, res.output
        runs[name] = _digests(run)
    ids = (tiny_data / "ImageSets/Segmentation/train.txt").read_text().split()
    assert len(runs["w1"]) == 2 * len(ids)
    for name, digests in runs.items():
        assert digests == runs["w1"], name


def test_shards_label_disjoint_parts_into_one_run(tiny_data, cls_run, tmp_path, app):
    whole = _copy(cls_run, tmp_path / "whole")
    assert invoke(app, ["gen-labels", "--data", tiny_data, "--run", whole, "-q"]).exit_code == 0
    run = _copy(cls_run, tmp_path / "sharded")
    ids = (tiny_data / "ImageSets/Segmentation/train.txt").read_text().split()
    labels = run / "labels"
    seen: list[str] = []
    for k in (1, 2, 3):
        before = set(p.name for p in (labels / "Ycrf").glob("*.png")) if (labels / "Ycrf").is_dir() else set()
        res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--shard", f"{k}/3"])
        assert res.exit_code == 0, res.output
        new = set(p.name for p in (labels / "Ycrf").glob("*.png")) - before
        seen += sorted(new)
        assert sorted(new) == sorted(f"{ids[i]}.png" for i in range(k - 1, len(ids), 3))
        # one manifest, the same as an unsharded run's; the report only once all shards are done
        assert json.loads((labels / "bana.manifest.json").read_text()) == \
            json.loads((whole / "labels" / "bana.manifest.json").read_text())
        assert (labels / "bana.report.json").is_file() == (k == 3)
    assert sorted(seen) == sorted(f"{i}.png" for i in ids)  # every image exactly once
    assert _digests(run) == _digests(whole)
    assert json.loads((labels / "bana.report.json").read_text()) == \
        json.loads((whole / "labels" / "bana.report.json").read_text())
    # a final run without --shard finds everything finished
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run])
    assert res.exit_code == 0 and f"{len(ids)} already finished, 0 to label" in res.output


def test_a_shard_removes_only_its_own_stale_temp_files(tiny_data, cls_run, tmp_path, app):
    # temp files a killed run left: shard 1/2 labels images 0, 2, 4, ...; another shard may be
    # writing images 1, 3, ... right now, so their temp files must stay
    run = _copy(cls_run, tmp_path / "run")
    ids = (tiny_data / "ImageSets/Segmentation/train.txt").read_text().split()
    ycrf = run / "labels" / "Ycrf"
    ycrf.mkdir(parents=True)
    mine, theirs = ycrf / f".{ids[0]}.png.k1lled0a.tmp", ycrf / f".{ids[1]}.png.wr1t1ng0.tmp"
    for p in (mine, theirs):
        p.write_bytes(b"partial")
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--shard", "1/2", "-q"])
    assert res.exit_code == 0, res.output
    assert not mine.exists() and theirs.read_bytes() == b"partial"
    assert (ycrf / f"{ids[0]}.png").is_file() and not (ycrf / f"{ids[1]}.png").exists()


def test_temp_target_names_the_file_a_temp_file_becomes(tmp_path):
    from banacli.artifacts import atomic_path, temp_target

    with atomic_path(tmp_path / "2007_000032.v2.png") as tmp:
        assert temp_target(tmp) == "2007_000032.v2.png"
        tmp.write_bytes(b"x")


def test_shard_refusals(tiny_data, cls_run, tmp_path, app):
    run = _copy(cls_run, tmp_path / "run")
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--shard", "3/2"])
    assert res.exit_code == 2 and "K/N" in res.output and "Traceback" not in res.output
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--shard", "1/2", "--force"])
    assert res.exit_code == 2 and "--shard" in res.output


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _is_loky_worker(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"loky" in cmd and b"resource_tracker" not in cmd


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_workers_exit_when_the_parent_is_killed(tiny_data, cls_run, tmp_path):
    run = _copy(cls_run, tmp_path / "run")
    bana = os.path.join(os.path.dirname(sys.executable), "bana")
    # many CRF iterations keep the workers busy long enough to kill their parent mid-run
    proc = subprocess.Popen([bana, "gen-labels", "--data", str(tiny_data), "--run", str(run), "--workers", "2",
                             "--crf-iterations", "3000", "-q"], start_new_session=True)
    try:
        deadline = time.time() + 120
        workers: list[int] = []
        while time.time() < deadline:
            # loky's worker processes (not its resource tracker) are children of the main process
            workers = [k for k in _children(proc.pid) if _is_loky_worker(k)]
            busy = list((run / "labels" / "Yret").glob("*.png")) if (run / "labels" / "Yret").is_dir() else []
            if busy and len(workers) >= 2:  # the workers hold tasks: they are labelling
                break
            time.sleep(0.2)
        assert len(workers) >= 2, "workers did not start"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 60  # generous: a loaded 2-core CI machine is slow to reap
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), [w for w in workers if _alive(w)]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_torchrun_ranks_share_one_run_and_accept_run(tiny_data, cls_run, tmp_path, app):
    whole = _copy(cls_run, tmp_path / "whole")
    assert invoke(app, ["gen-labels", "--data", tiny_data, "--run", whole, "-q"]).exit_code == 0
    run = _copy(cls_run, tmp_path / "run")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    # as docs/usage.md writes it: "--" keeps torchrun's parser away from --run
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", "29547", "-m", "banacli", "--",
           "gen-labels", "--data", str(tiny_data), "--run", str(run), "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-12000:]
    assert _digests(run) == _digests(whole)
    assert (run / "labels" / "bana.report.json").is_file()
    # a killed rank's images are redone on restart: remove two outputs, rerun, same bytes
    ids = sorted((run / "labels" / "Ycrf").glob("*.png"))
    for p in ids[:2]:
        p.unlink()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-12000:]
    assert _digests(run) == _digests(whole)


def test_pictures_have_gt_column_legend_and_a_cam_per_class(tiny_data, cls_run, tmp_path, app):
    from PIL import Image

    from banacli.data.voc import VOCDataset
    from banacli.viz import panel

    run = _copy(cls_run, tmp_path / "run")
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--viz", 1, "-q"])
    assert res.exit_code == 0, res.output
    ds = VOCDataset(tiny_data, "train")
    s = ds.load(0)
    pic = np.asarray(Image.open(run / "labels" / "viz" / f"{s.id}.png"))
    n_classes = len(np.unique(s.labels))
    scale = max(1, -(-160 // max(s.image.shape[:2])))
    tile_w = s.width * scale + 4
    # image, u0, one CAM per box class, unreliable, ground truth, Ycrf, Yret
    assert s.gt is not None
    assert pic.shape[1] == (1 + 1 + n_classes + 1 + 1 + 2) * tile_w
    assert pic.shape[0] > s.height * scale + 14  # a legend strip below the tiles
    # the legend shows each class colour of the boxes
    from banacli.data.palette import PALETTE

    strip = pic[s.height * scale + 14:]
    for c in np.unique(s.labels):
        assert (strip == PALETTE[int(c)]).all(-1).any(), c
    # without ground truth: one column fewer; CAM titles name the class
    no_gt = panel(s.image, s.boxes, s.labels, maps={"CAM:1": np.zeros(s.image.shape[:2])},
                  label_maps={"Ycrf": np.zeros(s.image.shape[:2], np.uint8)}, class_names=ds.class_names)
    assert no_gt.shape[1] == 3 * tile_w


def test_box_convention_authors_from_the_cli(tiny_data, cls_run, tmp_path, app):
    default = _copy(cls_run, tmp_path / "default")
    assert invoke(app, ["gen-labels", "--data", tiny_data, "--run", default, "-q"]).exit_code == 0
    # the default leaves the manifest as before the key existed (older runs stay valid)
    assert "box_convention" not in json.loads((default / "labels" / "bana.manifest.json").read_text())["params"]
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", default, "--box-convention", "authors", "-q"])
    assert res.exit_code == 1 and "different params" in res.output
    run = _copy(cls_run, tmp_path / "authors")
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--box-convention", "authors", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "labels" / "bana.manifest.json").read_text())["params"]["box_convention"] == "authors"
    # a class appears only inside the authors' extents of its boxes (first row/column excluded)
    from banacli.data.palette import load_label_png
    from banacli.data.voc import VOCDataset
    from banacli.boxes import authors_extents

    ds = VOCDataset(tiny_data, "train")
    stripped = 0
    for i in range(len(ds)):
        s = ds.load(i)
        ext = authors_extents(s.boxes, s.height, s.width)
        for name in ("Ycrf", "Yret"):
            lab = load_label_png(run / "labels" / name / f"{s.id}.png")
            for c in np.unique(s.labels):
                own = np.zeros(lab.shape, bool)
                for (x0, y0, x1, y1), k in zip(ext, s.labels):
                    if k == c:
                        own[y0:y1, x0:x1] = True
                assert not (lab[~own] == c).any(), (s.id, name, c)
        stripped += sum(int(x0 > np.floor(b[0])) for (x0, *_), b in zip(ext, s.boxes))
    assert stripped > 0  # the boxes did lose their first column
