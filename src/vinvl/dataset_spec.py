"""Dataset yamls: the one reader of every yaml that names data files, and the one rule for their paths.

The yamls are the original's: a detection dataset (``img``, ``hw``, ``label``, ``labelmap``, ``linelist``;
scene_graph_benchmark's ``TSVYamlDataset``), a captioning split (``feature``, ``label``, ``caption``;
Oscar's ``CaptionTSVDataset``) and a pretraining corpus (``corpus_file``, ``image_label_path``,
``image_feature_path``; Oscar's ``OscarTSVDataset``).

**The rule for paths.** An absolute path is used as it is. A relative path is relative to the yaml's
folder; where a command also takes a data folder (``vinvl extract``'s ``DATA_DIR``), a relative path
that does not exist beside the yaml is looked up there next. It is never relative to the working
directory. One key keeps the original's other root: a corpus's ``image_feature_path`` folders are
relative to ``--data-dir`` (default: the yaml's folder), as ``OscarTSVDataset`` joins them to its
``--data_dir`` (see :mod:`vinvl.corpus.layout`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from .errors import VinvlError
from .yamlio import read_yaml

PathLike = Union[str, os.PathLike]


def resolve_path(value: PathLike, roots: Sequence[Path]) -> Path:
    """``value`` by the rule above: as it is when absolute, else under the first of ``roots`` where it
    exists, else under the first root (where the error about a missing file then points)."""
    p = Path(value)
    if p.is_absolute() or not roots:
        return p
    for root in roots:
        if (root / p).exists():
            return root / p
    return roots[0] / p


class DatasetSpec:
    """A dataset yaml read once: its entries, and its paths resolved by the module's rule."""

    def __init__(self, path: PathLike, what: str = "dataset yaml", data_dir: Optional[PathLike] = None,
                 needs: Iterable[str] = (), hint: str = "") -> None:
        """Read ``path`` (a yaml mapping); ``needs``: keys it must have (``hint`` says what they are);
        ``data_dir``: where relative paths not beside the yaml are looked up next."""
        self.path = Path(path)
        self.what = what
        self.entries = read_yaml(self.path, what)
        if not isinstance(self.entries, dict):
            raise VinvlError(f"{self.path}: a {what} is a mapping of names to files")
        self.roots: tuple[Path, ...] = (self.path.parent,) + ((Path(data_dir),) if data_dir is not None else ())
        for key in needs:
            if key not in self.entries:
                raise VinvlError(f"{self.path}: a {what} needs '{key}'{hint}")

    def __contains__(self, key: str) -> bool:
        """Whether the yaml names ``key`` with a value (an empty or null entry counts as absent)."""
        return self.entries.get(key) not in (None, "")

    def get(self, key: str, default: Any = None) -> Any:
        """The raw entry ``key`` (``default`` when absent)."""
        return self.entries.get(key, default)

    def resolve(self, value: PathLike, root: Optional[PathLike] = None) -> Path:
        """``value`` (a path from this yaml) by the rule; ``root``: the one root of a key that documents another."""
        return resolve_path(value, (Path(root),) if root is not None else self.roots)

    def file(self, key: str, required: bool = False) -> Optional[Path]:
        """The file the entry ``key`` names, which must exist; ``None`` when the yaml has no such entry
        (an error when ``required``)."""
        if key not in self:
            if required:
                raise VinvlError(f"{self.path}: a {self.what} needs '{key}'")
            return None
        value = self.entries[key]
        found = self.resolve(str(value))
        if not found.is_file():
            raise VinvlError(f"{self.path}: {key} {value!r}: no such file ({found})")
        return found

    def folders(self, key: str, names: Iterable[str], root: Optional[PathLike] = None) -> dict[str, Path]:
        """A mapping entry (name -> folder, e.g. a corpus's ``image_label_path``) resolved for each of ``names``."""
        mapping = self.entries.get(key)
        if not isinstance(mapping, dict):
            raise VinvlError(f"{self.path}: '{key}' must map each dataset to a folder")
        out = {}
        for name in names:
            if name not in mapping:
                raise VinvlError(f"{self.path}: dataset {name!r} of 'corpus' has no folder in '{key}'")
            out[name] = self.resolve(str(mapping[name]), root)
        return out

