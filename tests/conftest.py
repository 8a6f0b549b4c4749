"""Shared fixtures: the reference outputs in ../shared beside the repo, and the extraction
tests' tiny-preset weights, images and clean run (`tiny`, `ex`, `clean`)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vinvl.cli import main
from vinvl.detection import Detector
from vinvl.labelmap import LabelMap

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VINVL_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (the spec and the original's reference outputs); CI always has it."""
    if not (SHARED / "reference").is_dir():
        pytest.skip(f"reference data not found at {SHARED} (set VINVL_SHARED)")
    return SHARED


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that pin torch's thread count must not change it for the tests after them: results that are
    byte-compared with the reference depend on it."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --- extraction: tiny-preset weights, a label map, 24 small images, a clean run to compare bytes with ---------

EXTRACT_FILES = ["predictions.tsv", "predictions.lineidx", "features.tsv", "features.lineidx", "label.tsv", "label.lineidx",
         "hw.tsv", "hw.lineidx", "errors.tsv", "errors.lineidx", "imageid2idx.json"]
# Same threads everywhere: results are a function of inputs, settings and batch size on one machine.
EXTRACT_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """Tiny-preset weights, a label map, and a folder of 24 small images of a few sizes."""
    d = tmp_path_factory.mktemp("tiny")
    det = Detector.from_config("tiny", seed=0)
    with torch.no_grad():
        det.model.roi_heads.box.predictor.cls_score.weight.mul_(20)
    torch.save({"model": det.model.state_dict()}, d / "tiny.pth")
    LabelMap(("__background__",) + tuple(f"c{i}" for i in range(1, 11)),
             ("__no_attribute__",) + tuple(f"a{i}" for i in range(1, 7))).save_vg_json(d / "labelmap.json")
    rng = np.random.default_rng(0)
    sizes = [(120, 200), (200, 120), (90, 90), (150, 150)]
    for i in range(24):
        h, w = sizes[i % len(sizes)]
        sub = d / "imgs" / ("s" if i % 5 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(sub / f"im{i:02d}.jpg", quality=90)
    return d


def _args(tiny: Path, out: Path, *extra: str, images: Path | None = None) -> list[str]:
    return ["extract", str(images or tiny / "imgs"), "-o", str(out), "--weights", str(tiny / "tiny.pth"),
            "--preset", "tiny", "--labelmap", str(tiny / "labelmap.json"), "--batch-size", "3", "--quiet",
            *([] if "--bucket-batches" in extra else ["--bucket-batches", "1"]), *extra]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vinvl", *args], env=EXTRACT_ENV, capture_output=True, text=True, **kw)


def _digest(out: Path, files=EXTRACT_FILES) -> dict[str, str]:
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="session")
def ex(tiny: Path) -> SimpleNamespace:
    """``args(out, *extra, images=)``: a `vinvl extract` command line on the tiny fixture; ``cli`` runs one in
    this process, ``run`` in a child process (one thread); ``digest`` hashes a run's outputs."""
    return SimpleNamespace(args=lambda out, *extra, images=None: _args(tiny, out, *extra, images=images),
                           cli=_cli, run=_run, digest=_digest, FILES=EXTRACT_FILES, ENV=EXTRACT_ENV)


@pytest.fixture(scope="session")
def clean(ex: SimpleNamespace, tmp_path_factory) -> Path:
    """A clean one-process run in a child process (one thread), the yardstick of byte identity."""
    out = tmp_path_factory.mktemp("clean") / "out"
    r = ex.run(ex.args(out))
    assert r.returncode == 0, r.stderr
    return out
