"""vinvl.regions: images -> the detector's regions and tags, opened as a RegionStore for Oscar+."""

from __future__ import annotations

from pathlib import Path

from vinvl.oscar.data.regions import RegionStore
from vinvl.regions import image_keys, regions_for_images


def test_regions_for_images_runs_the_demo_detector(tmp_path: Path) -> None:
    """Images in, Oscar regions + tags out (the shipped demo detector's 512-d features + 6 geometry)."""
    images = Path(__file__).resolve().parents[1] / "examples" / "images"
    keys, store = regions_for_images([images], tmp_path / "f")
    assert keys == sorted(p.stem for p in images.iterdir())
    assert store.dim == 518 and RegionStore(tmp_path / "f").dim == 518
    r = store.regions(keys[0])
    assert r.shape[1] == 518 and r.shape[0] == len(store.tags(keys[0]).split())
    assert (r[:, 512:516] >= 0).all() and (r[:, 512:516] <= 1).all()  # normalised box corners
    again, _ = regions_for_images([images], tmp_path / "f")  # complete: reused, not redone
    assert again == keys


def test_image_keys_are_extracts_keys(tmp_path: Path) -> None:
    images = sorted((Path(__file__).resolve().parents[1] / "examples" / "images").iterdir())
    assert image_keys(images) == {str(p): p.stem for p in images}
