"""`Detector.from_pretrained`: name or path -> a ready detector, its files resolved without torch, its numerics chosen
once and recorded; the parts passed into AttrRCNN and the backbone registry (issue 27)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vinvl.config import DetectorConfig, detector_preset
from vinvl.config.original import load_original
from vinvl.config.pretrained import resolve_pretrained
from vinvl.detection import AttrRCNN, Detector, build_parts
from vinvl.detection.backbone import BACKBONES, BackboneBuilder
from vinvl.errors import VinvlError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "src" / "vinvl" / "models"
IMAGE = REPO / "examples" / "images" / "shapes_a.jpg"


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a.names == b.names and np.array_equal(a.boxes, b.boxes) and np.array_equal(a.features, b.features)
    assert a.attr_names == b.attr_names


@pytest.fixture(scope="module")
def demo() -> Detector:
    """The shipped demo detector loaded the explicit way, in the numerics from_pretrained chooses for fp32."""
    return Detector.from_checkpoint(DEMO / "shapes_demo.pth", preset="shapes_demo",
                                    labelmap=DEMO / "shapes_demo_labelmap.json", fold_bn=True)


def test_a_name_a_path_and_resolved_files_give_the_same_detector(demo: Detector) -> None:
    want = demo(IMAGE)
    by_name = Detector.from_pretrained("shapes_demo")
    assert by_name.source.name == "shapes_demo" and by_name.labelmap is not None
    _same(by_name(IMAGE), want)
    for path in (DEMO / "shapes_demo.pth", str(DEMO / "shapes_demo.pth")):
        det = Detector.from_pretrained(path, preset="shapes_demo", labelmap=DEMO / "shapes_demo_labelmap.json")
        assert det.source.name is None
        _same(det(IMAGE), want)
    files = resolve_pretrained("shapes_demo", score_thresh=0.5)
    det = Detector.from_pretrained(files, min_size=200)  # overrides on top of the resolved files
    assert det.config.postprocess.score_thresh == 0.5 and det.config.input.min_size == 200


def test_the_numerics_are_chosen_once_and_recorded(demo: Detector) -> None:
    det = Detector.from_pretrained("shapes_demo")
    assert det.numerics == {"device": "cpu", "dtype": "fp32", "channels_last": True, "fold_bn": True, "tf32": False}
    assert det.numerics_reason == "fp32: the original's numbers"
    assert det.notes()[0] == "numerics: fp32 NHWC (fp32: the original's numbers)"
    exact = Detector.from_pretrained("shapes_demo", original_arithmetic=True)
    assert (exact.channels_last, exact.fold_bn, exact.dtype) == (False, False, "fp32")
    assert exact.numerics_reason == "fp32: the original form's arithmetic (NCHW, BNs unfolded)"
    plain = Detector.from_checkpoint(DEMO / "shapes_demo.pth", preset="shapes_demo",
                                     labelmap=DEMO / "shapes_demo_labelmap.json", channels_last=False, fold_bn=False)
    _same(exact(IMAGE), plain(IMAGE))  # op for op the unfolded NCHW detector
    fast = Detector.from_pretrained("shapes_demo", dtype="bf16")
    assert fast.dtype == "bf16" and fast.fold_bn and fast.numerics_reason.startswith("asked")
    assert Detector.from_pretrained("shapes_demo", dtype="bf16", original_arithmetic=True).fold_bn is False
    assert Detector.from_pretrained("shapes_demo", device="auto").device.type == ("cuda" if torch.cuda.is_available()
                                                                                  else "cpu")


def test_the_default_detector_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))  # the released detector is not cached here
    files = resolve_pretrained()
    assert files.name == "shapes_demo" and files.note.startswith("using the shipped demo model shapes_demo")
    with pytest.raises(VinvlError, match="unknown model 'nope'; detectors: vinvl_vg_x152c4"):
        resolve_pretrained("nope")
    with pytest.raises(VinvlError, match="nope.pth: no such checkpoint file"):
        resolve_pretrained("nope.pth")
    with pytest.raises(VinvlError, match="no such label map file"):
        resolve_pretrained("shapes_demo", labelmap=tmp_path / "none.json")
    with pytest.raises(VinvlError, match="--set score_thresh=abc"):
        resolve_pretrained("shapes_demo", settings=["score_thresh=abc"])
    with pytest.raises(VinvlError, match="--dtype must be one of auto, fp32, bf16, fp16"):
        Detector.from_pretrained("shapes_demo", dtype="fp64")
    if not torch.cuda.is_available():
        with pytest.raises(VinvlError, match="no CUDA device is available"):
            Detector.from_pretrained("shapes_demo", device="cuda")


def test_classes_follow_the_label_map_when_asked(tmp_path: Path) -> None:
    lm = {"label_to_idx": {f"c{i}": i for i in range(1, 4)}, "attribute_to_idx": {"a": 1, "b": 2}}
    (tmp_path / "lm.json").write_text(json.dumps(lm))
    files = resolve_pretrained(DEMO / "shapes_demo.pth", preset="tiny", labelmap=tmp_path / "lm.json",
                               classes_from_labelmap=True)
    assert files.config.box_head.num_classes == 4 and files.config.attributes.num_attributes == 3
    off = resolve_pretrained(DEMO / "shapes_demo.pth", preset="tiny", labelmap=tmp_path / "lm.json",
                             settings=["attributes__enabled=False"], classes_from_labelmap=True)
    assert off.config.box_head.num_classes == 4 and off.config.attributes.num_attributes == 7  # attributes off: kept


def test_files_are_resolved_without_torch(tmp_path: Path) -> None:
    code = ("import sys; from vinvl.config.pretrained import resolve_pretrained; f = resolve_pretrained('shapes_demo'); "
            "from vinvl.extract.plan import plan_extraction; "
            f"j = plan_extraction([{str(IMAGE)!r}], {str(tmp_path / 'o')!r}, model='shapes_demo'); "
            "print(f.weights.name, len(j.items), 'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.stdout.split() == ["shapes_demo.pth", "1", "False"], res.stderr[-2000:]


# -- parts and backbones --------------------------------------------------------------------------------------
class _Strided(nn.Module):
    """A toy backbone part: one strided conv + ReLU (enough to be a body or an ROI head)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def test_a_new_backbone_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKBONES, "toy_c4", BackboneBuilder(body=lambda cfg: _Strided(3, 24, 16),
                                                            roi_head=lambda cfg: _Strided(24, 40, 2)))
    det = Detector.from_config("tiny", seed=0, backbone__name="toy_c4", score_thresh=0.0)
    assert isinstance(det.model.backbone.body, _Strided) and det.feature_dim == 40
    d = det(IMAGE)
    assert len(d) > 0 and d.features.shape[1] == 40 and d.region_features().shape[1] == 46
    with pytest.raises(VinvlError, match="unknown backbone 'nope'; known: resnext_c4"):
        AttrRCNN(detector_preset("tiny").replace(backbone__name="nope"))


def test_parts_are_passed_in_and_checkpoints_keep_their_names() -> None:
    cfg = detector_preset("tiny")
    torch.manual_seed(0)
    built = AttrRCNN(cfg)
    torch.manual_seed(0)
    given = AttrRCNN(cfg, parts=build_parts(cfg))
    a, b = built.state_dict(), given.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert {k.split(".")[0] for k in a} == {"backbone", "rpn", "roi_heads", "attribute"}
    assert "roi_heads.box.feature_extractor.head.layer4.0.conv1.weight" in a and "backbone.body.stem.conv1.weight" in a
    with pytest.raises(ValueError, match="attributes.enabled is False"):
        AttrRCNN(cfg.replace(attributes__enabled=False), parts=build_parts(cfg))


def test_the_original_conv_body_names_the_backbone(tmp_path: Path) -> None:
    _, run = load_original(None, ["MODEL.BACKBONE.CONV_BODY", "R-101-C4"])
    assert run.detector.backbone.name == "resnext_c4" and run.detector.backbone.blocks == (3, 4, 23, 3)
    assert DetectorConfig().backbone.name == "resnext_c4"
