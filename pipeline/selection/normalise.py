"""Normalised text and its 64-bit hash: the key of exact dedup and of the across-iteration rule.

Two rationales that differ only in whitespace (any Unicode space), letter case or LaTeX
spacing commands (`\\,` `\\;` `\\quad` ...) are the same text. Normalising runs as Arrow
kernels over a whole column; the hash is BLAKE2b (8 bytes), stable across processes and
versions, so keys written by one iteration match those of the next.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LATEX_SPACING = r"\\[,;:! ]|\\qquad|\\quad"
# Any run of Unicode whitespace (what Python's \s matches); written so that RE2 replaces only
# runs of two or more and single non-space characters, which is several times faster than \s+.
_WS = r"[\s\p{Z}\x{0b}\x{1c}-\x{1f}\x{85}]"
SPACE = _WS + r"{2,}|[\t\n\f\r\x{0b}\x{1c}-\x{1f}\x{85}]|[^\P{Z} ]"
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _array(texts) -> pa.Array | pa.ChunkedArray:
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return texts
    return pa.array(list(texts), pa.string())


def normalise_array(texts) -> pa.Array | pa.ChunkedArray:
    """Normalised copy of a column of texts (null -> "")."""
    arr = pc.fill_null(_array(texts), "")
    arr = pc.replace_substring_regex(arr, LATEX_SPACING, " ")
    arr = pc.replace_substring_regex(arr, SPACE, " ")
    return pc.utf8_lower(pc.utf8_trim(arr, characters=" "))


def normalise(text: str) -> str:
    return normalise_array([text])[0].as_py()


def digest64(text: str) -> int:
    """Signed 64-bit BLAKE2b of a string (signed, so it fits an int64 column or array)."""
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def text_hashes(texts, normalised: bool = False) -> np.ndarray:
    """int64 hash of each normalised text (`normalised`: the texts already are)."""
    norm = texts if normalised else normalise_array(texts)
    return np.fromiter((digest64(t) for t in norm.to_pylist()), np.int64, count=len(norm))


def text_hash(text: str) -> int:
    return int(text_hashes([text])[0])


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mixer (uint64 in, uint64 out; arithmetic wraps)."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def keyed(hashes: np.ndarray, keys: Iterable[str]) -> np.ndarray:
    """Combine each text hash with a key (e.g. its problem id): int64 hash of the pair."""
    key_hashes = np.fromiter((digest64(k) for k in keys), np.int64, count=len(hashes))
    mixed = splitmix64(hashes.view(np.uint64) * _GOLDEN + key_hashes.view(np.uint64))
    return mixed.view(np.int64)
