"""vinvl.labelmap: VG json, flat class2ind json, labelmap TSV, vocabulary maps, index-0 rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vinvl.errors import FormatError
from vinvl.labelmap import BACKGROUND, NO_ATTRIBUTE, LabelMap, VocabularyMap


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_reference_labelmap(shared_dir: Path) -> None:
    lm = LabelMap.load(shared_dir / "reference/detector/synthetic_labelmap.json")
    assert lm.num_classes == 1595 and lm.num_attributes == 525
    assert lm.classes[0] == BACKGROUND and lm.attributes[0] == NO_ATTRIBUTE
    assert lm.class_name(658) == "class0658" and lm.class_index("class1594") == 1594
    assert lm.attribute_name(524) == "attr524" and lm.attribute_index("attr001") == 1


def test_vg_roundtrip_and_inverse_check(tmp_path: Path) -> None:
    data = {
        "label_to_idx": {"dog": 2, "cat": 1},
        "idx_to_label": {"1": "cat", "2": "dog"},
        "attribute_to_idx": {"red": 1},
        "idx_to_attribute": {"1": "red"},
    }
    lm = LabelMap.load(_write(tmp_path / "vg.json", data))
    assert lm.classes == (BACKGROUND, "cat", "dog") and lm.attributes == (NO_ATTRIBUTE, "red")
    assert lm.to_vg_dict() == data
    again = LabelMap.load(lm.save_vg_json(tmp_path / "again.json"))
    assert again.classes == lm.classes and again.attributes == lm.attributes
    no_attr = LabelMap.load(_write(tmp_path / "na.json", {"label_to_idx": {"a": 1}}))
    assert no_attr.attributes is None and no_attr.num_attributes == 0
    bad = dict(data, idx_to_label={"1": "dog", "2": "cat"})
    with pytest.raises(FormatError, match="idx_to_label.*disagrees"):
        LabelMap.load(_write(tmp_path / "bad.json", bad))


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"attribute_to_idx": {"red": 1}}, "missing required key 'label_to_idx'"),
        ({"label_to_idx": {"a": 1, "b": 3}}, "non-contiguous index 3"),
        ({"label_to_idx": {"a": 1, "b": 1}}, "duplicate index 1"),
        ({"label_to_idx": {"a": 2, "b": 3}}, "must start at 0 or 1"),
        ({"label_to_idx": {"a": "1"}}, "not an integer"),
        ({"label_to_idx": {}}, "is empty"),
        ({"label_to_idx": {"a": 1}, "attribute_to_idx": {"x": 1, "y": 5}}, "attribute_to_idx: non-contiguous"),
        ({"label_to_idx": ["a"]}, "must be a JSON object"),
    ],
)
def test_vg_errors(tmp_path: Path, obj: object, message: str) -> None:
    with pytest.raises(FormatError, match=rf"lm.json: .*{message}"):
        LabelMap.load(_write(tmp_path / "lm.json", obj))


def test_invalid_json_and_missing(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(FormatError, match="x.json: not valid JSON"):
        LabelMap.load(tmp_path / "x.json")
    with pytest.raises(FormatError, match="no such file"):
        LabelMap.load(tmp_path / "nope.json")


def test_class2ind_bases(tmp_path: Path) -> None:
    one = LabelMap.load(_write(tmp_path / "a.json", {"person": 1, "car": 2}))
    bg = LabelMap.load(_write(tmp_path / "b.json", {"__background__": 0, "person": 1, "car": 2}))
    zero = LabelMap.load(_write(tmp_path / "c.json", {"person": 0, "car": 1}))
    assert one.classes == bg.classes == zero.classes == (BACKGROUND, "person", "car")


def test_labelmap_tsv(tmp_path: Path) -> None:
    (tmp_path / "two.tsv").write_text("person\t1\ncar\t2\n")
    (tmp_path / "one.tsv").write_text("person\ncar\n")
    (tmp_path / "zero.tsv").write_text("person\t0\ncar\t1\n")
    for name in ("two.tsv", "one.tsv", "zero.tsv"):
        assert LabelMap.load(tmp_path / name).classes == (BACKGROUND, "person", "car")
    (tmp_path / "bad.tsv").write_text("person\t1\ncar\tx\n")
    with pytest.raises(FormatError, match=r"bad.tsv:2: index is not an integer"):
        LabelMap.load(tmp_path / "bad.tsv")
    (tmp_path / "dup.tsv").write_text("person\t1\nperson\t2\n")
    with pytest.raises(FormatError, match=r"dup.tsv:2: class 'person' appears twice"):
        LabelMap.load(tmp_path / "dup.tsv")
    (tmp_path / "gap.tsv").write_text("a\t1\nb\t4\n")
    with pytest.raises(FormatError, match="non-contiguous"):
        LabelMap.load(tmp_path / "gap.tsv")


def test_vocabulary_map(tmp_path: Path) -> None:
    merged = LabelMap.load(_write(tmp_path / "merged.json", {"man": 1, "car": 2, "person": 3}))
    vm = VocabularyMap.load(_write(tmp_path / "coco.json", {"person": 3, "automobile": "car"}), merged)
    assert vm.map_name("person") == 3 and vm.target_name("automobile") == "car" and len(vm) == 2
    coco = LabelMap((BACKGROUND, "person", "automobile"))
    assert vm.map_index(2, coco) == 2
    with pytest.raises(KeyError, match="'bus' is not in"):
        vm.map_name("bus")
    with pytest.raises(FormatError, match=r"bad.json: 'x' maps to 9"):
        VocabularyMap.load(_write(tmp_path / "bad.json", {"x": 9}), merged)
    with pytest.raises(FormatError, match="target label map lacks"):
        VocabularyMap.load(_write(tmp_path / "bad2.json", {"x": "boat"}), merged)


def test_index_conventions() -> None:
    with pytest.raises(ValueError, match="class 0"):
        LabelMap(("dog",))
    with pytest.raises(ValueError, match="attribute 0"):
        LabelMap((BACKGROUND,), ("red",))
    lm = LabelMap((BACKGROUND, "a"))
    with pytest.raises(KeyError, match="out of range"):
        lm.class_name(2)
    with pytest.raises(KeyError, match="no class named"):
        lm.class_index("b")
