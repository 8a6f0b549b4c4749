"""vinvl.regions: images -> the detector's regions and tags, opened as a RegionStore for Oscar+."""

from __future__ import annotations

from pathlib import Path

import pytest

from vinvl.oscar.data.regions import RegionStore
from vinvl.regions import image_keys, regions_for_images


def test_regions_for_images_runs_the_demo_detector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images in, Oscar regions + tags out (the shipped demo detector's 512-d features + 6 geometry); a complete
    folder is reused: the detector's forward runs on no image again and the files keep their bytes."""
    from vinvl.detection import AttrRCNN

    forwards: list[int] = []
    real = AttrRCNN.forward
    monkeypatch.setattr(AttrRCNN, "forward", lambda self, images, *a, **k: forwards.append(len(images))
                        or real(self, images, *a, **k))
    images = Path(__file__).resolve().parents[1] / "examples" / "images"
    keys, store = regions_for_images([images], tmp_path / "f")
    assert keys == sorted(p.stem for p in images.iterdir())
    assert sum(forwards) == len(keys)  # the counter sees the work: one forward per image
    assert store.dim == 518 and RegionStore(tmp_path / "f").dim == 518
    r = store.regions(keys[0])
    assert r.shape[1] == 518 and r.shape[0] == len(store.tags(keys[0]).split())
    assert (r[:, 512:516] >= 0).all() and (r[:, 512:516] <= 1).all()  # normalised box corners
    written = {f.name: f.read_bytes() for f in (tmp_path / "f").iterdir() if f.is_file()}
    forwards.clear()
    again, _ = regions_for_images([images], tmp_path / "f")  # complete: reused, not redone
    assert again == keys and forwards == []
    assert {f.name: f.read_bytes() for f in (tmp_path / "f").iterdir() if f.is_file()} == written


def test_image_keys_are_extracts_keys(tmp_path: Path) -> None:
    images = sorted((Path(__file__).resolve().parents[1] / "examples" / "images").iterdir())
    assert image_keys(images) == {str(p): p.stem for p in images}


def test_regions_for_given_boxes(tmp_path: Path) -> None:
    """Given boxes (a mapping or a boxes file) are the regions, one per box in order, their classes the tags;
    an image without boxes gets none when asked."""
    import json

    import numpy as np

    images = Path(__file__).resolve().parents[1] / "examples" / "images"
    boxes = {"shapes_a": [[10, 20, 200, 180], [0, 0, 311, 259], [10, 20, 200, 180]], "shapes_b": [[30, 40, 120, 90]]}
    keys, store = regions_for_images([images], tmp_path / "m", boxes=boxes, boxes_missing="empty")
    assert keys == ["shapes_a", "shapes_b", "shapes_c"]
    r = store.regions("shapes_a")
    assert r.shape == (3, 518) and np.array_equal(r[0], r[2]) and len(store.tags("shapes_a").split()) == 3
    np.testing.assert_allclose(r[0, 512:514], [10 / 312, 20 / 260], rtol=1e-5)
    assert store.regions("shapes_c").shape[0] == 0 and store.tags("shapes_c") == ""
    (tmp_path / "b.json").write_text(json.dumps({**boxes, "shapes_c": []}))
    _, from_file = regions_for_images([images], tmp_path / "f", boxes=tmp_path / "b.json")
    assert np.array_equal(from_file.regions("shapes_a"), r) and from_file.tags("shapes_b") == store.tags("shapes_b")
