"""Corpus decontamination: planted duplicates are found, distinct images kept, outputs and errors right."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image, ImageDraw, ImageEnhance
from typer.testing import CliRunner

from vinvl.cli.corpus import app as corpus_app
from vinvl.corpus import (
    DEFAULT_CANDIDATE_THRESHOLD,
    DEFAULT_THRESHOLD,
    aligned_distance,
    decontaminate,
    id_mapping_matches,
    image_signature,
    index_image_folder,
    near_duplicates,
    read_id_list,
    read_id_mapping,
    signatures,
)
from vinvl.errors import FormatError, VinvlError
from vinvl.tsv import TSVFile, read_lineidx, scan_offsets


def scene(rng: np.random.Generator, h: int = 240, w: int = 320) -> Image.Image:
    """A photo-like RGB image: 1/f colour noise (natural-image spectrum) plus a few flat shapes."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.standard_normal((3, h, w // 2 + 1)) + 1j * rng.standard_normal((3, h, w // 2 + 1))) / f
    spec[:, 0, 0] = 0
    x = np.fft.irfft2(spec, s=(h, w))
    x = (x - x.min()) / np.ptp(x) * 255
    img = Image.fromarray(x.transpose(1, 2, 0).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
        box = [x0, y0, x0 + rng.uniform(0.1, 0.3) * w, y0 + rng.uniform(0.1, 0.3) * h]
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def reencode(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def crop(img: Image.Image, l: float, t: float, r: float, b: float) -> Image.Image:
    w, h = img.size
    return img.crop((round(l * w), round(t * h), round(w - r * w), round(h - b * h)))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Test images, a corpus folder with planted duplicates / distinct / unreadable images, and a corpus TSV."""
    root = tmp_path_factory.mktemp("decon")
    rng = np.random.default_rng(7)
    tdir, cdir = root / "test", root / "corpus"
    (cdir / "sub").mkdir(parents=True)
    tdir.mkdir()
    bigs = [scene(rng, 240, 400) for _ in range(6)]
    tests = []
    for i, big in enumerate(bigs):  # each test image is the left 320 px of a wider scene
        p = tdir / f"t{i}.jpg"
        big.crop((0, 0, 320, 240)).save(p, quality=90)
        tests.append(p)
    orig = [Image.open(p).convert("RGB") for p in tests]
    dups = {
        "exact": None,  # byte copy
        "half": orig[1].resize((160, 120)),
        "jpeg30": reencode(orig[2], 30),
        "crop4": crop(orig[3], 0.04, 0.04, 0.04, 0.04),
        "sub/croplt": crop(orig[4], 0.05, 0.05, 0, 0),
        "bright": ImageEnhance.Brightness(orig[5]).enhance(1.1),
    }
    shutil.copy(tests[0], cdir / "exact.jpg")
    for k, im in dups.items():
        if im is not None:
            im.save(cdir / f"{k}.png")
    distinct = {f"other{i}": scene(rng) for i in range(4)}
    distinct["shift20a"] = bigs[0].crop((64, 0, 384, 240))  # the scene of t0, 20% to the right
    distinct["shift20b"] = bigs[3].crop((64, 0, 384, 240))
    for k, im in distinct.items():
        im.save(cdir / f"{k}.jpg", quality=85)
    (cdir / "vg_100.jpg").write_bytes((cdir / "other0.jpg").read_bytes())  # distinct image, removed by id
    (cdir / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    corpus = root / "corpus.tsv"
    keys = list(dups) + list(distinct) + ["vg_100", "broken", "missing"]
    lines = []
    for k in keys:
        for c in range(2):  # two captions per image: all rows of a key go together
            lines.append(f"{k}\tcaption {c} of {k}\t{{\"n\": {c}}}\n")
    corpus.write_text("".join(lines))
    mapping = root / "vg2coco.tsv"
    mapping.write_text("vg_100\t42\nother1\t7\nother2\t43\n")
    ids = root / "test_ids.txt"
    ids.write_text("42\n43x\n")
    return dict(root=root, tests=tests, cdir=cdir, corpus=corpus, dups=list(dups), distinct=list(distinct),
                keys=keys, lines=lines, mapping=mapping, ids=ids)


def test_decontaminate_end_to_end(world: dict, tmp_path: Path) -> None:
    out, rep = tmp_path / "clean.tsv", tmp_path / "clean.removed.tsv"
    res = decontaminate(world["corpus"], out, rep, corpus_images=world["cdir"], test_images=world["tests"],
                        id_mapping=world["mapping"], test_ids=world["ids"])
    removed = {line.split("\t")[0]: line.rstrip("\n").split("\t") for line in rep.read_text().splitlines()}
    assert set(removed) == set(world["dups"]) | {"vg_100"}
    for i, k in enumerate(world["dups"]):
        _, reason, match, dist = removed[k]
        assert reason == "near-duplicate" and match == str(world["tests"][i]), (k, removed[k])
        assert 0 <= float(dist) < DEFAULT_THRESHOLD
    assert removed["exact"][3] == "0.0000"
    assert removed["vg_100"][1:] == ["id-map", "42", ""]
    # Kept rows are byte-identical and in order; the index is right.
    kept = [ln for ln in world["lines"] if ln.split("\t")[0] not in removed]
    assert out.read_text() == "".join(kept)
    assert read_lineidx(out.with_suffix(".lineidx")).tolist() == scan_offsets(out).tolist()
    assert TSVFile(rep).key(0) == world["keys"][0]
    assert (res.rows_read, res.rows_kept) == (2 * len(world["keys"]), len(kept))
    assert (res.rows_removed_id_map, res.rows_removed_near_duplicate) == (2, 2 * len(world["dups"]))
    assert res.rows_removed == res.rows_read - res.rows_kept
    assert res.keys_removed_near_duplicate == len(world["dups"]) and res.keys_removed_id_map == 1
    fails = {f.path.rsplit("/", 1)[-1]: f.error for f in res.corpus_failures}
    assert set(fails) == {"broken.jpg", "missing"} and "no image for key" in fails["missing"]
    assert res.test_failures == [] and res.test_images == len(world["tests"])
    assert not list(tmp_path.glob(".*tmp*"))  # no temporaries left behind


def test_duplicates_both_ways_and_similar_images(world: dict) -> None:
    cdir, tests = world["cdir"], world["tests"]
    # The copy as the test image and the original in the corpus also matches (crop search both ways).
    assert aligned_distance(tests[3], cdir / "crop4.png") < DEFAULT_THRESHOLD
    assert aligned_distance(tests[4], cdir / "sub" / "croplt.png") < DEFAULT_THRESHOLD
    for k in ("shift20a", "other0"):
        d1 = float(np.linalg.norm(image_signature(cdir / f"{k}.jpg") - image_signature(tests[0])))
        assert d1 >= DEFAULT_CANDIDATE_THRESHOLD or aligned_distance(cdir / f"{k}.jpg", tests[0]) >= DEFAULT_THRESHOLD


def test_image_signature_properties(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = scene(rng)
    img.save(tmp_path / "a.png")
    v = image_signature(tmp_path / "a.png")
    assert v.shape == (1024,) and v.dtype == np.float32
    assert abs(float(np.linalg.norm(v)) - 1) < 1e-5 and abs(float(v.mean())) < 1e-5
    assert np.allclose(v, image_signature(img), atol=1e-6)  # path or PIL image, same signature
    assert image_signature(img, size=16).shape == (256,)
    flat = Image.new("RGB", (50, 40), (120, 30, 200))
    assert not image_signature(flat).any()  # flat: the zero vector, not amplified noise
    # Grayscale 16-bit and palette images are accepted too.
    Image.fromarray((np.asarray(img.convert("L"), dtype=np.uint16) * 256)).save(tmp_path / "b16.png")
    assert float(np.linalg.norm(image_signature(tmp_path / "b16.png") - v)) < 0.05
    assert float(np.linalg.norm(image_signature(img.convert("P")) - v)) < DEFAULT_CANDIDATE_THRESHOLD


def test_signatures_reports_unreadable(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.jpg")
        scene(rng, 60, 80).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    paths.insert(1, tmp_path / "bad.jpg")
    paths.append(tmp_path / "nope.png")
    for workers in (0, 2):
        sig, fails = signatures(paths, workers=workers)
        assert sig.shape == (5, 1024)
        assert [f.index for f in fails] == [1, 4] and fails[0].path == str(paths[1])
        assert np.isnan(sig[[1, 4]]).all() and np.isfinite(sig[[0, 2, 3]]).all()
        assert np.allclose(sig[0], image_signature(paths[0]))


def test_near_duplicates_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((53, 16)).astype(np.float32)
    b = rng.standard_normal((29, 16)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    a[[4, 9, 40]] = b[[2, 2, 28]] + 0.01 * rng.standard_normal((3, 16)).astype(np.float32)
    a[11] = np.nan  # unreadable corpus image: never matches
    b[5] = np.nan  # unreadable test image: must not poison the others
    d = np.linalg.norm(a[:, None].astype(np.float64) - b[None].astype(np.float64), axis=2)
    for thr in (0.1, 0.9):
        for block in (7, 4096):
            got = near_duplicates(a, b, thr, block=block)
            want = []
            for i in range(len(a)):
                row = np.where(np.isnan(d[i]), np.inf, d[i])
                j = int(np.argmin(row))
                if row[j] < thr:
                    want.append((i, j))
            assert [(m.i, m.j) for m in got] == want
            assert all(abs(m.dist - d[m.i, m.j]) < 1e-6 for m in got)
    assert [(m.i, m.j) for m in near_duplicates(a, b, 0.1)] == [(4, 2), (9, 2), (40, 28)]
    top2 = near_duplicates(a, b, 1.2, block=5, k=2)
    for i in {m.i for m in top2}:
        js = [m.j for m in top2 if m.i == i]
        row = np.where(np.isnan(d[i]), np.inf, d[i])
        assert js == [j for j in np.argsort(row)[:2] if row[j] < 1.2]
    assert near_duplicates(a[:0], b, 0.5) == []


def test_id_mapping_files(tmp_path: Path) -> None:
    tsv = tmp_path / "map.tsv"
    tsv.write_text("# vg_id\tcoco_id\n1\t10\n\n2\t20\n2\t20\n")
    assert read_id_mapping(tsv) == {"1": "10", "2": "20"}
    js = tmp_path / "map.json"
    js.write_text(json.dumps({"1": 10, "2": "20", "3": None}))
    assert read_id_mapping(js) == {"1": "10", "2": "20"}
    assert id_mapping_matches(["3", "1", "2", "1"], {"1": "10", "2": "20"}, {"10", "99"}) == [("1", "10")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t10\n2\t20\n3 30\n")
    with pytest.raises(FormatError) as e:
        read_id_mapping(bad)
    assert str(e.value).startswith(f"{bad}:3: expected 'corpus_id<TAB>mapped_id'")
    bad.write_text("1\t10\n1\t11\n")
    with pytest.raises(FormatError, match=r":2: corpus id '1' is mapped twice"):
        read_id_mapping(bad)
    badj = tmp_path / "bad.json"
    badj.write_text("[1, 2]")
    with pytest.raises(FormatError, match="JSON object"):
        read_id_mapping(badj)
    badj.write_text('{"1": [2]}')
    with pytest.raises(FormatError, match="key '1'"):
        read_id_mapping(badj)
    badj.write_text('{"1": 2,\n "2": }')
    with pytest.raises(FormatError, match=r"bad.json:2: not valid JSON"):
        read_id_mapping(badj)
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n\n6\n7 8\n")
    with pytest.raises(FormatError, match=r"ids.txt:4: expected one id per line"):
        read_id_list(ids)


def test_folder_index_and_argument_errors(tmp_path: Path) -> None:
    (tmp_path / "img" / "a").mkdir(parents=True)
    for name in ("a/x.jpg", "y.png", "y.jpg", "z.JPEG", "notes.txt"):
        (tmp_path / "img" / name).write_bytes(b"")
    idx = index_image_folder(tmp_path / "img")
    assert idx["a/x"] == tmp_path / "img" / "a" / "x.jpg" and idx["a/x.jpg"] == idx["a/x"]
    assert idx["z"].name == "z.JPEG" and "notes" not in idx
    corpus = tmp_path / "c.tsv"
    corpus.write_text("y\tcap\n")
    with pytest.raises(VinvlError, match="key 'y' matches several images"):
        decontaminate(corpus, tmp_path / "o.tsv", tmp_path / "r.tsv", corpus_images=tmp_path / "img",
                      test_images=[tmp_path / "img" / "y.png"])
    with pytest.raises(VinvlError, match="needs both"):
        decontaminate(corpus, tmp_path / "o.tsv", tmp_path / "r.tsv", id_mapping={"y": "1"})
    with pytest.raises(VinvlError, match="nothing to check"):
        decontaminate(corpus, tmp_path / "o.tsv", tmp_path / "r.tsv")
    with pytest.raises(VinvlError, match="must differ"):
        decontaminate(corpus, corpus, tmp_path / "r.tsv", id_mapping={}, test_ids=[])
    assert not (tmp_path / "o.tsv").exists()


def test_cli(world: dict, tmp_path: Path) -> None:
    root = typer.Typer()
    root.add_typer(corpus_app, name="corpus")
    out = tmp_path / "clean.tsv"
    r = CliRunner().invoke(root, ["corpus", "decontaminate", str(world["corpus"]), "-o", str(out),
                                  "--corpus-images", str(world["cdir"]), "--test-images", str(world["root"] / "test"),
                                  "--id-mapping", str(world["mapping"]), "--test-ids", str(world["ids"])])
    assert r.exit_code == 0, r.output
    summary = [ln for ln in r.output.splitlines() if not ln.startswith("warning:")]
    assert len(summary) == 1 and "removed 2 by id-map, 12 as near-duplicates" in summary[0]
    assert "unreadable: 2 corpus, 0 test images" in summary[0]
    assert len((tmp_path / "clean.removed.tsv").read_text().splitlines()) == 7
    r = CliRunner().invoke(root, ["corpus", "decontaminate", str(world["corpus"]), "-o", str(out),
                                  "--test-images", str(tmp_path / "none")])
    assert isinstance(r.exception, VinvlError) and "no such file or folder" in str(r.exception)
