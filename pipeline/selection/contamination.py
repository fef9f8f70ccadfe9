"""Decontamination: find training text that shares a word n-gram with an evaluation set.

Self-generated data leaks benchmarks (open-r1 and NeMo-Skills decontaminate for this reason):
a training problem whose question shares a run of `ngram` words (default 13) with an
evaluation question is dropped with all its samples, and a rationale that quotes one is
dropped alone. Words are lower-cased runs of letters and digits, so rewording, punctuation
and spacing around the shared run do not hide it. An evaluation question shorter than
`ngram` words matches only a training text with exactly its words.

Evaluation sets are read with `pipeline.tasks.sources.read_records`: a local file or
directory, or a hub id (which needs the network; offline it fails with a clear message).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from selfimprove.pipeline.selection.minhash import shingle_hashes, token_spans, tokenise
from selfimprove.pipeline.selection.normalise import normalise_array

TEXT_FIELDS = ("question", "problem", "prompt", "input", "instruction", "text")


@dataclass(frozen=True)
class Match:
    eval_set: str
    eval_index: int  # row of the evaluation set (its position in the source)
    ngram: str  # the shared words


@dataclass(frozen=True)
class EvalSet:
    name: str
    texts: list[tuple[int, str]]  # (source index, question text)


def load_eval_set(path: str, split: str = "test", config: str | None = None, field: str | None = None,
                  revision: str | None = None) -> EvalSet:
    """Question texts of an evaluation set; ValueError naming the set if it has none."""
    from selfimprove.pipeline.tasks.sources import read_records

    where = f"dedup.decontaminate.eval_sets: {path!r}"
    try:
        records = list(read_records(path, split=split, config=config, revision=revision))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    texts, seen_fields = [], set()
    for rec in records:
        if rec.data is None:
            continue  # an unreadable line of an evaluation set cannot leak into training
        seen_fields.update(rec.data)
        name = field or next((f for f in TEXT_FIELDS if isinstance(rec.data.get(f), str)), None)
        value = rec.data.get(name) if name else None
        if isinstance(value, str) and value.strip():
            texts.append((rec.index, value))
    if not texts:
        wanted = f"field {field!r}" if field else f"any of the fields {', '.join(TEXT_FIELDS)}"
        raise ValueError(f"{where}: no row has {wanted} as text (fields found: {sorted(seen_fields) or 'none'}); "
                         "set `field:` for this evaluation set")
    label = path if split == "test" or not _is_hub(path) else f"{path}:{split}"
    return EvalSet(label, texts)


def _is_hub(path: str) -> bool:
    from selfimprove.pipeline.tasks.sources import looks_like_hub_id

    return looks_like_hub_id(path)


def _grams(texts, ngram: int) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Normalised texts, and the hash and text of every word n-gram (texts without words have none)."""
    norm = normalise_array(texts)
    tokens, offsets = tokenise(norm, punctuation=False, normalised=True)
    hashes, owner = shingle_hashes(tokens, offsets, ngram)
    has_words = np.diff(offsets)[owner] > 0
    return norm, hashes[has_words], owner[has_words]


def _words(normalised_text: pa.Array) -> list[str]:
    data, starts, ends, _ = token_spans(normalised_text, punctuation=False)
    return [bytes(data[a:b]).decode("utf-8", "replace") for a, b in zip(starts.tolist(), ends.tolist())]


class EvalIndex:
    """Every word n-gram of the evaluation questions, as sorted 64-bit hashes."""

    def __init__(self, sets: list[EvalSet], ngram: int = 13):
        self.ngram = ngram
        self.names = [s.name for s in sets]
        texts, set_of, index_of = [], [], []
        for k, s in enumerate(sets):
            for index, text in s.texts:
                texts.append(text)
                set_of.append(k)
                index_of.append(index)
        _, hashes, owner = _grams(texts, ngram)
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self._set = np.asarray(set_of, np.int32)[owner[order]] if texts else np.empty(0, np.int32)
        self._index = np.asarray(index_of, np.int64)[owner[order]] if texts else np.empty(0, np.int64)
        self.questions = len(texts)

    def digest(self) -> str:
        """What the index matches, for the stage fingerprint."""
        h = hashlib.sha256(self.hashes.tobytes())
        h.update(repr((self.ngram, self.names)).encode())
        return h.hexdigest()[:16]

    def find(self, texts) -> list[Match | None]:
        """For each text, its first n-gram found in an evaluation set, or None."""
        texts = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(list(texts), pa.string())
        out: list[Match | None] = [None] * len(texts)
        if not len(texts) or not len(self.hashes):
            return out
        norm, hashes, owner = _grams(texts, self.ngram)
        pos = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        hit = np.flatnonzero(self.hashes[pos] == hashes)
        if not len(hit):
            return out
        first_of_doc = np.searchsorted(owner, np.arange(len(texts)))
        docs, first_hit = np.unique(owner[hit], return_index=True)
        for doc, h in zip(docs.tolist(), hit[first_hit].tolist()):
            words = _words(norm.slice(doc, 1))
            start = h - int(first_of_doc[doc])
            gram = words[start: start + self.ngram] if len(words) >= self.ngram else words
            out[doc] = Match(self.names[int(self._set[pos[h]])], int(self._index[pos[h]]), " ".join(gram))
        return out


def run_eval_sets(cfg) -> list:
    """`dedup.decontaminate.eval_sets` and the run's own held-out set (`evaluate.task`, unless it
    is the arithmetic generator's other seed range or already listed): its problems never train."""
    from selfimprove.pipeline.config import EvalSetConfig
    from selfimprove.pipeline.tasks import get_task

    specs = list(cfg.dedup.decontaminate.eval_sets)
    heldout = cfg.evaluate.task
    if heldout is None or heldout.name == "arithmetic":
        return specs
    task = get_task(heldout)
    path, split = task.source()
    if (path, split) in {(s, "test") if isinstance(s, str) else (s.path, s.split) for s in specs}:
        return specs
    field = heldout.columns.question if heldout.name == "columns" else None
    return specs + [EvalSetConfig(path=path, split=split, config=task.hub_config(), revision=heldout.revision, field=field)]


def load_index(specs: list, ngram: int) -> EvalIndex | None:
    """The index of the configured evaluation sets, or None when there are none."""
    if not specs:
        return None
    sets = []
    for spec in specs:
        if isinstance(spec, str):
            sets.append(load_eval_set(spec))
        else:
            sets.append(load_eval_set(spec.path, spec.split, spec.config, spec.field, spec.revision))
    return EvalIndex(sets, ngram)
