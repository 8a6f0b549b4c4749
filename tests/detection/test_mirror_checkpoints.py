"""Detector weights as mirrors hold them: plain or wrapped with training state, ``module.`` prefixes, fp16 copies,
``.bin`` or ``.safetensors``; the same detections from each. A file of another model fails listing the keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vinvl.detection import Detector
from vinvl.detection.checkpoint import CheckpointError, read_checkpoint


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Image.Image, Path]:
    det = Detector.from_config("tiny", seed=3)
    with torch.no_grad():
        det.model.roi_heads.box.predictor.cls_score.weight.mul_(20)
    sd = {k: v.detach().clone() for k, v in det.model.state_dict().items()}
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    return sd, image, tmp_path_factory.mktemp("mirrors")


def _rows(path: Path, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    d = Detector.from_checkpoint(path, preset="tiny")(image)
    return np.asarray(d.boxes), np.asarray(d.scores)


def _optimizer_state(sd: dict[str, torch.Tensor]) -> dict:
    params = [torch.nn.Parameter(v.float().clone()) for v in list(sd.values())[:3]]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    sum(p.sum() for p in params).backward()
    opt.step()
    return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "iteration": 1234}


def test_every_mirror_layout_loads_the_same_model(reference) -> None:
    from safetensors.torch import save_file

    sd, image, tmp = reference
    torch.save(sd, tmp / "plain.pth")
    want = _rows(tmp / "plain.pth", image)
    layouts = {
        "wrapped.pth": {"model": sd, **_optimizer_state(sd)},
        "module.pth": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "pytorch_model.bin": {f"module.{k}": v for k, v in sd.items()},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp / name)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"))
    for name in [*layouts, "model.safetensors"]:
        got = _rows(tmp / name, image)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), name


def test_half_precision_copies_are_cast(reference) -> None:
    from safetensors.torch import save_file

    sd, image, tmp = reference
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    torch.save({"model": half}, tmp / "fp16.pth")
    save_file({k: v.contiguous() for k, v in half.items()}, str(tmp / "fp16.safetensors"))
    for name in ("fp16.pth", "fp16.safetensors"):
        loaded = read_checkpoint(tmp / name)
        assert all(v.dtype == torch.float32 for v in loaded.values() if v.is_floating_point())
    # The same weights rounded to fp16: the same detections up to that rounding.
    torch.save({"model": {k: v.float() if v.is_floating_point() else v for k, v in half.items()}}, tmp / "rounded.pth")
    want, got = _rows(tmp / "rounded.pth", image), _rows(tmp / "fp16.pth", image)
    assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])


def test_wrong_model_lists_the_mismatched_keys(reference, tmp_path: Path) -> None:
    sd, image, tmp = reference
    other = Detector.from_config("shapes_demo", seed=0).model.state_dict()
    torch.save({"model": other}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as e:
        Detector.from_checkpoint(tmp_path / "other.pth", preset="tiny")
    msg = str(e.value)
    assert "does not fit the model" in msg and "shape mismatches: " in msg and "(checkpoint (" in msg
    assert "\n" not in msg
    # A captioner's weights given as detector weights: every key is listed as missing or unexpected.
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(3, 2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"missing keys: .*; unexpected keys: bert\.embeddings\.word_embeddings\.weight"):
        Detector.from_checkpoint(tmp_path / "pytorch_model.bin", preset="tiny")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a readable safetensors file"):
        read_checkpoint(tmp_path / "junk.safetensors")
