"""`--dtype`: fp32 by default; auto by capability only (bf16 where native), the layout fixed; the faster mode named
where fp32 runs on native bf16; the original form stays on the original's fp32 NCHW arithmetic; the choice is
recorded with the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vinvl.detection import numerics as N

CPU = torch.device("cpu")


def test_auto_is_capability_only(monkeypatch) -> None:
    """auto: bf16 exactly where native, else fp32; the layout fixed; no timing, so the same on every call."""
    monkeypatch.setattr(N, "bf16_native", lambda dev: True)
    got = N.choose(CPU, "auto")
    assert (got.dtype, got.channels_last) == ("bf16", True) and "native" in got.reason
    monkeypatch.setattr(N, "bf16_native", lambda dev: False)
    got = N.choose(CPU, "auto")
    assert (got.dtype, got.channels_last) == ("fp32", True) and "emulated" in got.reason
    assert N.choose(CPU) == N.choose(CPU, "fp32") and N.choose(CPU).dtype == "fp32"


def test_the_faster_mode_is_named_only_where_fp32_runs_on_native_bf16(monkeypatch) -> None:
    monkeypatch.setattr(N, "bf16_native", lambda dev: True)
    hint = N.faster_mode_hint(CPU, "fp32")
    assert hint.startswith("note: this CPU has native bf16: --dtype bf16") and N.MEASURED["cpu"]["speedup"] in hint
    assert N.MEASURED["cpu"]["drift"] in hint and N.faster_mode_hint(CPU, "bf16") is None
    monkeypatch.setattr(N, "bf16_native", lambda dev: False)
    assert N.faster_mode_hint(CPU, "fp32") is None


def test_explicit_dtype_is_kept_and_emulation_is_said(monkeypatch) -> None:
    monkeypatch.setattr(N, "bf16_native", lambda dev: False)
    got = N.choose(CPU, "bf16")
    assert got.dtype == "bf16" and got.channels_last and "emulated" in got.reason and "slower than fp32" in got.reason
    assert N.choose(CPU, "fp32").reason == "fp32: the original's numbers" and N.choose(CPU, "fp16").dtype == "fp16"
    with pytest.raises(Exception, match="--dtype must be one of"):
        N.choose(CPU, "fp64")


def test_capability_names_the_isa_and_bf16() -> None:
    text = N.capability(CPU)
    assert text.startswith("cpu ") and torch.backends.cpu.get_cpu_capability() in text and "bf16" in text


def test_extract_records_its_numerics(ex, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(N, "bf16_native", lambda dev: False)
    args = [a for a in ex.args(tmp_path / "o", "--dtype", "auto") if a != "--quiet"]
    code, _, err = ex.cli(capsys, *args)
    assert code == 0, err
    assert "numerics: fp32 NHWC (auto: fp32, bf16 is emulated on cpu" in err and err.count("numerics:") == 1
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["dtype"] == "fp32" and m["numerics"].startswith("auto: fp32")
    assert m["settings"]["numerics"]["channels_last"] is True


def test_auto_gives_the_same_bytes_under_other_loads_and_thread_counts(ex, tmp_path: Path) -> None:
    """No timing decides anything: a run with 1 thread on a quiet machine and one with 2 threads beside a busy
    process write the same bytes (the tiny model; the full X152-C4's last bits may depend on oneDNN's kernel for
    the thread count, docs/performance.md)."""
    import subprocess
    import sys

    quiet = ex.run(ex.args(tmp_path / "a", "--dtype", "auto"))
    assert quiet.returncode == 0, quiet.stderr
    burner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 120: pass"])
    try:
        env = {**ex.ENV, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        r = subprocess.run([sys.executable, "-m", "vinvl", *ex.args(tmp_path / "b", "--dtype", "auto")], env=env,
                           capture_output=True, text=True)
    finally:
        burner.kill()
        burner.wait()
    assert r.returncode == 0, r.stderr
    assert ex.digest(tmp_path / "a") == ex.digest(tmp_path / "b")
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab")
    assert a["threads"] == 1 and b["threads"] == 2 and a["dtype"] == b["dtype"] and a["numerics"] == b["numerics"]
    assert a["dtype"] == ("bf16" if N.bf16_native(CPU) else "fp32")


def test_rewrapping_a_model_in_the_other_layout_equals_a_fresh_set_up() -> None:
    """`vinvl extract` loads the weights once, then sets the model up in the numerics it chose."""
    import numpy as np
    from PIL import Image

    from vinvl.detection import Detector

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    for first, then in ((True, False), (False, True)):
        fresh = Detector.from_config("tiny", seed=0, channels_last=then, fold_bn=True)
        loaded = Detector.from_config("tiny", seed=0, channels_last=first, fold_bn=True)
        again = Detector(loaded.model, None, "cpu", channels_last=then, fold_bn=True)
        assert all(p.is_contiguous(memory_format=torch.channels_last if then else torch.contiguous_format)
                   for p in again.model.parameters() if p.dim() == 4)
        a, b = fresh(img), again(img)
        assert np.array_equal(a.features, b.features) and np.array_equal(a.boxes, b.boxes)


def test_performance_page_states_the_measured_figures_the_hint_prints(monkeypatch) -> None:
    """The hint `vinvl extract` prints for fp32 on a device with native bf16 quotes numerics.MEASURED, whose figures
    must be docs/performance.md's measurement: the page quotes the hint word for word, and its figures (speed-up,
    each number of the drift phrase) also stand in the page outside that quote, in the measured table."""
    import re

    page = Path(__file__).resolve().parents[2] / "docs" / "performance.md"
    text = " ".join(page.read_text().split())  # the page wraps lines; compare single-spaced
    monkeypatch.setattr(N, "bf16_native", lambda dev: True)
    for kind, m in N.MEASURED.items():
        hint = N.faster_mode_hint(torch.device(kind), "fp32")
        assert hint and m["speedup"] in hint and m["drift"] in hint
        assert hint in text, f"docs/performance.md does not quote the {kind} hint: {hint}"
        rest = text.replace(hint, "")
        for figure in [m["speedup"], *re.findall(r"\d+(?:\.\d+)?%?", m["drift"])]:
            assert figure in rest, f"{kind}: {figure!r} of MEASURED is not in docs/performance.md's measurement"
