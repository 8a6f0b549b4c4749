"""The original's yaml + KEY VALUE config format, mapped onto the typed detector config."""

from __future__ import annotations

from pathlib import Path

import pytest

from vinvl.config import detector_preset
from vinvl.config.original import (
    ConfigError,
    decode_value,
    load_original,
    original_defaults,
    seed_config_path,
    typed_override,
)

SEED_OPTS = [
    "MODEL.ROI_HEADS.NMS_FILTER", "1", "MODEL.ROI_HEADS.SCORE_THRESH", "0.2",
    "TEST.IGNORE_BOX_REGRESSION", "True", "MODEL.ATTRIBUTE_ON", "True", "TEST.OUTPUT_FEATURE", "True",
]


def test_seed_config_is_the_preset() -> None:
    _, run = load_original(seed_config_path(), SEED_OPTS + ["TEST.IMS_PER_BATCH", "2"])
    preset = detector_preset("vinvl_vg_x152c4")
    for section in ("backbone", "rpn", "box_head", "attributes", "postprocess", "input"):
        assert getattr(run.detector, section) == getattr(preset, section), section
    assert (run.detector.batching, run.detector.batch_size) == ("padded", 2)
    assert run.weights == "models/vinvl/vinvl_vg_x152c4.pth"
    assert run.labelmap == "./datasets/visualgenome/VG-SGG-dicts-vgoi6-clipped.json"
    assert run.save_subset == ("rect", "class", "conf", "feature") and run.output_dir == "./output/X152C5_test"


def test_seed_config_matches_the_reference_effective_config(shared_dir: Path) -> None:
    """The shipped yaml + the seed's options merge to the reference run's effective config."""
    import yaml

    eff = yaml.safe_load((shared_dir / "reference/detector/effective_config.yaml").read_text())
    cfg, _ = load_original(
        seed_config_path(),
        SEED_OPTS + ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "480", "TEST.IMS_PER_BATCH", "1"],
    )

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", (list(v) if isinstance(v, tuple) else v)

    ours, theirs = dict(flat(cfg)), dict(flat(eff))
    assert set(ours) == set(theirs)
    placeholders = {"MODEL.WEIGHT", "DATA_DIR", "OUTPUT_DIR", "PATHS_CATALOG"}
    assert {k for k in ours if ours[k] != theirs[k]} <= placeholders


def test_values_decode_like_yacs() -> None:
    assert decode_value("True") is True and decode_value("0.2") == 0.2 and decode_value("600") == 600
    assert decode_value("(1, 2)") == (1, 2) and decode_value("['rect','class']") == ["rect", "class"]
    assert decode_value("cpu") == "cpu" and decode_value("R-152-C4") == "R-152-C4"
    _, run = load_original(seed_config_path(), ["TEST.TSV_SAVE_SUBSET", "['rect','class','attr_labels']",
                                                 "MODEL.RPN.ANCHOR_SIZES", "(16, 32)", "MODEL.ROI_HEADS.SCORE_THRESH", "1"])
    assert run.save_subset == ("rect", "class", "attr_labels")
    assert run.detector.rpn.anchor_sizes == (16, 32) and run.detector.postprocess.score_thresh == 1.0


def test_training_keys_accepted_without_effect() -> None:
    _, a = load_original(seed_config_path(), ["SOLVER.BASE_LR", "0.5", "DATALOADER.NUM_WORKERS", "7",
                                               "INPUT.MIN_SIZE_TRAIN", "(640, 800)"])
    _, b = load_original(seed_config_path(), [])
    assert a.detector == b.detector


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.ROI_HEADS.NOPE", "1"], "MODEL.ROI_HEADS.NOPE is not a key of the original config"),
        (["NOPE", "1"], "NOPE is not a key"),
        (["MODEL.ROI_HEADS", "1"], "MODEL.ROI_HEADS is a section"),
        (["MODEL.ROI_HEADS.NMS_FILTER"], "come in pairs"),
        (["MODEL.ROI_HEADS.SCORE_THRESH", "high"], "SCORE_THRESH expects a float like 0.2, got str 'high'"),
        (["MODEL.ATTRIBUTE_ON", "1"], "ATTRIBUTE_ON expects a bool"),
        (["MODEL.BACKBONE.CONV_BODY", "R-50-FPN"], "R-50-FPN' is not supported"),
        (["MODEL.MASK_ON", "True"], "MODEL.MASK_ON True is not supported"),
        (["MODEL.RPN.USE_FPN", "True"], "FPN"),
        (["TEST.BBOX_AUG.ENABLED", "True"], "test-time augmentation"),
        (["MODEL.ROI_HEADS.NMS_FILTER", "3"], "NMS_FILTER must be 0, 1 or 2"),
        (["TEST.TSV_SAVE_SUBSET", "['rect','boxes_all']"], "TSV_SAVE_SUBSET names \\['boxes_all'\\]"),
        (["MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "256"], "disagrees with the C4 body"),
        (["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"], "ATTRIBUTE_ON needs"),
    ],
)
def test_config_errors(opts: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_original(seed_config_path(), opts)


def test_yaml_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("MODEL:\n  NOT_A_KEY: 1\n")
    with pytest.raises(ConfigError, match=r"a.yaml: MODEL.NOT_A_KEY is not a key"):
        load_original(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("MODEL: [1, 2\n")
    with pytest.raises(ConfigError, match="b.yaml: not valid yaml"):
        load_original(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("MODEL:\n  RPN: 5\n")
    with pytest.raises(ConfigError, match="MODEL.RPN is a section"):
        load_original(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="no such config file"):
        load_original(tmp_path / "none.yaml")


def test_defaults_are_the_original_defaults() -> None:
    d = original_defaults()
    assert d["MODEL"]["ROI_HEADS"]["NMS_FILTER"] == 0 and d["MODEL"]["ROI_HEADS"]["SCORE_THRESH"] == 0.05
    assert d["INPUT"]["MIN_SIZE_TEST"] == 800 and d["TEST"]["IMS_PER_BATCH"] == 8
    _, run = load_original(None, ["MODEL.DEVICE", "cpu"])  # plain R-50-C4 Faster R-CNN, 81 classes
    assert run.detector.backbone.blocks == (3, 4, 6, 3) and run.detector.box_head.num_classes == 81
    assert not run.detector.attributes.enabled


def test_typed_override() -> None:
    cfg = detector_preset("vinvl_vg_x152c4")
    assert typed_override(cfg, "nms_filter", "2").postprocess.nms_filter == 2
    assert typed_override(cfg, "postprocess__ignore_box_regression", "False").postprocess.ignore_box_regression is False
    with pytest.raises(ConfigError, match="original keys need the original form"):
        typed_override(cfg, "MODEL.ROI_HEADS.NMS_FILTER", "2")
