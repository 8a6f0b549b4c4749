"""`--dtype auto`: bf16 only where native and measured faster, the faster layout, a per-machine cached choice; the
original form stays on the original's fp32 NCHW arithmetic; the choice is recorded with the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vinvl.config import detector_preset
from vinvl.detection import numerics as N

CPU = torch.device("cpu")


def test_decide_takes_bf16_only_when_native_and_clearly_faster() -> None:
    t = {("fp32", True): 1.0, ("fp32", False): 0.9, ("bf16", True): 0.3, ("bf16", False): 0.35}
    got = N.decide(t, True, "here")
    assert (got.dtype, got.channels_last) == ("bf16", True) and "3.00x fp32 NCHW" in got.reason
    got = N.decide({**t, ("bf16", True): 0.8, ("bf16", False): 0.85}, True, "here")  # 1.12x: not worth the drift
    assert (got.dtype, got.channels_last) == ("fp32", False) and "only 1.12x" in got.reason
    got = N.decide({("fp32", True): 1.0, ("fp32", False): 1.3}, False, "here")  # emulated bf16 is never measured
    assert (got.dtype, got.channels_last) == ("fp32", True) and "emulated" in got.reason and "NHWC measured 1.30x NCHW" in got.reason


def test_auto_measures_once_per_machine_and_architecture(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = N._measure
    monkeypatch.setattr(N, "_measure", lambda dev, bb: calls.append(bb) or real(dev, bb, regions=2, reps=1))
    cache = tmp_path / "numerics.json"
    tiny = detector_preset("tiny").backbone
    first = N.choose(CPU, "auto", cache=cache, backbone=tiny)
    again = N.choose(CPU, "auto", cache=cache, backbone=tiny)
    assert len(calls) == 1 and (again.dtype, again.channels_last) == (first.dtype, first.channels_last)
    assert "cached" in again.reason and first.seconds and set(first.seconds) >= {"fp32 NHWC", "fp32 NCHW"}
    assert ("bf16 NHWC" in first.seconds) == N.bf16_native(CPU)
    other = detector_preset("tiny").backbone.__class__(**{**tiny.__dict__, "num_groups": 1, "width_per_group": 8})
    N.choose(CPU, "auto", cache=cache, backbone=other)
    assert len(calls) == 2  # another architecture is measured on its own
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if n > 1 else 2)
        N.choose(CPU, "auto", cache=cache, backbone=tiny)
    finally:
        torch.set_num_threads(n)
    assert len(calls) == 3 and len(json.loads(cache.read_text())) == 3
    cache.write_text("{torn")  # a damaged cache is measured again, never a traceback
    N.choose(CPU, "auto", cache=cache, backbone=tiny)
    assert len(calls) == 4


def test_explicit_dtype_is_kept_and_emulation_is_said(monkeypatch) -> None:
    monkeypatch.setattr(N, "bf16_native", lambda dev: False)
    got = N.choose(CPU, "bf16")
    assert got.dtype == "bf16" and got.channels_last and "emulated" in got.reason and "slower than fp32" in got.reason
    assert N.choose(CPU, "fp32").reason == "asked"
    with pytest.raises(Exception, match="--dtype must be one of"):
        N.choose(CPU, "fp64")


def test_capability_names_the_isa_and_bf16() -> None:
    text = N.capability(CPU)
    assert text.startswith("cpu ") and torch.backends.cpu.get_cpu_capability() in text and "bf16" in text


def test_extract_records_its_numerics(ex, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))
    chosen = N.Numerics("fp32", False, "auto on test: forced", {"fp32 NHWC": 2.0, "fp32 NCHW": 1.0})
    monkeypatch.setattr(N, "_measure", lambda dev, bb: chosen)
    args = [a for a in ex.args(tmp_path / "o", "--dtype", "auto") if a != "--quiet"]
    code, _, err = ex.cli(capsys, *args)
    assert code == 0, err
    assert "numerics: fp32 NCHW (auto on test: forced)" in err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["dtype"] == "fp32" and m["numerics"] == "auto on test: forced"
    assert m["settings"]["numerics"]["channels_last"] is False
    assert json.loads((tmp_path / "home" / "numerics.json").read_text())  # cached for the next run


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
