"""The original's aspect-ratio grouped batches (DATALOADER.ASPECT_RATIO_GROUPING with TEST.IMS_PER_BATCH > 1):
the batch plan, its windows, the image sizes it reads, and extraction runs that follow it through kills,
full disks and ranks."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli.test_extract_cli import SMALL_R50
from tests.conftest import EXTRACT_FILES
from tests.extract.test_faults import forked
from vinvl import tsv as T
from vinvl.cli import main
from vinvl.config.original import load_original
from vinvl.detection import AttrRCNN, Detector
from vinvl.errors import FormatError, VinvlError
from vinvl.extract import ExtractOptions, collect_inputs
from vinvl.extract import run as R
from vinvl.extract.sources import dataset_yaml_items, image_sizes
from vinvl.labelmap import LabelMap

FILES = EXTRACT_FILES
LANDSCAPE = [(120, 200), (100, 180), (90, 160)]  # (h, w): h / w < 1, group 0
PORTRAIT = [(200, 120), (180, 100), (160, 90), (150, 150)]  # h / w >= 1 (a square too), group 1
MIXED = "LPPPL"  # with 2 per batch: [0, 4], [1, 2], [3], one window
MANY = "LPPPLPLLLPLPPLPL"  # 8 batches in 4 windows of 3, 1, 2 and 2 batches


def _image(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _images(folder: Path, orientations: str) -> list[tuple[int, int]]:
    sizes = []
    for i, o in enumerate(orientations):
        sizes.append((LANDSCAPE if o == "L" else PORTRAIT)[i % (3 if o == "L" else 4)])
        _image(folder / f"a{i:02d}.png", *sizes[-1], seed=i)
    return sizes


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A small R-50-C4 AttrRCNN (yaml, weights, label map) and two folders of mixed orientations."""
    d = tmp_path_factory.mktemp("grouped")
    (d / "small.yaml").write_text(SMALL_R50)
    _, orig = load_original(d / "small.yaml")
    torch.manual_seed(0)
    model = AttrRCNN(orig.detector)
    with torch.no_grad():
        model.roi_heads.box.predictor.cls_score.weight.mul_(20)
    torch.save({"model": model.state_dict()}, d / "weights.pth")
    LabelMap(("__background__",) + tuple(f"c{i}" for i in range(1, 11)),
             ("__no_attribute__",) + tuple(f"a{i}" for i in range(1, 7))).save_vg_json(d / "labelmap.json")
    _images(d / "mixed", MIXED)
    _images(d / "many", MANY)
    return d


def _argv(small: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--config-file", str(small / "small.yaml"), "MODEL.WEIGHT", str(small / "weights.pth"),
            "DATA_DIR", str(small), *extra, "--images", str(images), "-o", str(out), "--quiet"]


def _cli(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _digest(out: Path) -> dict[str, str]:
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in FILES}


# --- the plan ------------------------------------------------------------------------------------------------

def _sampler_batches(groups: list[int], batch_size: int) -> list[list[int]]:
    """GroupedBatchSampler(SequentialSampler, group_ids, batch_size, drop_uneven=False), restated as a stream:
    each image joins its group's open batch (a batch is opened by its first image, so opening order is the
    order of first images), and a batch closes when full; what is open at the end is kept."""
    opened: list[list[int]] = []
    open_of: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        if g not in open_of:
            open_of[g] = []
            opened.append(open_of[g])
        open_of[g].append(i)
        if len(open_of[g]) == batch_size:
            del open_of[g]
    return opened


def test_hand_computed_plan(small: Path) -> None:
    groups = R.aspect_groups([(120, 200), (200, 120), (150, 150), (200, 120), (90, 160)])  # L P square P L
    assert groups == [0, 1, 1, 1, 0]
    assert R.plan_batches(groups, 2) == [[0, 4], [1, 2], [3]]
    assert R.plan_windows([[0, 4], [1, 2], [3]]) == [3]  # rows 0..4 can only be written after all three
    assert R.plan_windows([[0, 1], [2, 3], [4]]) == [1, 2, 3]
    # From the files' own headers (no hw file), in the run's order of inputs.
    items = collect_inputs([small / "mixed"])
    plan = R.batch_plan(items, 2, "padded", aspect_ratio_grouping=True)
    assert (plan.batches, plan.window_ends, plan.grouping) == ([[0, 4], [1, 2], [3]], [3], "aspect_ratio")
    off = R.batch_plan(items, 2, "padded", aspect_ratio_grouping=False)
    assert (off.batches, off.window_ends, off.grouping) == ([[0, 1], [2, 3], [4]], [1, 2, 3], "consecutive")
    assert off.sha256() != plan.sha256()
    many = R.batch_plan(collect_inputs([small / "many"]), 2, "padded", aspect_ratio_grouping=True)
    assert many.window_ends == [3, 4, 6, 8]
    assert [many.rank_range(r, 2) for r in range(2)] == [(0, 4), (4, 8)]  # two windows each
    assert [many.rank_range(r, 3) for r in range(3)] == [(0, 3), (3, 4), (4, 8)]


def test_plan_is_the_grouped_batch_samplers() -> None:
    rng = random.Random(7)
    for _ in range(400):
        n, bs = rng.randint(0, 40), rng.randint(1, 5)
        p = rng.random()
        groups = [int(rng.random() < p) for _ in range(n)]
        batches = R.plan_batches(groups, bs)
        assert batches == _sampler_batches(groups, bs), (groups, bs)
        ends = R.plan_windows(batches)
        starts = [0, *ends[:-1]]
        assert (ends[-1] if ends else 0) == len(batches)
        for a, b in zip(starts, ends):
            # every window covers a contiguous range of inputs, and no shorter run of its batches does
            covered = sorted(i for batch in batches[a:b] for i in batch)
            assert covered == list(range(covered[0], covered[-1] + 1))
            for c in range(a + 1, b):
                part = sorted(i for batch in batches[a:c] for i in batch)
                assert part != list(range(part[0], part[-1] + 1))


def test_datasets_are_batched_apart(tmp_path: Path) -> None:
    assert R.plan_batches([0, 1, 0, 1, 1, 0], 2, ["a", "a", "a", "b", "b", "b"]) == [[0, 2], [1], [3, 4], [5]]
    assert R.plan_batches([0, 0, 0, 0, 0], 2, ["a", "a", "a", "b", "b"]) == [[0, 1], [2], [3, 4]]
    # Two dataset yamls: each its own loader in the original, so no batch takes images of both.
    items = []
    for name, sizes in [("one", [(100, 200), (100, 200), (100, 200)]), ("two", [(100, 200), (100, 200)])]:
        rows = []
        for i, (h, w) in enumerate(sizes):
            buf = io.BytesIO()
            Image.new("RGB", (w, h)).save(buf, "PNG")
            rows.append([f"{name}{i}", base64.b64encode(buf.getvalue()).decode()])
        T.write_tsv(tmp_path / f"{name}.img.tsv", rows)
        (tmp_path / f"{name}.yaml").write_text(f"img: {name}.img.tsv\n")
        items += dataset_yaml_items(tmp_path / f"{name}.yaml")
    for grouping in (True, False):
        plan = R.batch_plan(items, 2, "padded", aspect_ratio_grouping=grouping)
        assert plan.batches == [[0, 1], [2], [3, 4]]


def test_sizes_from_the_hw_file_else_the_header(tmp_path: Path) -> None:
    stored = [(60, 100), (100, 60), (80, 80), (60, 100)]
    rows = []
    for i, (h, w) in enumerate(stored):
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, "JPEG")
        rows.append([f"k{i}", base64.b64encode(buf.getvalue()).decode()])
    rows.append(["broken", base64.b64encode(b"not an image").decode()])
    T.write_tsv(tmp_path / "img.tsv", rows)
    (tmp_path / "linelist.tsv").write_text("3\n0\n1\n2\n4\n")
    (tmp_path / "plain.yaml").write_text("img: img.tsv\nlinelist: linelist.tsv\n")
    items = dataset_yaml_items(tmp_path / "plain.yaml")
    assert image_sizes(items) == [(60, 100), (60, 100), (100, 60), (80, 80), None]  # headers, by linelist
    assert R.aspect_groups(image_sizes(items)) == [0, 0, 1, 1, 2]
    # The original's source: the hw row of each image's line number, in each of the forms it reads; here the
    # hw file says otherwise than the pixels, and it wins (as it does in the original).
    (tmp_path / "hw.tsv").write_text('k0\t[{"height": 10, "width": 5}]\nk1\t{"height": 5, "width": 10}\nk2\t7 7\n'
                                     'k3\t[{"height": 1, "width": 2}]\nbroken\t3 4\n')
    (tmp_path / "hw.yaml").write_text("img: img.tsv\nlinelist: linelist.tsv\nhw: hw.tsv\n")
    items = dataset_yaml_items(tmp_path / "hw.yaml")
    assert image_sizes(items) == [(1, 2), (10, 5), (5, 10), (7, 7), (3, 4)]
    (tmp_path / "hw.tsv").write_text('k0\t10 5\nk1\t{"height": 0, "width": 10}\nk2\t7 7\nk3\t1 2\nbroken\t3 4\n')
    with pytest.raises(FormatError) as e:
        image_sizes(items)
    assert str(e.value).startswith(f"{tmp_path / 'hw.tsv'}:2: ") and "\n" not in str(e.value)
    (tmp_path / "hw.tsv").write_text('k0\t[{"height": 10, "width": 5}]\n')
    with pytest.raises(FormatError, match=r"hw.tsv:4: no size for image row 3"):
        image_sizes(items)
    (tmp_path / "hw.tsv").unlink()
    with pytest.raises(VinvlError, match=r"hw.yaml: hw .*hw.tsv: no such file"):
        image_sizes(items)
    # EXIF orientation 6 (turned 90 degrees) swaps the sides only where the run applies it.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (100, 60)).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    (item,) = collect_inputs([tmp_path / "turned.jpg"])
    assert image_sizes([item]) == [(60, 100)] and image_sizes([item], exif_transpose=True) == [(100, 60)]


def test_one_image_per_batch_reads_no_size(small: Path, monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("image sizes read for one image per batch")

    monkeypatch.setattr(R, "image_sizes", refuse)
    items = collect_inputs([small / "mixed"])
    plan = R.batch_plan(items, 1, "padded", aspect_ratio_grouping=True)
    assert (plan.batches, plan.grouping) == ([[i] for i in range(5)], "consecutive")
    with pytest.raises(AssertionError):
        R.batch_plan(items, 2, "padded", aspect_ratio_grouping=True)


def test_detect_prepared_takes_explicit_batches() -> None:
    det = Detector.from_config("tiny", seed=0, batching="padded")
    prepared = [(torch.zeros(3, 32, 48), (32, 48)), (torch.zeros(3, 48, 32), (48, 32))]
    with pytest.raises(ValueError, match="each of the 2 images once"):
        det.detect_prepared(prepared, batches=[[0], [0]])
    with pytest.raises(ValueError, match="each of the 2 images once"):
        det.detect_prepared(prepared, batches=[[0]])


# --- runs ----------------------------------------------------------------------------------------------------

def _library_rows(small: Path, folder: Path, batches: list[list[int]]) -> dict[str, list[str]]:
    """Each image's predictions.tsv row when its batch goes through ``Detector`` directly (padded together)."""
    _, orig = load_original(small / "small.yaml")
    assert orig.detector.batching == "padded"
    det = Detector.from_checkpoint(small / "weights.pth", preset=orig.detector, labelmap=small / "labelmap.json",
                                   channels_last=False, fold_bn=False)  # the original form's arithmetic
    files = sorted(folder.glob("*.png"))
    rows = {}
    for batch in batches:
        raws = det.detect_raw([files[i] for i in batch], batch_size=len(batch))
        for i, raw in zip(batch, raws):
            pred = det.finish(*raw).to_prediction(files[i].stem, False, True, det.labelmap.attributes)
            rows[files[i].stem] = pred.to_row(orig.save_subset)
    return rows


def test_original_form_runs_the_planned_batches(small: Path, tmp_path: Path, capsys) -> None:
    outs = {}
    for grouping in ("True", "False"):
        out = tmp_path / grouping
        code, err = _cli(capsys, _argv(small, small / "mixed", out, "DATALOADER.ASPECT_RATIO_GROUPING", grouping))
        assert code == 0, err
        outs[grouping] = {k: v for k, v in T.TSVFile(out / "predictions.tsv")}
        assert list(outs[grouping]) == [f"a{i:02d}" for i in range(5)]  # input order
        m = json.loads((out / "manifest.json").read_text())
        want = "aspect_ratio" if grouping == "True" else "consecutive"
        assert m["batch_grouping"] == m["settings"]["batch_grouping"] == want
    grouped = _library_rows(small, small / "mixed", [[0, 4], [1, 2], [3]])
    consecutive = _library_rows(small, small / "mixed", [[0, 1], [2, 3], [4]])
    for key in grouped:
        assert [key, outs["True"][key]] == grouped[key], key
        assert [key, outs["False"][key]] == consecutive[key], key
    assert any(outs["True"][k] != outs["False"][k] for k in grouped)  # the partner changes a padded image's rows


def _rows_past_journal(out: Path) -> bool:
    """Whether the shard holds rows written after its last journal entry (killed inside a window)."""
    shard = out / ".vinvl-extract" / "shard-00000-of-00001"
    if not (shard / "predictions.tsv").exists():
        return False
    lines = (shard / "journal.tsv").read_bytes().split(b"\n")[:-1]
    journaled = json.loads(lines[-1])["offsets"]["predictions"] if lines else 0
    return (shard / "predictions.tsv").stat().st_size > journaled


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_inside_windows_resumes_byte_identical(small: Path, tmp_path: Path) -> None:
    ref, out, stats = tmp_path / "ref", tmp_path / "o", tmp_path / "stats.json"
    assert forked(_argv(small, small / "many", ref), "_run_batches", 0, stats) == 0
    calls = json.loads(stats.read_text())["calls"]
    assert json.loads((ref / "manifest.json").read_text())["batch_grouping"] == "aspect_ratio"
    kills = inside = 0
    for at in sorted({int(x) for x in np.linspace(calls * 0.05, calls * 0.95, 7)}):
        shutil.rmtree(out, ignore_errors=True)
        code = forked(_argv(small, small / "many", out), "_run_batches", at)
        assert code in (-signal.SIGKILL, 0), (at, code)
        kills += code == -signal.SIGKILL
        inside += _rows_past_journal(out)
        assert forked(_argv(small, small / "many", out, "--resume")) == 0
        assert _digest(out) == _digest(ref), at
    assert kills >= 5 and inside >= 1, (kills, inside)


def test_disk_full_inside_a_window_resumes_and_grouping_is_recorded(small: Path, tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    ref, out = tmp_path / "ref", tmp_path / "o"
    code, err = _cli(capsys, _argv(small, small / "many", ref))
    assert code == 0, err
    real = R._Shard.write_batch
    calls = []

    def failing(self, *a, **k):
        calls.append(k.get("commit", True))
        if len(calls) == 6:  # windows 1 (3 writes, 2 uncommitted) and 2 done; window 3's first rows written
            raise OSError(errno.ENOSPC, "No space left on device", str(self.paths["features"]))
        return real(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(R._Shard, "write_batch", failing)
        code, err = _cli(capsys, _argv(small, small / "many", out))
    assert calls == [False, False, True, True, False, True], calls
    assert code == 1 and "disk full after 4 completed batches (8 images, kept)" in err, err
    code, err = _cli(capsys, _argv(small, small / "many", out, "DATALOADER.ASPECT_RATIO_GROUPING", "False", "--resume"))
    assert code == 2 and "other settings" in err and "batch_grouping" in err, err
    code, err = _cli(capsys, _argv(small, small / "many", out, "--resume"))
    assert code == 0, err
    assert _digest(out) == _digest(ref)


def test_ranks_take_whole_windows(small: Path, tmp_path: Path) -> None:
    """Two ranks (run one after the other in this process: each writes its shard, rank 0 merges) give the
    bytes of one: they split the plan at window ends, so every image keeps its batch partner."""
    _, orig = load_original(small / "small.yaml")
    det = Detector.from_checkpoint(small / "weights.pth", preset=orig.detector, labelmap=small / "labelmap.json",
                                   channels_last=False, fold_bn=False)
    items = collect_inputs([small / "many"])
    opts = ExtractOptions(subset=orig.save_subset, image_size_in_rows=False, attribute_slots=True,
                          aspect_ratio_grouping=True, quiet=True, poll_seconds=0.01)
    one = R.extract(items, det, tmp_path / "one", opts)
    assert one.finished and one.images == len(MANY)
    second = R.extract(items, det, tmp_path / "two", opts, rank=1, world_size=2)
    assert not second.finished and second.images == 8  # windows 3 and 4: batches 4..7
    first = R.extract(items, det, tmp_path / "two", opts, rank=0, world_size=2)
    assert first.finished and first.images == len(MANY)
    assert _digest(tmp_path / "two") == _digest(tmp_path / "one")
