"""Atomic writes: the target is either the old file or the whole new one, and no temporary is left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vinvl.atomic import atomic_write, atomic_write_json, temporary_name


def test_complete_write_replaces_and_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}

    def half(tmp: Path) -> None:
        tmp.write_text('{"x": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert json.loads(target.read_text()) == {"x": 1}
    assert not temporary_name(target).exists() and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
