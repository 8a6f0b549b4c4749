"""`vinvl extract` as a product (tiny preset): outputs, manifest, faults, resume after SIGKILL, disk full,
DataLoader workers, and torchrun with 2 CPU processes == 1 process."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vinvl import features as F
from vinvl import tsv as T
from vinvl.detection import Detector


def test_outputs_and_manifest(ex, tiny: Path, clean: Path) -> None:
    for f in ex.FILES + ["manifest.json"]:
        assert (clean / f).is_file(), f
    assert not (clean / ".vinvl-extract").exists()
    preds = T.TSVFile(clean / "predictions.tsv")
    keys = preds.keys()
    assert keys[:3] == ["im01", "im02", "im03"] and keys[-1] == "s/im20" and len(keys) == 24
    for name in ("predictions", "features", "label", "hw", "errors"):
        assert T.lineidx_path(clean / f"{name}.tsv").read_text() == "".join(
            f"{o}\n" for o in T.scan_offsets(clean / f"{name}.tsv").tolist())
    assert T.read_key_index(clean / "imageid2idx.json") == {k: i for i, k in enumerate(keys)}
    dim = Detector.from_config("tiny").model.roi_heads.box.feature_extractor.out_channels + 6
    feats = F.FeatureTSV(clean / "features.tsv", dim=dim)
    hw = {r[0]: F.parse_hw_row(r)[1:] for r in T.TSVFile(clean / "hw.tsv")}
    for key, text in preds:
        p = F.Prediction.from_json(key, text)
        assert hw[key] == (p.image_h, p.image_w)
        path = tiny / "imgs" / f"{key}.jpg"
        assert Image.open(path).size == (p.image_w, p.image_h)
        np.testing.assert_array_equal(feats.get(key), F.oscar_region_features(p.features, p.boxes, p.image_w, p.image_h))
        _, objs = F.parse_label_row(T.TSVFile(clean / "label.tsv").get(key))
        assert [o["class"] for o in objs] == p.classes and [o["attributes"] for o in objs] == p.attributes
    assert (clean / "errors.tsv").read_bytes() == b""
    m = json.loads((clean / "manifest.json").read_text())
    assert m["weights_sha256"] == hashlib.sha256((tiny / "tiny.pth").read_bytes()).hexdigest()
    assert m["counts"] == {"images": 24, "failed": 0, "boxes": sum(len(F.Prediction.from_json(k, t)) for k, t in preds)}
    assert m["settings"]["config"]["name"] == "tiny" and m["batch_size"] == 3 and m["world_size"] == 1
    assert m["torch"] == torch.__version__ and m["form"] == "native" and m["threads"] == 1


def test_skip_and_existing_outputs(ex, tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    code, _, err = ex.cli(capsys, *ex.args(out, "--skip", "features", "--skip", "labels"))
    assert code == 0, err
    assert (out / "predictions.tsv").exists() and not (out / "features.tsv").exists() and not (out / "label.tsv").exists()
    before = ex.digest(out, ["predictions.tsv", "hw.tsv"])
    code, _, err = ex.cli(capsys, *ex.args(out))
    assert code == 2 and "holds a finished extraction" in err
    code, _, err = ex.cli(capsys, *ex.args(out, "--skip", "features", "--skip", "labels", "--resume"))
    assert code == 0 and "already complete" not in err  # --quiet
    assert ex.digest(out, ["predictions.tsv", "hw.tsv"]) == before
    code, _, err = ex.cli(capsys, *ex.args(out, "--skip", "nope"))
    assert code == 2 and "error: --skip: 'nope' is not one of" in err


def test_broken_and_odd_images(ex, tiny: Path, tmp_path: Path, capsys) -> None:
    d = tmp_path / "mixed"
    d.mkdir()
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(good, "JPEG")
    (d / "a_good.jpg").write_bytes(good.getvalue())
    (d / "b_empty.jpg").write_bytes(b"")
    (d / "c_text.png").write_bytes(b"not an image at all")
    (d / "d_truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    for name, mode in [("e_cmyk.jpg", "CMYK"), ("f_palette.png", "P"), ("g_la.png", "LA"), ("h_gray.png", "L"),
                       ("i_rgba.png", "RGBA")]:
        Image.new(mode, (50, 40)).save(d / name)
    Image.fromarray(np.full((30, 20), 30000, np.uint16)).save(d / "j_16bit.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "k_1x1.png")
    out = tmp_path / "o"
    args = ex.args(out)
    args[1] = str(d)
    code, stdout, err = ex.cli(capsys, *args)
    assert code == 3, err  # some inputs failed
    assert "3 input(s) could not be read" in err and "3 failed" in stdout
    errors = {r[0]: r[2] for r in T.TSVFile(out / "errors.tsv")}
    assert set(errors) == {"b_empty", "c_text", "d_truncated"}
    assert "empty file" in errors["b_empty"] and "not an image" in errors["c_text"]
    assert "truncated" in errors["d_truncated"]
    assert T.TSVFile(out / "predictions.tsv").keys() == ["a_good", "e_cmyk", "f_palette", "g_la", "h_gray", "i_rgba",
                                                         "j_16bit", "k_1x1"]
    assert json.loads((out / "manifest.json").read_text())["counts"]["failed"] == 3


def test_progress_lines_in_logs(ex, tiny: Path, tmp_path: Path, capsys) -> None:
    args = [a for a in ex.args(tmp_path / "o") if a != "--quiet"]
    code, _, err = ex.cli(capsys, *args)
    assert code == 0
    assert "extract: 24/24 images (100.0%)" in err and "images/s" in err and "\r" not in err


def test_workers_give_the_same_bytes(ex, tiny: Path, clean: Path, tmp_path: Path) -> None:
    r = ex.run(ex.args(tmp_path / "w", "--workers", "2"))
    assert r.returncode == 0, r.stderr
    assert ex.digest(tmp_path / "w") == ex.digest(clean)


def test_resume_after_sigkill_is_byte_identical(ex, tiny: Path, clean: Path, tmp_path: Path) -> None:
    """Kill -9 at random moments (after 2, 4 and 6 of the 8 batches, plus a random fraction of a batch,
    so some kills land inside a batch's writes), resume each time: the same bytes as a clean run."""
    out = tmp_path / "k"
    journal = out / ".vinvl-extract" / "shard-00000-of-00001" / "journal.tsv"
    rng = random.Random(0)
    kills = 0
    for attempt, target in enumerate((2, 4, 6)):
        args = ex.args(out, *(["--resume"] if attempt else []))
        p = subprocess.Popen([sys.executable, "-m", "vinvl", *args], env=ex.ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b"\n") >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.08))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
    assert kills >= 2
    assert journal.exists()  # an interrupted run is left to resume
    r = ex.run(ex.args(out, "--resume"))
    assert r.returncode == 0, r.stderr
    assert ex.digest(out) == ex.digest(clean)


def test_resume_refuses_other_settings(ex, tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from vinvl.extract import run as R

    out = tmp_path / "o"
    calls = {"n": 0}
    real = R._Shard.write_batch

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.paths["features"]))
        return real(self, *a, **k)

    monkeypatch.setattr(R._Shard, "write_batch", failing)
    code, _, err = ex.cli(capsys, *ex.args(out))
    assert code == 1 and "disk full after 2 completed batches (6 images, kept)" in err and "--resume" in err
    monkeypatch.setattr(R._Shard, "write_batch", real)
    code, _, err = ex.cli(capsys, *ex.args(out))
    assert code == 2 and "add --resume" in err
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume", "--min-size", "80"))
    assert code == 2 and "other settings" in err and "config" in err
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume"))
    assert code == 0, err
    ref = tmp_path / "ref"
    code, _, err = ex.cli(capsys, *ex.args(ref))
    assert ex.digest(out) == ex.digest(ref)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equal_one(ex, tiny: Path, clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "vinvl", *ex.args(out)]
    r = subprocess.run(cmd, env=ex.ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ex.digest(out) == ex.digest(clean)
    m = json.loads((out / "manifest.json").read_text())
    assert m["world_size"] == 2 and len(m["seconds_per_rank"]) == 2 and m["counts"]["images"] == 24
    assert not (out / ".vinvl-extract").exists()


def test_bucketing_batches_equal_sizes_and_resumes_exactly(ex, tiny: Path, clean: Path, tmp_path: Path, monkeypatch) -> None:
    """--bucket-batches 4: images of equal resized size from 4 consecutive batches run together (the
    fixture's sizes alternate, so without it every forward pass holds one image); the rows equal the
    unbucketed run's up to float rounding, and a run killed after its first window resumes to the
    same bytes as an uninterrupted bucketed run."""
    from vinvl.extract import collect_inputs, extract

    det = Detector.from_checkpoint(tiny / "tiny.pth", preset="tiny", labelmap=tiny / "labelmap.json", batch_size=3)
    sizes: list[int] = []
    monkeypatch.setattr(det.model, "forward", lambda x, *a, _f=det.model.forward, **k: sizes.append(len(x)) or _f(x, *a, **k))
    items = collect_inputs([tiny / "imgs"])
    extract(items, det, tmp_path / "b", quiet=True, bucket_batches=4)
    assert sorted(sizes, reverse=True)[:6] == [3] * 6 and sum(sizes) == 24, sizes
    dim = det.model.roi_heads.box.feature_extractor.out_channels + 6
    ref = dict(F.FeatureTSV(clean / "features.tsv", dim=dim))
    got = dict(F.FeatureTSV(tmp_path / "b" / "features.tsv", dim=dim))
    assert list(got) == list(ref)
    for key, feats in got.items():
        np.testing.assert_allclose(feats, ref[key], rtol=1e-4, atol=1e-5)

    whole = tmp_path / "whole"
    r = ex.run(ex.args(whole, "--bucket-batches", "4"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "k"
    args = ex.args(out, "--bucket-batches", "4")
    p = subprocess.Popen([sys.executable, "-m", "vinvl", *args], env=ex.ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / ".vinvl-extract" / "shard-00000-of-00001" / "journal.tsv"
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline and not (journal.exists() and journal.read_bytes().count(b"\n")):
        time.sleep(0.005)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()
    lines = journal.read_text().splitlines()
    assert [json.loads(x)["batches"] for x in lines] in ([4], [4, 8])  # journaled per window
    r = ex.run(ex.args(out, "--bucket-batches", "4", "--resume"))
    assert r.returncode == 0, r.stderr
    assert ex.digest(out) == ex.digest(whole)
