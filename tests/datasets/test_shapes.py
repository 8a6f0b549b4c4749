"""The synthetic shapes dataset: determinism, contents, tight boxes, file formats and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vinvl.cli import main
from vinvl.datasets import COLOURS, FILLS, SHAPE_CLASSES, SIZES, generate_image, generate_shapes
from vinvl.datasets.shapes import COLOUR_RGB, SIZE_RANGE, png_bytes
from vinvl.errors import VinvlError
from vinvl.extract import collect_inputs
from vinvl.features import parse_hw_row, parse_label_row
from vinvl.labelmap import LabelMap
from vinvl.tsv import TSVFile

N_IMAGES = 50


@pytest.fixture(scope="module")
def sample() -> list[tuple[np.ndarray, list[dict]]]:
    """The first N_IMAGES images of seed 7, in memory."""
    out = []
    for i in range(N_IMAGES):
        img, anns = generate_image(7, i)
        out.append((np.asarray(img), anns))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shapes") / "ds"
    return out, generate_shapes(out, 6, seed=0)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_shapes(a, 3, seed=5)
    generate_shapes(b, 3, seed=5)
    generate_shapes(c, 3, seed=6)
    assert (a / "label.tsv").read_bytes() == (b / "label.tsv").read_bytes()
    assert (a / "img.tsv").read_bytes() == (b / "img.tsv").read_bytes()
    png = "images/shapes_000002.png"
    assert (a / png).read_bytes() == (b / png).read_bytes()
    assert (a / "label.tsv").read_bytes() != (c / "label.tsv").read_bytes()
    assert (a / png).read_bytes() != (c / png).read_bytes()


def test_image_does_not_depend_on_how_many_are_generated() -> None:
    img, anns = generate_image(5, 2)
    img2, anns2 = generate_image(5, 2)
    assert png_bytes(img) == png_bytes(img2) and anns == anns2
    assert png_bytes(generate_image(5, 3)[0]) != png_bytes(img)


def test_counts_sizes_and_vocabulary(sample: list[tuple[np.ndarray, list[dict]]]) -> None:
    classes, attrs = set(), set()
    for arr, anns in sample:
        h, w = arr.shape[:2]
        assert 160 <= h <= 320 and 160 <= w <= 320
        assert 2 <= len(anns) <= 8
        for o in anns:
            assert set(o) == {"rect", "class", "attributes"}
            x1, y1, x2, y2 = o["rect"]
            assert all(isinstance(v, float) for v in o["rect"])
            assert 0 <= x1 <= x2 <= w - 1 and 0 <= y1 <= y2 <= h - 1
            colour, size, fill = o["attributes"]
            assert colour in COLOURS and size in SIZES and fill in FILLS and o["class"] in SHAPE_CLASSES
            side = max(x2 - x1 + 1, y2 - y1 + 1)
            lo, hi = SIZE_RANGE[size]
            assert lo - 1 <= side <= hi + 1, (o, side)
            classes.add(o["class"])
            attrs.update(o["attributes"])
    assert classes == set(SHAPE_CLASSES) and len(classes) >= 4
    assert attrs == set(COLOURS + SIZES + FILLS)


def test_objects_stay_mostly_visible(sample: list[tuple[np.ndarray, list[dict]]]) -> None:
    for _, anns in sample:
        boxes = [o["rect"] for o in anns]
        for j, (bx1, by1, bx2, by2) in enumerate(boxes):
            for ax1, ay1, ax2, ay2 in boxes[:j]:
                iw = min(ax2, bx2) - max(ax1, bx1) + 1
                ih = min(ay2, by2) - max(ay1, by1) + 1
                if iw > 0 and ih > 0:
                    earlier = (ax2 - ax1 + 1) * (ay2 - ay1 + 1)
                    assert iw * ih <= 0.4 * earlier + 1e-6


def _colour_mask(arr: np.ndarray, colour: str) -> np.ndarray:
    """Pixels close to ``colour`` (jitter + noise are far below the tolerance; the background is greyish)."""
    return (np.abs(arr.astype(np.int16) - np.array(COLOUR_RGB[colour])) <= 30).all(-1)


def test_boxes_are_tight(sample: list[tuple[np.ndarray, list[dict]]]) -> None:
    """For objects with nothing else within 3 px, the colour touches all four box edges and none outside."""
    margin, checked = 3, 0
    for arr, anns in sample:
        h, w = arr.shape[:2]
        for j, o in enumerate(anns):
            x1, y1, x2, y2 = (int(v) for v in o["rect"])
            ex = (x1 - margin, y1 - margin, x2 + margin, y2 + margin)
            alone = all(
                p["rect"][0] > ex[2] or p["rect"][2] < ex[0] or p["rect"][1] > ex[3] or p["rect"][3] < ex[1]
                for k, p in enumerate(anns)
                if k != j
            )
            if not alone:
                continue
            m = _colour_mask(arr, o["attributes"][0])
            inside = m[y1 : y2 + 1, x1 : x2 + 1]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any(), o
            region = m[max(ex[1], 0) : min(ex[3], h - 1) + 1, max(ex[0], 0) : min(ex[2], w - 1) + 1]
            assert region.sum() == inside.sum(), o  # nothing of the colour in the margin band
            fill_share = inside.mean()
            # A solid shape covers much of its box, a hollow one only its outline.
            if o["attributes"][2] == "solid":
                assert fill_share > 0.35, o
            checked += 1
    assert checked >= 40


def test_files_and_formats(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    keys = [f"shapes_{i:06d}" for i in range(6)]
    assert [it.key for it in collect_inputs([out / "images"])] == keys
    assert [it.key for it in collect_inputs([out / "dataset.yaml"])] == keys
    assert [it.key for it in collect_inputs([out / "img.tsv"])] == keys

    spec = yaml.safe_load((out / "dataset.yaml").read_text())
    assert spec == {"img": "img.tsv", "hw": "hw.tsv", "label": "label.tsv", "labelmap": "labelmap.json"}
    for name in ("img", "hw", "label"):
        assert (out / f"{name}.lineidx").is_file()

    lm = LabelMap.load(out / "labelmap.json")
    assert lm.classes[1:] == SHAPE_CLASSES
    assert lm.attributes is not None and lm.attributes[1:] == COLOURS + SIZES + FILLS

    n_objects = 0
    with TSVFile(out / "label.tsv") as labels, TSVFile(out / "hw.tsv") as hw:
        assert labels.keys() == keys and hw.keys() == keys
        for i, key in enumerate(keys):
            k, objects = parse_label_row(labels[i])
            assert k == key and 2 <= len(objects) <= 8
            n_objects += len(objects)
            for o in objects:
                lm.class_index(o["class"])
                for a in o["attributes"]:
                    lm.attribute_index(a)
            _, hh, ww = parse_hw_row(hw[i])
            with Image.open(out / "images" / f"{key}.png") as im:
                assert im.size == (ww, hh) and im.mode == "RGB"
            img, anns = generate_image(0, i)
            assert objects == anns
    assert summary["images"] == 6 and summary["objects"] == n_objects
    assert sum(summary["classes"].values()) == n_objects
    assert sum(summary["attributes"][c] for c in COLOURS) == n_objects
    assert json.loads((out / "summary.json").read_text()) == summary


def test_rerun_with_fewer_images_drops_stale_pngs(tmp_path: Path) -> None:
    generate_shapes(tmp_path, 4, seed=1, min_size=64, max_size=96)
    (tmp_path / "images" / "notes.png").write_bytes(b"x")  # not ours: kept
    generate_shapes(tmp_path, 2, seed=1, min_size=64, max_size=96)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == ["notes.png", "shapes_000000.png", "shapes_000001.png"]


def test_smallest_images_still_hold_two_objects() -> None:
    for i in range(40):
        img, anns = generate_image(3, i, 64, 64)
        assert img.size == (64, 64) and len(anns) >= 2


def test_bad_arguments() -> None:
    for kwargs in ({"num": 0}, {"num": 1, "min_size": 63, "max_size": 100}, {"num": 1, "min_size": 200, "max_size": 100}):
        with pytest.raises(VinvlError):
            generate_shapes("/nonexistent/never/written", **kwargs)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["datasets", "shapes", str(out), "--num", "3", "--seed", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: 3 images, ") and "\n" not in line
    assert (out / "label.tsv").is_file() and len(list((out / "images").iterdir())) == 3

    assert main(["datasets", "shapes", str(tmp_path / "x"), "--num", "0"]) == 2
    assert "error: --num" in capsys.readouterr().err
    assert main(["datasets", "shapes", str(tmp_path / "x"), "--min-size", "300", "--max-size", "200"]) == 2
    assert main(["datasets", "shapes", str(tmp_path / "x"), "--min-size", "32"]) == 2
    assert not (tmp_path / "x").exists()
