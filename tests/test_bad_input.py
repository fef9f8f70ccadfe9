"""Broken problem rows end in _rejects.parquet with a reason; the good rows go through."""

import json

from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import reader


def _broken_corpus(path):
    good = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 6)]
    lines = [json.dumps(g).encode() for g in good]
    lines += [
        json.dumps({"answer": "3"}).encode(),                              # missing question
        json.dumps({"question": None, "answer": "3"}).encode(),            # null question
        json.dumps({"question": "   ", "answer": "3"}).encode(),           # empty question
        json.dumps({"question": "What is 1 + 2?", "answer": ""}).encode(), # empty answer
        json.dumps({"question": "What is 1 + 3?", "answer": None}).encode(),  # null answer
        json.dumps({"question": "x" * (1 << 20), "answer": "1"}).encode(), # 1 MB question
        b'{"question": "What is \xff\xfe?", "answer": "1"}',                 # invalid UTF-8
        json.dumps({"question": 12345, "answer": "1"}).encode(),           # wrong type
        json.dumps({"question": ["a", "list"], "answer": "1"}).encode(),   # wrong type
        json.dumps({"question": "What is 9 + 9?", "answer": {"a": 1}}).encode(),  # wrong answer type
        b'{"question": "truncated',                                        # malformed JSON
        b'[1, 2, 3]',                                                      # not an object
        json.dumps({"question": "What is 1 + 1?", "answer": "2"}).encode(),  # duplicate of row 0
        json.dumps({"question": "Has a NUL \u0000 byte", "answer": "1"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(good), len(lines) - len(good)


def test_bad_rows_go_to_rejects_with_reasons(fake_config, tmp_path):
    n_good, n_bad = _broken_corpus(tmp_path / "broken.jsonl")
    path = fake_config(task={"name": "columns", "path": str(tmp_path / "broken.jsonl")})
    assert main(["run", "--config", str(path)]) == 0
    cfg = load_config(path)
    problems = reader(cfg, 1, "prepare")
    assert problems.rows == n_good
    rejects = problems.rejects().to_pylist()
    assert len(rejects) == n_bad
    assert all(r["reason"] and r["stage"] == "prepare" for r in rejects)
    reasons = " | ".join(r["reason"] for r in rejects)
    for expected in ["question: missing", "question: empty", "answer: empty", "answer: missing",
                     "max_question_chars", "UTF-8", "expected text", "malformed JSON", "duplicate question", "NUL"]:
        assert expected in reasons, f"no reject says {expected!r}: {reasons}"
    assert {r["source_index"] for r in rejects} == set(range(n_good, n_good + n_bad))
    assert reader(cfg, 1, "export").rows > 0, "the good rows go all the way through"


def test_the_same_question_with_two_gold_answers_is_flagged_not_silently_collapsed(fake_config, tmp_path):
    rows = [{"question": "What is 2 + 2?", "answer": "4"}, {"question": "What is 3 + 3?", "answer": "6"},
            {"question": "what is 2 +  2?", "answer": "4"},   # the same question and answer: a duplicate
            {"question": "What is 2 + 2?", "answer": "5"}]    # the same question, another answer: a conflict
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = fake_config(task={"name": "columns", "path": str(tmp_path / "p.jsonl")})
    assert main(["prepare", "--config", str(path)]) == 0
    problems = reader(load_config(path), 1, "prepare")
    assert problems.rows == 2
    reasons = {r["source_index"]: r["reason"] for r in problems.rejects().to_pylist()}
    assert reasons[2].startswith("duplicate question: collapsed into problem")
    assert "conflicting gold answers" in reasons[3] and "'4'" in reasons[3] and "'5'" in reasons[3]
    assert problems.manifest["stats"]["conflicting_answers"] == 1


def test_a_source_with_no_usable_problem_stops_with_the_reasons(fake_config, tmp_path, capsys):
    array = tmp_path / "array.jsonl"
    array.write_text(json.dumps([{"question": "What is 1 + 1?", "answer": "2"}]))
    path = fake_config(task={"name": "columns", "path": str(array)})
    assert main(["run", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "no usable problem" in err and "1 source rows" in err and "rename it to .json" in err, err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    path = fake_config(task={"name": "columns", "path": str(empty)})
    assert main(["prepare", "--config", str(path)]) == 1
    assert "no usable problem" in capsys.readouterr().err
    # the corrected file runs at once: the failed attempt left nothing that needs --force
    empty.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    assert main(["prepare", "--config", str(path)]) == 0


def test_a_parquet_binary_question_with_invalid_utf8_is_rejected_not_replaced(fake_config, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"question": pa.array([b"What is 2 + 2?", b"What is \xff + 1?"], pa.binary()),
                      "answer": ["4", "2"]})
    pq.write_table(table, tmp_path / "p.parquet")
    path = fake_config(task={"name": "columns", "path": str(tmp_path / "p.parquet")})
    assert main(["prepare", "--config", str(path)]) == 0
    problems = reader(load_config(path), 1, "prepare")
    assert problems.read_all()["question"].to_pylist() == ["What is 2 + 2?"]
    (bad,) = problems.rejects().to_pylist()
    assert bad["source_index"] == 1 and "column 'question' is not valid UTF-8" in bad["reason"]
