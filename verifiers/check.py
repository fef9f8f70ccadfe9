"""Measure a verifier against labelled cases: accuracy, precision, recall, and the mistakes.

Two JSONL forms are read: answer pairs `{gold, pred, expected}` (the prediction is handed to
the verifier as a boxed final answer) and whole model outputs
`{problem, gold_answer, model_output, label}` (extraction included), where `metadata`, the
problem's metadata (the unit tests, for `code`), may come with or instead of `gold_answer`.
Rows with a non-empty `caveat` follow another library's conventions; they are reported apart.
Every case runs through the same killable worker pool as the verify stage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from selfimprove.verifiers.pool import VerifyPool


def load_cases(path: str | Path) -> list[dict]:
    """The cases of a JSONL file; ValueError naming the file, the line and what is wrong with it."""
    cases = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            cases.append(_case(line, i))
        except ValueError as e:
            raise ValueError(f"{path} line {i}: {e}") from None
    return cases


def _flag(row: dict, key: str) -> bool:
    value = row[key]
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{key} must be true or false, got {value!r}")


def _case(line: str, i: int) -> dict:
    try:
        row = json.loads(line)
    except ValueError as e:
        raise ValueError(f"not valid JSON ({e}): {line[:80]!r}") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    if not isinstance(row, dict):
        raise ValueError(f"a case must be a JSON object, got {type(row).__name__}: {line[:80]!r}")
    if "metadata" in row and not isinstance(row["metadata"], (dict, type(None))):
        raise ValueError(f"metadata must be an object (the problem's metadata), got {type(row['metadata']).__name__}")
    if {"gold", "pred", "expected"} <= set(row):
        problem = {"question": row.get("question", ""), "answer": str(row["gold"]), "metadata": {}}
        sample = {"text": f"The final answer is $\\boxed{{{row['pred']} }}$", "finish_reason": "stop"}  # the space keeps a trailing backslash from eating the brace
        expected = _flag(row, "expected")
    elif {"model_output", "label"} <= set(row) and ("gold_answer" in row or isinstance(row.get("metadata"), dict)):
        if not isinstance(row["model_output"], str):
            raise ValueError(f"model_output must be a string, got {type(row['model_output']).__name__}")
        gold = row.get("gold_answer")
        problem = {"question": row.get("problem", ""), "answer": None if gold is None else str(gold),
                   "metadata": row.get("metadata") or {}}
        sample = {"text": row["model_output"], "finish_reason": "stop"}
        expected = _flag(row, "label")
    else:
        raise ValueError(f"needs {{gold, pred, expected}} or {{problem, gold_answer and/or metadata, model_output, "
                         f"label}}; it has {{{', '.join(sorted(row)) or 'nothing'}}}")
    return {"line": i, "problem": problem, "sample": sample, "expected": expected, "caveat": bool(row.get("caveat"))}


def _metrics(results: list[tuple[dict, object]]) -> dict:
    tp = sum(1 for c, v in results if c["expected"] and v.status == "correct")
    fp = [c for c, v in results if not c["expected"] and v.status == "correct"]
    fn = [c for c, v in results if c["expected"] and v.status != "correct"]
    n = len(results)
    return {
        "n": n,
        "accuracy": round((n - len(fp) - len(fn)) / n, 4) if n else 0.0,
        "precision": round(tp / (tp + len(fp)), 4) if tp + len(fp) else 1.0,
        "recall": round(tp / (tp + len(fn)), 4) if tp + len(fn) else 1.0,
        "false_positives": len(fp),
        "false_negatives": len(fn),
    }


def check(spec: str, params: dict | None, cases: list[dict], workers: int = 0, timeout_s: float = 5.0) -> dict:
    started = time.time()
    with VerifyPool(spec, params or {}, workers, timeout_s) as pool:
        verdicts = [v[0] for v in pool.verify([(c["problem"], [c["sample"]]) for c in cases])]
    seconds = time.time() - started
    results = list(zip(cases, verdicts))
    clean = [(c, v) for c, v in results if not c["caveat"]]
    report = {"verifier": spec, **_metrics(clean), "all_rows": _metrics(results),
              "caveat_rows": len(results) - len(clean), "seconds_per_item": round(seconds / max(1, len(cases)), 5)}
    report["examples"] = [
        {"line": c["line"], "kind": "false_positive" if v.status == "correct" else "false_negative",
         "gold": c["problem"]["answer"], "extracted": v.extracted, "reason": v.reason, "caveat": c["caveat"]}
        for c, v in results if (v.status == "correct") != c["expected"]
    ][:20]
    return report


def format_report(report: dict) -> str:
    lines = [
        f"verifier {report['verifier']}: {report['n']} cases without a caveat "
        f"({report['caveat_rows']} caveat rows reported apart)",
        f"  accuracy {report['accuracy']:.1%}  precision {report['precision']:.1%}  recall {report['recall']:.1%}",
        f"  false positives {report['false_positives']}  false negatives {report['false_negatives']}",
        f"  all rows: accuracy {report['all_rows']['accuracy']:.1%}, "
        f"{report['all_rows']['false_positives']} FP, {report['all_rows']['false_negatives']} FN",
        f"  {report['seconds_per_item'] * 1000:.2f} ms per item (pool, wall clock)",
    ]
    for e in report["examples"]:
        lines.append(f"  line {e['line']}: {e['kind']}{' (caveat)' if e['caveat'] else ''}: gold {e['gold']!r}, "
                     f"extracted {e['extracted']!r}: {e['reason']}")
    return "\n".join(lines)
