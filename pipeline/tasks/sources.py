"""Read raw records from a local file, a directory of files, or the Hugging Face hub.

A record that cannot be read (invalid UTF-8, malformed JSON, a CSV row with the wrong number
of fields) becomes an error row with a reason and the rest of the file still loads; only a
source that cannot be opened at all (missing file, unsupported type, hub unreachable) raises.
Values come out as plain, JSON-serialisable Python; NaN and empty CSV cells become None.
"""

from __future__ import annotations

import codecs
import csv
import datetime
import decimal
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from selfimprove.pipeline.tasks import SourceRow

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
RAW_CHARS = 500
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


EVAL_SPLITS = ("test", "validation", "valid", "dev", "eval", "evaluation")
KNOWN_SPLITS = ("train", *EVAL_SPLITS)


def read_records(
    path: str, split: str = "train", limit: int | None = None, config: str | None = None, revision: str | None = None
) -> Iterator[SourceRow]:
    """Rows of `path`, at most `limit` of them.

    `config` is the hub data set's configuration name (gsm8k needs "main") and `revision` its
    branch, tag or commit; a local directory laid out by split (`train.jsonl`, `test.jsonl`,
    `train-00000-of-00002.parquet`, as a hub data set is) gives `split`'s files only, and a
    single file is read whole. Problems with the source itself raise ValueError at once.
    """
    path = str(path)
    if not path.strip():
        raise ValueError("task.path: empty")
    local = Path(path).expanduser()
    if local.exists():
        rows = _read_local(local, split)
    elif looks_like_hub_id(path):
        rows = _read_hub(path, split, config, revision)
    else:
        raise ValueError(f"task.path: file not found: {path}")
    return itertools.islice(rows, limit)


def evaluation_split(path: str | None, split: str) -> str | None:
    """Why a training source would read an evaluation split (None: it does not)."""
    local = Path(path).expanduser() if path else None
    if local is not None and local.is_file():
        named = split_named(local)
        return f"task.path: {local.name} is an evaluation split ({named})" if named in EVAL_SPLITS else None
    if split.lower() in EVAL_SPLITS:
        return f"task.split: {split!r} is an evaluation split"
    return None


def looks_like_hub_id(path: str) -> bool:
    """Whether path reads as "org/name" rather than as a missing file like "data/p.jsonl"."""
    return bool(HUB_ID.fullmatch(path)) and not path.lower().endswith(SUFFIXES)


def split_named(path: Path) -> str | None:
    """The split a file's name gives (`test.jsonl`, `train-00000-of-00002.parquet`), if any."""
    head = re.split(r"[-_.]", path.name, maxsplit=1)[0].lower()
    return head if head in KNOWN_SPLITS else None


def _read_local(path: Path, split: str = "train") -> Iterator[SourceRow]:
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise ValueError(f"task.path: no {'/'.join(SUFFIXES)} files in directory {path}")
        splits = {split_named(p) for p in files} - {None}
        if splits:  # laid out by split: never mix train and test
            files = [p for p in files if split_named(p) == split.lower()]
            if not files:
                raise ValueError(f"task.split: no {split!r} files in {path} (its files are of the splits "
                                 f"{', '.join(sorted(splits))})")
    elif path.suffix.lower() in SUFFIXES:
        files = [path]
    else:
        raise ValueError(
            f"task.path: unsupported file type {path.suffix or '(none)'!r} for {path}; "
            "use .jsonl, .json, .parquet or .csv"
        )
    return _chain(files)


def _chain(files: list[Path]) -> Iterator[SourceRow]:
    """Rows of several files, each file's indices continuing after the last one's."""
    start = 0
    for f in files:
        last = start - 1
        for row in READERS[f.suffix.lower()](f, start):
            last = row.index
            yield row
        start = last + 1


def _read_jsonl(path: Path, start: int) -> Iterator[SourceRow]:
    # Bytes, decoded line by line: one bad line must not cost the whole file.
    with open(path, "rb") as fh:
        for n, line in enumerate(fh):
            if n == 0 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            index, where = start + n, f"{path.name} line {n + 1}"
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield _error(index, f"{where}: invalid UTF-8 (byte {e.start + 1})", line.decode("utf-8", "replace"))
                continue
            if text.strip():
                yield _parse_object(text, index, where)


def _parse_object(text: str, index: int, where: str) -> SourceRow:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return _error(index, f"{where}: malformed JSON: {e.msg} (column {e.colno})", text)
    except RecursionError:
        return _error(index, f"{where}: malformed JSON: nested too deeply", text)
    return _object_row(data, index, where, text)


def _object_row(data: Any, index: int, where: str, text: str) -> SourceRow:
    if not isinstance(data, dict):
        return _error(index, f"{where}: expected a JSON object, got {_json_type(data)}", text)
    try:
        # JSON may escape lone surrogates ("\ud800"); Arrow cannot store them later.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return _error(index, f"{where}: text contains an invalid Unicode escape (lone surrogate)", text)
    return SourceRow(index, plain(data))


def _read_json(path: Path, start: int) -> Iterator[SourceRow]:
    """A JSON list of objects. A .json file that starts with "{" is JSON Lines (what
    `datasets.Dataset.to_json` writes), so it is read as such."""
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    if raw.lstrip().startswith(b"{"):
        yield from _read_jsonl(path, start)
        return
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as e:
        yield _error(start, f"{path.name}: invalid UTF-8 (byte {e.start + 1})", raw.decode("utf-8", "replace"))
        return
    except json.JSONDecodeError as e:
        yield _error(start, f"{path.name}: malformed JSON: {e.msg} (line {e.lineno} column {e.colno})", text)
        return
    except RecursionError:
        yield _error(start, f"{path.name}: malformed JSON: nested too deeply", text)
        return
    if not isinstance(data, list):
        yield _error(start, f"{path.name}: expected a list of JSON objects, got {_json_type(data)}", text)
        return
    for i, item in enumerate(data):
        yield _object_row(item, start + i, f"{path.name} item {i}", json.dumps(item)[:RAW_CHARS])


def _read_parquet(path: Path, start: int) -> Iterator[SourceRow]:
    index = start
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                yield _record_row(index, record, f"{path.name} row {index - start}")
                index += 1
    except (pa.ArrowException, OSError, ValueError) as e:
        yield _error(index, f"{path.name}: unreadable Parquet from row {index - start}: {_short(e)}", "")


def _read_csv(path: Path, start: int) -> Iterator[SourceRow]:
    """CSV with a header row. Values stay text (no type guessing: "007" and "1,000" are kept
    as written); empty cells become None."""
    # surrogateescape: a row with invalid UTF-8 still parses, and is caught below.
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
        except csv.Error as e:
            yield _error(start, f"{path.name}: malformed CSV header: {e}", "")
            return
        if header is None:
            return
        if not _is_utf8(header) or len(set(header)) != len(header):
            yield _error(start, f"{path.name}: header has invalid UTF-8 or duplicate column names", _cells(header))
            return
        index = start
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield _error(index, f"{path.name} line {reader.line_num}: malformed CSV: {e}", "")
                index += 1
                continue
            if not values:  # blank line
                continue
            where = f"{path.name} line {reader.line_num}"
            if not _is_utf8(values):
                yield _error(index, f"{where}: invalid UTF-8", _cells(values))
            elif len(values) != len(header):
                yield _error(index, f"{where}: {len(values)} fields, header has {len(header)}", _cells(values))
            else:
                yield SourceRow(index, {k: (v if v != "" else None) for k, v in zip(header, values)})
            index += 1


READERS: dict[str, Callable[[Path, int], Iterator[SourceRow]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
    ".csv": _read_csv,
}


def _read_hub(path: str, split: str, config: str | None, revision: str | None = None) -> Iterator[SourceRow]:
    try:
        import datasets

        ds = datasets.load_dataset(path, config, split=split, revision=revision)
    except Exception as e:  # no network, no such data set, no such split: all the same to the user
        raise ValueError(
            f"could not load {path!r} from the Hugging Face hub (offline?): {_short(e)}. "
            "Download it or point task.path at a local .jsonl/.parquet/.csv file, or at a directory "
            "of them laid out by split (train.jsonl, test.jsonl)."
        ) from e
    return (_record_row(i, record, f"{path} row {i}") for i, record in enumerate(ds))


def plain(value: Any) -> Any:
    """Plain JSON-serialisable Python: NaN -> None, dates -> ISO text, anything odd -> str."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8")  # strict: invalid UTF-8 is a bad row (_record_row), never U+FFFD
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def _record_row(index: int, record: dict, where: str) -> SourceRow:
    """A Parquet or hub record as a row; one whose binary column is not UTF-8 is a bad row."""
    try:
        return SourceRow(index, plain(record))
    except UnicodeDecodeError as e:
        column = next((k for k, v in record.items() if isinstance(v, bytes) and not _decodes(v)), "?")
        return _error(index, f"{where}: column {column!r} is not valid UTF-8 (byte {e.start + 1})",
                      repr(record)[:RAW_CHARS])


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _error(index: int, reason: str, raw: str) -> SourceRow:
    return SourceRow(index, None, reason, raw.rstrip("\r\n")[:RAW_CHARS])


def _short(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:300]


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _is_utf8(values: list[str]) -> bool:
    try:
        "".join(values).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _cells(values: list[str]) -> str:
    """A CSV row as text for the user, with undecodable bytes shown as U+FFFD."""
    return ",".join(values).encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:RAW_CHARS]
