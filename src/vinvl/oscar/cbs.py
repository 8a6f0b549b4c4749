"""Constrained beam search (CBS), as the original decodes NoCaps (``run_captioning.py --use_cbs``,
``oscar/utils/cbs.py``, itself from nocaps-org/updown-baseline): object classes detected in an image become
lexical constraints, and the caption returned is the best one that contains at least N of them.

The parts, each as the original behaves, quirks kept (docs/oscar.md, "Constrained beam search"):

* **Constraints of an image** (:func:`select_constraints`): its boxes (``{class, conf, rect}``, classes lower-cased)
  less those with ``conf <= 0`` or a :data:`BLACKLIST` class; each class's height in the Open Images hierarchy,
  found by SUBSTRING (the first node in pre-order whose lower-cased name is contained in the class: "hot dog" is
  the Dog node); the hierarchy "NMS", which keeps a box whose height is at least the current one's, or whose IoU
  with it is at most 0.85 -- boxes are visited by ascending height, so it never suppresses anything; the boxes by
  descending confidence, the top 3 taken BEFORE duplicates are dropped; :data:`REPLACEMENTS`; duplicates dropped.
  The original drops them through a ``set`` (an order that follows Python's hash seed); here the first occurrence
  is kept, so the order is that of confidence, and deterministic.
* **Word forms** (:class:`WordForms`): a constraint's words become word pieces (the ``cbs_constraint`` table), at
  most 4 kept; each piece stands for its forms (the ``cbs_tokenforms`` table; a piece without a row is itself).
* **The finite-state machine** (:func:`build_fsm`): ``fsm[from, to, token]`` over 2^3 main states (the bit set of
  satisfied constraints) and 24 sub-states (inside a multi-piece constraint). Constraint n moves every main state
  lacking bit n-1 on its first piece's forms; its other pieces go through sub-states allocated in build order, from
  which any other token returns to the main state. Each connection from a main state re-opens that state's
  self-loop for every token and then closes it on its own forms only, so a constraint added earlier at a state
  both stays and moves on its forms (the original's quirk: the FSM depends on the constraint order).
* **The search** (:func:`constrained_beam_search`): a beam of K per state. The first step scores ``[CLS]`` of the
  batch's FIRST image for every image (the original takes rows ``[:batch]`` of a batch-major expansion), masked
  by the transitions from state 0; each later step gives a finished row (last token ``[SEP]``) 0 for ``[SEP]`` and
  -inf otherwise, disallowed transitions -1e20, takes the top K tokens per (source state, beam), adds the running
  sum and keeps the top K per target state; it stops early when every row is finished; sequences are
  ``max_length - 1`` tokens, ``[SEP]``-padded to ``max_length``.
* **The choice** (:func:`select_best`): beam 0 of each main state with at least ``min(constraints, N)`` bits, its
  sum divided by (its non-``[SEP]`` tokens + 1); the highest wins, the first on a tie.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch

from ..dataset_spec import DatasetSpec
from ..errors import FormatError, VinvlError
from ..textio import display_path, read_json, read_text
from .options import CBSOptions

PathLike = Union[str, os.PathLike]

# cbs.py's ConstraintFilter: classes never made constraints (rare, rarely said, or well covered by COCO) ...
BLACKLIST: frozenset[str] = frozenset({
    "auto part", "bathroom accessory", "bicycle wheel", "boy", "building", "clothing", "door handle",
    "fashion accessory", "footwear", "girl", "hiking equipment", "human arm", "human beard", "human body",
    "human ear", "human eye", "human face", "human foot", "human hair", "human hand", "human head", "human leg",
    "human mouth", "human nose", "land vehicle", "mammal", "man", "person", "personal care", "plant",
    "plumbing fixture", "seat belt", "skull", "sports equipment", "tire", "tree", "vehicle registration plate",
    "wheel", "woman", "__background__",
})
# ... and the class names said otherwise
REPLACEMENTS: dict[str, str] = {
    "band-aid": "bandaid",
    "wood-burning stove": "wood burning stove",
    "kitchen & dining room table": "table",
    "salt and pepper shakers": "salt and pepper",
    "power plugs and sockets": "power plugs",
    "luggage and bags": "luggage",
}
NMS_THRESHOLD = 0.85  # run_captioning's CaptionTSVDatasetWithConstraints defaults
MAX_CONSTRAINTS = 3
MAX_TOKENS = 4  # word pieces per constraint (FiniteStateMachineBuilder's max_words_per_constraint)
MASKED = -1e20  # a disallowed transition's score (the original's, finite: such beams outrank -inf ones)


# -- the files -------------------------------------------------------------------------------------------------
def _lines(path: Path, what: str) -> Iterable[tuple[int, str]]:
    """The non-blank lines of a text file, stripped as the original strips them, with their numbers."""
    for n, line in enumerate(read_text(path, what).splitlines(), start=1):
        if line.strip():
            yield n, line.strip()


def read_boxes(path: PathLike) -> dict[str, list[dict[str, Any]]]:
    """A ``cbs_box`` TSV: ``key \\t [{"class", "conf", "rect": [x1, y1, x2, y2]}, ...]`` -> boxes by image key,
    class names lower-cased (as the original's ``ConstraintBoxesReader``)."""
    path = Path(path)
    out: dict[str, list[dict[str, Any]]] = {}
    for n, line in _lines(path, "CBS box file"):
        parts = line.split("\t")
        if len(parts) != 2:
            raise FormatError(f"expected 2 TAB-separated columns (key, boxes json), found {len(parts)}", display_path(path), n)
        key, text = parts
        try:
            boxes = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"boxes are not valid JSON ({e.msg})", display_path(path), n, key) from None
        if not isinstance(boxes, list):
            raise FormatError("boxes must be a JSON list of {class, conf, rect}", display_path(path), n, key)
        out[key] = [_box(b, path, n, key) for b in boxes]
    return out


def _box(b: Any, path: Path, line: Optional[int], key: str) -> dict[str, Any]:
    ok = (isinstance(b, Mapping) and isinstance(b.get("class"), str) and _number(b.get("conf"))
          and isinstance(b.get("rect"), (list, tuple)) and len(b["rect"]) == 4 and all(_number(v) for v in b["rect"]))
    if not ok:
        raise FormatError(f"a box is not {{\"class\": str, \"conf\": number, \"rect\": [x1, y1, x2, y2]}}: "
                          f"{str(b)[:80]}", display_path(path), line, key)
    return {"class": b["class"].lower(), "conf": float(b["conf"]), "rect": [float(v) for v in b["rect"]]}


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def read_forms(path: PathLike, what: str) -> dict[str, list[str]]:
    """A ``word \\t form1,form2`` table (``cbs_constraint``: a word's pieces; ``cbs_tokenforms``: a piece's forms)."""
    path = Path(path)
    out: dict[str, list[str]] = {}
    for n, line in _lines(path, what):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or not all(parts[1].split(",")):
            raise FormatError("expected 'word<TAB>form1,form2,...'", display_path(path), n)
        out[parts[0]] = parts[1].split(",")
    return out


class ClassHierarchy:
    """The Open Images class hierarchy (``{"LabelName", "Subcategory": [...]}``): each node's height (0: a leaf)."""

    def __init__(self, tree: Mapping[str, Any], source: str = "class hierarchy") -> None:
        """``tree``: the json's root node; ``source``: the file named in errors."""
        self.source = source
        self.nodes: list[tuple[str, int]] = []  # (lower-cased name, height), in pre-order
        self._walk(tree)

    def _walk(self, node: Any) -> int:
        if not isinstance(node, dict) or not isinstance(node.get("LabelName"), str):
            raise FormatError(f"a node is not {{\"LabelName\": str, \"Subcategory\": [...]}}: {json.dumps(node)[:80]}",
                              self.source)
        children = node.get("Subcategory", [])
        if not isinstance(children, list):
            raise FormatError(f"{node['LabelName']!r}: 'Subcategory' must be a list", self.source)
        slot = len(self.nodes)
        self.nodes.append((node["LabelName"].lower(), 0))
        height = max((self._walk(c) + 1 for c in children), default=0)
        self.nodes[slot] = (self.nodes[slot][0], height)
        return height

    @classmethod
    def read(cls, path: PathLike) -> "ClassHierarchy":
        """The hierarchy of a ``cbs_hierarchy`` json file."""
        return cls(read_json(path, expect=dict, what="class hierarchy json"), display_path(path))

    def height(self, class_name: str) -> int:
        """The height of the first node (pre-order) whose name is contained in ``class_name`` (the original's
        substring lookup); a class that contains no node's name is an error naming it."""
        for name, height in self.nodes:
            if name in class_name:
                return height
        raise VinvlError(f"{self.source}: class {class_name!r} matches no node of the hierarchy "
                         "(no node's LabelName is contained in it)")


# -- the constraints of an image --------------------------------------------------------------------------------
@dataclass
class ConstraintSteps:
    """What the filter did to one image's boxes: its classes, those kept, their heights, the NMS order, the result."""

    box_classes: list[str]
    after_blacklist: list[str]
    heights: list[int]
    nms_keep: list[int]
    constraints: list[str]


def _iou_ok(a: Sequence[float], b: Sequence[float], threshold: float) -> bool:
    """Whether two boxes overlap at most ``threshold`` (IoU with the original's +1 pixel sizes)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = w * h
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union <= threshold


def hierarchy_nms(rects: Sequence[Sequence[float]], heights: Sequence[int], threshold: float = NMS_THRESHOLD) -> list[int]:
    """The original's hierarchy NMS: boxes by ascending height (ties in input order; the original's numpy sort leaves
    them in no set order), each kept one dropping later boxes that are higher in the hierarchy AND overlap more
    than ``threshold`` -- which none is, the later ones being at least as high: every index comes back."""
    order = sorted(range(len(heights)), key=lambda i: heights[i])
    keep: list[int] = []
    while order:
        cur, rest = order[0], order[1:]
        keep.append(cur)
        order = [j for j in rest if heights[j] >= heights[cur] or _iou_ok(rects[cur], rects[j], threshold)]
    return keep


def select_constraints(boxes: Sequence[Mapping[str, Any]], hierarchy: ClassHierarchy,
                       max_constraints: int = MAX_CONSTRAINTS, nms_threshold: float = NMS_THRESHOLD) -> ConstraintSteps:
    """An image's constraints from its boxes (``{class, conf, rect}``, classes lower-cased), as the original's
    ``ConstraintFilter``, duplicates dropped by first occurrence (the module's docstring says each step)."""
    classes = [b["class"] for b in boxes]
    kept = [i for i, b in enumerate(boxes) if b["conf"] > 0 and b["class"] not in BLACKLIST]
    names = [classes[i] for i in kept]
    heights = [hierarchy.height(c) for c in names]
    order = hierarchy_nms([boxes[i]["rect"] for i in kept], heights, nms_threshold)
    ranked = sorted(order, key=lambda j: -boxes[kept[j]]["conf"])[:max_constraints]  # top k BEFORE de-duplication
    chosen = list(dict.fromkeys(REPLACEMENTS.get(names[j], names[j]) for j in ranked))
    return ConstraintSteps(classes, names, heights, order, chosen)


class WordForms:
    """The ``cbs_constraint`` table (a word -> its word pieces) and the ``cbs_tokenforms`` table (a piece -> its forms)."""

    def __init__(self, constraint2tokens: Mapping[str, list[str]], tokenforms: Mapping[str, list[str]],
                 constraint_source: str = "constraint2tokens table", forms_source: str = "tokenforms table") -> None:
        """The two tables, and the file names errors give."""
        self.pieces, self.forms = dict(constraint2tokens), dict(tokenforms)
        self.constraint_source, self.forms_source = constraint_source, forms_source

    @classmethod
    def read(cls, constraint2tokens: PathLike, tokenforms: PathLike) -> "WordForms":
        """The tables of a ``cbs_constraint`` and a ``cbs_tokenforms`` file."""
        return cls(read_forms(constraint2tokens, "CBS constraint2tokens file"), read_forms(tokenforms, "CBS tokenforms file"),
                   display_path(constraint2tokens), display_path(tokenforms))

    def tokens(self, constraint: str, max_tokens: int = MAX_TOKENS) -> list[str]:
        """The word pieces of a constraint's words, the first ``max_tokens`` of them; a word without a row is an
        error naming the file and the word."""
        pieces: list[str] = []
        for word in constraint.split():
            if word not in self.pieces:
                raise VinvlError(f"{self.constraint_source}: no row for the word {word!r} (of the constraint "
                                 f"{constraint!r}): every word of a constraint needs its word pieces there")
            pieces += self.pieces[word]
        return pieces[:max_tokens]

    def form_ids(self, constraint: str, tokenizer: Any, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
        """Per word piece of ``constraint``, the token ids of its forms (a form out of the vocabulary is [UNK],
        as ``convert_tokens_to_ids`` makes it in the original)."""
        return [list(tokenizer.convert_tokens_to_ids(self.forms.get(t, [t]))) for t in self.tokens(constraint, max_tokens)]


@dataclass
class ImageConstraints:
    """One image's constraints: their names (FSM bit order), per constraint per word piece the form ids, the filter's
    steps."""

    names: list[str]
    token_forms: list[list[list[int]]]
    steps: Optional[ConstraintSteps] = None


def constraints_for_boxes(boxes: Sequence[Mapping[str, Any]], hierarchy: ClassHierarchy, forms: WordForms, tokenizer: Any,
                          max_constraints: int = MAX_CONSTRAINTS, nms_threshold: float = NMS_THRESHOLD) -> ImageConstraints:
    """An image's constraints and their token forms from its boxes (``[{class, conf, rect}]``: a CBS box file's
    row, or a detector's own boxes), a hierarchy and the two form tables."""
    clean = [_box(b, Path("boxes"), None, "") for b in boxes]
    steps = select_constraints(clean, hierarchy, max_constraints, nms_threshold)
    return ImageConstraints(steps.constraints, [forms.form_ids(c, tokenizer) for c in steps.constraints], steps)


@dataclass
class CBSFiles:
    """The four CBS files: boxes (None: the boxes come from elsewhere, e.g. a detector), constraint2tokens, tokenforms,
    class hierarchy."""

    box: Optional[Path]
    constraint: Path
    tokenforms: Path
    hierarchy: Path

    @classmethod
    def of(cls, options: CBSOptions, spec: Optional[DatasetSpec] = None, boxes: bool = True) -> "CBSFiles":
        """Each file as ``options`` name it (``--cbs-box`` ...), else as the split yaml ``spec`` does (``cbs_box``,
        ``cbs_constraint``, ``cbs_tokenforms``, ``cbs_hierarchy``, by the yaml path rule); one missing is an error
        (the box file only when ``boxes``)."""
        found: list[Optional[Path]] = []
        for name in ("cbs_box", "cbs_constraint", "cbs_tokenforms", "cbs_hierarchy"):
            given = getattr(options, name)
            flag = "--" + name.replace("_", "-")
            if given is not None:
                path = Path(given)
                if not path.is_file():
                    raise VinvlError(f"{flag} {display_path(path)}: no such file")
            elif spec is not None and name in spec:
                path = spec.file(name)
            elif name == "cbs_box" and not boxes:
                path = None
            else:
                where = f"{spec.path} names no '{name}'" if spec is not None else "no split yaml names it"
                raise VinvlError(f"constrained beam search needs the {name[4:]} file: {where}; give {flag}")
            found.append(path)
        return cls(*found)  # type: ignore[arg-type]


@dataclass
class CBSData:
    """What CBS decodes with: each image's boxes, the hierarchy and the word forms, and its options."""

    boxes: dict[str, list[dict[str, Any]]]
    hierarchy: ClassHierarchy
    forms: WordForms
    options: CBSOptions = field(default_factory=CBSOptions)
    box_source: str = "the boxes"  # what errors about an image's boxes name

    @classmethod
    def read(cls, files: CBSFiles, options: CBSOptions = CBSOptions(),
             boxes: Optional[Mapping[Any, Sequence[Mapping[str, Any]]]] = None, box_source: str = "the detector's boxes"
             ) -> "CBSData":
        """Read the files (one-line errors naming a file and line); ``boxes`` (by image key, ``[{class, conf, rect}]``,
        e.g. a detector's own) instead of a box file."""
        if boxes is None:
            if files.box is None:
                raise VinvlError("constrained beam search needs boxes: give a box file (--cbs-box)")
            found, box_source = read_boxes(files.box), display_path(files.box)
        else:
            found = {str(k): [_box(b, Path(box_source), None, str(k)) for b in v] for k, v in boxes.items()}
        return cls(found, ClassHierarchy.read(files.hierarchy), WordForms.read(files.constraint, files.tokenforms),
                   options, box_source)

    @classmethod
    def open(cls, options: CBSOptions, spec: Optional[DatasetSpec] = None,
             boxes: Optional[Mapping[Any, Sequence[Mapping[str, Any]]]] = None) -> "CBSData":
        """The files ``options`` or the split yaml ``spec`` name (:meth:`CBSFiles.of`), read; ``boxes``: as :meth:`read`."""
        return cls.read(CBSFiles.of(options, spec, boxes=boxes is None), options, boxes)

    def steps(self, key: Any) -> ConstraintSteps:
        """The constraint filter on image ``key``'s boxes (none when there is no row for it, as the original); errors
        name the image."""
        try:
            steps = select_constraints(self.boxes.get(str(key), []), self.hierarchy, self.options.max_constraints,
                                       self.options.nms_threshold)
            for c in steps.constraints:
                self.forms.tokens(c)
        except VinvlError as e:
            raise VinvlError(f"image {str(key)!r} of {self.box_source}: {e}") from None
        return steps

    def check(self, keys: Iterable[Any]) -> None:
        """Every image's constraints found and spelled in word pieces (before any decoding)."""
        for key in keys:
            self.steps(key)

    def image(self, key: Any, tokenizer: Any) -> ImageConstraints:
        """The constraints of image ``key`` and their form ids."""
        steps = self.steps(key)
        return ImageConstraints(steps.constraints, [self.forms.form_ids(c, tokenizer) for c in steps.constraints], steps)


# -- the finite-state machine ----------------------------------------------------------------------------------
def fsm_size(token_forms: Sequence[Sequence[Sequence[int]]], max_constraints: int = MAX_CONSTRAINTS,
             max_tokens: int = MAX_TOKENS) -> int:
    """The states an FSM of these constraints needs: the original's ``2^max_constraints * max_tokens`` (32), more only
    where its sub-states would run out (where the original fails with an IndexError)."""
    main = 2 ** max_constraints
    used = sum((len(pieces) - 1) * main // 2 for pieces in token_forms)  # each constraint: its pieces but the last,
    return max(main * max_tokens, main + used)                             # from every main state lacking its bit


def build_fsm(token_forms: Sequence[Sequence[Sequence[int]]], vocab_size: int, num_states: Optional[int] = None,
              max_constraints: int = MAX_CONSTRAINTS) -> tuple[torch.Tensor, int]:
    """``(fsm [S, S, V] bool, next free sub-state)`` of constraints given as per constraint, per word piece, its form
    ids: ``fsm[a, b, t]`` = token ``t`` moves state ``a`` to ``b`` (the original's ``FiniteStateMachineBuilder``)."""
    if len(token_forms) > max_constraints:
        raise VinvlError(f"{len(token_forms)} constraints: at most {max_constraints}")
    main = 2 ** max_constraints
    S = num_states if num_states is not None else fsm_size(token_forms, max_constraints)
    if S < fsm_size(token_forms, max_constraints):
        raise VinvlError(f"the FSM of these constraints needs {fsm_size(token_forms, max_constraints)} states, not {S}")
    fsm = torch.zeros(S, S, vocab_size, dtype=torch.bool)
    fsm[torch.arange(main), torch.arange(main)] = True
    sub = main
    for n, pieces in enumerate(token_forms):
        bit = 1 << n
        for state in (s for s in range(main) if not s & bit):
            src = state
            for j, ids in enumerate(pieces):
                bad = [i for i in ids if not 0 <= i < vocab_size]
                if bad:
                    raise VinvlError(f"token id {bad[0]} is outside the model's vocabulary of {vocab_size}")
                last = j == len(pieces) - 1
                dst = state + bit if last else sub
                idx = torch.tensor(ids, dtype=torch.long)
                fsm[src, dst, idx] = True
                # every connection re-opens the source's reset row (the main state's own self-loop, when the
                # source is that state) for all tokens and closes it on these forms only
                fsm[src, src, :] = False
                fsm[src, state, :] = True
                fsm[src, state, idx] = False
                if not last:
                    src, sub = sub, sub + 1
    return fsm, sub


# -- the search -------------------------------------------------------------------------------------------------
StepFn = Callable[[torch.Tensor], torch.Tensor]
ReorderFn = Callable[[torch.Tensor], None]


@dataclass
class CBSOutput:
    """Per image, state and beam: token ids ``[B, S, K, max_length]`` and their summed log-probs ``[B, S, K]``."""

    beams: torch.Tensor
    logprobs: torch.Tensor


def _mask_kinds(fsm: torch.Tensor) -> torch.Tensor:
    """``[B, S_src, S_dst]``: 0 no token moves src to dst, 1 every token does, 2 some do."""
    some, every = fsm.any(-1), fsm.all(-1)
    return torch.where(every, 1, torch.where(some, 2, 0))


def _masked_topk(logp: torch.Tensor, fsm: torch.Tensor, kinds: torch.Tensor, k: int, filler: torch.Tensor,
                 chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` tokens of every (source state, beam) row of ``logp [B, S, K, V]`` after the moves to each target state
    are masked (disallowed: -1e20): values and tokens ``[B, S_dst, S_src, K, k]``, computed only where a mask is partial
    (a full mask is the row's own top k, an empty one a constant row's)."""
    B, S, K, V = logp.shape
    top, cls = logp.topk(k, dim=-1)  # every token allowed
    val = top[:, None].expand(B, S, S, K, k).clone()  # [B, dst, src, K, k]
    tok = cls[:, None].expand(B, S, S, K, k).clone()
    empty = (kinds == 0).transpose(1, 2)  # [B, dst, src]
    val[empty] = MASKED
    tok[empty] = filler
    b, src, dst = (kinds == 2).nonzero(as_tuple=True)
    for s in range(0, len(b), chunk):
        bb, ss, dd = b[s : s + chunk], src[s : s + chunk], dst[s : s + chunk]
        rows = logp[bb, ss].masked_fill(~fsm[bb, ss, dd][:, None, :], MASKED)  # [P, K, V]
        pv, pt = rows.topk(k, dim=-1)
        val[bb, dd, ss], tok[bb, dd, ss] = pv, pt
    return val, tok


def constrained_beam_search(step: StepFn, reorder: Optional[ReorderFn], fsm: torch.Tensor, num_beams: int,
                            max_length: int, bos_token_id: int, eos_token_id: int, first_step_group: Optional[int] = None
                            ) -> CBSOutput:
    """Beam search per FSM state, as the original's ``ConstrainedBeamSearch.search`` (the module's docstring).

    ``fsm [B, S, S, V]`` (bool); ``step``: ids ``[B*S*K, t]`` (``[CLS]`` + the tokens so far, rows image-major, then
    state, then beam) -> next-token logits ``[B*S*K, V]``; ``reorder``: the rows each row continues after a step
    (``[B*S*K]`` indices), for a step function that keeps state. ``first_step_group``: the first step of each image
    is that of the first image of its group of this many (None: of the batch's first image, the original's ``[:B]``
    rows). Returns sums of log-probs, not normalised.
    """
    B, S, _, V = fsm.shape
    K, dev = num_beams, fsm.device
    N = B * S * K
    ids = torch.full((N, 1), bos_token_id, dtype=torch.long, device=dev)
    logp = torch.log_softmax(step(ids).float(), dim=-1)
    # the original scores the first B rows of a batch-major expansion: image 0's, for every image of the batch
    if first_step_group is None:
        first = logp[:B]
    else:
        first = logp.view(B, S * K, V)[torch.arange(B, device=dev) // first_step_group * first_step_group, 0]
    start = first[:, None, :].expand(B, S, V).masked_fill(~fsm[:, 0], float("-inf"))
    last, tokens = start.topk(K, dim=-1)  # [B, S, K]
    seqs = tokens.reshape(N, 1)
    after_end = torch.full((V,), float("-inf"), device=dev)
    after_end[eos_token_id] = 0.0
    kinds = _mask_kinds(fsm)
    filler = torch.full((V,), MASKED, device=dev).topk(K).indices  # a fully disallowed row's tokens
    chunk = max(1, (1 << 26) // max(1, K * V))
    base = (torch.arange(B, device=dev) * (S * K))[:, None]
    for _ in range(max_length - 2):
        finished = seqs[:, -1] == eos_token_id
        if bool(finished.all()):
            break
        logp = torch.log_softmax(step(torch.cat([ids, seqs], dim=1)).float(), dim=-1)
        logp = torch.where(finished[:, None], after_end, logp).view(B, S, K, V)
        val, tok = _masked_topk(logp, fsm, kinds, K, filler, chunk)  # [B, dst, src, K, K]
        summed = (val + last[:, None, :, :, None]).reshape(B, S, S * K * K)
        last, idx = summed.topk(K, dim=-1)  # [B, dst, K]
        new = tok.reshape(B, S, S * K * K).gather(2, idx)
        rows = (base + (idx // K).reshape(B, S * K)).reshape(N)
        seqs = torch.cat([seqs[rows], new.reshape(N, 1)], dim=1)
        if reorder is not None:
            reorder(rows)
    beams = torch.full((N, max_length), eos_token_id, dtype=torch.long, device=dev)
    beams[:, : seqs.shape[1]] = seqs
    return CBSOutput(beams.view(B, S, K, max_length), last)


def valid_states(num_constraints: int, min_constraints: int) -> list[int]:
    """The main states a caption may end in: those of the given constraints with at least ``min(num, min)`` of them."""
    need = min(num_constraints, min_constraints)
    return [s for s in range(2 ** num_constraints) if bin(s).count("1") >= need]


def select_best(out: CBSOutput, num_constraints: Sequence[int], min_constraints: int, eos_token_id: int
                ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per image: the best beam of the valid states (:func:`valid_states`), by its sum over (non-``[SEP]`` tokens + 1),
    the first state on a tie: ids ``[B, max_length]``, that score ``[B]``, the state chosen."""
    ids, scores, states = [], [], []
    for b, n in enumerate(num_constraints):
        valid = valid_states(int(n), min_constraints)
        beams = out.beams[b, valid, 0]
        length = (beams != eos_token_id).sum(1) + 1
        norm = out.logprobs[b, valid, 0] / length
        best = int(norm.argmax())
        ids.append(beams[best])
        scores.append(norm[best])
        states.append(valid[best])
    return torch.stack(ids), torch.stack(scores), states


__all__ = [
    "BLACKLIST", "CBSData", "CBSFiles", "CBSOutput", "ClassHierarchy", "ConstraintSteps",
    "ImageConstraints", "REPLACEMENTS", "WordForms", "build_fsm", "constrained_beam_search", "constraints_for_boxes",
    "fsm_size", "hierarchy_nms", "read_boxes", "read_forms", "select_best", "select_constraints", "valid_states",
]
