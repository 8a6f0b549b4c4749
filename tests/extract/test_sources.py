"""Image inputs and the key rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from vinvl.errors import VinvlError
from vinvl.extract import collect_images, image_key


def test_key_rule() -> None:
    assert image_key("/d/a/b/c.jpg", "/d") == "a/b/c"
    assert image_key("/d/x.y.png", "/d") == "x.y"
    assert image_key("/d/noext", "/d") == "noext"


def test_collect(tmp_path: Path) -> None:
    for rel in ("b/2.jpg", "a/1.PNG", "a/sub/3.jpeg", "notes.txt", "c.webp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    items = collect_images([tmp_path])
    assert [i.key for i in items] == ["a/1", "a/sub/3", "b/2", "c"]
    single = collect_images([tmp_path / "b/2.jpg", tmp_path / "notes.txt"])
    assert [i.key for i in single] == ["2", "notes"]
    with pytest.raises(VinvlError, match="duplicate image key 'a/1'"):
        collect_images([tmp_path, tmp_path])
    with pytest.raises(VinvlError, match="no such file or folder"):
        collect_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VinvlError, match="no images found"):
        collect_images([tmp_path / "empty"])
