"""TSV + .lineidx store of the VinVL/Oscar ecosystem: random access, streaming writes, merging.

This module knows nothing of what the columns mean (see :mod:`vinvl.features`).

Format (../shared/spec/formats.md): one row per ``\\n``-terminated line, TAB-separated, no
quoting; the index ``splitext(path)[0] + '.lineidx'`` holds one decimal byte offset per
row; ``.lineidx.8b`` holds the same offsets as little-endian int64.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .atomic import (atomic_write, atomic_write_bytes, commit, make_folders, naming, remove_stale_temporaries,
                     temporary_name)
from .errors import FormatError, VinvlError

PathLike = Union[str, os.PathLike]
Field = Union[str, bytes]

_KEY_PROBE = 4096  # bytes read to find a row's key without reading the whole row
_SCAN_CHUNK = 16 << 20


def lineidx_path(tsv_path: PathLike) -> Path:
    """The ``.lineidx`` path of a TSV: ``features.tsv`` -> ``features.lineidx``."""
    return Path(os.path.splitext(os.fspath(tsv_path))[0] + ".lineidx")


def lineidx8b_path(tsv_path: PathLike) -> Path:
    """The binary ``.lineidx.8b`` path of a TSV."""
    return Path(os.path.splitext(os.fspath(tsv_path))[0] + ".lineidx.8b")


# Every temporary of this module gets its final name through this one name, vinvl.atomic's durable commit, so
# that a run can be stopped between complete temporaries and their final names (tests/test_reliability_files.py
# kills a merge there).
_replace = commit


def _clean_stale(*targets: Path) -> None:
    """Remove the temporaries of ``targets`` that killed runs left (see :func:`vinvl.atomic.remove_stale_temporaries`)."""
    for folder in dict.fromkeys(t.parent for t in targets):
        remove_stale_temporaries(folder, [t.name for t in targets if t.parent == folder])


def scan_offsets(tsv_path: PathLike) -> np.ndarray:
    """Offsets of every row, found by scanning the file (the ground truth for an index)."""
    path = Path(tsv_path)
    if not path.is_file():
        raise FormatError("no such file", path)
    starts = [np.zeros(1, dtype=np.int64)]
    pos = 0
    last = b"\n"
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(_SCAN_CHUNK)
                if not chunk:
                    break
                nl = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10).astype(np.int64)
                starts.append(nl + (pos + 1))
                pos += len(chunk)
                last = chunk[-1:]
    except OSError as e:
        raise naming(e, path) from e
    offsets = np.concatenate(starts)
    if pos == 0:
        return np.zeros(0, dtype=np.int64)
    if last != b"\n":
        raise FormatError(
            "last row is truncated (no newline at end of file)", path, line=len(offsets)
        )
    return offsets[:-1]


def _write_lineidx_text(offsets: np.ndarray, out: Path) -> None:
    _clean_stale(out)
    text = ("\n".join(map(str, offsets.tolist())) + "\n").encode("ascii") if len(offsets) else b""
    try:
        atomic_write_bytes(out, text)
    except OSError as e:  # a full disk: name the index, not its temporary
        raise naming(e, out) from e


def build_lineidx(tsv_path: PathLike, out: Optional[PathLike] = None) -> Path:
    """Scan a TSV and write its ``.lineidx`` atomically; returns the index path."""
    offsets = scan_offsets(tsv_path)
    target = Path(out) if out is not None else lineidx_path(tsv_path)
    _write_lineidx_text(offsets, target)
    return target


def read_lineidx(path: PathLike) -> np.ndarray:
    """Read a text ``.lineidx`` (or a ``.lineidx.8b`` by its suffix) into int64 offsets."""
    path = Path(path)
    if path.name.endswith(".8b"):
        raw = path.read_bytes()
        if len(raw) % 8:
            raise FormatError(f"size {len(raw)} is not a multiple of 8 bytes", path)
        return np.frombuffer(raw, dtype="<i8").astype(np.int64)
    raw = path.read_bytes()
    if not raw:
        return np.zeros(0, dtype=np.int64)
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    else:
        raise FormatError("last line is truncated (no newline)", path, line=len(lines))
    for i, ln in enumerate(lines):
        if not ln.isdigit():
            raise FormatError(f"not a byte offset: {ln[:40]!r}", path, line=i + 1)
    return np.array([int(x) for x in lines], dtype=np.int64)


class TSVFile:
    """Random access to a TSV by row and by key (first column); safe to share with DataLoader workers.

    The file is opened lazily per process, so a pickled or forked copy re-opens its own handle.
    Every row read is checked against the index (it must span exactly to the next offset and
    end with a newline), so a stale or truncated ``.lineidx`` is reported, never silently used.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        build_index: bool = False,
        write_index: bool = False,
        key_index: Optional[Mapping[str, int]] = None,
        columns: Optional[int] = None,
    ) -> None:
        """Open ``path``; a missing index is an error unless ``build_index`` (``write_index`` saves it)."""
        self.path = Path(path)
        self.columns = columns
        if not self.path.is_file():
            raise FormatError("no such file", self.path)
        self.size = self.path.stat().st_size
        self._offsets = self._load_offsets(build_index, write_index)
        self._ends = np.append(self._offsets[1:], self.size) if len(self._offsets) else self._offsets
        self._key_to_row: Optional[dict[str, int]] = (
            None if key_index is None else {str(k): int(v) for k, v in key_index.items()}
        )
        if self._key_to_row is not None:
            for k, v in self._key_to_row.items():
                if not 0 <= v < len(self):
                    raise FormatError(f"key index points at row {v}, the file has {len(self)} rows", self.path, key=k)
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None

    def _load_offsets(self, build: bool, write: bool) -> np.ndarray:
        text, binary = lineidx_path(self.path), lineidx8b_path(self.path)
        if text.is_file():
            idx_path, offsets = text, read_lineidx(text)
        elif binary.is_file():
            idx_path, offsets = binary, read_lineidx(binary)
        elif build or write:
            offsets = scan_offsets(self.path)
            if write:
                _write_lineidx_text(offsets, text)
            return offsets
        else:
            raise FormatError(
                f"no index {text.name}: build it with `vinvl tsv index {self.path}`", self.path
            )
        self._validate_offsets(offsets, idx_path)
        return offsets

    def _validate_offsets(self, offsets: np.ndarray, idx_path: Path) -> None:
        """Cheap checks (the first and last rows against the file's ends) that the index is this file's."""

        def stale(why: str, line: Optional[int] = None) -> FormatError:
            return FormatError(f"index {idx_path.name} {why}: stale index (rebuild it with `vinvl tsv index "
                               f"{self.path}`)", self.path, line=line)

        if len(offsets) == 0:
            if self.size:
                raise stale("is empty but the file is not")
            return
        if offsets[0] != 0:
            raise stale("does not start at offset 0")
        bad = np.flatnonzero(np.diff(offsets) <= 0)
        if len(bad):
            raise stale("has offsets that do not increase", line=int(bad[0]) + 2)
        if offsets[-1] >= self.size:
            raise stale(f"points past the end of the file ({int(offsets[-1])} >= {self.size})", line=len(offsets))
        with open(self.path, "rb") as f:
            f.seek(self.size - 1)
            if f.read(1) != b"\n":
                raise FormatError("last row is truncated (no newline at end of file)", self.path, line=len(offsets))
            if offsets[-1] > 0:
                f.seek(int(offsets[-1]) - 1)
                if f.read(1) != b"\n":
                    raise stale("does not match the file", line=len(offsets))
            # The last indexed row must be the file's last line: rows appended after the index was
            # written would otherwise be invisible to len(), merges and key lookups.
            pos = int(offsets[-1])
            f.seek(pos)
            while True:
                chunk = f.read(1 << 16)
                cut = chunk.find(b"\n")
                if cut >= 0:
                    pos += cut
                    break
                pos += len(chunk)
            if pos != self.size - 1:
                raise stale(f"has {len(offsets)} rows but the file goes on after the last one", line=len(offsets))

    # -- process-local handle -------------------------------------------------
    def _handle(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = pid
        return self._fd

    def close(self) -> None:
        """Close this process's file handle (it is re-opened on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "TSVFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rows -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def offsets(self) -> np.ndarray:
        """Byte offset of every row (read-only view)."""
        view = self._offsets.view()
        view.flags.writeable = False
        return view

    def _check_row(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: row {i} out of range ({n} rows)")
        return i % n if n else i

    def raw_row(self, i: int) -> bytes:
        """Row ``i`` (0-based) as read, newline included: one ``pread``, checked against the index."""
        i = self._check_row(i)
        start, end = int(self._offsets[i]), int(self._ends[i])
        data = os.pread(self._handle(), end - start, start)
        if len(data) != end - start or data.find(b"\n") != len(data) - 1:
            raise FormatError(
                "row does not match the index (stale or truncated .lineidx, or a torn write)",
                self.path,
                line=i + 1,
            )
        return data

    def row_bytes(self, i: int) -> bytes:
        """Row ``i`` (0-based) as raw bytes without its newline."""
        return self.raw_row(i)[:-1]

    def split_row(self, data: bytes, i: int) -> list[bytes]:
        """Split a row's bytes into fields, checking the column count if one is expected."""
        fields = data.split(b"\t")
        if self.columns is not None and len(fields) != self.columns:
            raise FormatError(f"expected {self.columns} columns, found {len(fields)}", self.path, line=i + 1)
        return fields

    def fields_bytes(self, i: int) -> list[bytes]:
        """Row ``i`` as a list of raw byte fields."""
        i = self._check_row(i)
        return self.split_row(self.row_bytes(i), i)

    def __getitem__(self, i: int) -> list[str]:
        i = self._check_row(i)
        return _decode_fields(self.fields_bytes(i), self.path, i + 1)

    def key(self, i: int) -> str:
        """The key (first column) of row ``i``, reading only the row's head when possible."""
        i = self._check_row(i)
        start, end = int(self._offsets[i]), int(self._ends[i])
        head = os.pread(self._handle(), min(_KEY_PROBE, end - start), start)
        # The only newline a row holds is its last byte: anything else means the index is not this file's.
        if head.find(b"\n") != (end - start - 1 if len(head) == end - start else -1):
            raise FormatError("row does not match the index (stale or truncated .lineidx, or a torn write)",
                              self.path, line=i + 1)
        cut = head.find(b"\t")
        if cut < 0:
            cut = head.find(b"\n")
            if cut < 0:
                head = self.row_bytes(i)
                cut = head.find(b"\t")
                cut = len(head) if cut < 0 else cut
        return _decode(head[:cut], self.path, i + 1)

    def keys(self) -> list[str]:
        """Every key in row order."""
        return [self.key(i) for i in range(len(self))]

    def _key_map(self) -> dict[str, int]:
        if self._key_to_row is None:
            mapping: dict[str, int] = {}
            for i in range(len(self)):
                k = self.key(i)
                if k in mapping:
                    raise FormatError(f"duplicate key (first at line {mapping[k] + 1})", self.path, line=i + 1, key=k)
                mapping[k] = i
            self._key_to_row = mapping
        return self._key_to_row

    def index_of(self, key: str) -> int:
        """Row index of ``key``; a ``KeyError`` naming the file if it is absent."""
        try:
            return self._key_map()[key]
        except KeyError:
            raise KeyError(f"{self.path}: no row with key {key!r}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._key_map()

    def get(self, key: str) -> list[str]:
        """The fields of the row whose first column is ``key``."""
        return self[self.index_of(key)]

    def iter_bytes(self) -> Iterator[list[bytes]]:
        """Every row in order as byte fields, read sequentially (no random access)."""
        with open(self.path, "rb", buffering=1 << 20) as f:
            for i in range(len(self)):
                line = f.readline()
                if not line.endswith(b"\n") or f.tell() != int(self._ends[i]):
                    raise FormatError("row does not match the index", self.path, line=i + 1)
                yield self.split_row(line[:-1], i)

    def __iter__(self) -> Iterator[list[str]]:
        for i, fields in enumerate(self.iter_bytes()):
            yield _decode_fields(fields, self.path, i + 1)


def _decode(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"invalid UTF-8 at byte {e.start} of the row", path, line=line) from None


def _decode_fields(fields: list[bytes], path: Path, line: int) -> list[str]:
    try:
        return [f.decode("utf-8") for f in fields]
    except UnicodeDecodeError:
        return [_decode(f, path, line) for f in fields]


def iter_tsv(path: PathLike, columns: Optional[int] = None) -> Iterator[tuple[int, list[bytes]]]:
    """Stream ``(line_number, byte_fields)`` from a TSV with no index, checking every line ends."""
    path = Path(path)
    if not path.is_file():
        raise FormatError("no such file", path)
    with open(path, "rb", buffering=1 << 20) as f:
        for n, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                raise FormatError("last row is truncated (no newline at end of file)", path, line=n)
            fields = line[:-1].split(b"\t")
            if columns is not None and len(fields) != columns:
                raise FormatError(f"expected {columns} columns, found {len(fields)}", path, line=n)
            yield n, fields


class TSVWriter:
    """Streaming TSV writer: rows go to a temporary file, and ``.tsv`` + ``.lineidx`` appear on close.

    On an exception inside ``with`` the temporaries are removed and any existing output is
    left untouched. Both are committed with :func:`vinvl.atomic.commit` (fsynced, renamed, their
    folder fsynced), the index first, so a reader, or a crash, that sees the new TSV also sees its index.
    """

    def __init__(self, path: PathLike, *, columns: Optional[int] = None) -> None:
        """Start writing ``path`` (its folder is created); ``columns`` enforces a column count."""
        self.path = Path(path)
        self.columns = columns
        self.index_path = lineidx_path(self.path)
        self._tmp = temporary_name(self.path)
        self._tmp_idx = temporary_name(self.index_path)
        self._pos = 0
        self.rows = 0
        self._closed = False
        try:
            make_folders(self.path.parent)
            _clean_stale(self.path, self.index_path)
            self._f = open(self._tmp, "wb", buffering=1 << 20)
            try:
                self._idx = open(self._tmp_idx, "wb", buffering=1 << 16)
            except BaseException:
                self._f.close()
                self._tmp.unlink(missing_ok=True)
                raise
        except OSError as e:
            raise naming(e, self.path) from e

    def write(self, fields: Sequence[Field]) -> int:
        """Append one row (str fields are UTF-8 encoded); returns its 0-based row index."""
        if self.columns is not None and len(fields) != self.columns:
            raise ValueError(f"{self.path}: row {self.rows + 1} has {len(fields)} fields, expected {self.columns}")
        parts = [f.encode("utf-8") if isinstance(f, str) else bytes(f) for f in fields]
        for p in parts:
            if b"\t" in p or b"\n" in p:
                raise ValueError(f"{self.path}: row {self.rows + 1}: a field contains a TAB or newline")
        return self._append(b"\t".join(parts) + b"\n")

    def _append(self, line: bytes) -> int:
        try:
            self._f.write(line)
            self._idx.write(b"%d\n" % self._pos)
        except OSError as e:  # a full disk: name the file being written, not its temporary
            raise naming(e, self.path) from e
        self._pos += len(line)
        self.rows += 1
        return self.rows - 1

    def write_line(self, line: bytes) -> int:
        """Append a pre-formatted row (must end with exactly one newline); returns its row index."""
        if not line.endswith(b"\n") or line.find(b"\n") != len(line) - 1:
            raise ValueError(f"{self.path}: row {self.rows + 1} must be one newline-terminated line")
        return self._append(line)

    def close(self) -> Path:
        """Commit both files into place, the index first; returns the TSV path."""
        if self._closed:
            return self.path
        try:
            for f in (self._idx, self._f):
                f.close()
            _replace(self._tmp_idx, self.index_path)
            _replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise naming(e, self.path) from e
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop what was written; existing files at the target are not touched."""
        for f in (self._f, self._idx):
            try:
                f.close()
            except Exception:
                pass
        self._tmp.unlink(missing_ok=True)
        self._tmp_idx.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> "TSVWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_tsv(path: PathLike, rows: Iterable[Sequence[Field]], columns: Optional[int] = None) -> Path:
    """Write all ``rows`` to ``path`` with its ``.lineidx``, atomically."""
    with TSVWriter(path, columns=columns) as w:
        for row in rows:
            w.write(row)
    return Path(path)


class _KeyScan:
    """The keys (first fields) of the rows of a byte stream fed chunk by chunk, found with the newline
    offsets that a merge finds anyway; a key cut by a chunk's end is carried to the next chunk."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self._pending: Optional[bytearray] = None  # the start of a key whose end is in a later chunk
        self._at_row_start = True

    def feed(self, chunk: bytes, buf: np.ndarray, newlines: np.ndarray) -> None:
        ends = np.flatnonzero((buf == 9) | (buf == 10))  # a key ends at its row's first TAB or newline
        if self._pending is not None:
            if len(ends):
                self.keys.append(bytes(self._pending + chunk[: int(ends[0])]))
                self._pending = None
            else:
                self._pending += chunk
        starts = newlines + 1
        starts = starts[starts < len(chunk)]
        if self._at_row_start and len(chunk):
            starts = np.concatenate([np.zeros(1, np.int64), starts])
        at = np.searchsorted(ends, starts)
        whole = at < len(ends)
        self.keys.extend(chunk[a:b] for a, b in zip(starts[whole].tolist(), ends[at[whole]].tolist()))
        if not whole.all():  # only the chunk's last row can run past it
            self._pending = bytearray(chunk[int(starts[~whole][0]):])
        if len(chunk):
            self._at_row_start = chunk[-1:] == b"\n"


def _copy_rows(src_path: Path, dst, out: Path, keys: Optional[_KeyScan] = None) -> tuple[np.ndarray, int]:
    """Append the file ``src_path`` to ``dst`` (the temporary of ``out``); returns the offsets of its rows, found
    while copying, and its size; ``keys`` collects the rows' keys on the way."""
    starts = [np.zeros(1, dtype=np.int64)]
    pos = 0
    last = b"\n"
    with open(src_path, "rb") as src:
        while True:
            try:
                chunk = src.read(_SCAN_CHUNK)
            except OSError as e:
                raise naming(e, src_path) from e
            if not chunk:
                break
            try:
                dst.write(chunk)
            except OSError as e:  # a full disk: name the merged file, not its temporary
                raise naming(e, out) from e
            buf = np.frombuffer(chunk, dtype=np.uint8)
            nl = np.flatnonzero(buf == 10).astype(np.int64)
            if keys is not None:
                keys.feed(chunk, buf, nl)
            starts.append(nl + (pos + 1))
            pos += len(chunk)
            last = chunk[-1:]
    if last != b"\n":
        raise FormatError("last row is truncated (no newline at end of file)", src_path)
    return (np.concatenate(starts)[:-1] if pos else np.zeros(0, dtype=np.int64)), pos


def _check_unique(scan: _KeyScan, path: Path, seen: dict[bytes, int], firsts: list[int], paths: Sequence[Path]) -> None:
    """Add the keys of the shard ``path`` to ``seen`` (key -> row of the merged file; ``firsts`` holds each shard's
    first row, this one's last); a key seen before is an error naming both places."""
    keys, base = scan.keys, firsts[-1]
    mine = dict(zip(keys, range(base, base + len(keys))))
    if len(mine) == len(keys) and seen.keys().isdisjoint(mine):  # the common case, at C speed
        seen.update(mine)
        keys.clear()
        return
    for line, key in enumerate(keys, start=1):  # a key twice: the first one, with both of its places
        first = seen.setdefault(key, base + line - 1)
        if first != base + line - 1:
            shard = bisect.bisect_right(firsts, first) - 1
            where = f"line {first - base + 1}" if first >= base else f"{paths[shard]}:{first - firsts[shard] + 1}"
            raise FormatError(f"duplicate key (first at {where}): the merged file would hold it twice",
                              path, line=line, key=key.decode("utf-8", "backslashreplace"))
    raise AssertionError("a key was counted twice but not found")


def merge_tsv(shards: Sequence[PathLike], out: PathLike, *, unique_keys: bool = True) -> Path:
    """Concatenate TSV shards into ``out`` with its ``.lineidx``, in one read of each shard: rows are copied, not
    parsed, and their offsets found while copying; a shard whose stored index disagrees is refused (stale), and so
    is a key found twice (unless ``unique_keys`` is False: files keyed by image with several rows, e.g. a corpus)."""
    out = Path(out)
    paths = [Path(s) for s in shards]
    for p in paths:
        if not p.is_file():
            raise FormatError("no such file", p)
        if p.resolve() == out.resolve():
            raise VinvlError(f"{out}: cannot merge a shard into itself")
        try:
            with open(p, "rb"):  # unreadable inputs are named before anything is written
                pass
        except OSError as e:
            raise FormatError(f"cannot read it ({e.strerror or e})", p) from None
    stored: dict[Path, np.ndarray] = {}
    for p in paths:  # the cheap checks of an index (its ends against the file's) before anything is written
        if lineidx_path(p).is_file() or lineidx8b_path(p).is_file():
            with TSVFile(p) as t:
                stored[p] = np.array(t.offsets)
    idx_out = lineidx_path(out)
    make_folders(out.parent)
    _clean_stale(out, idx_out)
    tmp, tmp_idx = temporary_name(out), temporary_name(idx_out)
    seen: dict[bytes, int] = {}
    firsts: list[int] = []  # the merged file's row of each shard's first row
    rows = 0
    try:
        base = 0
        with open(tmp, "wb") as dst, open(tmp_idx, "wb") as idx:
            for p in paths:
                size = p.stat().st_size
                scan = _KeyScan() if unique_keys else None
                offsets, copied = _copy_rows(p, dst, out, scan)
                if copied != size:
                    raise VinvlError(f"{p}: changed while it was being merged")
                want = stored.get(p)
                if want is not None and not np.array_equal(want, offsets):
                    raise FormatError(f"its index has {len(want)} rows, the file {len(offsets)}"
                                      f"{'' if len(want) != len(offsets) else ' at other offsets'}: stale index "
                                      f"(rebuild it with `vinvl tsv index {p}`)", p)
                if scan is not None:
                    firsts.append(rows)
                    _check_unique(scan, p, seen, firsts, paths)
                rows += len(offsets)
                if len(offsets):
                    idx.write(("\n".join(map(str, (offsets + base).tolist())) + "\n").encode("ascii"))
                base += copied
        _replace(tmp_idx, idx_out)  # the index first: a reader (or a crash) never sees the new file with an old index
        _replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
        if e.filename is None or os.fspath(e.filename) in (os.fspath(tmp), os.fspath(tmp_idx)):
            raise naming(e, out) from e  # the merged file's name, not its temporary's
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
        raise
    return out


def read_key_index(path: PathLike) -> dict[str, int]:
    """Read an ``imageid2idx.json`` (image id -> row index); values must be non-negative integers."""
    path = Path(path)
    if not path.is_file():
        raise FormatError("no such file", path)
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"not valid JSON: {e}", path) from None
    if not isinstance(data, dict):
        raise FormatError("expected a JSON object mapping image id -> row index", path)
    out: dict[str, int] = {}
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise FormatError(f"row index must be a non-negative integer, got {v!r}", path, key=k)
        out[str(k)] = v
    return out


def write_key_index(path: PathLike, mapping: Iterable[tuple[str, int]]) -> Path:
    """Write ``imageid2idx.json`` atomically and streaming, byte-identical to ``json.dump(dict)``."""
    path = Path(path)
    _clean_stale(path)
    try:
        return atomic_write(path, lambda tmp: _stream_key_index(tmp, mapping))
    except OSError as e:  # a full disk: name the index, not its temporary
        raise naming(e, path) from e


def _stream_key_index(tmp: Path, mapping: Iterable[tuple[str, int]]) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("{")
        first = True
        for k, v in mapping:
            f.write(("" if first else ", ") + json.dumps(str(k)) + ": " + str(int(v)))
            first = False
        f.write("}")


class ChunkedTSV:
    """A dataset split in chunk folders (``<chunk>/features.tsv`` + ``<chunk>/imageid2idx.json``) as one object."""

    def __init__(self, root: PathLike, filename: str = "features.tsv", index_name: str = "imageid2idx.json") -> None:
        """Open every chunk folder under ``root`` that holds ``filename`` (sorted by name)."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise FormatError("not a folder", self.root)
        self.chunks: dict[str, TSVFile] = {}
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            tsv = d / filename
            if not tsv.is_file():
                continue
            idx = d / index_name
            key_index = read_key_index(idx) if idx.is_file() else None
            self.chunks[d.name] = TSVFile(tsv, build_index=True, key_index=key_index)
        if not self.chunks:
            raise FormatError(f"no chunk folder with {filename}", self.root)
        self._where: Optional[dict[str, list[str]]] = None

    def __len__(self) -> int:
        return sum(len(t) for t in self.chunks.values())

    def _locations(self) -> dict[str, list[str]]:
        if self._where is None:
            where: dict[str, list[str]] = {}
            for name, t in self.chunks.items():
                for k in t._key_map():
                    where.setdefault(k, []).append(name)
            self._where = where
        return self._where

    def __contains__(self, key: object) -> bool:
        return key in self._locations()

    def locate(self, key: str, chunk: Optional[str] = None) -> tuple[str, int]:
        """``(chunk name, row)`` of ``key``; ``chunk`` disambiguates ids repeated across chunks."""
        if chunk is not None:
            if chunk not in self.chunks:
                raise KeyError(f"{self.root}: no chunk {chunk!r}")
            return chunk, self.chunks[chunk].index_of(key)
        names = self._locations().get(key)
        if not names:
            raise KeyError(f"{self.root}: no row with key {key!r} in any chunk")
        if len(names) > 1:
            raise KeyError(f"{self.root}: key {key!r} is in several chunks {names}; name the chunk")
        return names[0], self.chunks[names[0]].index_of(key)

    def get(self, key: str, chunk: Optional[str] = None) -> list[str]:
        """The fields of ``key``'s row."""
        name, row = self.locate(key, chunk)
        return self.chunks[name][row]

    def fields_bytes(self, key: str, chunk: Optional[str] = None) -> list[bytes]:
        """The raw byte fields of ``key``'s row."""
        name, row = self.locate(key, chunk)
        return self.chunks[name].fields_bytes(row)

    def __iter__(self) -> Iterator[tuple[str, list[str]]]:
        for name, t in self.chunks.items():
            for row in t:
                yield name, row


def check_tsv(
    path: PathLike,
    *,
    columns: Optional[int] = None,
    row_check: Optional[Callable[[list[bytes], int], None]] = None,
    unique_keys: bool = True,
) -> tuple[int, list[FormatError]]:
    """Scan a whole TSV once and return ``(rows, problems)``: every bad line, not just the first.

    Checks newline termination, NUL bytes, UTF-8, column count (``columns`` or the first row's),
    duplicate keys, the ``.lineidx`` against the scanned offsets, and ``row_check`` (which
    raises :class:`FormatError` for a bad row) on each row. A file without rows is valid (a clean
    run's ``errors.tsv``).
    """
    path = Path(path)
    if not path.is_file():
        return 0, [FormatError("no such file", path)]
    problems: list[FormatError] = []
    offsets: list[int] = []
    try:
        rows = _check_rows(path, columns, row_check, unique_keys, problems, offsets)
    except OSError as e:  # an unreadable file (or an I/O error mid-file) is one more problem, named
        problems.append(FormatError(f"cannot read it ({e.strerror or e})", path, line=len(offsets) or None))
        return len(offsets), problems
    _stored_index_problems(path, offsets, problems)
    return rows, problems


def _check_rows(path: Path, columns: Optional[int], row_check: Optional[Callable[[list[bytes], int], None]],
                unique_keys: bool, problems: list[FormatError], offsets: list[int]) -> int:
    keys: dict[bytes, int] = {}
    pos = 0
    n = 0
    with open(path, "rb", buffering=1 << 20) as f:
        for n, line in enumerate(f, start=1):
            offsets.append(pos)
            pos += len(line)
            if not line.endswith(b"\n"):
                problems.append(FormatError("last row is truncated (no newline at end of file)", path, line=n))
                line += b"\n"
            nul = line.find(b"\0")
            if nul >= 0:
                # No VinVL field holds a NUL: they are what a torn or preallocated write leaves behind.
                problems.append(FormatError(f"NUL byte at byte {nul} of the row (a torn write?)", path, line=n))
                continue
            fields = line[:-1].split(b"\t")
            try:
                line[:-1].decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(FormatError(f"invalid UTF-8 at byte {e.start} of the row", path, line=n))
                continue
            if columns is None:
                columns = len(fields)
            if len(fields) != columns:
                problems.append(FormatError(f"expected {columns} columns, found {len(fields)}", path, line=n))
                continue
            if unique_keys:
                first = keys.setdefault(fields[0], n)
                if first != n:
                    problems.append(
                        FormatError(f"duplicate key (first at line {first})", path, line=n, key=fields[0].decode())
                    )
            if row_check is not None:
                try:
                    row_check(fields, n)
                except FormatError as e:
                    problems.append(e)
    return n


def _stored_index_problems(path: Path, offsets: list[int], problems: list[FormatError]) -> None:
    """The stored ``.lineidx`` / ``.lineidx.8b`` of ``path`` against the row offsets found by scanning it."""
    for idx in (lineidx_path(path), lineidx8b_path(path)):
        if not idx.is_file():
            continue
        try:
            stored = read_lineidx(idx)
        except FormatError as e:
            problems.append(e)
            continue
        except OSError as e:
            problems.append(FormatError(f"cannot read it ({e.strerror or e})", idx))
            continue
        if len(stored) != len(offsets):
            problems.append(FormatError(f"{idx.name} has {len(stored)} rows, the file has {len(offsets)}: stale index", path))
        else:
            bad = np.flatnonzero(stored != np.asarray(offsets, dtype=np.int64))
            if len(bad):
                problems.append(
                    FormatError(f"{idx.name} disagrees with the file at {len(bad)} rows: stale index", path, line=int(bad[0]) + 1)
                )
