"""One image decoder: every reader (Detector, extract, detector training data, draw, decontamination) decodes a
file to the same pixels, refuses the same bombs, follows the same EXIF rule and names the file in its errors."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import numpy as np
import pybase64
import pytest
from PIL import Image

import vinvl
from vinvl import draw as D
from vinvl.corpus.decontaminate import image_signature, signatures
from vinvl.detection import Detector
from vinvl.detection.dataset import DetectionDataset
from vinvl.detection.preprocess import to_input_tensor
from vinvl.errors import VinvlError
from vinvl.extract.sources import ImageItem, collect_inputs, load_image_item
from vinvl.features import Prediction
from vinvl.images import ImageLoadError, decode_image, load_image, open_image, to_rgb
from vinvl.labelmap import LabelMap
from vinvl.tsv import write_tsv

SRC = Path(vinvl.__file__).parent


def pixels(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(mode: str, fmt: str, w: int = 23, h: int = 17, exif_orientation: int = 0) -> bytes:
    if mode == "I;16":
        img = Image.fromarray(np.random.default_rng(1).integers(0, 65536, (h, w)).astype(np.uint16))
    else:
        img = Image.fromarray(pixels(w, h)).convert(mode)
    b = io.BytesIO()
    kw = {}
    if exif_orientation:
        exif = img.getexif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif
    img.save(b, fmt, **kw)
    return b.getvalue()


KINDS = {
    "rgb.png": ("RGB", "PNG"), "rgba.png": ("RGBA", "PNG"), "p.png": ("P", "PNG"), "l.png": ("L", "PNG"),
    "la.png": ("LA", "PNG"), "bw.png": ("1", "PNG"), "cmyk.jpg": ("CMYK", "JPEG"), "q.jpg": ("RGB", "JPEG"),
    "i16.png": ("I;16", "PNG"), "rgb.bmp": ("RGB", "BMP"), "rgb.webp": ("RGB", "WEBP"),
}


def write_dataset(folder: Path, files: dict[str, bytes]) -> Path:
    """A training dataset yaml whose image TSV holds ``files`` (no boxes)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tsv(folder / "img.tsv", [[k, pybase64.b64encode(v).decode()] for k, v in files.items()])
    write_tsv(folder / "label.tsv", [[k, "[]"] for k in files])
    LabelMap(("__background__", "a"), ("__no_attribute__", "x")).save_vg_json(folder / "labelmap.json")
    (folder / "dataset.yaml").write_text(json.dumps({"img": "img.tsv", "label": "label.tsv", "labelmap": "labelmap.json"}))
    return folder / "dataset.yaml"


@pytest.fixture(scope="module")
def det() -> Detector:
    return Detector.from_config("tiny", seed=0)


def every_reader(det: Detector, path: Path, tmp: Path) -> dict[str, np.ndarray]:
    """The RGB pixels each reader in the package makes of the file ``path``."""
    out = {
        "load_image": np.asarray(load_image(path)),
        "extract file": np.asarray(load_image_item(ImageItem("k", path))),
        "draw": np.asarray(D._load_image(path, Prediction(key="k", boxes=np.zeros((0, 4)), classes=[], scores=np.zeros(0)))),
    }
    write_tsv(tmp / "img.tsv", [["k", pybase64.b64encode(path.read_bytes()).decode()]])
    (row,) = collect_inputs([tmp / "img.tsv"])
    out["extract tsv row"] = np.asarray(load_image_item(row))
    out["training data"] = np.asarray(DetectionDataset(write_dataset(tmp / "ds", {"k": path.read_bytes()})).image(0))
    with Image.open(path) as im:
        out["PIL image"] = np.asarray(load_image(im))
    return out


@pytest.mark.parametrize("name", list(KINDS))
def test_every_reader_decodes_a_file_to_the_same_pixels(det: Detector, tmp_path: Path, name: str) -> None:
    data = encode(*KINDS[name])
    path = tmp_path / name
    path.write_bytes(data)
    ref = decode_image(data)
    assert ref.mode == "RGB" and ref.size == (23, 17)
    for reader, got in every_reader(det, path, tmp_path).items():
        np.testing.assert_array_equal(got, np.asarray(ref), err_msg=reader)
    x, hw = det.prepare(path)
    assert hw == (17, 23) and np.array_equal(x.numpy(), to_input_tensor(ref, det.config.input).numpy())


def test_exif_rotation_only_when_asked(det: Detector, tmp_path: Path) -> None:
    data = encode("RGB", "JPEG", w=30, h=12, exif_orientation=6)  # shown rotated by 90 degrees
    path = tmp_path / "rot.jpg"
    path.write_bytes(data)
    for reader, got in every_reader(det, path, tmp_path).items():
        assert got.shape[:2] == (12, 30), reader  # the stored grid: the detector's boxes live there
    assert det(path).image_hw == (12, 30)
    assert load_image(path, exif_transpose=True).size == (12, 30)
    assert decode_image(data, exif_transpose=True).size == (12, 30)
    # Decontamination compares images as they are shown (from a file JPEG decodes straight to grey: not bit-equal).
    sig = image_signature(path)
    to_shown = np.linalg.norm(sig - image_signature(decode_image(data, exif_transpose=True)))
    stored = Image.fromarray(np.asarray(decode_image(data)))  # the pixels without the EXIF tag
    to_stored = np.linalg.norm(sig - image_signature(stored))
    assert to_shown < 0.05 < 0.5 < to_stored


@pytest.mark.parametrize("size", [(40, 30), (100, 100)])  # in PIL's warning zone, and past twice the limit
def test_every_reader_refuses_a_decompression_bomb(det: Detector, tmp_path: Path, monkeypatch, size) -> None:
    data = encode("RGB", "PNG", *size)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="^decompression bomb"):
        decode_image(data)
    with pytest.raises(ImageLoadError, match="^decompression bomb"):
        load_image_item(ImageItem("bomb", path))
    with pytest.raises(VinvlError, match="bomb.png: cannot read image \\(decompression bomb"):
        det(path)
    with pytest.raises(VinvlError, match="bomb.png: cannot read image for key 'k' \\(decompression bomb"):
        D._load_image(path, Prediction(key="k", boxes=np.zeros((0, 4)), classes=[], scores=np.zeros(0)))
    with pytest.raises(VinvlError, match="row 0 \\(k\\): decompression bomb"):
        DetectionDataset(write_dataset(tmp_path / "ds", {"k": data})).image(0)
    _, failures = signatures([path])
    assert len(failures) == 1 and failures[0].error.startswith("decompression bomb")


def test_broken_files_are_one_line_errors_naming_the_file(det: Detector, tmp_path: Path) -> None:
    with pytest.raises(VinvlError, match="missing.png: no such file"):
        load_image(tmp_path / "missing.png")
    cases = {"empty.jpg": (b"", "empty file"), "text.jpg": (b"not an image", "not an image"),
             "cut.jpg": (encode("RGB", "JPEG", 64, 48)[:-400], "corrupt or truncated")}
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        for call in (load_image, det):
            with pytest.raises(VinvlError) as e:
                call(tmp_path / name)
            assert f"{name}: cannot read image ({reason}" in str(e.value) and "\n" not in str(e.value)
        _, failures = signatures([tmp_path / name])
        assert failures[0].error.startswith(reason)
    with pytest.raises(VinvlError, match="uint8 RGB array"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(VinvlError, match="cannot use the La image"):
        load_image(Image.new("La", (4, 4)))  # a mode PIL cannot convert to RGB


def test_integer_modes_pil_cannot_convert_are_scaled(monkeypatch) -> None:
    """Pillows that refuse ``I;16 -> RGB`` get the values scaled to 8 bits instead of an error."""
    data = encode("I;16", "PNG")
    values = np.asarray(Image.open(io.BytesIO(data)), dtype=np.int64)
    convert = Image.Image.convert

    def old_pillow(self, mode=None, *args, **kwargs):
        if self.mode.startswith("I") and mode == "RGB":
            raise ValueError(f"conversion from {self.mode} to RGB not supported")
        return convert(self, mode, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", old_pillow)
    rgb = np.asarray(decode_image(data))
    np.testing.assert_allclose(rgb, np.repeat(values[..., None] / 256, 3, axis=2), atol=1)  # scaled, not clipped
    assert rgb.max() > 200
    assert np.asarray(to_rgb(open_image(data))).tobytes() == rgb.tobytes()


def test_no_reader_decodes_on_its_own() -> None:
    """Only vinvl/images.py opens encoded images, and the detector does not import from extract/."""
    for f in SRC.rglob("*.py"):
        text = f.read_text()
        if f.name != "images.py":
            assert "Image.open(" not in text and "DecompressionBomb" not in text, f
        if f.parent.name == "detection":
            mods = [n.module or "" for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ImportFrom)]
            assert not any("extract" in m for m in mods), f
