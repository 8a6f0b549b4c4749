"""vinvl.safe_pickle: plain values and Namespaces load; anything that could run code is refused."""

from __future__ import annotations

import argparse
import collections
import os
import pickle
from pathlib import Path

import pytest
import torch

from vinvl.errors import FormatError
from vinvl.safe_pickle import UnsafePickleError, load_training_args, safe_load, safe_loads


def _args() -> argparse.Namespace:
    return argparse.Namespace(
        model_name_or_path="bert-base-uncased",
        learning_rate=3e-5,
        do_lower_case=True,
        max_seq_length=70,
        output_dir=None,
        img_feature_dim=2054,
        stuff=[1, (2, 3), {"a": {4}}],
        od=collections.OrderedDict(x=1),
    )


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_namespace_every_protocol(tmp_path: Path, protocol: int) -> None:
    p = tmp_path / "args.pkl"
    p.write_bytes(pickle.dumps(_args(), protocol=protocol))
    assert load_training_args(p) == _args()


@pytest.mark.parametrize("zipfile_format", [True, False])
def test_torch_saved_training_args(tmp_path: Path, zipfile_format: bool) -> None:
    """Oscar saved its args with torch.save, device included; both file formats load."""
    args = _args()
    args.device = torch.device("cuda", 0)
    args.cpu = torch.device("cpu")
    p = tmp_path / "training_args.bin"
    torch.save(args, p, _use_new_zipfile_serialization=zipfile_format)
    got = load_training_args(p)
    assert got.device == "cuda:0" and got.cpu == "cpu"
    del got.device, got.cpu
    assert got == _args()


def test_answer_map(tmp_path: Path) -> None:
    ans2label = {f"answer {i}": i for i in range(3129)}
    p = tmp_path / "trainval_ans2label.pkl"
    p.write_bytes(pickle.dumps(ans2label, protocol=2))
    assert safe_load(p) == ans2label


class _Evil:
    def __reduce__(self):  # pragma: no cover - never called by the safe loader
        return (os.system, ("echo pwned",))


class _Plain:
    pass


def test_refuses_classes(tmp_path: Path) -> None:
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(UnsafePickleError, match=r"evil.pkl: refusing to load (posix|os)\.system"):
        safe_load(p)
    with pytest.raises(UnsafePickleError, match="refusing to load .*_Plain"):
        safe_loads(pickle.dumps(_Plain()))
    with pytest.raises(UnsafePickleError, match="refusing to load builtins.eval"):
        safe_loads(b"cbuiltins\neval\n(S'1'\ntR.")
    with pytest.raises(UnsafePickleError):  # _reconstructor only for Namespace
        safe_loads(b"ccopyreg\n_reconstructor\n(ccollections\nOrderedDict\ncbuiltins\nobject\nNtR.")


def test_refuses_tensors(tmp_path: Path) -> None:
    p = tmp_path / "t.bin"
    torch.save({"w": torch.zeros(2)}, p)
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        safe_load(p)
    torch.save({"w": torch.zeros(2)}, p, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError):
        safe_load(p)


def test_garbage_and_wrong_type(tmp_path: Path) -> None:
    (tmp_path / "g.bin").write_bytes(b"\x00garbage")
    with pytest.raises(FormatError, match="g.bin: not a readable pickle"):
        safe_load(tmp_path / "g.bin")
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(FormatError, match="e.bin: not a readable pickle"):
        safe_load(tmp_path / "e.bin")
    (tmp_path / "l.bin").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(FormatError, match="expected a saved argparse.Namespace, found list"):
        load_training_args(tmp_path / "l.bin")
    with pytest.raises(FormatError, match="no such file"):
        safe_load(tmp_path / "missing.bin")
