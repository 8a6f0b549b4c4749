"""Every command example in README.md and docs/cli.md runs, so the docs cannot rot; and every ``vinvl.x.y`` name
the docs give (in backticks or in a python block's imports) exists.

How an example becomes a command line, mechanically:

1. Examples: each line of a ```bash block (``\\`` continuations joined, ``# comments`` dropped, ``&&`` splits
   a line), and each inline ```vinvl ...```, ```python ...``` or ```torchrun ...``` span outside the blocks
   (a table's ``\\|`` is ``|``).
2. Alternatives: ``a|b|c`` among the command words gives one example per alternative; anywhere else the
   first alternative is taken; a lone ``|`` between options gives one example per side.
3. Optional ``[...]`` groups are kept, except the :data:`DROPPED` ones (each says why); a ``...`` after a
   value is dropped; ``...`` standing for all the arguments becomes ``--help``.
4. Stand-ins (:data:`STAND_INS`, looked up as ``(option, token)`` then ``token``): the released detector's
   weights, label map and config become the shipped demo detector's (with its ``--preset``) or a small
   original-form model generated here; a released detector name becomes ``shapes_demo``; placeholders
   (``FILE``, ``N``, ``DATA.yaml``, ...) become files generated here or small values. Repository paths
   become absolute, ``.venv/bin/`` goes, ``torchrun`` is ``python -m torch.distributed.run``. Outputs stay
   as written: every example runs in a fresh working directory (a bash block's lines share one).
   A placeholder left without a stand-in fails the test.
5. Training examples get :data:`SHORT_RUN`'s options (a few steps of a tiny model).
6. :data:`SKIPPED` examples (network, installation, the test suite itself) are listed with the reason;
   a command named without arguments (``vinvl extract``) runs its ``--help``; a benchmark runs its
   ``--help``, which must name every option the example gives (the runs take minutes and real-size models).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
import typer.main

from tests.oscar.model_tester import tiny_config
from vinvl.cli import app, main
from vinvl.config.original import load_original, original_defaults
from vinvl.corpus.build import synthetic_corpus
from vinvl.datasets.shapes import generate_shapes
from vinvl.detection import AttrRCNN
from vinvl.labelmap import LabelMap
from vinvl.tsv import TSVFile, write_tsv

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "docs" / "cli.md"]
DEMO = REPO / "src" / "vinvl" / "models"

SKIPPED: dict[str, str] = {  # example prefix -> why it does not run here
    "python3 -m venv": "creates the virtual environment of the installation",
    ".venv/bin/pip install": "installs from PyPI (network)",
    ".venv/bin/python -m pytest": "runs this test suite itself",
    "vinvl download NAME": "fetches from the Hugging Face Hub or Azure (network); tests/test_download.py and "
                           "tests/test_registry.py run it against loopback servers",
    "vinvl download vinvl_vg_x152c4": "fetches from the Hugging Face Hub (network)",
    "vinvl download --check": "asks every remote source (network)",
    "vinvl caption photos/": "needs the released captioner (network, ~1 GB); tests/test_caption.py runs it on a "
                             "tiny captioner served by a loopback hub",
    "vinvl caption IMAGE": "needs the released captioner (network); tests/test_caption.py runs it",
}
DROPPED = {  # optional groups left out, and why
    "--model NAME": "an alternative to the --weights the same example gives",
}
SHORT_RUN: dict[tuple[str, ...], Callable[["Fixtures"], list[str]]] = {
    ("detector", "train"): lambda f: ["--iterations", "2", "--batch-size", "1", "--checkpoint-every", "2"],
    ("oscar", "pretrain"): lambda f: ["--vocab", str(f.corpus / "vocab.txt"), "--config", str(f.oscar_config),
                                      "--max-steps", "2", "--batch-size", "4", "--save-steps", "-1",
                                      "--max-img-seq-length", "6", "--device", "cpu"],
}


@dataclass
class Fixtures:
    """Generated stand-ins: a demo extraction's outputs, a small original-form model, a shapes dataset, a corpus."""

    images: Path
    extracted: Path
    original_yaml: Path
    original_weights: Path
    original_data: Path
    shapes: Path
    corpus: Path
    oscar_config: Path
    boxes: Path


# (option or previous token, token) or token -> replacement tokens
STAND_INS: dict[object, Callable[[Fixtures], list[str]]] = {
    "photos/": lambda f: [str(f.images)],
    "INPUTS...": lambda f: [str(f.images)],
    "IMAGE": lambda f: [str(f.images / "shapes_a.jpg")],
    ("--images", "DIR"): lambda f: [str(f.images)],
    ("--weights", "W"): lambda f: [str(DEMO / "shapes_demo.pth"), "--preset", "shapes_demo"],
    ("--weights", "vinvl_vg_x152c4.pth"): lambda f: [str(DEMO / "shapes_demo.pth"), "--preset", "shapes_demo"],
    ("--labelmap", "L"): lambda f: [str(DEMO / "shapes_demo_labelmap.json")],
    ("--labelmap", "VG-SGG-dicts-vgoi6-clipped.json"): lambda f: [str(DEMO / "shapes_demo_labelmap.json")],
    ("--model", "vinvl_vg_x152c4"): lambda f: ["shapes_demo"],
    ("--config-file", "sgg_configs/vgattr/vinvl_x152c4.yaml"): lambda f: [str(f.original_yaml)],
    ("MODEL.WEIGHT", "models/vinvl/vinvl_vg_x152c4.pth"): lambda f: [str(f.original_weights)],
    ("DATA_DIR", "../maskrcnn-benchmark-1/datasets1"): lambda f: [str(f.original_data)],
    "predictions.tsv": lambda f: [str(f.extracted / "predictions.tsv")],
    "PREDICTIONS.tsv": lambda f: [str(f.extracted / "predictions.tsv")],
    "FEATURES.tsv": lambda f: [str(f.extracted / "features.tsv")],
    "HW.tsv": lambda f: [str(f.extracted / "hw.tsv")],
    "FILE": lambda f: [str(f.extracted / "features.tsv")],
    "FILE...": lambda f: [str(f.extracted / "hw.tsv"), str(f.extracted / "label.tsv")],
    "SHARD...": lambda f: [str(f.extracted / "shards" / "a.tsv"), str(f.extracted / "shards" / "b.tsv")],
    "DATA.yaml": lambda f: [str(f.shapes / "dataset.yaml")],
    "CORPUS.yaml": lambda f: [str(f.corpus / "corpus.yaml")],
    "CMD": lambda f: ["extract"],
    ("--boxes", "BOXES.json"): lambda f: [str(f.boxes)],
    ("--num", "N"): lambda f: ["3"],
    ("--seed", "S"): lambda f: ["0"],
    ("--row", "N"): lambda f: ["1"],
    ("--key", "K"): lambda f: ["shapes_b"],
    ("--kind", "K"): lambda f: ["features"],
    ("--dim", "N"): lambda f: ["518"],
    ("--batch-size", "N"): lambda f: ["2"],
    ("--nproc_per_node", "N"): lambda f: ["1"],
}
OUTPUT_NAMES = {"OUT", "RUN", "OUT.tsv", "DIR", "GIVEN"}  # written into the example's working directory as named
ORIGINAL_KEYS = set(original_defaults())  # the original form's top-level KEY VALUE names (DATA_DIR, OUTPUT_DIR, ...)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.[a-z]+)?(\.\.\.)?$")  # FILE, OUT.tsv, SHARD..., not TEST.IMS_PER_BATCH

SMALL_ORIGINAL = """\
MODEL:
  META_ARCHITECTURE: "AttrRCNN"
  BACKBONE: {CONV_BODY: "R-50-C4"}
  RESNETS: {STEM_OUT_CHANNELS: 8, RES2_OUT_CHANNELS: 16, NUM_GROUPS: 2, WIDTH_PER_GROUP: 8,
            BACKBONE_OUT_CHANNELS: 64, STRIDE_IN_1X1: False}
  RPN: {PRE_NMS_TOP_N_TEST: 200, POST_NMS_TOP_N_TEST: 30}
  ROI_HEADS: {DETECTIONS_PER_IMG: 20}
  ROI_BOX_HEAD: {NUM_CLASSES: 6}
  ROI_ATTRIBUTE_HEAD: {NUM_ATTRIBUTES: 9}
  ATTRIBUTE_ON: True
  DEVICE: cpu
INPUT: {MIN_SIZE_TEST: 96, MAX_SIZE_TEST: 160}
DATASETS: {LABELMAP_FILE: "labelmap.json"}
TEST: {OUTPUT_FEATURE: True, TSV_SAVE_SUBSET: ['rect', 'class', 'conf', 'feature']}
"""  # the seed config's MODEL/TEST settings on a small R-50-C4 with the demo's classes


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    root = tmp_path_factory.mktemp("doc_examples")
    assert main(["extract", str(REPO / "examples" / "images"), "-o", str(root / "extracted"), "--model", "shapes_demo",
                 "--quiet"]) == 0
    data = root / "original"
    data.mkdir()
    (data / "small.yaml").write_text(SMALL_ORIGINAL)
    _, orig = load_original(data / "small.yaml")
    torch.manual_seed(0)
    torch.save({"model": AttrRCNN(orig.detector).state_dict()}, data / "small.pth")
    LabelMap.load(DEMO / "shapes_demo_labelmap.json").save_vg_json(data / "labelmap.json")
    generate_shapes(root / "shapes", num=3, seed=0, min_size=96, max_size=128)
    synthetic_corpus(root / "corpus", num_images=12, seed=0, dim=16)
    vocab = (root / "corpus" / "vocab.txt").read_text().splitlines()
    config = tiny_config(vocab_size=len(vocab), max_position_embeddings=64, img_feature_dim=16)
    (root / "tiny_config.json").write_text(config.to_json_string())
    rows = list(TSVFile(root / "extracted" / "hw.tsv"))  # two shards of one run: the keys split between them
    write_tsv(root / "extracted" / "shards" / "a.tsv", rows[:1])
    write_tsv(root / "extracted" / "shards" / "b.tsv", rows[1:])
    boxes = {"shapes_a": [[10, 20, 200, 180], [0, 0, 311, 259]], "shapes_b": [[30, 40, 120, 90]], "shapes_c": []}
    (root / "boxes.json").write_text(json.dumps(boxes))
    return Fixtures(REPO / "examples" / "images", root / "extracted", data / "small.yaml", data / "small.pth", data,
                    root / "shapes", root / "corpus", root / "tiny_config.json", root / "boxes.json")


# -- collecting the examples -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    source: str  # FILE:LINE
    text: str
    block: Optional[str] = None  # the bash block it belongs to (its lines share a working directory)


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def collect(path: Path) -> list[Example]:
    """The examples of one markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    name = path.relative_to(REPO).as_posix()
    out = []
    for m in re.finditer(r"```bash\n(.*?)```", text, flags=re.S):
        block = f"{name}:{_line(text, m.start())}"
        joined = re.sub(r"\\\n\s*", " ", m.group(1))
        for i, line in enumerate(joined.splitlines()):
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            for part in filter(None, (p.strip() for p in line.split("&&"))):
                out.append(Example(block, part, block))
    outside = re.sub(r"```.*?```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    for m in re.finditer(r"`((?:vinvl |python |torchrun |\.venv/)[^`]*)`", outside):
        out.append(Example(f"{name}:{_line(text, m.start())}", " ".join(m.group(1).replace("\\|", "|").split())))
    return out


def _tree() -> typer.main.click.Group:
    return typer.main.get_command(app)


def command_words(tokens: list[str]) -> int:
    """How many of ``tokens`` (after the program) name commands (each ``|`` alternative must be one)."""
    group, n = _tree(), 0
    while n < len(tokens) and hasattr(group, "commands"):
        alts = tokens[n].split("|")
        if not all(a in group.commands for a in alts):
            break
        group = group.commands[alts[0]]
        n += 1
    return n


def expand(text: str) -> list[list[str]]:
    """The command lines an example stands for, before stand-ins (rules 2 and 3)."""
    for group, why in DROPPED.items():
        text = text.replace(f"[{group}]", "")
    text = re.sub(r"\[([^\[\]]*)\]", r"\1", text)
    tokens = shlex.split(text)
    if tokens[-1] == "...":
        tokens[-1] = "--help" if tokens[-2] in ("vinvl", "extract") else ""
    tokens = [t for t in tokens if t and t != "..."]
    start = 1 if tokens[0] == "vinvl" else 3 if tokens[:3] == ["python", "-m", "vinvl"] else len(tokens)
    if "-m" in tokens and tokens[0] == "torchrun":
        start = tokens.index("-m") + 2
    n = command_words(tokens[start:])
    words = tokens[start:start + n]
    paths = [[]]
    for w in words:
        paths = [p + [a] for p in paths for a in w.split("|")]
    rest = tokens[start + n:]
    sides = [rest]
    if "|" in rest:
        bar = rest.index("|")
        positional = [t for t in rest[:bar] if not t.startswith("-")][:1]
        sides = [rest[:bar], positional + rest[bar + 1:]]
    first = lambda ts: [t.split("|")[0] if "|" in t else t for t in ts]  # noqa: E731
    return [first(tokens[:start]) + p + first(side) for p in paths for side in sides]


def is_benchmark(tokens: list[str]) -> bool:
    return tokens[0] == "python" and tokens[1].startswith("benchmarks/")


@functools.lru_cache(maxsize=None)
def _tracked() -> Optional[frozenset[str]]:
    """The files git tracks in this checkout and their folders (None outside a git checkout)."""
    res = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if res.returncode != 0:
        return None
    files = [Path(p) for p in res.stdout.decode().split("\0") if p]
    return frozenset(str(q) for p in files for q in (p, *p.parents) if str(q) != ".")


def _repository_path(token: str) -> bool:
    """An input the repository ships (examples/images), not an output an earlier run left in the checkout (out/)."""
    tracked = _tracked()
    path = token.rstrip("/")
    return path in tracked if tracked is not None else (REPO / path).exists()


def stand_ins(tokens: list[str], f: Fixtures) -> list[str]:
    """Rule 4 on one command line (a benchmark keeps its own: only its --help runs); a placeholder without a
    stand-in is an error."""
    if is_benchmark(tokens):
        return tokens
    out: list[str] = []
    for i, t in enumerate(tokens):
        prev = tokens[i - 1] if i else ""
        rule = STAND_INS.get((prev, t)) or STAND_INS.get(t)
        if rule is not None:
            out += rule(f)
        elif t.startswith(".venv/bin/"):
            out.append(t[len(".venv/bin/"):])
        elif not t.startswith("-") and "/" in t and _repository_path(t):
            out.append(str(REPO / t))
        elif PLACEHOLDER.match(t) and t not in OUTPUT_NAMES and t not in ORIGINAL_KEYS and not (prev in ORIGINAL_KEYS or "." in prev and prev.isupper()):
            raise AssertionError(f"no stand-in for {t!r} in {' '.join(tokens)} (add one to STAND_INS)")
        else:
            out.append(t)
    return out


def _all_examples() -> list[Example]:
    return [e for doc in DOCS for e in collect(doc)]


def _skip_reason(text: str) -> Optional[str]:
    return next((why for prefix, why in SKIPPED.items() if text.startswith(prefix)), None)


# -- running them ---------------------------------------------------------------------------------------------
def run_line(tokens: list[str], f: Fixtures, cwd: Path) -> tuple[int, str]:
    """Run one command line in ``cwd``: ``vinvl`` in this process, the rest as child processes."""
    start = 1 if tokens[0] == "vinvl" else 3 if tokens[:3] == ["python", "-m", "vinvl"] else None
    if start is not None:
        path = tokens[start:start + command_words(tokens[start:])]
        args = tokens[start:]
        if args == path and path:  # a command named without arguments: its help
            args = [*path, "--help"]
        extra = next((rule(f) for cmd, rule in SHORT_RUN.items() if tuple(path) == cmd and "--help" not in args), [])
        here = os.getcwd()
        os.chdir(cwd)
        try:
            return main([*args, *extra]), ""
        finally:
            os.chdir(here)
    if tokens[0] == "torchrun":
        tokens = [sys.executable, "-m", "torch.distributed.run", *tokens[1:]]
    res = subprocess.run(tokens, cwd=cwd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"})
    return res.returncode, res.stderr[-2000:]


_HELP_DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    buf, code = io.StringIO(), 0
    sys.argv = [path, "--help"]
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            code = e.code or 0
    out[path] = [code, buf.getvalue()]
print("HELP" + json.dumps(out))
"""


def benchmark_helps(lines: list[list[str]]) -> list[tuple[list[str], int, str]]:
    """Each benchmark example's ``--help`` (one child process for all): exit code 0 and every option the
    example gives named in it, else 1 and what is missing."""
    scripts = sorted({str(REPO / t[1]) for t in lines})
    res = subprocess.run([sys.executable, "-c", _HELP_DRIVER, *scripts], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    found = [ln for ln in res.stdout.splitlines() if ln.startswith("HELP")]
    assert res.returncode == 0 and found, res.stderr[-2000:]
    helps = json.loads(found[-1][len("HELP"):])
    out = []
    for t in lines:
        code, text = helps[str(REPO / t[1])]
        missing = [w.split("=")[0] for w in t[2:] if w.startswith("--") and w.split("=")[0] not in text]
        out.append((t, 1 if missing or code else 0, f"exit {code}; options not in --help: {missing}"))
    return out


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No released model cached (the demo detector is the default) and no network."""
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_every_example_runs(fx: Fixtures, home: Path, capsys: pytest.CaptureFixture) -> None:
    ran, skipped, failed, seconds, benchmarks = [], [], [], {}, []
    cwd_of: dict[str, Path] = {}
    for i, ex in enumerate(_all_examples()):
        why = _skip_reason(ex.text)
        if why:
            skipped.append((ex, why))
            continue
        key = ex.block or f"inline{i}"
        cwd = cwd_of.setdefault(key, home / f"cwd{len(cwd_of)}")
        cwd.mkdir(exist_ok=True)
        for tokens in expand(ex.text):
            why = _skip_reason(" ".join(tokens))
            if why:
                skipped.append((ex, why))
                continue
            if is_benchmark(tokens):
                benchmarks.append((ex, tokens))
                continue
            line = stand_ins(tokens, fx)
            t0 = time.perf_counter()
            code, err = run_line(line, fx, cwd)
            seconds[" ".join(tokens)] = time.perf_counter() - t0
            err += capsys.readouterr().err[-2000:]
            (ran if code == 0 else failed).append((ex.source, " ".join(line), err))
    for (ex, _), (line, code, err) in zip(benchmarks, benchmark_helps([t for _, t in benchmarks])):
        (ran if code == 0 else failed).append((ex.source, " ".join(line), err))
    assert not failed, "\n".join(f"{s}: {cmd}\n   {err.strip()[-600:]}" for s, cmd, err in failed)
    assert len(ran) >= 60, len(ran)  # README's and cli.md's examples, alternatives expanded
    assert {why for _, why in skipped} <= set(SKIPPED.values())
    # a few results behind the exit codes: README's first block leaves its files and drawings, the original form
    # writes the original's row fields, training leaves its checkpoint
    (first,) = [d for k, d in cwd_of.items() if k.startswith("README.md:")][:1]
    for name in ("predictions.tsv", "features.tsv", "label.tsv", "hw.tsv", "imageid2idx.json", "errors.tsv"):
        assert (first / "out" / "demo" / name).is_file(), name
    assert json.loads((first / "out/demo/manifest.json").read_text())["feature_dim"] == 518
    assert len(list((first / "out/demo/drawn").glob("*.png"))) == 3 and (first / "out/demo/drawn/index.html").is_file()
    (original,) = [d for k, d in cwd_of.items() if k.startswith("docs/cli.md:")]  # the one bash block there
    row = (original / "OUT" / "predictions.tsv").read_text().splitlines()[0].split("\t")[1]
    assert list(json.loads(row)["objects"][0]) == ["rect", "bbox_id", "class", "conf", "feature"]
    given = {k: json.loads(t)["objects"] for k, t in (ln.split("\t") for ln in
                                                      (original / "GIVEN" / "predictions.tsv").read_text().splitlines())}
    assert {k: len(v) for k, v in given.items()} == {"shapes_a": 2, "shapes_b": 1, "shapes_c": 0}
    assert [d for d in cwd_of.values() if (d / "RUN" / "model_final.pth").is_file()]


# -- the rules themselves -------------------------------------------------------------------------------------
def test_expansion_rules() -> None:
    assert expand("vinvl tsv show FILE --row N | --key K") == [["vinvl", "tsv", "show", "FILE", "--row", "N"],
                                                               ["vinvl", "tsv", "show", "FILE", "--key", "K"]]
    assert expand("vinvl oscar vqa|gqa train|eval") == [["vinvl", "oscar", a, b] for a in ("vqa", "gqa")
                                                        for b in ("train", "eval")]
    assert expand("vinvl x --device cpu|cuda [--html] [--model NAME]") == [["vinvl", "x", "--device", "cpu", "--html"]]
    assert expand("torchrun -m vinvl ...") == [["torchrun", "-m", "vinvl", "--help"]]
    assert expand("vinvl extract --set a=1 ...") == [["vinvl", "extract", "--set", "a=1"]]
    with pytest.raises(AssertionError, match="no stand-in for 'NEWTHING'"):
        stand_ins(["vinvl", "tsv", "check", "NEWTHING"], None)  # type: ignore[arg-type]
    examples = [e.text for e in _all_examples()]
    assert "vinvl extract INPUTS... -o OUT --weights W --labelmap L" in examples  # inline, from README's table
    assert any(t.startswith("vinvl extract --config-file") for t in examples)  # a joined bash continuation


# -- names ----------------------------------------------------------------------------------------------------
def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_vinvl_name_in_the_docs_exists() -> None:
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        names = set(re.findall(r"`(vinvl(?:\.\w+)+)(?:\(\))?`", text))
        for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            for mod, what in re.findall(r"^from (vinvl[\w.]*) import ([\w, ]+)", block, flags=re.M):
                names |= {f"{mod}.{w.strip()}" for w in what.split(",") if w.strip()}
        missing += [f"{doc.name}: {n}" for n in sorted(names) if not _resolves(n)]
    assert not missing, missing
