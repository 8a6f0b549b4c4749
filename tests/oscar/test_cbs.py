"""Constrained beam search (vinvl.oscar.cbs) against the ORIGINAL's NoCaps decoding (../shared/reference/oscar/cbs:
run_captioning.py --do_test --use_cbs, beam 5, max length 20, at least 2 constraints), and its quirks on hand-made
cases: the filter, the FSM, the search (against a plain transcription of the original's loop) and the choice."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vinvl.errors import FormatError, VinvlError
from vinvl.oscar import cbs
from vinvl.oscar.options import CBSOptions

RUN = "beam5_max20_min2"


@pytest.fixture(scope="module")
def ref(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "oscar" / "cbs"


@pytest.fixture(scope="module")
def expected(ref: Path) -> dict:
    return json.loads((ref / "expected.json").read_text())["runs"][RUN]["images"]


def files(ref: Path) -> cbs.CBSFiles:
    d = ref / "data"
    return cbs.CBSFiles(d / "cbs_boxes.tsv", d / "constraint2tokens.tsv", d / "tokenforms.tsv", d / "class_hierarchy.json")


# -- the original's outputs ------------------------------------------------------------------------------------
def test_constraint_filter_reproduces_the_original(ref: Path, expected: dict) -> None:
    data = cbs.CBSData.read(files(ref))
    for key, e in expected.items():
        steps, f = data.steps(key), e["constraint_filter"]
        assert set(steps.constraints) == set(e["constraints"]), key
        assert len(steps.constraints) == e["num_constraints"]
        assert (steps.box_classes, steps.after_blacklist, steps.heights) == (f["box_classes"], f["after_blacklist"],
                                                                           f["heights"]), key
        # the original's numpy sort orders equal heights arbitrarily; by height, the same boxes, and nothing suppressed
        assert sorted(steps.nms_keep) == sorted(f["nms_keep"]) == list(range(len(f["after_blacklist"])))
        assert [f["heights"][i] for i in steps.nms_keep] == [f["heights"][i] for i in f["nms_keep"]]


def test_fsm_reproduces_the_original(ref: Path, expected: dict) -> None:
    """Built in the original's constraint order, the FSM is the original's bit for bit (the hash covers the order)."""
    from vinvl.oscar.tensorize import load_tokenizer

    tok = load_tokenizer(ref / "ckpt")
    forms = cbs.CBSData.read(files(ref)).forms
    for key, e in expected.items():
        ids = [forms.form_ids(c, tok) for c in e["constraints"]]
        assert ids == e["constraint_token_ids"], key
        fsm, next_substate = cbs.build_fsm(ids, e["fsm"]["vocab_size"])
        assert fsm.shape == (e["fsm"]["num_states"], e["fsm"]["num_states"], e["fsm"]["vocab_size"])
        assert next_substate == e["fsm"]["next_substate_idx"] and int(fsm.sum()) == e["fsm"]["num_transitions"], key
        assert hashlib.sha256(fsm.to(torch.uint8).numpy().tobytes()).hexdigest() == e["fsm"]["sha256"], key
        assert cbs.valid_states(len(ids), 2) == e["valid_states"]


@pytest.fixture(scope="module")
def captioner(ref: Path) -> tuple:
    from vinvl.oscar.data.captions import CaptionData
    from vinvl.oscar.tasks.captioning import load_captioner

    return (*load_captioner(ref / "ckpt"), CaptionData(ref / "data" / "test.yaml"))


def run_cbs(captioner: tuple, constraints: dict, keys: list, max_length: int, batch: int, use_cache: bool) -> dict:
    """CBS of ``keys`` with the given constraints (in that order), ``batch`` images per batch as the original."""
    from vinvl.oscar.generate import generate_constrained
    from vinvl.oscar.tasks.base import stack
    from vinvl.oscar.tasks.captioning import decode_kwargs, decode_tensorizer, decoding_layout, special_ids, texts

    model, tok, settings, data = captioner
    forms = cbs.CBSData.read(files(Path(data.name).parents[1])).forms
    lay = decoding_layout(settings, max_length)
    t = decode_tensorizer(tok, lay)
    out = {}
    for s in range(0, len(keys), batch):
        chunk = keys[s : s + batch]
        inputs = stack([t.decode_inputs(data.tags(k), data.regions(k)) for k in chunk])
        ids = [[forms.form_ids(c, tok) for c in constraints[k]] for k in chunk]
        fsm = torch.stack([cbs.build_fsm(i, model.config.vocab_size)[0] for i in ids])
        res = generate_constrained(model, **decode_kwargs(inputs, lay, torch.device("cpu")), fsm=fsm,
                                   num_constraints=[len(i) for i in ids], num_beams=5, min_constraints=2,
                                   use_cache=use_cache, **special_ids(tok))
        for i, (k, cap) in enumerate(zip(chunk, texts(tok, res.token_ids[:, 0]))):
            out[k] = {"batch": inputs, "row": i, "ids": res.token_ids[i, 0].tolist(), "caption": cap,
                      "score": float(res.logprobs[i, 0]), "state": res.states[i], "beams": res.beams.beams[i].numpy(),
                      "logprobs": res.beams.logprobs[i].numpy()}
    return out


@pytest.fixture(scope="module")
def decoded(captioner: tuple, expected: dict) -> dict:
    """The library's CBS of the six images in batches of 2 as the original, in the original's constraint order (so that
    states and beams compare index for index); cached (test_cache_changes_nothing: the original's uncached steps)."""
    return run_cbs(captioner, {k: e["constraints"] for k, e in expected.items()}, list(expected), 20, 2, True)


def test_cache_changes_nothing(captioner: tuple, expected: dict) -> None:
    """The original decodes uncached; the cache (per-image region keys/values, whole history reordered) gives the same."""
    keys = ["nc0003", "nc0004"]
    cons = {k: expected[k]["constraints"] for k in keys}
    a, b = run_cbs(captioner, cons, keys, 8, 2, False), run_cbs(captioner, cons, keys, 8, 2, True)
    for k in keys:
        assert a[k]["ids"] == b[k]["ids"] and abs(a[k]["score"] - b[k]["score"]) < 1e-5
        real = a[k]["logprobs"] > -1e19
        assert (a[k]["beams"][real] == b[k]["beams"][real]).all()
        assert np.abs(a[k]["logprobs"][real] - b[k]["logprobs"][real]).max() < 1e-4


def test_decoding_reproduces_the_original(ref: Path, expected: dict, decoded: dict) -> None:
    z = np.load(ref / "expected.npz")
    for key, e in expected.items():
        got = decoded[key]
        row = got["row"]
        assert got["batch"]["input_ids"][row].tolist() == z[f"{RUN}/{key}/input_ids"].tolist(), key
        assert got["batch"]["token_type_ids"][row].tolist() == z[f"{RUN}/{key}/token_type_ids"].tolist(), key
        assert got["ids"] == e["token_ids"] and got["caption"] == e["caption"], key
        assert abs(got["score"] - e["score"]) < 1e-4 and abs(math.exp(got["score"]) - e["conf"]) < 1e-4, key
        assert got["state"] == e["best_state"], key
        # every state's beams where the state was reached (the others hold -inf / -1e20 and arbitrary tokens)
        want_lp = z[f"{RUN}/{key}/state_beam_logprobs"]
        real = want_lp > -1e19
        assert ((got["logprobs"] > -1e19) == real).all(), key
        assert (got["beams"][real] == z[f"{RUN}/{key}/state_beams"][real]).all(), key
        assert np.abs(got["logprobs"][real] - want_lp[real]).max() < 1e-4, key


def test_cli_reproduces_the_original(ref: Path, expected: dict, tmp_path: Path, capsys) -> None:
    """The command line of the issue (cached decoding, constraints in first-occurrence order), every output, and the
    NoCaps submission json."""
    from vinvl.cli import main

    info = tmp_path / "nocaps_val_image_info.json"
    info.write_text(json.dumps({"images": [{"id": 100 + i, "file_name": f"{k}.jpg"} for i, k in enumerate(expected)]}))
    out = tmp_path / "out"
    code = main(["oscar", "caption", "eval", str(ref / "ckpt"), str(ref / "data" / "test.yaml"), "-o", str(out), "--cbs",
                 "--num-beams", "5", "--max-gen-length", "20", "--min-constraints", "2", "--no-metrics",
                 "--nocaps-image-info", str(info)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["images"] == len(expected)
    results = json.loads((out / "results.json").read_text())
    assert [r["image_id"] for r in results] == list(expected)
    assert [r["caption"] for r in results] == [e["caption"] for e in expected.values()]
    rows = [line.split("\t") for line in (out / "predictions.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == list(expected)
    for (key, pred), e in zip(rows, expected.values()):
        pred = json.loads(pred)
        assert len(pred) == 1 and set(pred[0]) == {"caption", "conf"}, pred
        assert pred[0]["caption"] == e["caption"] and abs(pred[0]["conf"] - e["conf"]) < 1e-4, key
    cons = dict(line.split("\t") for line in (out / "constraints.tsv").read_text().splitlines())
    assert {k: set(json.loads(v)) for k, v in cons.items()} == {k: set(e["constraints"]) for k, e in expected.items()}
    assert json.loads(cons["nc0002"]) == ["dog", "cat", "car"]  # first occurrence = by confidence, not hash order
    sub = json.loads((out / "nocaps_submission.json").read_text())
    assert sub == [{"image_id": 100 + i, "caption": e["caption"]} for i, e in enumerate(expected.values())]


# -- the quirks, on hand-made cases ----------------------------------------------------------------------------
TREE = {"LabelName": "__background__", "Subcategory": [
    {"LabelName": "Animal", "Subcategory": [{"LabelName": "Dog", "Subcategory": [{"LabelName": "Puppy"}]},
                                            {"LabelName": "Cat"}]},
    {"LabelName": "Furniture", "Subcategory": [{"LabelName": "Table", "Subcategory": [
        {"LabelName": "Kitchen & dining room table"}]}]},
    {"LabelName": "Person"},
]}


def box(name: str, conf: float, rect=(0, 0, 10, 10)) -> dict:
    return {"class": name, "conf": conf, "rect": list(rect)}


def test_hierarchy_lookup_is_a_substring_match() -> None:
    h = cbs.ClassHierarchy(TREE)
    assert h.height("dog") == 1 and h.height("hot dog") == 1  # "dog" is contained in "hot dog": the Dog node
    assert h.height("animal") == 2 and h.height("puppy") == 0
    # the first node in pre-order contained in the class: "table" (Table, height 1) before the leaf itself
    assert h.height("kitchen & dining room table") == 1
    with pytest.raises(VinvlError, match="class 'fish' matches no node"):
        h.height("fish")


def test_filter_takes_the_top_three_before_dropping_duplicates() -> None:
    h = cbs.ClassHierarchy(TREE)
    steps = cbs.select_constraints([box("dog", 0.9), box("animal", 0.95), box("dog", 0.85), box("cat", 0.4)], h)
    assert steps.constraints == ["animal", "dog"]  # cat, 4th by confidence, is lost to the duplicate dog
    assert steps.nms_keep == [3, 0, 2, 1]  # ascending height (ties in input order); nothing suppressed


def test_filter_blacklist_zero_scores_and_replacements() -> None:
    h = cbs.ClassHierarchy(TREE)
    steps = cbs.select_constraints([box("person", 0.99), box("puppy", 0.0), box("kitchen & dining room table", 0.5),
                                    box("table", 0.4), box("cat", 0.3)], h)
    assert steps.after_blacklist == ["kitchen & dining room table", "table", "cat"]
    assert steps.constraints == ["table", "cat"]  # replaced, then the two "table"s are one
    assert cbs.select_constraints([], h).constraints == []


def test_hierarchy_nms_never_suppresses() -> None:
    """A box is kept when its height is at least the kept one's or their IoU is at most 0.85; visited by ascending
    height, every later box is at least as high: the parent over a nearly identical child box stays."""
    rects = [(0, 0, 100, 100), (1, 0, 100, 101), (0, 0, 100, 100)]
    assert cbs.hierarchy_nms(rects, [3, 1, 1]) == [1, 2, 0]
    assert cbs.hierarchy_nms([], []) == []


def test_fsm_self_loop_quirk() -> None:
    """Each connection from a main state re-opens its self-loop for every token and closes it on its own forms: only
    the last constraint added at a state leaves it on its tokens; the earlier ones both stay and move."""
    fsm, nxt = cbs.build_fsm([[[10, 11]], [[20]]], vocab_size=30)
    assert fsm.shape == (32, 32, 30) and nxt == 8
    assert fsm[0, 1, 10] and fsm[0, 1, 11] and fsm[0, 0, 10] and fsm[0, 0, 11]  # constraint 1, re-opened by 2
    assert fsm[0, 2, 20] and not fsm[0, 0, 20]  # constraint 2, the last added at state 0
    assert fsm[2, 3, 10] and not fsm[2, 2, 10]  # at state 2 only constraint 1 connects
    assert fsm[1, 3, 20] and not fsm[1, 1, 20] and fsm[1, 1, 10]  # at state 1 only constraint 2 does
    assert fsm[3, 3].all() and not fsm[3, :3].any()  # every constraint satisfied: a full self-loop
    assert not fsm[0, 3].any() and fsm[:8, 8:].sum() == 0 and fsm[8:].sum() == 0  # no sub-state used


def test_fsm_sub_states_of_a_multi_piece_constraint() -> None:
    """A 2-piece constraint ("um ##brella"): a sub-state per main state lacking it, allocated from 8 in build order;
    from a sub-state the second piece's forms finish the constraint and any other token returns to the main state."""
    fsm, nxt = cbs.build_fsm([[[5], [6, 7]]], vocab_size=12)
    assert nxt == 12
    for main, sub in zip((0, 2, 4, 6), (8, 9, 10, 11)):
        assert fsm[main, sub, 5] and not fsm[main, main, 5] and fsm[main, main, 6]
        assert fsm[sub, main + 1, 6] and fsm[sub, main + 1, 7] and not fsm[sub, main + 1, 5]
        others = torch.ones(12, dtype=torch.bool)
        others[[6, 7]] = False
        assert (fsm[sub, main] == others).all() and not fsm[sub, sub].any()
    # more pieces than the original's 32 states hold: more sub-states (the original fails with an IndexError)
    four = [[[i], [i + 1], [i + 2], [i + 3]] for i in (0, 4, 8)]
    assert cbs.fsm_size(four) == 8 + 3 * 3 * 4
    assert cbs.build_fsm(four, vocab_size=12)[1] == 44
    assert cbs.fsm_size([[[1], [2], [3]]] * 3) == 32


def test_valid_states_and_the_choice() -> None:
    assert cbs.valid_states(3, 2) == [3, 5, 6, 7]
    assert cbs.valid_states(1, 2) == [1]  # fewer constraints than asked: all of them
    assert cbs.valid_states(0, 2) == [0]
    assert cbs.valid_states(2, 0) == [0, 1, 2, 3]
    eos, L = 3, 6
    beams = torch.full((1, 8, 2, L), eos)
    logprobs = torch.full((1, 8, 2), -1e20)
    beams[0, 1, 0, :5] = torch.tensor([9, 9, 9, 9, 9])  # 5 tokens: -6.0 / 6 = -1.0
    logprobs[0, 1, 0] = -6.0
    beams[0, 2, 0, :2] = torch.tensor([9, 9])  # 2 tokens: -3.0 / 3 = -1.0, a tie: the first state wins
    logprobs[0, 2, 0] = -3.0
    beams[0, 3, 0, :3] = torch.tensor([9, 9, 9])  # 3 tokens: -2.8 / 4 = -0.7, the best
    logprobs[0, 3, 0] = -2.8
    beams[0, 0, 0, :1] = 9
    logprobs[0, 0, 0] = -0.1  # state 0 satisfies none
    out = cbs.CBSOutput(beams, logprobs)
    ids, score, states = cbs.select_best(out, [2], 1, eos)
    assert states == [3] and abs(float(score[0]) + 0.7) < 1e-6
    worse = cbs.CBSOutput(beams, logprobs.index_fill(1, torch.tensor([3]), -50.0))  # state 3 now the worst
    ids, score, states = cbs.select_best(worse, [2], 1, eos)
    assert states == [1] and float(score[0]) == -1.0 and ids[0].tolist() == [9, 9, 9, 9, 9, eos]
    assert cbs.select_best(worse, [2], 2, eos)[2] == [3]  # at least 2: state 3 alone is valid
    assert cbs.select_best(out, [0], 2, eos)[2] == [0]


# -- the search against a plain transcription of the original's loop -----------------------------------------
class ToyModel:
    """Deterministic next-token logits of a prefix and its image (rows never leave their image)."""

    def __init__(self, vocab: int, images: int, rows_per_image: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(vocab, 8, generator=g)
        self.pos = torch.randn(32, 8, generator=g)
        self.img = torch.randn(images, 8, generator=g)
        self.out = torch.randn(8, vocab, generator=g) * 2
        self.rows = rows_per_image

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        image = torch.arange(ids.shape[0]) // self.rows
        h = (self.emb[ids] * self.pos[: ids.shape[1]]).sum(1) + self.img[image]
        return torch.tanh(h) @ self.out


def original_search(step, fsm: torch.Tensor, K: int, L: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's ConstrainedBeamSearch.search loop, transcribed (per target state: mask, top K per row, add,
    top K), keeping whole sequences instead of backpointers."""
    B, S, _, V = fsm.shape
    ids = torch.full((B * S * K, 1), 2)
    logp = torch.log_softmax(step(ids), -1)[:B]
    last, tok = logp[:, None].expand(B, S, V).masked_fill(~fsm[:, 0], float("-inf")).topk(K)
    seqs = tok.reshape(-1, 1)
    end = torch.full((V,), float("-inf"))
    end[eos] = 0
    for _ in range(L - 2):
        fin = seqs[:, -1] == eos
        if fin.all():
            break
        lp = torch.where(fin[:, None], end, torch.log_softmax(step(torch.cat([ids, seqs], 1)), -1)).view(B, S, K, V)
        new_tok, new_lp, back = torch.empty(B, S, K, dtype=torch.long), torch.empty(B, S, K), torch.empty(B, S, K, dtype=torch.long)
        for i in range(S):
            top, cls = lp.masked_fill(~fsm[:, :, i, None, :], -1e20).topk(K)
            summed = (top + last[..., None]).reshape(B, -1)
            v, j = summed.topk(K)
            new_tok[:, i], new_lp[:, i], back[:, i] = cls.reshape(B, -1).gather(1, j), v, j // K
        rows = (torch.arange(B)[:, None] * S * K + back.reshape(B, -1)).reshape(-1)
        seqs = torch.cat([seqs[rows], new_tok.reshape(-1, 1)], 1)
        last = new_lp
    full = torch.full((B * S * K, L), eos)
    full[:, : seqs.shape[1]] = seqs
    return full.view(B, S, K, L), last


@pytest.mark.parametrize("K,L,eos", [(3, 7, 3), (2, 9, 4)])
def test_search_equals_the_originals_loop(K: int, L: int, eos: int) -> None:
    """Three constraints, one of two pieces, one with two forms; EOS a likely token (finished rows) or not."""
    V = 16
    images = [[[[5, 6]], [[7], [8, 9]], [[10]]], [[[11]], [[12, 13]]]]
    fsm = torch.stack([cbs.build_fsm(c, V)[0] for c in images])
    S = fsm.shape[1]
    model = ToyModel(V, len(images), S * K, seed=K)
    want_beams, want_lp = original_search(model, fsm, K, L, eos)
    got = cbs.constrained_beam_search(model, None, fsm, K, L, 2, eos)
    real = want_lp > -1e19
    assert ((got.logprobs > -1e19) == real).all()
    assert torch.equal(got.beams[real], want_beams[real]) and torch.equal(got.logprobs[real], want_lp[real])
    for n, m in ((2, 2), (1, 0)):
        a = cbs.select_best(got, [3, 2], n, eos)
        b = cbs.select_best(cbs.CBSOutput(want_beams, want_lp), [3, 2], n, eos)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_first_step_groups_equal_the_originals_batches() -> None:
    """Every image of the original's batch starts from the batch's first image's first step; groups of 2 in one
    batch of 4 give what two batches of 2 give."""
    V, K, L = 16, 2, 6
    images = [[[[5]], [[7]]], [[[8]]], [[[9], [10]]], []]
    fsm = torch.stack([cbs.build_fsm(c, V)[0] for c in images])
    S = fsm.shape[1]
    model = ToyModel(V, 4, S * K, seed=3)
    whole = cbs.constrained_beam_search(model, None, fsm, K, L, 2, 3, first_step_group=2)
    for s in (0, 2):
        part = cbs.constrained_beam_search(_Shift(model, s), None, fsm[s : s + 2], K, L, 2, 3)
        assert torch.equal(part.beams, whole.beams[s : s + 2]) and torch.allclose(part.logprobs, whole.logprobs[s : s + 2])
    alone = cbs.constrained_beam_search(model, None, fsm, K, L, 2, 3, first_step_group=1)
    assert not torch.equal(alone.logprobs, whole.logprobs)  # the quirk shows


class _Shift(ToyModel):
    """The toy model seen from image ``start`` on (a batch that starts there)."""

    def __init__(self, model: ToyModel, start: int) -> None:
        self.__dict__.update(model.__dict__)
        self.img = model.img[start:]


# -- files and errors ------------------------------------------------------------------------------------------
def test_readers_and_one_line_errors(tmp_path: Path) -> None:
    boxes = tmp_path / "boxes.tsv"
    boxes.write_text('a\t[{"class": "Dog", "conf": 0.5, "rect": [0, 0, 1, 1]}]\n\nb\t[]\n')
    assert cbs.read_boxes(boxes) == {"a": [{"class": "dog", "conf": 0.5, "rect": [0.0, 0.0, 1.0, 1.0]}], "b": []}
    for text, line, what in (('a\t[{"class": "Dog"}]\n', 1, "a box is not"), ("a\n", 1, "expected 2"),
                             ('a\t[]\nb\t{"x": 1\n', 2, "not valid JSON")):
        boxes.write_text(text)
        with pytest.raises(FormatError, match=what) as e:
            cbs.read_boxes(boxes)
        assert f"{boxes}:{line}" in str(e.value) and "\n" not in str(e.value)
    table = tmp_path / "forms.tsv"
    table.write_text("dog\tdog,dogs\numbrella\tum,##brella\n")
    assert cbs.read_forms(table, "table") == {"dog": ["dog", "dogs"], "umbrella": ["um", "##brella"]}
    table.write_text("dog\tdog\ncat dogs\n")
    with pytest.raises(FormatError, match=f"{table}:2: expected 'word<TAB>"):
        cbs.read_forms(table, "table")
    forms = cbs.WordForms({"hot": ["hot"]}, {}, "c2t.tsv", "forms.tsv")
    with pytest.raises(VinvlError, match="c2t.tsv: no row for the word 'dog' \\(of the constraint 'hot dog'\\)"):
        forms.tokens("hot dog")
    hier = tmp_path / "h.json"
    hier.write_text('{"LabelName": "root", "Subcategory": [{"Name": "x"}]}')
    with pytest.raises(FormatError, match="a node is not"):
        cbs.ClassHierarchy.read(hier)


def test_cbs_files_from_the_yaml_or_the_options(ref: Path, tmp_path: Path) -> None:
    from vinvl.dataset_spec import DatasetSpec

    spec = DatasetSpec(ref / "data" / "test.yaml")
    assert cbs.CBSFiles.of(CBSOptions(), spec) == files(ref)
    mine = tmp_path / "h.json"
    mine.write_text(json.dumps(TREE))
    assert cbs.CBSFiles.of(CBSOptions(cbs_hierarchy=mine), spec).hierarchy == mine
    with pytest.raises(VinvlError, match="--cbs-box .*: no such file"):
        cbs.CBSFiles.of(CBSOptions(cbs_box=tmp_path / "none.tsv"), spec)
    with pytest.raises(VinvlError, match="needs the box file: no split yaml names it; give --cbs-box"):
        cbs.CBSFiles.of(CBSOptions())


def test_cli_errors_before_decoding(ref: Path, tmp_path: Path, capsys) -> None:
    """Bad CBS input is one error line (exit 2) naming the file and the word, class, key or option."""
    from vinvl.cli import main

    data = ref / "data"
    c2t = tmp_path / "c2t.tsv"
    c2t.write_text("\n".join(l for l in (data / "constraint2tokens.tsv").read_text().splitlines()
                             if not l.startswith("umbrella")) + "\n")
    small = tmp_path / "h.json"
    small.write_text(json.dumps({"LabelName": "__background__", "Subcategory": [{"LabelName": "Dog"}]}))
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"images": [{"id": 1, "file_name": "nc0001.jpg"}]}))
    base = ["oscar", "caption", "eval", str(ref / "ckpt"), str(data / "test.yaml"), "-o", str(tmp_path / "o"), "--no-metrics"]
    cases = [
        (["--cbs", "--cbs-constraint", str(c2t)], [str(c2t), "'umbrella'", "nc0005"]),
        (["--cbs", "--cbs-hierarchy", str(small)], [str(small), "class 'cat' matches no node", "nc0002"]),
        (["--min-constraints", "1"], ["--min-constraints applies only with --cbs"]),
        (["--cbs", "--length-penalty", "0.5"], ["--length-penalty: constrained beam search"]),
        (["--nocaps-image-info", str(info)], [str(info), "'nc0002'"]),
    ]
    for extra, words in cases:
        code = main(base + extra)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        for w in words:
            assert w in err, (w, err)
    assert not (tmp_path / "o" / "results.json").exists()


def test_nocaps_image_ids(tmp_path: Path) -> None:
    from vinvl.oscar.data.captions import nocaps_image_ids

    info = tmp_path / "nocaps_val_image_info.json"
    info.write_text(json.dumps({"images": [{"id": 7, "file_name": "0013ea2087020901.jpg", "open_images_id": "0013ea2087020901"},
                                           {"id": 9, "file_name": "ffd4.jpg"}]}))
    assert nocaps_image_ids(info, ["0013ea2087020901", "ffd4.jpg", "ffd4"]) == {"0013ea2087020901": 7, "ffd4.jpg": 9, "ffd4": 9}
    with pytest.raises(VinvlError, match=f"{info}: no image whose file name is 'zz'"):
        nocaps_image_ids(info, ["zz"])
    info.write_text(json.dumps({"images": [{"id": "7", "file_name": "a.jpg"}]}))
    with pytest.raises(VinvlError, match="images\\[0\\] is not"):
        nocaps_image_ids(info, ["a"])


def test_boxes_given_instead_of_a_box_file(ref: Path) -> None:
    """A detector's own boxes (any case, tuples, numpy numbers) with the other three files: what `vinvl caption --cbs`
    calls."""
    from vinvl.oscar.tensorize import load_tokenizer

    d = ref / "data"
    opts = CBSOptions(cbs_constraint=d / "constraint2tokens.tsv", cbs_tokenforms=d / "tokenforms.tsv",
                      cbs_hierarchy=d / "class_hierarchy.json")
    boxes = {"photo": [{"class": "Umbrella", "conf": np.float32(0.8), "rect": (1, 2, 30, 40)},
                       {"class": "Woman", "conf": 0.9, "rect": np.array([0.0, 0, 5, 5]).tolist()}]}
    data = cbs.CBSData.open(opts, boxes=boxes)
    got = data.image("photo", load_tokenizer(ref / "ckpt"))
    assert got.names == ["umbrella"] and got.token_forms == [[[92], [93, 94]]]
    assert data.image("other", load_tokenizer(ref / "ckpt")).names == []
    one = cbs.constraints_for_boxes(boxes["photo"], data.hierarchy, data.forms, load_tokenizer(ref / "ckpt"))
    assert (one.names, one.token_forms) == (got.names, got.token_forms)
    with pytest.raises(FormatError, match="a box is not"):
        cbs.CBSData.open(opts, boxes={"x": [{"class": "dog"}]})


def test_predict_with_cbs(ref: Path, expected: dict, tmp_path: Path) -> None:
    """The library's predict on a region source with the four files named: the same outputs as eval."""
    from vinvl.oscar.data.captions import CaptionData
    from vinvl.oscar.options import DecodeOptions
    from vinvl.oscar.tasks.captioning import predict

    d = ref / "data"
    keys = ["nc0003", "nc0004", "nc0005"]  # groups of 2 from the first key: nc0004 starts from nc0003's first step
    opts = CBSOptions(cbs_box=d / "cbs_boxes.tsv", cbs_constraint=d / "constraint2tokens.tsv",
                      cbs_tokenforms=d / "tokenforms.tsv", cbs_hierarchy=d / "class_hierarchy.json")
    path = predict(ref / "ckpt", CaptionData(d / "test.yaml"), keys, tmp_path, DecodeOptions(eval_batch_size=1), cbs=opts)
    assert [r["caption"] for r in json.loads(path.read_text())] == [expected[k]["caption"] for k in keys]
    rows = [line.split("\t") for line in (tmp_path / "predictions.tsv").read_text().splitlines()]
    assert [(k, json.loads(v)[0]["caption"]) for k, v in rows] == [(k, expected[k]["caption"]) for k in keys]
    assert (tmp_path / "constraints.tsv").is_file()
