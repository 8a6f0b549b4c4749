"""The original's yaml + KEY VALUE config format, mapped onto the typed detector config."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vinvl.config import detector_preset
from vinvl.config.original import (
    MAPPED,
    NO_EFFECT,
    NO_EFFECT_SECTIONS,
    REFUSED,
    RELATION_SUBSET_NAMES,
    SAVE_SUBSET_NAMES,
    ConfigError,
    decode_value,
    flat_items,
    get,
    key_class,
    key_table,
    load_original,
    merge_opts,
    original_defaults,
    seed_config_path,
    to_run,
    typed_override,
)

REPO = Path(__file__).resolve().parents[2]

SEED_OPTS = [
    "MODEL.ROI_HEADS.NMS_FILTER", "1", "MODEL.ROI_HEADS.SCORE_THRESH", "0.2",
    "TEST.IGNORE_BOX_REGRESSION", "True", "MODEL.ATTRIBUTE_ON", "True", "TEST.OUTPUT_FEATURE", "True",
]


def test_seed_config_is_the_preset() -> None:
    _, run = load_original(seed_config_path(), SEED_OPTS + ["TEST.IMS_PER_BATCH", "2"])
    preset = detector_preset("vinvl_vg_x152c4")
    for section in ("backbone", "rpn", "box_head", "attributes", "input"):
        assert getattr(run.detector, section) == getattr(preset, section), section
    # The original form says whether every box is kept (ROI_BOX_HEAD.FORCE_BOXES False: no).
    assert run.detector.postprocess == dataclasses.replace(preset.postprocess, force_boxes="off")
    assert (run.boxes_given, run.evaluate, run.aspect_ratio_grouping) == (False, False, True)
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
    _, a = load_original(seed_config_path(), SEED_OPTS + ["SOLVER.BASE_LR", "0.5", "DATALOADER.NUM_WORKERS", "7",
                                                          "INPUT.MIN_SIZE_TRAIN", "(640, 800)"])
    _, b = load_original(seed_config_path(), SEED_OPTS)
    assert a == b


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
        (["TEST.TSV_SAVE_SUBSET", "['rect','nope']"], "TSV_SAVE_SUBSET names \\['nope'\\]; vinvl writes rect"),
        (["MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "256"], "CHANNELS 256 is not supported \\(the C4 body has"),
        (["MODEL.RESNETS.STAGE_WITH_DCN", "(False, True, False, False)"], "deformable convolutions"),
        (["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"], "ATTRIBUTE_ON needs"),
        (["DATALOADER.SIZE_DIVISIBILITY", "32"], "SIZE_DIVISIBILITY 32 is not supported"),
        (["DTYPE", "float16"], "DTYPE 'float16' is not supported"),
    ],
)
def test_config_errors(opts: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_original(seed_config_path(), SEED_OPTS + opts)
    assert "\n" not in str(e.value)


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


# -- every key is mapped, without effect, or refused -------------------------------------------------------------
def _seed() -> dict[str, Any]:
    cfg, _ = load_original(seed_config_path(), SEED_OPTS)
    return cfg


def _set(cfg: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[leaf] = value
    return out


def _changed(value: Any) -> Any:
    """Another value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    if isinstance(value, str):
        return value + "_x"
    assert isinstance(value, list), value
    return value + value[:1] if value else [1]


def test_every_key_is_in_exactly_one_class() -> None:
    keys = list(flat_items(original_defaults()))
    assert len(keys) == 302
    unclassified = []
    for key in keys:
        try:
            key_class(key)
        except KeyError:
            unclassified.append(key)
    assert not unclassified, f"keys in no class: {unclassified}"
    assert not set(MAPPED) & set(NO_EFFECT) and not set(MAPPED) & set(REFUSED) and not set(NO_EFFECT) & set(REFUSED)
    stale = [k for k in [*MAPPED, *NO_EFFECT, *REFUSED] if k not in keys]
    assert not stale, f"classified keys that are not keys of the original: {stale}"
    for prefix in NO_EFFECT_SECTIONS:
        inside = [k for k in keys if k.startswith(prefix)]
        assert inside, f"section {prefix} matches no key"
        assert not set(inside) & (set(MAPPED) | set(NO_EFFECT)), prefix  # a section's keys are not listed again
    assert all(why.strip() for why in [*MAPPED.values(), *NO_EFFECT.values(), *NO_EFFECT_SECTIONS.values()])
    assert all(r.why.strip() and r.accepted.strip() for r in REFUSED.values())


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_refused_key_names_itself(key: str) -> None:
    base = _seed()
    # Where the changed value would be accepted (the rule lets it pass here), a value the rule rejects.
    special = {
        "MODEL.RESNETS.STAGE_WITH_DCN": [False, False, True, False],
        "MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_IMG": 50,
    }
    if key == "MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_IMG":  # where the cap can act
        base = _set(base, "MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD", 0.0)
    to_run(base, "x.yaml")  # the base, with this key's default (or accepted) value, passes
    value = special.get(key, _changed(get(base, key)))
    with pytest.raises(ConfigError) as e:
        to_run(_set(base, key, value), "x.yaml")
    message = str(e.value)
    assert message.startswith(f"x.yaml: {key} {value!r} is not supported (") and "\n" not in message, message


@pytest.mark.parametrize(
    "opts",
    [
        ["MODEL.ATTRIBUTE_ON", "False", "MODEL.META_ARCHITECTURE", "GeneralizedRCNN"],
        ["MODEL.ATTRIBUTE_ON", "False", "MODEL.ROI_ATTRIBUTE_HEAD.SHARE_BOX_FEATURE_EXTRACTOR", "False"],
        ["MODEL.ATTRIBUTE_ON", "False", "MODEL.ROI_ATTRIBUTE_HEAD.PREDICTOR", "AttributeFPNPredictor"],
        ["MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_IMG", "50"],  # 0.05 x 525 >= 2: the cap cannot act
        ["MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_IMG", "0",
         "MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD", "0.0"],  # no cap, as vinvl
        ["MODEL.RESNETS.STAGE_WITH_DCN", "(False, False, False, False, False)"],
        ["MODEL.RESNETS.RES2_OUT_CHANNELS", "128", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "512"],
    ],
)
def test_refused_keys_accept_what_their_rule_accepts(opts: list[str]) -> None:
    load_original(seed_config_path(), SEED_OPTS + opts)


def _original_cap_removes(scores: np.ndarray, threshold: float, cap: int) -> int:
    """How many attribute scores the original's MAX_NUM_ATTR_PER_IMG zeroes, as attribute_head/inference.py
    describes it: background and scores <= threshold zeroed, then scores below the k-th smallest of all of them
    (zeros included), k = passing - cap + 1."""
    s = scores.copy()
    s[:, 0] = 0
    passing = s > threshold
    s[~passing] = 0
    n = int(passing.sum())
    if not n > cap > 0:
        return 0
    kth = np.sort(s.ravel())[n - cap]
    return int(((s < kth) & (s > 0)).sum())


def test_attribute_cap_acts_only_where_refused() -> None:
    """The rule that accepts MAX_NUM_ATTR_PER_IMG where the cap cannot act, against the cap itself."""
    rng = np.random.default_rng(0)
    seen = []
    for num_attr, boxes, scale in [(7, 20, 0.1), (9, 30, 0.5), (525, 100, 3.0), (20, 50, 1.0)]:
        logits = rng.normal(0, scale, (boxes, num_attr))
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        for threshold in (0.0, 0.01, 0.05, 2 / num_attr, 0.3):
            base = _set(_seed(), "MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES", num_attr)
            base = _set(base, "MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD", threshold)
            try:
                to_run(_set(base, "MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_IMG", 10), "x")
                accepted = True
            except ConfigError:
                accepted = False
            seen.append((accepted, _original_cap_removes(probs, threshold, 10)))
    assert all(removed == 0 for accepted, removed in seen if accepted)
    assert any(removed > 0 for accepted, removed in seen if not accepted)  # the refusals are needed


def _no_effect_keys() -> list[str]:
    return [k for k in flat_items(original_defaults()) if key_class(k)[0] == "no effect"]


@pytest.mark.parametrize("base_name", ["defaults", "seed"])
def test_no_effect_keys_change_nothing(base_name: str) -> None:
    base = original_defaults() if base_name == "defaults" else _seed()
    expected = to_run(base)
    for key in _no_effect_keys():
        if base_name == "seed" and key == "TEST.OUTPUT_FEATURE":
            continue  # the seed's subset names feature: False is refused (test_save_subset_refusals)
        run = to_run(_set(base, key, _changed(get(base, key))))
        assert run == expected, key


# key -> KEY VALUE options giving a valid other value (more than one pair where a key needs a partner).
MAPPED_CHANGES = {
    "DATA_DIR": ["DATA_DIR", "/data"],
    "DATASETS.TEST": ["DATASETS.TEST", "('a.yaml',)"],
    "DATASETS.LABELMAP_FILE": ["DATASETS.LABELMAP_FILE", "other.json"],
    "DATALOADER.ASPECT_RATIO_GROUPING": ["DATALOADER.ASPECT_RATIO_GROUPING", "False"],
    "MODEL.DEVICE": ["MODEL.DEVICE", "cpu"],
    "MODEL.WEIGHT": ["MODEL.WEIGHT", "w.pth"],
    "OUTPUT_DIR": ["OUTPUT_DIR", "out"],
    "MODEL.RPN.FORCE_BOXES": ["MODEL.RPN.FORCE_BOXES", "True"],
    "TEST.SKIP_PERFORMANCE_EVAL": ["TEST.SKIP_PERFORMANCE_EVAL", "False"],
    "TEST.TSV_SAVE_SUBSET": ["TEST.TSV_SAVE_SUBSET", "['conf','rect']"],
    "TEST.IMS_PER_BATCH": ["TEST.IMS_PER_BATCH", "3"],
    "MODEL.BACKBONE.CONV_BODY": ["MODEL.BACKBONE.CONV_BODY", "R-101-C4"],
    "MODEL.RESNETS.STEM_OUT_CHANNELS": ["MODEL.RESNETS.STEM_OUT_CHANNELS", "32"],
    "MODEL.RESNETS.RES2_OUT_CHANNELS": ["MODEL.RESNETS.RES2_OUT_CHANNELS", "128",
                                        "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "512"],
    "MODEL.RESNETS.NUM_GROUPS": ["MODEL.RESNETS.NUM_GROUPS", "1"],
    "MODEL.RESNETS.WIDTH_PER_GROUP": ["MODEL.RESNETS.WIDTH_PER_GROUP", "16"],
    "MODEL.RESNETS.STRIDE_IN_1X1": ["MODEL.RESNETS.STRIDE_IN_1X1", "True"],
    "MODEL.RPN.ANCHOR_SIZES": ["MODEL.RPN.ANCHOR_SIZES", "(64, 128)"],
    "MODEL.RPN.ASPECT_RATIOS": ["MODEL.RPN.ASPECT_RATIOS", "(1.0,)"],
    "MODEL.RPN.ANCHOR_STRIDE": ["MODEL.RPN.ANCHOR_STRIDE", "(8,)"],
    "MODEL.RPN.PRE_NMS_TOP_N_TEST": ["MODEL.RPN.PRE_NMS_TOP_N_TEST", "1000"],
    "MODEL.RPN.POST_NMS_TOP_N_TEST": ["MODEL.RPN.POST_NMS_TOP_N_TEST", "100"],
    "MODEL.RPN.NMS_THRESH": ["MODEL.RPN.NMS_THRESH", "0.6"],
    "MODEL.RPN.MIN_SIZE": ["MODEL.RPN.MIN_SIZE", "2"],
    "MODEL.ROI_BOX_HEAD.NUM_CLASSES": ["MODEL.ROI_BOX_HEAD.NUM_CLASSES", "10"],
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": ["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "7"],
    "MODEL.ROI_BOX_HEAD.POOLER_SCALES": ["MODEL.ROI_BOX_HEAD.POOLER_SCALES", "(0.125,)"],
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": ["MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "2"],
    "MODEL.ROI_HEADS.BBOX_REG_WEIGHTS": ["MODEL.ROI_HEADS.BBOX_REG_WEIGHTS", "(1.0, 1.0, 1.0, 1.0)"],
    "MODEL.CLS_AGNOSTIC_BBOX_REG": ["MODEL.CLS_AGNOSTIC_BBOX_REG", "True"],
    "MODEL.ATTRIBUTE_ON": ["MODEL.ATTRIBUTE_ON", "False"],
    "MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES": ["MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES", "10"],
    "MODEL.ROI_ATTRIBUTE_HEAD.CLS_EMD_DIM": ["MODEL.ROI_ATTRIBUTE_HEAD.CLS_EMD_DIM", "8"],
    "MODEL.ROI_ATTRIBUTE_HEAD.ATTR_EMD_DIM": ["MODEL.ROI_ATTRIBUTE_HEAD.ATTR_EMD_DIM", "16"],
    "MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD": [
        "MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD", "0.1"],
    "MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_OBJ": ["MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_OBJ", "4"],
    "MODEL.ROI_HEADS.NMS_FILTER": ["MODEL.ROI_HEADS.NMS_FILTER", "2"],
    "MODEL.ROI_HEADS.SCORE_THRESH": ["MODEL.ROI_HEADS.SCORE_THRESH", "0.3"],
    "MODEL.ROI_HEADS.NMS": ["MODEL.ROI_HEADS.NMS", "0.4"],
    "MODEL.ROI_HEADS.DETECTIONS_PER_IMG": ["MODEL.ROI_HEADS.DETECTIONS_PER_IMG", "50"],
    "MODEL.ROI_HEADS.MIN_DETECTIONS_PER_IMG": ["MODEL.ROI_HEADS.MIN_DETECTIONS_PER_IMG", "5"],
    "MODEL.ROI_BOX_HEAD.FORCE_BOXES": ["MODEL.ROI_BOX_HEAD.FORCE_BOXES", "True"],
    "TEST.IGNORE_BOX_REGRESSION": ["TEST.IGNORE_BOX_REGRESSION", "False"],
    "INPUT.MIN_SIZE_TEST": ["INPUT.MIN_SIZE_TEST", "800"],
    "INPUT.MAX_SIZE_TEST": ["INPUT.MAX_SIZE_TEST", "1333"],
    "INPUT.PIXEL_MEAN": ["INPUT.PIXEL_MEAN", "(100.0, 110.0, 120.0)"],
    "INPUT.PIXEL_STD": ["INPUT.PIXEL_STD", "(57.0, 57.0, 58.0)"],
    "INPUT.TO_BGR255": ["INPUT.TO_BGR255", "False"],
}


def test_mapped_changes_cover_the_mapped_keys() -> None:
    assert set(MAPPED_CHANGES) == set(MAPPED)


@pytest.mark.parametrize("key", sorted(MAPPED_CHANGES))
def test_mapped_key_changes_the_run(key: str) -> None:
    base = _seed()
    cfg = copy.deepcopy(base)
    merge_opts(cfg, MAPPED_CHANGES[key])
    assert get(cfg, key) != get(base, key)
    assert to_run(cfg) != to_run(base)


def test_required_mappings() -> None:
    _, base = load_original(seed_config_path(), SEED_OPTS)
    _, run = load_original(seed_config_path(), SEED_OPTS + ["MODEL.RPN.FORCE_BOXES", "True"])
    assert not base.boxes_given and run.boxes_given and run.detector == base.detector
    for value, mode in [("True", "on"), ("False", "off")]:
        _, run = load_original(seed_config_path(), SEED_OPTS + ["MODEL.ROI_BOX_HEAD.FORCE_BOXES", value])
        assert run.detector.postprocess.force_boxes == mode
    _, run = load_original(seed_config_path(), SEED_OPTS + ["TEST.SKIP_PERFORMANCE_EVAL", "False"])
    assert run.evaluate and not base.evaluate and run.detector == base.detector
    _, run = load_original(None, ["MODEL.DEVICE", "cpu"])
    assert run.evaluate and run.aspect_ratio_grouping and not run.boxes_given  # the original's defaults


def test_save_subset_order_and_fields() -> None:
    subset = "['attr_scores_all','boxes_all','conf','rect','scores_all','feature','class','attr_labels','attr_scores']"
    _, run = load_original(seed_config_path(), SEED_OPTS + ["TEST.TSV_SAVE_SUBSET", subset])
    assert run.save_subset == ("attr_scores_all", "boxes_all", "conf", "rect", "scores_all", "feature", "class",
                               "attr_labels", "attr_scores")
    assert set(run.save_subset) == set(SAVE_SUBSET_NAMES)
    assert run.detector.postprocess.output_scores_all and run.detector.postprocess.output_boxes_all
    _, run = load_original(seed_config_path(), SEED_OPTS + ["TEST.TSV_SAVE_SUBSET", "['rect','scores_all']"])
    assert run.detector.postprocess.output_scores_all and not run.detector.postprocess.output_boxes_all
    # NMS_FILTER 2 keeps scores_all/boxes_all only where every box is kept.
    _, run = load_original(seed_config_path(), SEED_OPTS + [
        "MODEL.ROI_HEADS.NMS_FILTER", "2", "MODEL.ROI_BOX_HEAD.FORCE_BOXES", "True",
        "TEST.TSV_SAVE_SUBSET", "['rect','boxes_all']"])
    assert run.detector.postprocess.output_boxes_all and run.detector.postprocess.force_boxes == "on"


@pytest.mark.parametrize(
    "opts, message",
    [
        *[(["TEST.TSV_SAVE_SUBSET", f"['rect','{name}']"], f"names \\['{name}'\\], which is not supported \\(vinvl "
           "does not implement relation heads\\)") for name in RELATION_SUBSET_NAMES],
        (["TEST.TSV_SAVE_SUBSET", "['rect','attributes']"], "names \\['attributes'\\]; vinvl writes"),
        (["MODEL.ATTRIBUTE_ON", "False", "TEST.TSV_SAVE_SUBSET", "['rect','attr_labels','attr_scores_all']"],
         "names \\['attr_labels', 'attr_scores_all'\\] but MODEL.ATTRIBUTE_ON is False"),
        (["MODEL.ATTRIBUTE_ON", "False", "TEST.TSV_SAVE_SUBSET", "['attr_scores']"], "ATTRIBUTE_ON is False"),
        (["TEST.OUTPUT_FEATURE", "False"], "names \\['feature'\\] but TEST.OUTPUT_FEATURE is False"),
        (["TEST.OUTPUT_FEATURE", "False", "TEST.TSV_SAVE_SUBSET", "['rect','scores_all']"], "TEST.OUTPUT_FEATURE"),
        (["TEST.OUTPUT_FEATURE", "False", "TEST.TSV_SAVE_SUBSET", "['boxes_all']"], "TEST.OUTPUT_FEATURE"),
        (["MODEL.ROI_HEADS.NMS_FILTER", "2", "TEST.TSV_SAVE_SUBSET", "['rect','scores_all']"],
         "names \\['scores_all'\\] but MODEL.ROI_HEADS.NMS_FILTER 2 keeps no"),
        (["MODEL.ROI_HEADS.NMS_FILTER", "2", "TEST.TSV_SAVE_SUBSET", "['boxes_all','feature']"], "NMS_FILTER 2"),
    ],
)
def test_save_subset_refusals(opts: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_original(seed_config_path(), SEED_OPTS + opts)
    assert str(e.value).count("TEST.TSV_SAVE_SUBSET") == 1 and "\n" not in str(e.value)


def test_labelmap_is_resolved_as_the_original_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    opts = SEED_OPTS + ["DATASETS.LABELMAP_FILE", "lm.json", "DATA_DIR", "data"]
    assert load_original(seed_config_path(), opts)[1].labelmap == str(Path("data") / "lm.json")
    (tmp_path / "lm.json").write_text("{}")
    assert load_original(seed_config_path(), opts)[1].labelmap == "lm.json"  # a file as given comes first


def test_doc_table_is_what_the_code_says() -> None:
    doc = (REPO / "docs" / "original-config.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- key-table: generated by vinvl.config.original.key_table\(\) -->\n(.*?)<!-- key-table end -->",
                  doc, flags=re.S)
    assert m, "docs/original-config.md has no generated key table"
    assert m.group(1) == key_table(), (
        "docs/original-config.md's key table is stale: regenerate it from vinvl.config.original.key_table()")
    counts = {kind: sum(key_class(k)[0] == kind for k in flat_items(original_defaults()))
              for kind in ("mapped", "no effect", "refused")}
    for kind, n in counts.items():
        assert f"**{kind}** ({n} keys)" in doc, kind


def test_training_table_is_what_the_code_says() -> None:
    """docs/original-config.md's training table is the code's, and every key the extraction table calls training-only
    or of the solver is honoured or refused by name in training (none is left without effect by omission)."""
    from vinvl.config.original import NO_EFFECT, TRAINING, TRAINING_REFUSED, training_key_class, training_key_table

    doc = (REPO / "docs" / "original-config.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- training-table: generated by vinvl.config.original.training_key_table\(\) -->\n(.*?)"
                  r"<!-- training-table end -->", doc, flags=re.S)
    assert m and m.group(1) == training_key_table(), "regenerate docs/original-config.md's training table"
    keys = flat_items(original_defaults())
    training_only = [k for k in keys if k.startswith("SOLVER.") or "training only" in NO_EFFECT.get(k, "")]
    assert len(training_only) > 30
    for k in training_only:
        assert k in TRAINING or k in TRAINING_REFUSED, k
    assert all(k in keys for k in [*TRAINING, *TRAINING_REFUSED])
    assert training_key_class("SOLVER.BASE_LR")[0] == "mapped" and training_key_class("DTYPE")[0] == "no effect"
    assert training_key_class("INPUT.HUE")[0] == "refused" and training_key_class("MODEL.MASK_ON")[0] == "refused"
