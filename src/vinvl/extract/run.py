"""The extraction run: deterministic batches, streamed resumable shards, fault-tolerant decoding, ranks.

The batches are planned before any work (:class:`BatchPlan`): consecutive inputs, or, for the
original's padded batches with ``DATALOADER.ASPECT_RATIO_GROUPING``, its aspect-ratio groups. A
*window* is the shortest run of consecutive plan batches whose images are a contiguous range of
inputs; rows are written in input order, so a window's end is where the files hold exactly the
rows of every batch done. Layout of a run in ``OUT``: while it works, each rank streams its rows into
``OUT/.vinvl-extract/shard-R-of-W/`` (ranks take contiguous runs of whole windows) and, at the end of
every window it completes (of each bucketing window in same-size batching), appends the files' end
offsets and the number of plan batches done to that shard's ``journal.tsv``. ``--resume`` cuts every
file back to the last journal line (a torn tail disappears) and goes on with the next window, so a
run killed at any moment and resumed writes the same bytes as a clean run. A finished rank writes
``DONE``; rank 0 waits for every ``DONE`` (files, not a collective: nothing can time out on a
long run), concatenates the shards into the final files, writes their indexes,
``imageid2idx.json`` and ``manifest.json``, and removes the work folder.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from ..atomic import NO_SPACE, UNWRITABLE, atomic_write_bytes, atomic_write_text, flush_to_disk, os_error_line
from ..detection import Detector
from ..detection.numerics import choose_device
from ..detection.preprocess import to_input_tensor
from ..errors import FaultError, VinvlError, single_spaced
from ..features import format_features_row, format_hw_row, format_label_row
from ..images import ImageLoadError
from ..registry import file_sha256
from ..textio import display_path
from ..tsv import lineidx_path, merge_tsv, write_key_index
from .plan import ExtractionJob, ExtractOptions
from .sources import ImageItem, first_input_difference, image_sizes, input_identities, load_image_item

# Optional outputs and their file names; errors.tsv, imageid2idx.json and manifest.json are always written.
OUTPUT_FILES = {"predictions": "predictions.tsv", "features": "features.tsv", "labels": "label.tsv", "hw": "hw.tsv"}
WORK_DIR = ".vinvl-extract"
SYNC_SECONDS = 5.0  # the shards and the journal go to disk at most this often (and at the end)
LOCK_FILE = ".vinvl-extract.lock"  # in the output folder; rank R > 0 locks LOCK_FILE.R


@dataclass
class ExtractStats:
    """What a run did (for this process; rank 0's figures cover the whole run)."""

    images: int
    boxes: int
    seconds: float
    failed: int = 0
    skipped_batches: int = 0
    out_dir: Optional[Path] = None
    finished: bool = True


class _Prepared(Dataset):
    """Decode + resize + normalise one input (runs in DataLoader workers)."""

    def __init__(self, items: Sequence[ImageItem], input_cfg: Any, exif_transpose: bool) -> None:
        self.items = list(items)
        self.input_cfg = input_cfg
        self.exif_transpose = exif_transpose
        self._tsv_cache: dict = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Optional[torch.Tensor], Optional[tuple[int, int]], Optional[str]]:
        try:
            img = load_image_item(self.items[i], self.exif_transpose, self._tsv_cache)
        except ImageLoadError as e:
            return i, None, None, str(e)
        return i, to_input_tensor(img, self.input_cfg), (img.height, img.width), None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tsv_cache"] = {}  # open files do not travel to workers
        return state


def _unbatched(sample: Any) -> Any:
    return sample


# -- the batch plan: which images run together, and where the journal may stand ------------------------------

def aspect_groups(sizes: Sequence[Optional[tuple[float, float]]]) -> list[int]:
    """The original's aspect-ratio group of each (height, width): 0 when h / w < 1, 1 when >= 1 (2: size unknown)."""
    # build.py's _quantize(ratios, [1]) is bisect_right([1], h / w). An image whose size cannot be read gets
    # a group of its own: it fails to decode anyway, and so never takes a readable image's batch partner.
    return [2 if s is None else bisect.bisect_right([1.0], s[0] / s[1]) for s in sizes]


def plan_batches(groups: Sequence[int], batch_size: int, segments: Optional[Sequence[Any]] = None) -> list[list[int]]:
    """The original's test batches: in each segment (a dataset: the original has one loader per dataset), each
    group's images in input order cut into batches of ``batch_size``, the batches ordered by their first image
    (GroupedBatchSampler over a SequentialSampler). One group: consecutive batches."""
    bs = max(1, batch_size)
    out: list[list[int]] = []
    start = 0
    while start < len(groups):
        end = start + 1
        while end < len(groups) and (segments is None or segments[end] == segments[start]):
            end += 1
        members: dict[int, list[int]] = {}
        for i in range(start, end):
            members.setdefault(groups[i], []).append(i)
        out += sorted((m[k:k + bs] for m in members.values() for k in range(0, len(m), bs)), key=lambda b: b[0])
        start = end
    return out


def plan_windows(batches: Sequence[Sequence[int]]) -> list[int]:
    """Where each window ends (exclusive, in plan batches): the shortest runs of consecutive batches whose images
    are a contiguous range of inputs (the batches: every input once, ordered by their first image)."""
    ends: list[int] = []
    lo, hi, count = 0, -1, 0
    for b, batch in enumerate(batches):
        if count == 0:
            lo = min(batch)  # ordered by first image: the smallest input not yet planned
        hi, count = max(hi, max(batch)), count + len(batch)
        if count == hi - lo + 1:  # distinct inputs >= lo filling [lo, hi]: the window is contiguous
            ends.append(b + 1)
            hi, count = -1, 0
    return ends


@dataclass(frozen=True)
class BatchPlan:
    """A run's batches (input indices, ordered by their first image), where its windows end, and how it was made."""

    batches: list[list[int]]
    window_ends: list[int]
    # "aspect_ratio" (the original's grouped padded batches), "consecutive" (padded, without grouping) or
    # "same_size" (consecutive batches whose images of equal resized size run together within bucketing windows).
    grouping: str

    def rank_range(self, rank: int, world_size: int) -> tuple[int, int]:
        """The plan batches ``[first, end)`` that ``rank`` of ``world_size`` processes: a contiguous run of whole windows."""
        n = len(self.window_ends)
        a, b = rank * n // world_size, (rank + 1) * n // world_size
        return (self.window_ends[a - 1] if a else 0), (self.window_ends[b - 1] if b else 0)

    def sha256(self) -> str:
        """A digest of the batches (a resumed run must batch exactly as the interrupted one)."""
        h = hashlib.sha256()
        for batch in self.batches:
            h.update((",".join(map(str, batch)) + "\n").encode())
        return h.hexdigest()


def batch_plan(items: Sequence[ImageItem], batch_size: int, batching: str, aspect_ratio_grouping: bool = False,
               exif_transpose: bool = False) -> BatchPlan:
    """The batches of a run over ``items`` (see the module doc); grouping reads the image sizes, before any model work."""
    bs = max(1, batch_size)
    if batching != "padded":
        # Same-size batching: consecutive batches, each its own window (bucketing windows group them at run time).
        batches = [list(range(i, min(i + bs, len(items)))) for i in range(0, len(items), bs)]
        return BatchPlan(batches, list(range(1, len(batches) + 1)), "same_size")
    grouped = aspect_ratio_grouping and bs > 1  # one image per batch: grouping changes nothing, no size is read
    groups = aspect_groups(image_sizes(items, exif_transpose)) if grouped else [0] * len(items)
    batches = plan_batches(groups, bs, [it.dataset for it in items])
    return BatchPlan(batches, plan_windows(batches), "aspect_ratio" if grouped else "consecutive")


class _OutputLock:
    """An exclusive lock on the output folder for this rank (``fcntl``, released when the process ends however it
    ends): a second run on the same ``-o`` fails at once, naming the holder's pid, instead of interleaving writes."""

    def __init__(self, out: Path, rank: int) -> None:
        self.path = out / (LOCK_FILE if rank == 0 else f"{LOCK_FILE}.{rank}")
        self.fd: Optional[int] = None

    def __enter__(self) -> "_OutputLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise VinvlError(f"{display_path(self.path.parent)}: another vinvl extract is writing here (pid {holder}); "
                             "wait for it to end, or use another -o") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock; the file stays (removing it would race a waiting run)
            self.fd = None


def _line(fields: Sequence[str]) -> bytes:
    line = "\t".join(fields) + "\n"
    # Keys are checked before the run (sources.check_keys) and the other fields are JSON or base64;
    # this guard keeps a future field from ever writing a row the TSV cannot hold.
    if line.count("\t") != len(fields) - 1 or line.find("\n") != len(line) - 1 or "\r" in line:
        raise ValueError(f"a row of {fields[0]!r} would contain a TAB, CR or newline inside a field")
    return line.encode("utf-8")


class _Shard:
    """One rank's streamed outputs and the journal of its completed batches (recorded at window ends)."""

    def __init__(self, folder: Path, names: Sequence[str], resume: bool) -> None:
        self.folder = folder
        self.names = list(names) + ["errors"]
        self.paths = {n: folder / (OUTPUT_FILES.get(n, "errors.tsv")) for n in self.names}
        self.journal_path = folder / "journal.tsv"
        folder.mkdir(parents=True, exist_ok=True)
        self.done_batches = 0
        self._synced_at = time.monotonic()
        self.counts = {"images": 0, "failed": 0, "boxes": 0}
        # Written but not yet journaled (inside a window): a resume cuts these rows and redoes their window.
        self._open_batches = 0
        self._open_counts = {"images": 0, "failed": 0, "boxes": 0}
        offsets = {n: 0 for n in self.names}
        if resume and self.journal_path.exists():
            entry, keep = self._last_consistent_entry()
            os.truncate(self.journal_path, keep)  # in place: a kill here leaves a journal that still resumes
            if entry is not None:
                self.done_batches = entry["batches"]
                self.counts = entry["counts"]
                offsets = entry["offsets"]
        else:
            with open(self.journal_path, "wb"):
                pass
        self.files = {}
        for n in self.names:
            p = self.paths[n]
            with open(p, "ab"):
                pass
            f = open(p, "r+b")
            f.truncate(offsets[n])  # cut anything written after the last completed batch
            f.seek(offsets[n])
            self.files[n] = f
        self.journal = open(self.journal_path, "ab")

    def _last_consistent_entry(self) -> tuple[Optional[dict[str, Any]], int]:
        """The newest journal entry that every shard file still holds in full, and the journal's length up
        to it. A torn last line is ignored; a file that is missing or shorter than an entry says (the work
        folder damaged from outside) sends the run back to an earlier entry, whose batches are redone."""
        raw = self.journal_path.read_bytes()
        lines = raw.split(b"\n")[:-1]  # a last line without its newline is torn: ignored
        sizes = {n: p.stat().st_size if p.is_file() else -1 for n, p in self.paths.items()}
        last: tuple[Optional[dict[str, Any]], int] = (None, 0)
        end = 0
        for ln in lines:
            end += len(ln) + 1
            try:
                entry = json.loads(ln)
                held = all(0 <= int(entry["offsets"][n]) <= sizes[n] for n in self.names)
            except (ValueError, KeyError, TypeError):
                held = False  # a damaged line: nothing after it can be trusted
            if not held:
                break
            last = (entry, end)
        return last

    def write_batch(self, lines: dict[str, list[bytes]], images: int, failed: int, boxes: int, batches: int = 1,
                    commit: bool = True) -> None:
        """Append rows and count ``batches`` more batches done; ``commit`` (at a window's end, where the files hold
        exactly the rows of every batch done) records them all in the journal."""
        for n, rows in lines.items():
            if rows:
                self.files[n].write(b"".join(rows))
        self._open_batches += batches
        for k, v in (("images", images), ("failed", failed), ("boxes", boxes)):
            self._open_counts[k] += v
        if not commit:
            return
        for f in self.files.values():
            f.flush()
        self.done_batches += self._open_batches
        self.counts = {k: self.counts[k] + self._open_counts[k] for k in self.counts}
        self._open_batches, self._open_counts = 0, {k: 0 for k in self.counts}
        if time.monotonic() - self._synced_at >= SYNC_SECONDS:
            # On disk before the journal says so (a power cut must not leave a journal ahead of the rows), at most
            # every few seconds: an fsync per batch would cost a fast GPU run much of its time. A cut loses at
            # most the entries since, which --resume redoes (it checks every entry against the files' sizes).
            for f in self.files.values():
                flush_to_disk(f)
            self._synced_at = time.monotonic()
        entry = {"batches": self.done_batches, "counts": self.counts, "offsets": {n: f.tell() for n, f in self.files.items()}}
        self.journal.write(json.dumps(entry).encode() + b"\n")
        self.journal.flush()

    def close(self) -> None:
        for f in [*self.files.values(), self.journal]:
            if not f.closed:
                try:
                    flush_to_disk(f)  # a finished shard is what rank 0 merges: on disk first
                except OSError:
                    pass  # closing after a failed write (a full disk): the journal already says what holds
        for f in [*self.files.values(), self.journal]:
            if not f.closed:
                f.close()


class _Progress:
    """A tqdm bar on a terminal; one plain line every ``every`` seconds in a log file."""

    def __init__(self, total: int, initial: int, quiet: bool, label: str, every: float = 30.0) -> None:
        self.total, self.done, self.quiet, self.label, self.every = total, initial, quiet, label, every
        self.t0 = self.last = time.monotonic()
        self.start_done = initial
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="img", file=sys.stderr, desc=label, mininterval=1.0)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif not self.quiet and (time.monotonic() - self.last >= self.every or self.done == self.total):
            self.last = time.monotonic()
            rate = (self.done - self.start_done) / max(self.last - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
            print(
                f"{self.label}: {self.done}/{self.total} images ({100 * self.done / max(self.total, 1):.1f}%), "
                f"{rate:.2f} images/s, ETA {eta_s}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _labelmap_sha256(detector: Detector) -> Optional[str]:
    lm = detector.labelmap
    if lm is None:
        return None
    return hashlib.sha256(json.dumps([list(lm.classes), list(lm.attributes or [])]).encode()).hexdigest()


def _fingerprint(items: Sequence[ImageItem], detector: Detector, opts: ExtractOptions, plan: BatchPlan,
                 identities: Sequence[bytes]) -> dict[str, Any]:
    """Every setting that can change a byte of the outputs: a resumed run must match it exactly. The inputs are
    their identities (resolved paths, sizes, times: :func:`~vinvl.extract.sources.input_identities`), not the
    paths as typed, so another spelling of the same inputs resumes and other inputs do not."""
    h = hashlib.sha256()
    for line in identities:
        h.update(line + b"\n")
    fp = {
        "inputs_sha256": h.hexdigest(),
        "images": len(items),
        "config": dataclasses.asdict(detector.config),
        "weights": opts.extra_manifest.get("weights_sha256"),
        "labelmap": _labelmap_sha256(detector),
        "numerics": detector.numerics,
        "subset": list(opts.subset),
        "image_size_in_rows": opts.image_size_in_rows,
        "attribute_slots": opts.attribute_slots,
        "skip": sorted(opts.skip),
        "exif_transpose": opts.exif_transpose,
        "boxes": _boxes_sha256(items, opts.boxes),
        "world_size": opts.world_size,
        "bucket_batches": opts.bucket_batches,
        # The batches themselves: with aspect-ratio grouping they follow the image sizes (hw files, headers).
        "batch_grouping": plan.grouping,
        "batch_plan_sha256": plan.sha256(),
        "vinvl": __version__,
        "torch": torch.__version__,
    }
    return json.loads(json.dumps(fp))  # the form it has when read back from settings.json


def _boxes_sha256(items: Sequence[ImageItem], boxes: Optional[dict[str, Any]]) -> Optional[str]:
    """The given boxes of every input, in input order, as one digest (None without given boxes)."""
    if boxes is None:
        return None
    h = hashlib.sha256()
    for it in items:
        b = np.ascontiguousarray(boxes[it.key], dtype="<f4")
        h.update(f"{it.key}\t{len(b)}\n".encode())
        h.update(b.tobytes())
    return h.hexdigest()


def _changed(before: Any, now: dict[str, Any]) -> list[str]:
    """The fingerprint entries that differ (all of them if ``before`` is not a fingerprint)."""
    if not isinstance(before, dict):
        return list(now)
    changed = []
    for k, v in now.items():
        if k == "config" and isinstance(before.get(k), dict) and isinstance(v, dict):
            changed += [f"config.{c}" for c in v if before[k].get(c) != v[c]] or ([k] if before[k] != v else [])
        elif before.get(k) != v:
            changed.append(k)
    return changed


def _read_json(path: Path) -> Any:
    """A state file's JSON, or None when it is missing or unreadable (every state file is written
    atomically, so an unreadable one was damaged from outside and is treated as absent)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _check_out_dir(out: Path, shard_dir: Path, fingerprint: dict[str, Any], opts: ExtractOptions) -> Optional[dict]:
    """The manifest when the run is already complete (else None); errors when outputs would be lost or
    settings changed.

    ``manifest.json`` is written last, once every output is in place: it commits a run. A resumed run
    whose manifest holds the same settings is complete (a kill during the clean-up that follows the
    manifest only leaves the work folder to remove) once every output it committed still has the size it
    recorded; the same settings give the same bytes, so this also holds when an earlier identical run wrote it."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise VinvlError(f"{out}: exists and is not a folder; choose another -o")
    work = out / WORK_DIR
    if opts.overwrite:
        if shard_dir.exists():
            shutil.rmtree(shard_dir)
        return None
    manifest = _read_json(out / "manifest.json")
    if manifest is not None and opts.resume:
        changed = _changed(manifest.get("settings") if isinstance(manifest, dict) else None, fingerprint)
        missing = [f for f in manifest.get("outputs", []) if not (out / f).is_file()] if not changed else []
        if not changed and not missing:
            _verify_outputs(out, manifest)
            shutil.rmtree(work, ignore_errors=True)
            return manifest
        if not work.exists():
            why = f"{', '.join(changed)} changed" if changed else f"{', '.join(missing)} missing"
            raise VinvlError(f"{out}: holds a finished extraction that --resume cannot continue ({why}); "
                             "rerun with the same inputs and options, or use --overwrite or another -o")
    elif manifest is not None and not work.exists():
        raise VinvlError(f"{out}: holds a finished extraction (manifest.json); use --overwrite or another -o")
    if shard_dir.exists() and not opts.resume:
        raise VinvlError(f"{out}: holds an interrupted extraction; add --resume to continue it or --overwrite to restart")
    if not opts.resume:
        existing = [n for n in [*OUTPUT_FILES.values(), "errors.tsv"] if (out / n).exists()]
        if existing:
            raise VinvlError(f"{out}: already has {', '.join(existing)}; use --overwrite or another -o")
    return None


def _output_sizes(out: Path, outputs: Sequence[str]) -> dict[str, int]:
    """The byte size of each committed output and of each TSV's index (what --resume checks a finished run by)."""
    files = [*outputs, *(lineidx_path(out / f).name for f in outputs if f.endswith(".tsv"))]
    return {f: (out / f).stat().st_size for f in files}


def _verify_outputs(out: Path, manifest: dict) -> None:
    """A finished run's outputs are as it committed them: the sizes recorded in its manifest (a truncated or
    rewritten file is found before --resume answers "done")."""
    for name, size in (manifest.get("output_sizes") or {}).items():
        p = out / name
        got = p.stat().st_size if p.is_file() else None
        if got != size:
            now = "is missing" if got is None else f"has {got} bytes"
            raise VinvlError(f"{display_path(p)}: {now} where the finished run wrote {size}: the outputs changed after "
                             "the run; rerun with --overwrite (or another -o)")


def extract(
    items: Sequence[ImageItem],
    detector: Detector,
    out_dir: Union[str, os.PathLike],
    options: Optional[ExtractOptions] = None,
    **kwargs: Any,
) -> ExtractStats:
    """Run ``detector`` over ``items`` into ``out_dir`` (see the module doc); ``kwargs`` set ExtractOptions fields."""
    opts = dataclasses.replace(options or ExtractOptions(), **kwargs)
    out = Path(out_dir)
    cfg = detector.config
    bs = max(1, cfg.batch_size)
    names = [n for n in OUTPUT_FILES if n not in opts.skip]
    shard_dir = out / WORK_DIR / f"shard-{opts.rank:05d}-of-{opts.world_size:05d}"
    plan = batch_plan(items, bs, cfg.batching, opts.aspect_ratio_grouping, opts.exif_transpose)
    identities = input_identities(items)
    fingerprint = _fingerprint(items, detector, opts, plan, identities)
    if out.exists() and not out.is_dir():
        raise VinvlError(f"{display_path(out)}: exists and is not a folder; choose another -o")
    try:
        with _OutputLock(out, opts.rank):
            return _extract(items, detector, out, shard_dir, names, bs, plan, fingerprint, identities, opts)
    except OSError as e:
        if e.errno in NO_SPACE:
            raise FaultError(
                f"{display_path(e.filename or out)}: disk full ({e.strerror}); what was written is kept: "
                "free space and rerun with --resume") from None
        if e.errno not in UNWRITABLE:  # an I/O fault mid-run: the journal still stands where it stood
            raise FaultError(f"{os_error_line(e, display_path(e.filename or out))}; what was written is kept: "
                             "rerun with --resume") from None
        raise




def run_extraction(job: ExtractionJob, say: Optional[Callable[[str], None]] = None) -> ExtractStats:
    """Load the job's detector once (:meth:`Detector.from_pretrained`), say the notes (rank 0, to ``say``), and run
    :func:`extract`; under torchrun a rank that fails tells rank 0 so that it does not wait for it."""
    opts = job.options
    det = Detector.from_pretrained(job.model, device=choose_device(job.device, job.local_rank), dtype=job.dtype,
                                   original_arithmetic=job.original_arithmetic)
    if opts.world_size > 1:
        _agree_across_ranks(job.items, opts.rank, opts.world_size)
    notes = [*job.notes, *([] if opts.quiet else det.notes())]  # a demo-model warning is said even when quiet
    if job.model.labelmap is None:
        notes.append("note: no label map: classes are written as their indices")
    if say is not None and opts.rank == 0:
        for note in notes:
            say(note)
    lm = job.model.labelmap
    manifest = {**opts.extra_manifest, "dtype": det.dtype, "numerics": det.numerics_reason,
                "weights_sha256": file_sha256(job.model.weights),
                "labelmap_sha256": file_sha256(lm) if isinstance(lm, Path) else None}
    try:
        return extract(job.items, det, job.out_dir, dataclasses.replace(opts, extra_manifest=manifest))
    except BaseException as e:
        if opts.world_size > 1:
            mark_failed(job.out_dir, opts.rank, opts.world_size, f"{type(e).__name__}: {e}")
        raise


def _agree_across_ranks(items: Sequence[ImageItem], rank: int, world: int) -> None:
    """Under torchrun: check once, at the start, that every rank sees the same inputs (the shards are cut from them)."""
    import torch.distributed as dist

    digest = hashlib.sha256("\n".join(f"{i.key}\t{i.where}" for i in items).encode()).hexdigest()
    if not dist.is_available():
        return
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        seen: list = [None] * world
        dist.all_gather_object(seen, digest)
    finally:
        dist.destroy_process_group()
    if len(set(seen)) != 1:
        raise VinvlError(f"the {world} ranks see different inputs (rank {rank}: {len(items)} images); give every rank the same")


def _extract(
    items: Sequence[ImageItem],
    detector: Detector,
    out: Path,
    shard_dir: Path,
    names: list[str],
    bs: int,
    plan: BatchPlan,
    fingerprint: dict[str, Any],
    identities: Sequence[bytes],
    opts: ExtractOptions,
) -> ExtractStats:
    finished = _check_out_dir(out, shard_dir, fingerprint, opts)
    if finished is not None:
        if not opts.quiet:
            print(f"{out}: already complete", file=sys.stderr)
        c = finished.get("counts", {})
        return ExtractStats(int(c.get("images", 0)), int(c.get("boxes", 0)), 0.0, int(c.get("failed", 0)), out_dir=out)
    settings_path = shard_dir / "settings.json"
    inputs_path = out / WORK_DIR / "inputs.tsv"
    if opts.resume and shard_dir.exists():
        before = _read_json(settings_path)
        changed = _changed(before, fingerprint)
        if before is None and (shard_dir / "journal.tsv").exists():
            raise VinvlError(f"{shard_dir}: settings.json is missing or damaged, so --resume cannot check the "
                             "settings of the interrupted run; use --overwrite")
        if before is not None and changed:
            why = f"{', '.join(changed)} changed"
            if "inputs_sha256" in changed and inputs_path.is_file():
                diff = first_input_difference(inputs_path.read_bytes().split(b"\n")[:-1], identities)
                why += f": {diff}" if diff else ""
            raise VinvlError(f"{out}: --resume with other settings than the interrupted run ({why}); "
                             "rerun with the same inputs and options, or use --overwrite")
    atomic_write_text(settings_path, json.dumps(fingerprint, indent=1))
    if opts.rank == 0:  # what --resume compares to name the first input that differs
        atomic_write_bytes(inputs_path, b"".join(line + b"\n" for line in identities))

    first, end = plan.rank_range(opts.rank, opts.world_size)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (shard_dir / "DONE").unlink(missing_ok=True)
    shard = _Shard(shard_dir, names, opts.resume)
    try:
        skipped = shard.done_batches
        start = min(first + shard.done_batches, end)  # the journal stands at a window's end
        label = "extract" if opts.world_size == 1 else f"extract[rank {opts.rank}]"
        n_mine = sum(len(b) for b in plan.batches[first:end])
        n_todo = sum(len(b) for b in plan.batches[start:end])
        progress = _Progress(n_mine, n_mine - n_todo, opts.quiet, label)
        if n_todo:
            _run_batches(items, plan, start, end, detector, shard, opts, names, bs, progress)
        progress.close()
    except OSError as e:
        if e.errno in NO_SPACE:
            raise FaultError(
                f"{display_path(e.filename or shard_dir)}: disk full after {shard.done_batches} completed batches "
                f"({shard.counts['images']} images, kept); free space and rerun with --resume"
            ) from None
        raise
    finally:
        shard.close()
    seconds = time.perf_counter() - t0
    mine = dict(shard.counts)
    atomic_write_text(shard_dir / "DONE", json.dumps({"counts": mine, "seconds": seconds, "started": started}))
    stats = ExtractStats(mine["images"], mine["boxes"], seconds, mine["failed"], skipped, out, finished=False)
    if opts.rank != 0:
        return stats
    shards = _wait_for_shards(out, opts)
    totals = _merge(out, shards, names, opts)
    manifest = {
        "vinvl": __version__,
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(detector.device),
        "threads": torch.get_num_threads(),
        **opts.extra_manifest,
        "settings": fingerprint,
        "batch_size": bs,
        "batching": detector.config.batching,
        "batch_grouping": plan.grouping,
        "world_size": opts.world_size,
        "workers": opts.workers,
        "outputs": [OUTPUT_FILES[n] for n in names] + ["errors.tsv", "imageid2idx.json"],
        "output_sizes": _output_sizes(out, [OUTPUT_FILES[n] for n in names] + ["errors.tsv", "imageid2idx.json"]),
        "feature_dim": detector.feature_dim + 6,  # width of a features.tsv region row (regions + geometry)
        "counts": totals["counts"],
        "seconds_per_rank": totals["seconds"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, default=str) + "\n")
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    c = totals["counts"]
    return ExtractStats(c["images"], c["boxes"], seconds, c["failed"], skipped, out, finished=True)


def _run_batches(
    items: Sequence[ImageItem],
    plan: BatchPlan,
    start: int,
    end: int,
    detector: Detector,
    shard: _Shard,
    opts: ExtractOptions,
    names: list[str],
    bs: int,
    progress: _Progress,
) -> None:
    # Images load in plan order (the original's loader order): one batch's tensors at a time.
    todo = [i for b in plan.batches[start:end] for i in b]
    batch_of = [b for b in range(start, end) for _ in plan.batches[b]]
    dataset = _Prepared([items[i] for i in todo], detector.config.input, opts.exif_transpose)
    loader = DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=opts.workers, collate_fn=_unbatched,
        prefetch_factor=2 * bs if opts.workers else None, persistent_workers=False,
        pin_memory=detector.device.type == "cuda",  # lets the copy to the GPU run asynchronously
    )
    # A unit is computed together. Padded batches: one plan batch (its images zero-padded together, as
    # planned). Same-size batching: aspect-ratio bucketing, a window of whole batches whose images of equal
    # resized size are batched without padding; such windows sit at fixed batch numbers and are journaled
    # whole, so a resumed run groups images exactly as an uninterrupted one.
    padded = plan.grouping != "same_size"
    window = 1 if padded or bs == 1 else max(1, opts.bucket_batches)
    window_ends = set(plan.window_ends) | {end}
    order = _InOrder(todo[0])
    # One writer thread finishes (device -> host, names), formats (JSON, base64) and writes unit k while the
    # detector computes unit k+1; units are written in order, one at a time, rows in input order, and the
    # journal is written only at a window's end, so a resumed run sees exactly what a sequential run writes.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vinvl-writer")
    writing: Optional[Future] = None

    def flush(pending: list[tuple[int, Any, Any, Any]], first_b: int, last_b: int) -> None:
        nonlocal writing
        raws = _detect_window(pending, items, detector, bs, opts.boxes, padded)
        if writing is not None:
            progress.update(writing.result())  # re-raises the writer's error (a full disk, ...) here
        done = [(i, hw, err) for i, _, hw, err in pending]  # the tensors are not kept for the writer
        writing = writer.submit(_write_window, done, raws, items, detector, shard, opts, names, order,
                                last_b - first_b + 1, last_b + 1 in window_ends)

    try:
        pending: list[tuple[int, Any, Any, Any]] = []
        first_b = batch_of[0]
        for j, tensor, hw, error in loader:
            b = batch_of[j]
            if b // window != first_b // window:
                flush(pending, first_b, batch_of[j - 1])
                pending, first_b = [], b
            pending.append((todo[j], tensor, hw, error))
        if pending:
            flush(pending, first_b, batch_of[-1])
        if writing is not None:
            progress.update(writing.result())
    finally:
        writer.shutdown(wait=True)  # never leave a write running under a closing shard


def _detect_window(pending: list[tuple[int, Any, Any, Any]], items: Sequence[ImageItem], detector: Detector, bs: int,
                   boxes: Optional[dict[str, Any]], padded: bool) -> dict[int, Any]:
    """Raw detections of a unit's readable images, by input index (padded: the unit is one batch)."""
    ok = [(i, t, hw) for i, t, hw, err in pending if err is None]
    if not ok:
        return {}
    given = [boxes[items[i].key] for i, _, _ in ok] if boxes is not None else None
    raws = detector.detect_prepared([(t, hw) for _, t, hw in ok], batch_size=bs, boxes=given,
                                    batches=[list(range(len(ok)))] if padded else None)
    return {i: r for (i, _, _), r in zip(ok, raws)}


class _InOrder:
    """Rows computed in plan order, released in input order (grouped batches run ahead of their rows).

    Batches run in the order of their first image, so what waits is at most the rest of each group's latest
    batch: fewer than (groups x batch size) rows, however long a window is."""

    def __init__(self, first: int) -> None:
        self.next = first
        self.held: dict[int, tuple[dict[str, bytes], bool, int]] = {}

    def add(self, index: int, rows: dict[str, bytes], ok: bool, boxes: int) -> None:
        self.held[index] = (rows, ok, boxes)

    def release(self) -> list[tuple[dict[str, bytes], bool, int]]:
        """The held rows that now follow the last released one, in input order."""
        out = []
        while self.next in self.held:
            out.append(self.held.pop(self.next))
            self.next += 1
        return out


def _write_window(
    done: list[tuple[int, Any, Any]],
    raws: dict[int, Any],
    items: Sequence[ImageItem],
    detector: Detector,
    shard: _Shard,
    opts: ExtractOptions,
    names: list[str],
    order: _InOrder,
    batches: int,
    commit: bool,
) -> int:
    """Format a unit's rows, write those now in input order, count its ``batches``; returns the rows written."""
    for i, hw, err in done:
        item = items[i]
        if err is not None:
            order.add(i, {"errors": _line([item.key, single_spaced(str(item.where)), single_spaced(str(err))])}, False, 0)
            continue
        det = detector.finish(*raws[i])
        lm = detector.labelmap
        pred = det.to_prediction(item.key, opts.image_size_in_rows, opts.attribute_slots,
                                 lm.attributes if lm is not None else None)
        rows: dict[str, bytes] = {}
        if "predictions" in names:
            rows["predictions"] = _line(pred.to_row(opts.subset))
        if "features" in names:
            rows["features"] = _line(format_features_row(item.key, det.region_features(), dim=det.features.shape[1] + 6))
        if "labels" in names:
            rows["labels"] = _line(format_label_row(pred))
        if "hw" in names:
            rows["hw"] = _line(format_hw_row(item.key, hw[0], hw[1]))
        order.add(i, rows, True, len(det))
    lines: dict[str, list[bytes]] = {n: [] for n in [*names, "errors"]}
    released = order.release()
    for rows, _, _ in released:
        for n, row in rows.items():
            lines[n].append(row)
    if commit and order.held:  # the plan's windows are contiguous: this would be a bug, never a resume point
        raise RuntimeError(f"rows {sorted(order.held)} are held at a window's end")
    ok = sum(1 for _, good, _ in released if good)
    shard.write_batch(lines, images=ok, failed=len(released) - ok, boxes=sum(b for *_, b in released),
                      batches=batches, commit=commit)
    return len(released)


def _wait_for_shards(out: Path, opts: ExtractOptions) -> list[Path]:
    """Rank 0: the shard folders once every rank has written DONE (polled; no collective)."""
    folders = [out / WORK_DIR / f"shard-{r:05d}-of-{opts.world_size:05d}" for r in range(opts.world_size)]
    waited, noted = 0.0, 0.0
    while True:
        missing = [f for f in folders if not (f / "DONE").exists()]
        if not missing:
            return folders
        failed = [f for f in missing if (f / "FAILED").exists()]
        if failed:
            reason = (failed[0] / "FAILED").read_text().strip()
            raise VinvlError(f"{failed[0]}: that rank failed ({reason}); fix it and rerun with --resume")
        if not opts.quiet and waited - noted >= 60:
            noted = waited
            print(f"extract: waiting for {len(missing)} rank(s) to finish: {', '.join(f.name for f in missing)}",
                  file=sys.stderr, flush=True)
        time.sleep(opts.poll_seconds)
        waited += opts.poll_seconds


def _merge(out: Path, shards: list[Path], names: list[str], opts: ExtractOptions) -> dict[str, Any]:
    counts = {"images": 0, "failed": 0, "boxes": 0}
    seconds = []
    for s in shards:
        done = json.loads((s / "DONE").read_text())
        for k in counts:
            counts[k] += done["counts"][k]
        seconds.append(round(done["seconds"], 3))
    for n in [*names, "errors"]:
        fname = OUTPUT_FILES.get(n, "errors.tsv")
        merge_tsv([s / fname for s in shards], out / fname)
    for n, fname in OUTPUT_FILES.items():
        if n not in names:  # left by an earlier run that --overwrite replaces: not this run's output
            for stale in (out / fname, lineidx_path(out / fname)):
                stale.unlink(missing_ok=True)
    keys: list[str] = []
    source = out / OUTPUT_FILES[names[0]] if names else None
    if source is not None:
        with open(source, "rb") as f:
            keys = [line.split(b"\t", 1)[0].decode("utf-8") for line in f]
    write_key_index(out / "imageid2idx.json", ((k, i) for i, k in enumerate(keys)))
    return {"counts": counts, "seconds": seconds}


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def mark_failed(out: Union[str, os.PathLike], rank: int, world_size: int, reason: str) -> None:
    """Tell rank 0 that this rank stopped with an error, so it does not wait for it forever."""
    folder = Path(out) / WORK_DIR / f"shard-{rank:05d}-of-{world_size:05d}"
    if folder.exists():
        atomic_write_text(folder / "FAILED", single_spaced(str(reason)) + "\n")
