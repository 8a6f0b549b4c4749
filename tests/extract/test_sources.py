"""Every input kind, every key option, and every way an input image can be odd or broken."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pybase64
import pytest
from PIL import Image

from vinvl.errors import VinvlError
from vinvl.extract import collect_images, collect_inputs, image_key, make_key_rule
from vinvl.extract.sources import load_image_item
from vinvl.images import ImageLoadError, decode_image
from vinvl.tsv import write_tsv


def png_bytes(w: int = 8, h: int = 6, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    b = io.BytesIO()
    Image.new(mode, (w, h)).save(b, fmt)
    return b.getvalue()


def test_key_rule() -> None:
    assert image_key("/d/a/b/c.jpg", "/d") == "a/b/c"
    assert image_key("/d/x.y.png", "/d") == "x.y"
    assert image_key("/d/noext", "/d") == "noext"


def test_folders_and_files(tmp_path: Path) -> None:
    for rel in ("b/2.jpg", "a/1.PNG", "a/sub/3.jpeg", "notes.md", "c.webp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    items = collect_images([tmp_path])
    assert [i.key for i in items] == ["a/1", "a/sub/3", "b/2", "c"]  # sorted, recursive, images only
    single = collect_images([tmp_path / "b/2.jpg", tmp_path / "notes.md"])
    assert [i.key for i in single] == ["2", "notes"]  # a named file is taken as an image
    with pytest.raises(VinvlError, match="duplicate image key 'a/1'"):
        collect_images([tmp_path, tmp_path])
    with pytest.raises(VinvlError, match="no such file or folder"):
        collect_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VinvlError, match="no images found"):
        collect_images([tmp_path / "empty"])


def test_list_file(tmp_path: Path) -> None:
    (tmp_path / "imgs/x").mkdir(parents=True)
    for n in ("imgs/x/a.jpg", "imgs/b.png"):
        (tmp_path / n).write_bytes(png_bytes())
    other = tmp_path.parent / f"{tmp_path.name}-outside.jpg"
    other.write_bytes(png_bytes())
    (tmp_path / "list.txt").write_text(f"# my images\nimgs/x/a.jpg\n\nimgs/b.png\n{other}\n")
    items = collect_inputs([tmp_path / "list.txt"])
    assert [i.key for i in items] == ["imgs/x/a", "imgs/b", other.stem]
    (tmp_path / "bad.txt").write_text("imgs/nope.jpg\n")
    with pytest.raises(VinvlError, match=r"bad.txt:1: no such image 'imgs/nope.jpg'"):
        collect_inputs([tmp_path / "bad.txt"])


def test_image_tsv_and_dataset_yaml(tmp_path: Path) -> None:
    rows = [[f"k{i}", pybase64.b64encode(png_bytes(5 + i, 4)).decode()] for i in range(4)]
    write_tsv(tmp_path / "data" / "img.tsv", rows)
    items = collect_inputs([tmp_path / "data" / "img.tsv"], make_key_rule("stem"))
    assert [i.key for i in items] == ["k0", "k1", "k2", "k3"]  # TSV keys as they are
    assert load_image_item(items[2]).size == (7, 4)
    (tmp_path / "data" / "ll.tsv").write_text("3\n1\n")
    (tmp_path / "data" / "test.yaml").write_text("img: img.tsv\nhw: hw.tsv\nlinelist: ll.tsv\n")
    items = collect_inputs([tmp_path / "data" / "test.yaml"])
    assert [(i.key, i.row) for i in items] == [("k3", 3), ("k1", 1)]
    # relative to DATA_DIR when not beside the yaml (the original's DATASETS.TEST)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "t.yaml").write_text("img: img.tsv\n")
    assert len(collect_inputs([tmp_path / "y" / "t.yaml"], data_dir=tmp_path / "data")) == 4
    (tmp_path / "y" / "bad.yaml").write_text("hw: hw.tsv\n")
    with pytest.raises(VinvlError, match="needs an 'img' entry"):
        collect_inputs([tmp_path / "y" / "bad.yaml"])
    (tmp_path / "data" / "ll2.tsv").write_text("9\n")
    (tmp_path / "data" / "t2.yaml").write_text("img: img.tsv\nlinelist: ll2.tsv\n")
    with pytest.raises(VinvlError, match="row 9 out of range"):
        collect_inputs([tmp_path / "data" / "t2.yaml"])


def test_key_options(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    for n in ("COCO_val2014_000000391895.jpg", "COCO_val2014_000000060623.jpg"):
        (tmp_path / "val" / n).write_bytes(b"x")
    items = collect_inputs([tmp_path], make_key_rule(key_regex=r"_0*(\d+)\.jpg$"))
    assert [i.key for i in items] == ["60623", "391895"]
    assert [i.key for i in collect_inputs([tmp_path], make_key_rule("name"))] == [
        "COCO_val2014_000000060623.jpg", "COCO_val2014_000000391895.jpg"]
    assert [i.key for i in collect_inputs([tmp_path], make_key_rule("stem"))] == [
        "COCO_val2014_000000060623", "COCO_val2014_000000391895"]
    (tmp_path / "map.tsv").write_text("val/COCO_val2014_000000060623.jpg\tA\nCOCO_val2014_000000391895.jpg\tB\n")
    assert [i.key for i in collect_inputs([tmp_path / "val"], make_key_rule(key_map=tmp_path / "map.tsv"))] == ["A", "B"]
    (tmp_path / "map.json").write_text(json.dumps({"COCO_val2014_000000060623.jpg": "A"}))
    with pytest.raises(VinvlError, match="not in the --key-map file"):
        collect_inputs([tmp_path / "val"], make_key_rule(key_map=tmp_path / "map.json"))
    with pytest.raises(VinvlError, match="does not match"):
        collect_inputs([tmp_path], make_key_rule(key_regex=r"(\d+)\.png$"))
    with pytest.raises(VinvlError, match="needs a group"):
        make_key_rule(key_regex=r"\d+")
    with pytest.raises(VinvlError, match="--key-from must be one of"):
        make_key_rule("basename")
    # a regex that maps two files to one key is a duplicate, found before any work
    with pytest.raises(VinvlError, match="duplicate image key"):
        collect_inputs([tmp_path], make_key_rule(key_regex=r"(COCO)"))


@pytest.mark.parametrize("mode, fmt", [
    ("CMYK", "JPEG"), ("P", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("1", "PNG"), ("I;16", "PNG"),
])
def test_odd_modes_become_rgb(mode: str, fmt: str) -> None:
    img = decode_image(png_bytes(9, 7, mode, fmt))
    assert img.mode == "RGB" and img.size == (9, 7)


def test_one_pixel_and_exif() -> None:
    assert decode_image(png_bytes(1, 1)).size == (1, 1)
    b = io.BytesIO()
    im = Image.fromarray(np.zeros((4, 10, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    im.save(b, "JPEG", exif=exif)
    assert decode_image(b.getvalue()).size == (10, 4)  # as the original: no rotation
    assert decode_image(b.getvalue(), exif_transpose=True).size == (4, 10)


def test_broken_inputs_give_reasons(tmp_path: Path, monkeypatch) -> None:
    good = png_bytes(64, 48, fmt="JPEG")
    cases = {
        "empty": (b"", "empty file"),
        "text": (b"hello, not an image", "not an image"),
        "truncated": (good[: len(good) // 2], "corrupt or truncated"),
        "corrupt": (good[:200] + bytes(range(256)) * 4, "corrupt or truncated"),
    }
    for name, (data, reason) in cases.items():
        with pytest.raises(ImageLoadError, match=reason):
            decode_image(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        decode_image(png_bytes(40, 30))  # 1200 pixels: between the limit and twice it
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        decode_image(png_bytes(100, 100))
    write_tsv(tmp_path / "img.tsv", [["a", "###"], ["b"]])
    items = collect_inputs([tmp_path / "img.tsv"])
    with pytest.raises(ImageLoadError, match="not valid base64"):
        load_image_item(items[0])
    with pytest.raises(ImageLoadError, match="found 1 column"):
        load_image_item(items[1])
