"""`vinvl draw`: boxes and labels drawn onto images, file lookup, errors, the HTML page."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vinvl import draw as D
from vinvl.cli import main
from vinvl.errors import VinvlError
from vinvl.features import Prediction
from vinvl.tsv import write_tsv

SUBSET = ("rect", "class", "conf", "attr_labels", "attr_scores")
GREY = (90, 90, 90)


def grey_image(path: Path, w: int = 200, h: int = 150) -> np.ndarray:
    """A flat grey image with a faint gradient, saved at ``path``; returns its pixels."""
    arr = np.full((h, w, 3), GREY, np.uint8)
    arr[:, :, 2] = np.linspace(60, 120, w).astype(np.uint8)[None, :]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def pred(key: str, boxes, classes, scores, *, attrs=None, attr_scores=None) -> Prediction:
    n = len(classes)
    return Prediction(
        key=key,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        classes=list(classes),
        scores=np.asarray(scores, np.float32),
        attributes=attrs if attrs is not None else [[] for _ in range(n)],
        attr_scores=attr_scores if attr_scores is not None else [[] for _ in range(n)],
    )


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    images = tmp_path / "images"
    a = grey_image(images / "a.png")
    b = grey_image(images / "sub" / "b.JPG", 120, 160)
    grey_image(images / "empty.png", 80, 60)
    rows = [
        pred(
            "a",
            [[100, 60, 180, 140], [20, 70, 80, 130]],
            ["dog", "cat"],
            [0.9, 0.6],
            attrs=[["brown", "small", "furry"], ["white"]],
            attr_scores=[[0.8, 0.3, 0.6], [0.7]],
        ),
        pred("sub/b", [[10, 10, 60, 60]], ["cat"], [0.75]),
        pred("empty", [], [], []),
    ]
    tsv = write_tsv(tmp_path / "predictions.tsv", [p.to_row(SUBSET) for p in rows])
    return {"tsv": tsv, "images": images, "out": tmp_path / "out", "a": a, "b": b, "rows": rows}


def test_draw_writes_boxes_in_class_colours(setup: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "draw", setup["tsv"], "--images", setup["images"], "-o", setup["out"])
    assert code == 0, err
    assert out.strip() == f"{setup['out']}: 3 images drawn"
    img = np.asarray(Image.open(setup["out"] / "a.png"))
    assert img.shape == setup["a"].shape
    palette = D.Palette()
    dog, cat = palette.color("dog"), palette.color("cat")  # the best box's class is coloured first
    assert dog != cat
    # Bottom edges are never covered by a label; the left edge of the dog box too.
    assert tuple(img[140, 140]) == dog and tuple(img[139, 140]) == dog
    assert tuple(img[100, 100]) == dog
    assert tuple(img[130, 50]) == cat
    assert tuple(img[130, 50]) != tuple(setup["a"][130, 50])
    # Far from every box and label, the picture is untouched (a PNG input, so exactly).
    for y, x in [(5, 195), (145, 5), (100, 140), (100, 50)]:
        assert tuple(img[y, x]) == tuple(setup["a"][y, x])
    # The dog's label sits above its box, in its colour, with its top two attributes.
    assert np.all(img[59, 100:180] == dog)  # the bottom padding row of the label
    assert D.box_label(setup["rows"][0], 0) == "brown furry dog 0.90"
    assert D.box_label(setup["rows"][0], 0, top_attributes=0) == "dog 0.90"
    # The class keeps its colour on the other image of the same run; a 0-box row is the plain image.
    b = np.asarray(Image.open(setup["out"] / "sub" / "b.png"))
    assert b.shape == setup["b"].shape and tuple(b[60, 30]) == cat
    empty = np.asarray(Image.open(setup["out"] / "empty.png"))
    assert np.array_equal(empty, np.asarray(Image.open(setup["images"] / "empty.png").convert("RGB")))


def test_keys_html_and_filters(setup: dict, capsys: pytest.CaptureFixture) -> None:
    out = setup["out"]
    code, text, err = run(
        capsys, "draw", setup["tsv"], "--images", setup["images"], "-o", out, "--keys", "sub/b", "--keys", "empty", "--html"
    )
    assert code == 0, err
    assert text.strip() == f"{out}: 2 images drawn, {out / 'index.html'}"
    assert not (out / "a.png").exists() and (out / "sub" / "b.png").is_file()
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == ["sub/b.png", "empty.png"] and all((out / s).is_file() for s in srcs)
    assert "<td>cat</td>" in page and "10.0, 10.0, 60.0, 60.0" in page
    assert not list(out.rglob(".*tmp*"))

    # Library: --min-score / --max-boxes keep the best boxes only.
    a = setup["rows"][0]
    assert D.selected_boxes(a) == [0, 1]
    assert D.selected_boxes(a, min_score=0.7) == [0]
    assert D.selected_boxes(a, max_boxes=1) == [0]
    image = Image.fromarray(setup["a"])
    only_dog = np.asarray(D.draw_prediction(image, a, min_score=0.7))
    assert tuple(only_dog[130, 50]) == tuple(setup["a"][130, 50])
    assert np.asarray(image).tobytes() == setup["a"].tobytes()  # the input is not drawn on


def test_label_goes_inside_without_room_above(tmp_path: Path) -> None:
    arr = np.zeros((100, 100, 3), np.uint8)
    p = pred("x", [[10, 0, 90, 90]], ["sky"], [0.5])
    img = np.asarray(D.draw_prediction(Image.fromarray(arr), p))
    color = D.Palette().color("sky")
    # The label (its background, with text on it) sits inside the box, under its top edge.
    label = img[3:12, 12:40].reshape(-1, 3)
    filled = np.all(label == color, axis=1).mean()
    assert 0.4 < filled < 1.0
    assert D.text_color(color) in {(0, 0, 0), (255, 255, 255)}
    assert D.text_color((255, 255, 0)) == (0, 0, 0) and D.text_color((0, 0, 200)) == (255, 255, 255)
    # A box partly outside the image is clipped, not dropped.
    q = pred("y", [[-20, 40, 150, 80]], ["road"], [0.5])
    img = np.asarray(D.draw_prediction(Image.fromarray(arr), q))
    assert tuple(img[80, 50]) == D.Palette().color("road")


def test_find_image(tmp_path: Path) -> None:
    grey_image(tmp_path / "x.Jpeg", 10, 10)
    grey_image(tmp_path / "d" / "y.webp", 10, 10)
    assert D.find_image(tmp_path, "x") == tmp_path / "x.Jpeg"
    assert D.find_image(tmp_path, "d/y") == tmp_path / "d" / "y.webp"
    with pytest.raises(VinvlError, match=r"'z'.*" + re.escape(str(tmp_path))):
        D.find_image(tmp_path, "z")


def test_errors_are_one_line(setup: dict, capsys: pytest.CaptureFixture) -> None:
    args = ["draw", setup["tsv"], "--images", setup["images"], "-o", setup["out"]]
    code, _, err = run(capsys, *args, "--keys", "nope")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "'nope'" in err and str(setup["tsv"]) in err
    (setup["images"] / "empty.png").unlink()
    code, _, err = run(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "'empty'" in err and str(setup["images"]) in err
    bad = write_tsv(setup["tsv"].parent / "bad.tsv", [["../evil", '{"objects": []}']])
    code, _, err = run(capsys, "draw", bad, "--images", setup["images"], "-o", setup["out"])
    assert code == 2 and "'../evil'" in err


def test_size_mismatch_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grey_image(tmp_path / "im" / "k.png", 50, 40)
    p = pred("k", [[1, 1, 9, 9]], ["a"], [0.5])
    p.image_w, p.image_h = 60, 40
    tsv = write_tsv(tmp_path / "p.tsv", [p.to_row(SUBSET)])
    code, _, err = run(capsys, "draw", tsv, "--images", tmp_path / "im", "-o", tmp_path / "o")
    assert code == 2 and "50 x 40" in err and "60 x 40" in err
