"""Atomic writes: the target is either the old file or the whole new one, and no temporary is left; and the
durability rule of vinvl.atomic: the new file's bytes are fsynced before its rename, its folder after, and every
writer of the package follows it (the OS's word for what an fsync does is taken as given)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from vinvl.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    commit,
    make_folders,
    temporary_name,
)
from vinvl.tsv import TSVWriter, build_lineidx, lineidx_path, merge_tsv, write_key_index, write_tsv


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


class Disk:
    """What reached the disk's API, in order: ``fsync NAME`` and ``rename TMP -> NAME``, by the names in ``names``.

    fsyncs are told apart by the inode their descriptor holds, which a rename keeps: a temporary fsynced
    before its rename reads as its final name.
    """

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def log(self, names: dict[str, Path]) -> list[str]:
        """The events, each inode named by the key of the path in ``names`` that holds it now."""
        by_inode = {(p.stat().st_dev, p.stat().st_ino): k for k, p in names.items()}
        out = []
        for kind, *what in self.events:
            if kind == "fsync":
                out.append(f"fsync {by_inode.get(what[0], '?')}")
            else:
                out.append(f"rename {Path(what[0]).name} -> {Path(what[1]).name}")
        return out


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    d = Disk()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        d.events.append(("fsync", (st.st_dev, st.st_ino)))
        real_fsync(fd)

    def replace(src: object, dst: object, *a: object, **k: object) -> None:
        d.events.append(("rename", src, dst))
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    yield d


WRITERS: dict[str, Callable[[Path], object]] = {
    "atomic_write_bytes": lambda p: atomic_write_bytes(p, b"x"),
    "atomic_write_text": lambda p: atomic_write_text(p, "x"),
    "atomic_write_json": lambda p: atomic_write_json(p, {"x": 1}),
    "write_key_index": lambda p: write_key_index(p, [("a", 0), ("b", 1)]),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_write_is_fsynced_then_renamed_then_its_folder_fsynced(tmp_path: Path, disk: Disk, writer: str) -> None:
    target = tmp_path / "out.json"
    WRITERS[writer](target)
    tmp = temporary_name(target).name
    assert disk.log({"file": target, "folder": tmp_path}) == [
        "fsync file", f"rename {tmp} -> out.json", "fsync folder"]


def test_folders_made_for_a_write_are_fsynced_into_their_parents(tmp_path: Path, disk: Disk) -> None:
    target = tmp_path / "a" / "b" / "x.json"
    atomic_write_json(target, [1])
    names = {"root": tmp_path, "a": tmp_path / "a", "b": tmp_path / "a" / "b", "file": target}
    # a is an entry of root, b of a: each parent is fsynced once its new folder is in it, before the file is committed
    assert disk.log(names) == ["fsync root", "fsync a", "fsync file", f"rename {temporary_name(target).name} -> x.json",
                               "fsync b"]
    disk.events.clear()
    assert make_folders(tmp_path / "a" / "b") == tmp_path / "a" / "b" and disk.events == []  # nothing new: no fsync


def test_a_file_in_the_way_of_a_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(FileExistsError):
        make_folders(tmp_path / "f")
    with pytest.raises(NotADirectoryError):
        make_folders(tmp_path / "f" / "sub")


def _index_then_tsv(tsv: Path) -> list[str]:
    idx = lineidx_path(tsv)
    return ["fsync index", f"rename {temporary_name(idx).name} -> {idx.name}", "fsync folder",
            "fsync tsv", f"rename {temporary_name(tsv).name} -> {tsv.name}", "fsync folder"]


def _names(tsv: Path) -> dict[str, Path]:
    return {"tsv": tsv, "index": lineidx_path(tsv), "folder": tsv.parent}


def test_tsv_writer_commits_the_index_before_its_tsv(tmp_path: Path, disk: Disk) -> None:
    """Each file fsynced before its rename, the folder after each, the index first: a crash at any point never
    leaves a new TSV beside an old (or no) index."""
    tsv = tmp_path / "w.tsv"
    with TSVWriter(tsv) as w:
        w.write(["a", "b"])
    assert disk.log(_names(tsv)) == _index_then_tsv(tsv)


def test_merge_commits_the_index_before_its_tsv(tmp_path: Path, disk: Disk) -> None:
    shards = [write_tsv(tmp_path / f"s{i}.tsv", [[f"k{i}", "v"]]) for i in range(2)]
    out = tmp_path / "m.tsv"
    disk.events.clear()
    merge_tsv(shards, out)
    assert out.read_text() == "k0\tv\nk1\tv\n"
    assert disk.log(_names(out)) == _index_then_tsv(out)


def test_an_index_built_for_a_file_is_committed_durably(tmp_path: Path, disk: Disk) -> None:
    tsv = tmp_path / "t.tsv"
    tsv.write_bytes(b"a\tb\nc\td\n")
    idx = build_lineidx(tsv)
    assert idx.read_bytes() == b"0\n4\n"
    assert disk.log({"index": idx, "folder": tmp_path}) == [
        "fsync index", f"rename {temporary_name(idx).name} -> {idx.name}", "fsync folder"]


def test_a_committed_folder_is_fsynced_whole_before_its_rename(tmp_path: Path, disk: Disk) -> None:
    """A folder (an unpacked zip) gets its name only once every file and folder in it is on disk."""
    tmp = tmp_path / ".x.tmp"
    (tmp / "sub").mkdir(parents=True)
    (tmp / "a.bin").write_bytes(b"a")
    (tmp / "sub" / "b.bin").write_bytes(b"b")
    final = commit(tmp, tmp_path / "x")
    names = {"a": final / "a.bin", "b": final / "sub" / "b.bin", "sub": final / "sub", "tree": final,
             "parent": tmp_path}
    log = disk.log(names)
    assert log[-2:] == ["rename .x.tmp -> x", "fsync parent"]
    assert sorted(log[:-2]) == ["fsync a", "fsync b", "fsync sub", "fsync tree"]
    assert log.index("fsync b") < log.index("fsync sub") < log.index("fsync tree")  # deepest first, the folder last
