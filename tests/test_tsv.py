"""vinvl.tsv: random access, streaming writes, indexes, merging, chunked datasets, bad input."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from vinvl import tsv as T
from vinvl.errors import FormatError


def _rows(n: int, rng: np.random.Generator) -> list[list[str]]:
    return [[f"key{i}", "x" * int(rng.integers(0, 50)), f"ü{i}", str(i)] for i in range(n)]


def test_lineidx_path() -> None:
    assert T.lineidx_path("a/features.tsv") == Path("a/features.lineidx")
    assert T.lineidx8b_path("a/b.c.tsv") == Path("a/b.c.lineidx.8b")


def test_write_read_roundtrip(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = _rows(200, rng)
    p = T.write_tsv(tmp_path / "x.tsv", rows)
    expected = b"".join(("\t".join(r) + "\n").encode() for r in rows)
    assert p.read_bytes() == expected
    # the index equals one built by scanning, byte for byte
    written_idx = T.lineidx_path(p).read_bytes()
    T.build_lineidx(p, tmp_path / "scan.lineidx")
    assert written_idx == (tmp_path / "scan.lineidx").read_bytes()
    t = T.TSVFile(p)
    assert len(t) == 200
    for i in rng.permutation(200)[:50]:
        assert t[int(i)] == rows[i]
        assert t.key(int(i)) == rows[i][0]
        assert t.get(rows[i][0]) == rows[i]
    assert list(t) == rows
    assert t.keys() == [r[0] for r in rows]
    assert t[-1] == rows[-1]
    assert "key7" in t and "nope" not in t
    with pytest.raises(KeyError, match="nope"):
        t.get("nope")
    with pytest.raises(IndexError):
        t[200]


def test_empty_file_roundtrip(tmp_path: Path) -> None:
    p = T.write_tsv(tmp_path / "e.tsv", [])
    assert p.read_bytes() == b"" and T.lineidx_path(p).read_bytes() == b""
    assert len(T.TSVFile(p)) == 0


def test_long_key_and_row_without_tab(tmp_path: Path) -> None:
    rows = [["k" * 10000, "v"], ["solo"]]
    p = T.write_tsv(tmp_path / "x.tsv", rows)
    t = T.TSVFile(p)
    assert t.key(0) == "k" * 10000 and t.key(1) == "solo"


def test_lineidx_8b(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = _rows(30, rng)
    p = T.write_tsv(tmp_path / "x.tsv", rows)
    offsets = T.read_lineidx(T.lineidx_path(p))
    T.lineidx_path(p).unlink()
    offsets.astype("<i8").tofile(T.lineidx8b_path(p))
    t = T.TSVFile(p)
    assert [t[i] for i in range(30)] == rows


def test_missing_index(tmp_path: Path, rng: np.random.Generator) -> None:
    p = tmp_path / "x.tsv"
    p.write_text("a\t1\nb\t2\n")
    with pytest.raises(FormatError, match="vinvl tsv index"):
        T.TSVFile(p)
    t = T.TSVFile(p, build_index=True)
    assert t.get("b") == ["b", "2"] and not T.lineidx_path(p).exists()
    T.TSVFile(p, write_index=True)
    assert T.lineidx_path(p).read_text() == "0\n4\n"


def test_writer_abort_keeps_existing(tmp_path: Path) -> None:
    p = T.write_tsv(tmp_path / "x.tsv", [["old", "1"]])
    before = (p.read_bytes(), T.lineidx_path(p).read_bytes())
    with pytest.raises(RuntimeError):
        with T.TSVWriter(p) as w:
            w.write(["new", "2"])
            raise RuntimeError("boom")
    assert (p.read_bytes(), T.lineidx_path(p).read_bytes()) == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.lineidx", "x.tsv"]


def test_writer_refuses_tab_and_newline(tmp_path: Path) -> None:
    with T.TSVWriter(tmp_path / "x.tsv") as w:
        with pytest.raises(ValueError, match="TAB or newline"):
            w.write(["a\tb"])
        with pytest.raises(ValueError, match="TAB or newline"):
            w.write(["a\nb"])
        with pytest.raises(ValueError, match="newline"):
            w.write_line(b"a\nb\n")
        w.write(["ok"])
    assert (tmp_path / "x.tsv").read_bytes() == b"ok\n"


def test_writer_column_count(tmp_path: Path) -> None:
    with T.TSVWriter(tmp_path / "x.tsv", columns=2) as w:
        with pytest.raises(ValueError, match="expected 2"):
            w.write(["a"])


def test_merge(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = _rows(100, rng)
    shards = [T.write_tsv(tmp_path / f"s{i}.tsv", rows[a:b]) for i, (a, b) in enumerate([(0, 33), (33, 33), (33, 100)])]
    out = T.merge_tsv(shards, tmp_path / "m" / "all.tsv")
    single = T.write_tsv(tmp_path / "single.tsv", rows)
    assert out.read_bytes() == single.read_bytes()
    assert T.lineidx_path(out).read_bytes() == T.lineidx_path(single).read_bytes()
    with pytest.raises(Exception, match="itself"):
        T.merge_tsv([shards[0]], shards[0])


def test_merge_refuses_stale_shard(tmp_path: Path) -> None:
    a = T.write_tsv(tmp_path / "a.tsv", [["x", "1"], ["y", "2"]])
    T.lineidx_path(a).write_text("0\n4\n8\n")
    with pytest.raises(FormatError, match="stale"):
        T.merge_tsv([a], tmp_path / "m.tsv")
    assert not (tmp_path / "m.tsv").exists()


def _read_in_child(t: T.TSVFile, i: int) -> list[str]:
    return t[i]


def test_safe_in_workers(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = _rows(40, rng)
    t = T.TSVFile(T.write_tsv(tmp_path / "x.tsv", rows))
    assert t[0] == rows[0]  # the parent has opened its handle
    clone = pickle.loads(pickle.dumps(t))
    assert clone._fd is None and clone[5] == rows[5]
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        got = pool.starmap(_read_in_child, [(t, i) for i in range(40)])
    assert got == rows
    with ctx.Pool(1) as pool:  # a forked child re-opens instead of sharing the parent's offset
        assert pool.apply(os.getpid) != os.getpid()


def test_key_index(tmp_path: Path) -> None:
    p = T.write_tsv(tmp_path / "x.tsv", [["a", "1"], ["b", "2"]])
    T.write_key_index(tmp_path / "imageid2idx.json", [("b", 1), ("a", 0)])
    import json

    assert (tmp_path / "imageid2idx.json").read_text() == json.dumps({"b": 1, "a": 0})
    t = T.TSVFile(p, key_index=T.read_key_index(tmp_path / "imageid2idx.json"))
    assert t.get("b") == ["b", "2"]
    with pytest.raises(FormatError, match="row 5"):
        T.TSVFile(p, key_index={"z": 5})
    (tmp_path / "bad.json").write_text('{"a": -1}')
    with pytest.raises(FormatError, match=r"bad.json \(key 'a'\)"):
        T.read_key_index(tmp_path / "bad.json")


def test_chunked(tmp_path: Path) -> None:
    for c, keys in [("0", ["a", "b"]), ("1", ["c", "a"]), ("empty", [])]:
        d = tmp_path / c
        T.write_tsv(d / "features.tsv", [[k, c] for k in keys])
        T.write_key_index(d / "imageid2idx.json", [(k, i) for i, k in enumerate(keys)])
    (tmp_path / "notachunk").mkdir()
    ds = T.ChunkedTSV(tmp_path)
    assert len(ds) == 4 and list(ds.chunks) == ["0", "1", "empty"]
    assert ds.get("c") == ["c", "1"]
    assert ds.get("a", chunk="1") == ["a", "1"]
    with pytest.raises(KeyError, match="several chunks"):
        ds.get("a")
    with pytest.raises(KeyError, match="no row"):
        ds.get("zz")
    assert [r for _, r in ds] == [["a", "0"], ["b", "0"], ["c", "1"], ["a", "1"]]
    with pytest.raises(FormatError, match="no chunk folder"):
        T.ChunkedTSV(tmp_path / "notachunk")


# -- bad input ---------------------------------------------------------------------
def test_truncated_last_row(tmp_path: Path) -> None:
    p = tmp_path / "x.tsv"
    p.write_bytes(b"a\t1\nb\t2")
    with pytest.raises(FormatError, match=r"x.tsv:2: last row is truncated"):
        T.build_lineidx(p)
    (tmp_path / "x.lineidx").write_text("0\n4\n")
    with pytest.raises(FormatError, match=r"x.tsv:2: last row is truncated"):
        T.TSVFile(p)


def test_wrong_column_count(tmp_path: Path) -> None:
    p = T.write_tsv(tmp_path / "x.tsv", [["a", "1"], ["b", "2", "3"]])
    t = T.TSVFile(p, columns=2)
    assert t[0] == ["a", "1"]
    with pytest.raises(FormatError, match=r"x.tsv:2: expected 2 columns, found 3"):
        t[1]
    with pytest.raises(FormatError, match=r"x.tsv:2: expected 2 columns"):
        list(T.iter_tsv(p, columns=2))


@pytest.mark.parametrize("case", ["short", "truncated", "shifted", "past_end", "extra_rows"])
def test_stale_index(tmp_path: Path, case: str) -> None:
    p = T.write_tsv(tmp_path / "x.tsv", [["a", "1"], ["bb", "22"], ["c", "3"]])  # offsets 0 4 10
    idx = T.lineidx_path(p)
    if case == "short":  # index lost its last line (or rows were appended): caught on opening
        idx.write_text("0\n4\n")
        with pytest.raises(FormatError, match=r"x.tsv:2: index x.lineidx has 2 rows but the file goes on after the last one: "
                                              r"stale index \(rebuild it with `vinvl tsv index"):
            T.TSVFile(p)
    elif case == "truncated":
        idx.write_bytes(b"0\n4\n1")
        with pytest.raises(FormatError, match=r"x.lineidx:3: last line is truncated"):
            T.TSVFile(p)
    elif case == "shifted":  # the file was rewritten with different row lengths
        idx.write_text("0\n5\n10\n")
        with pytest.raises(FormatError, match="stale index|does not match"):
            t = T.TSVFile(p)
            [t[i] for i in range(len(t))]
    elif case == "past_end":
        idx.write_text("0\n4\n99\n")
        with pytest.raises(FormatError, match="past the end"):
            T.TSVFile(p)
    else:
        idx.write_text("0\n4\n10\n12\n")
        with pytest.raises(FormatError, match="stale"):
            T.TSVFile(p)


def test_duplicate_key(tmp_path: Path) -> None:
    p = T.write_tsv(tmp_path / "x.tsv", [["a", "1"], ["b", "2"], ["a", "3"]])
    t = T.TSVFile(p)
    with pytest.raises(FormatError, match=r"x.tsv:3 \(key 'a'\): duplicate key \(first at line 1\)"):
        t.get("b")


def test_non_utf8(tmp_path: Path) -> None:
    p = tmp_path / "x.tsv"
    p.write_bytes(b"a\t1\nb\t\xff\xfe\n")
    t = T.TSVFile(p, build_index=True)
    assert t[0] == ["a", "1"]
    with pytest.raises(FormatError, match=r"x.tsv:2: invalid UTF-8"):
        t[1]
    assert t.fields_bytes(1) == [b"b", b"\xff\xfe"]


def test_check_reports_every_problem(tmp_path: Path) -> None:
    p = tmp_path / "x.tsv"
    p.write_bytes(b"a\t1\nb\t2\t3\nc\t\xff\na\t4\nd\t5\ne")
    rows, problems = T.check_tsv(p)
    assert rows == 6
    assert [(e.line, e.reason.split(" (")[0]) for e in problems] == [
        (2, "expected 2 columns, found 3"),
        (3, "invalid UTF-8 at byte 2 of the row"),
        (4, "duplicate key"),
        (6, "last row is truncated"),
        (6, "expected 2 columns, found 1"),
    ]


def test_check_index_and_empty(tmp_path: Path) -> None:
    p = T.write_tsv(tmp_path / "x.tsv", [["a", "1"], ["b", "2"]])
    assert T.check_tsv(p) == (2, [])
    T.lineidx_path(p).write_text("0\n3\n")
    (_, problems) = T.check_tsv(p)
    assert len(problems) == 1 and "disagrees" in str(problems[0]) and problems[0].line == 2
    e = tmp_path / "e.tsv"
    e.write_bytes(b"")
    assert T.check_tsv(e) == (0, [])  # no rows is a valid file: a clean run's errors.tsv
    T.lineidx_path(e).write_text("0\n")
    assert "stale index" in str(T.check_tsv(e)[1][0])
