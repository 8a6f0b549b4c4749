"""Boxes files (vinvl.given_boxes): the three layouts, every value checked in one line, matching to images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vinvl.errors import FormatError, VinvlError
from vinvl.given_boxes import GivenBoxes, label_boxes_for_rows, read_given_boxes


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_label_tsv_both_row_forms(tmp_path: Path) -> None:
    f = _write(tmp_path / "b.tsv",
               'a.jpg\t{"objects": [{"rect": [1, 2.5, 30, 40], "class": "x", "attributes": []}, {"rect": [0, 0, 5, 5]}]}\n'
               'b\t[{"rect": [-10, 3, 700.25, 9]}]\n'
               'c\t{"objects": []}\n')
    g = read_given_boxes(f)
    assert g.format == "label-tsv" and [e.names for e in g.entries] == [("a.jpg",), ("b",), ("c",)]
    np.testing.assert_array_equal(g.entries[0].boxes, np.float32([[1, 2.5, 30, 40], [0, 0, 5, 5]]))
    np.testing.assert_array_equal(g.entries[1].boxes, np.float32([[-10, 3, 700.25, 9]]))  # outside: kept as given
    assert g.entries[2].boxes.shape == (0, 4) and g.entries[0].boxes.dtype == np.float32
    assert g.entries[1].where.endswith("b.tsv:2")


def test_json_mapping_and_coco(tmp_path: Path) -> None:
    g = read_given_boxes(_write(tmp_path / "b.json", json.dumps({"k1": [[1, 2, 3, 4], {"rect": [5, 6, 7, 8]}], "k2": []})))
    assert g.format == "json" and [e.names for e in g.entries] == [("k1",), ("k2",)]
    np.testing.assert_array_equal(g.entries[0].boxes, np.float32([[1, 2, 3, 4], [5, 6, 7, 8]]))
    coco = {"images": [{"id": 7, "file_name": "x/000007.jpg"}, {"id": 9, "file_name": "9.png"}],
            "annotations": [{"image_id": 7, "bbox": [10, 20, 30, 40], "iscrowd": 0},
                            {"image_id": 9, "bbox": [0, 0, 1, 1], "iscrowd": 1},
                            {"image_id": 7, "bbox": [1.5, 2, 3, 4]}],
            "categories": []}
    g = read_given_boxes(_write(tmp_path / "instances.json", json.dumps(coco)))
    assert g.format == "coco" and [e.names for e in g.entries] == [("x/000007.jpg", "7"), ("9.png", "9")]
    # xywh -> xyxy as maskrcnn-benchmark's COCO reader (inclusive pixels: x2 = x + w - 1); crowd left out
    np.testing.assert_array_equal(g.entries[0].boxes, np.float32([[10, 20, 39, 59], [1.5, 2, 3.5, 5]]))
    assert g.entries[1].boxes.shape == (0, 4)


@pytest.mark.parametrize("text, name, says", [
    ('a\t{"objects": [{"rect": [1, 2, 3]}]}\n', "b.tsv", "b.tsv: line 1 ('a'): box 0 must be 4 finite numbers"),
    ('a\t[{"rect": [1, 2, 3, NaN]}]\n', "b.tsv", "box 0 must be 4 finite numbers"),
    ('a\t[{"rect": [1, 2, 3, "4"]}]\n', "b.tsv", "box 0 must be 4 finite numbers"),
    ('a\t{"boxes": []}\n', "b.tsv", "without an 'objects' list"),
    ('a\t{nope\n', "b.tsv", "line 1 ('a'): not valid JSON"),
    ('a\n', "b.tsv", "b.tsv:1: expected 'key<TAB>JSON'"),
    ('a\t[]', "b.tsv", "truncated"),
    ('{"k": [[1, 2, 3, true]]}', "b.json", "key 'k': box 0 must be 4 finite numbers"),
    ('{"k": 5}', "b.json", "key 'k': expected a list of boxes"),
    ('[1, 2]', "b.json", "expected a JSON object"),
    ('{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 2, "bbox": [0, 0, 1, 1]}]}', "c.json",
     "annotations[0]: 'image_id' names no image"),
    ('{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1, "bbox": [0, 0, 1]}]}', "c.json",
     "annotations[0]: 'bbox' must be 4 finite numbers"),
])
def test_bad_values_are_one_line_naming_the_place(tmp_path: Path, text: str, name: str, says: str) -> None:
    with pytest.raises(FormatError) as e:
        read_given_boxes(_write(tmp_path / name, text))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_non_utf8_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "b.tsv").write_bytes(b"\xff\xfe\t[]\n")
    with pytest.raises(FormatError, match="key is not UTF-8"):
        read_given_boxes(tmp_path / "b.tsv")
    with pytest.raises(FormatError, match="no such file"):
        read_given_boxes(tmp_path / "none.tsv")


def test_matching_reports_missing_and_unused_in_one_line(tmp_path: Path) -> None:
    g = GivenBoxes.from_mapping({"a": [[0, 0, 1, 1]], "b.jpg": [], "z": [[1, 1, 2, 2]]})
    got = g.match([("a", ()), ("b", ("b.jpg",))], unused="ignore")
    assert set(got) == {"a", "b"} and got["b"].shape == (0, 4)
    with pytest.raises(VinvlError) as e:
        g.match([("a", ()), ("b", ("b.jpg",)), ("c", ())])
    text = str(e.value)
    assert "\n" not in text and "1 image(s) have no entry (first: 'c'" in text and "1 entry match no image (first: 'z'" in text
    got = g.match([("a", ()), ("c", ())], missing="empty", unused="ignore")
    assert got["c"].shape == (0, 4)
    twice = GivenBoxes.from_mapping({"a": []}).entries * 2  # e.g. a COCO file naming one file_name twice
    with pytest.raises(VinvlError, match="'a' names two entries"):
        GivenBoxes(Path("x.json"), "coco", twice, "").match([("a", ())])


def test_label_rows_pair_by_line_number_and_check_keys(tmp_path: Path) -> None:
    f = _write(tmp_path / "label.tsv", 'x\t{"objects": [{"rect": [1, 1, 2, 2]}]}\ny\t{"objects": []}\n')
    a, b = label_boxes_for_rows(f, [1, 0], ["y", "x"])
    assert a.shape == (0, 4) and b.tolist() == [[1, 1, 2, 2]]
    with pytest.raises(FormatError, match="row 0 is 'x', but the image TSV's row 0 is 'q'"):
        label_boxes_for_rows(f, [0], ["q"])
    with pytest.raises(FormatError, match="no row 5"):
        label_boxes_for_rows(f, [5], ["x"])
