"""Caption metrics as the original evaluates them, and the CIDEr-D reward of self-critical training.

:func:`coco_caption_metrics` is the COCO caption evaluation (``pycocoevalcap``, which the original
vendors as ``coco_caption``): PTB tokenisation (Stanford CoreNLP, Java), BLEU-1..4 (corpus level,
"closest" reference length), METEOR 1.5 (Java), ROUGE-L, CIDEr and, only when the Stanford CoreNLP
3.6.0 jars it needs sit in ``pycocoevalcap/spice/lib``, SPICE; otherwise SPICE is reported as
``"unavailable"`` (pycocoevalcap would try to download them).

:class:`CiderD` is the CIDEr-D of the ``cider`` package the original's ``ScstRewardCriterion`` uses:
document frequencies from the batch's references (``"corpus"``) or from a cached-tokens pickle
(``coco-train-words.p``: ``document_frequency`` and ``ref_len``), clipped n-gram tf-idf cosine,
Gaussian length penalty (sigma 6), times 10, on whitespace tokens of ``<caption> <eos>``.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ...errors import VinvlError
from ...safe_pickle import safe_load

PathLike = Union[str, os.PathLike]
UNAVAILABLE = "unavailable"


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (PTB tokenisation, METEOR and SPICE need one)."""
    return shutil.which("java") is not None


def _evalcap_dir() -> Path:
    try:
        import pycocoevalcap
    except ImportError:
        raise VinvlError("caption metrics need the pycocoevalcap package: pip install 'vinvl[caption]'") from None
    return Path(list(pycocoevalcap.__path__)[0])  # a namespace package: no __file__


def spice_available() -> bool:
    """Whether SPICE can run offline: Java and the Stanford CoreNLP 3.6.0 jars (and models) in pycocoevalcap's spice/lib."""
    lib = _evalcap_dir() / "spice" / "lib"
    return java_available() and all((lib / f).is_file() for f in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"))


def coco_caption_metrics(
    references: Mapping[Any, Sequence[str]], predictions: Mapping[Any, str], spice: Optional[bool] = None
) -> dict[str, Union[float, str]]:
    """COCO caption metrics of ``predictions`` (image -> caption) against ``references`` (image -> captions).

    Keys ``Bleu_1..4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE`` (as ``COCOEvalCap.eval``), on the
    images of ``predictions``. ``spice=None`` runs SPICE when it is available and reports
    ``"unavailable"`` otherwise; ``spice=True`` makes its absence an error.
    """
    if not java_available():
        raise VinvlError("caption metrics need Java (PTB tokenizer, METEOR): install a JRE, e.g. default-jre-headless")
    _evalcap_dir()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise VinvlError(f"no reference captions for {len(missing)} predicted images, e.g. {missing[0]!r}")
    ids = list(predictions)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in references[k]] for i, k in enumerate(ids)})
    res = tok.tokenize({i: [{"caption": predictions[k]}] for i, k in enumerate(ids)})
    out: dict[str, Union[float, str]] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, b in enumerate(bleu, 1):
        out[f"Bleu_{n}"] = float(b)
    meteor = Meteor()
    try:
        out["METEOR"] = float(meteor.compute_score(gts, res)[0])
    finally:
        del meteor  # its __del__ stops the Java process
    # ROUGE-L divides by the candidate's length: an empty caption scores 0 instead of failing.
    nonempty = [i for i in res if res[i][0].split()]
    rouge = Rouge().compute_score({i: gts[i] for i in nonempty}, {i: res[i] for i in nonempty})[1] if nonempty else []
    out["ROUGE_L"] = float(np.sum(rouge) / len(res))
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if spice is None:
        spice = spice_available()
        if not spice:
            out["SPICE"] = UNAVAILABLE
    if spice:
        if not spice_available():
            raise VinvlError("SPICE needs stanford-corenlp-3.6.0.jar and its models jar in "
                             f"{_evalcap_dir() / 'spice' / 'lib'} (and Java)")
        from pycocoevalcap.spice.spice import Spice

        out["SPICE"] = float(Spice().compute_score(gts, res)[0])
    return out


# -- CIDEr-D (the SCST reward) -------------------------------------------------------------
def _ngrams(sentence: str, n: int = 4) -> dict[tuple[str, ...], int]:
    words = sentence.split()
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def wrap_for_reward(caption: str) -> str:
    """The original's ``_wrap_sentence``: strip, drop one final '.', append `` <eos>``."""
    r = caption.strip()
    if r.endswith("."):
        r = r[:-1]
    return r + " <eos>"


class CiderD:
    """CIDEr-D scores of candidates against their references (the ``cider`` package's ``CiderD``)."""

    def __init__(self, df: Union[str, PathLike, Mapping[str, Any]] = "corpus", n: int = 4, sigma: float = 6.0) -> None:
        """``df``: ``"corpus"`` (frequencies from the scored references), a cached-tokens pickle path
        (read with the restricted unpickler) or its dict ``{"document_frequency", "ref_len"}``."""
        self.n, self.sigma = n, sigma
        self.df: Optional[Mapping[tuple, float]] = None
        self.ref_len: Optional[float] = None
        if isinstance(df, str) and df == "corpus":
            return
        if not isinstance(df, Mapping):
            df = safe_load(df)
            if not isinstance(df, Mapping) or "document_frequency" not in df or "ref_len" not in df:
                raise VinvlError(f"{df if not isinstance(df, Mapping) else 'cached tokens'}: expected a dict with "
                                 "'document_frequency' and 'ref_len'")
        self.df = {tuple(k): float(v) for k, v in df["document_frequency"].items()}
        self.ref_len = math.log(float(df["ref_len"]))

    def _vec(self, counts: Mapping[tuple, int], df: Mapping[tuple, float], ref_len: float):
        vec: list[dict[tuple, float]] = [defaultdict(float) for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = tf * (ref_len - math.log(max(1.0, df.get(gram, 0.0))))
            norm[k] += vec[k][gram] ** 2
            if k == 1:  # the package counts bigrams as the "length"; kept, it decides the penalty
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def _sim(self, hyp, ref) -> np.ndarray:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        delta = float(lh - lr)
        val = np.zeros(self.n)
        for k in range(self.n):
            for gram, x in vh[k].items():
                val[k] += min(x, vr[k].get(gram, 0.0)) * vr[k].get(gram, 0.0)  # clipped
            if nh[k] != 0 and nr[k] != 0:
                val[k] /= nh[k] * nr[k]
            val[k] *= math.exp(-(delta**2) / (2 * self.sigma**2))
        return val

    def scores(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """One CIDEr-D per candidate (strings already in the reward's form, see :func:`wrap_for_reward`)."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
        crefs = [[_ngrams(r, self.n) for r in refs] for refs in references]
        if self.df is None:
            df: Mapping[tuple, float] = defaultdict(float)
            for refs in crefs:
                for gram in {g for r in refs for g in r}:
                    df[gram] += 1  # type: ignore[index]
            ref_len = math.log(float(len(crefs)))
        else:
            df, ref_len = self.df, float(self.ref_len)  # type: ignore[arg-type]
        out = np.zeros(len(candidates))
        for i, (cand, refs) in enumerate(zip(candidates, crefs)):
            hyp = self._vec(_ngrams(cand, self.n), df, ref_len)
            total = np.zeros(self.n)
            for r in refs:
                total += self._sim(hyp, self._vec(r, df, ref_len))
            out[i] = float(np.mean(total)) / len(refs) * 10.0
        return out
