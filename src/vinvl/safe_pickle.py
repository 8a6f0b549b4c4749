"""Restricted loading of the original's pickles (``training_args.bin``, VQA ``*.pkl`` answer maps).

Only plain values are rebuilt: dict, list, tuple, set, str, bytes, numbers, bool, None,
``collections.OrderedDict`` and ``argparse.Namespace`` of those; ``torch.device`` (which
Oscar's saved arguments carry) becomes its string, e.g. ``"cuda:0"``. Anything else, and
any tensor storage, is refused with a message naming the file and the global asked for,
so loading an untrusted file never runs code.

Reads plain pickles (protocols 0-5, Python 2 ones too), ``torch.save``'s zip format and
its legacy (pre-1.6) format, without importing torch.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

from .errors import FormatError
from .tsv import PathLike

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickleError(FormatError):
    """A pickle asked for something other than plain values; nothing of it was executed."""


_OBJECT = object()  # stands for builtins.object inside copyreg._reconstructor calls


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if cls is not argparse.Namespace or base is not _OBJECT or state is not None:
        raise UnsafePickleError("refusing copyreg._reconstructor for anything but argparse.Namespace")
    return argparse.Namespace()


def _device(kind: str, index: Optional[int] = None) -> str:
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise UnsafePickleError("refusing torch.device with unexpected arguments")
    return kind if index is None else f"{kind}:{index}"


_ALLOWED: dict[tuple[str, str], Any] = {
    ("argparse", "Namespace"): argparse.Namespace,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): _OBJECT,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "object"): _OBJECT,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("torch", "device"): _device,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="utf-8")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: only plain values and argparse.Namespace are allowed",
                self._source,
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            "refusing to load tensor storage from a pickle of plain values (use torch.load(weights_only=True))",
            self._source,
        )


def _load_one(buf: io.BufferedIOBase, source: str) -> Any:
    try:
        return _RestrictedUnpickler(buf, source).load()
    except UnsafePickleError as e:
        if e.path is None:  # raised by an allowed constructor, which does not know the file
            raise UnsafePickleError(e.reason, source) from None
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, UnicodeDecodeError) as e:
        raise FormatError(f"not a readable pickle ({type(e).__name__}: {e})", source) from None


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Load plain values from pickle bytes or ``torch.save`` bytes (zip or legacy)."""
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                if len(names) != 1:
                    raise FormatError("zip file without exactly one data.pkl: not a torch.save file", source)
                return _load_one(io.BytesIO(z.read(names[0])), source)
        except zipfile.BadZipFile as e:
            raise FormatError(f"damaged zip ({e})", source) from None
    buf = io.BytesIO(data)
    first = _load_one(buf, source)
    if isinstance(first, int) and not isinstance(first, bool) and first == _TORCH_LEGACY_MAGIC:
        _load_one(buf, source)  # protocol version
        _load_one(buf, source)  # sys info
        obj = _load_one(buf, source)
        keys = _load_one(buf, source)
        if keys:
            raise UnsafePickleError("file holds tensor storages; it is not a pickle of plain values", source)
        return obj
    return first


def safe_load(path: PathLike) -> Any:
    """Load plain values from a pickle file or a ``torch.save`` file, refusing anything executable."""
    path = Path(path)
    if not path.is_file():
        raise FormatError("no such file", path)
    return safe_loads(path.read_bytes(), str(path))


def load_training_args(path: PathLike) -> argparse.Namespace:
    """Read Oscar's ``training_args.bin`` (a saved argparse Namespace) safely."""
    obj = safe_load(path)
    if isinstance(obj, dict):
        return argparse.Namespace(**obj)
    if not isinstance(obj, argparse.Namespace):
        raise FormatError(f"expected a saved argparse.Namespace, found {type(obj).__name__}", path)
    return obj
