"""Tasks: the built-in generator, the readers for real data sets, and prompt rendering."""

import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfimprove.pipeline.config import TaskConfig
from selfimprove.pipeline.tasks import SourceRow, get_task, render_prompt
from selfimprove.pipeline.tasks.sources import read_records

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TEST = DATA / "gsm8k" / "test.jsonl"
MATH_TEST = DATA / "math" / "test.jsonl"


def arithmetic_rows(**arith) -> list[SourceRow]:
    return list(get_task(TaskConfig(arithmetic=arith)).rows())


def good(rows):
    return [r for r in rows if r.error is None]


# --- arithmetic -------------------------------------------------------------------------


def recompute(question: str) -> tuple[int, int, list[int]]:
    """Re-derive (answer, steps, numbers) from the text alone, independently of the generator."""
    sentences = re.split(r"(?<=[.?]) ", question)
    assert sentences[-1].startswith("How many") and sentences[-1].endswith("now?")
    total = int(re.fullmatch(r"\w+ has (\d+) [\w ]+\.", sentences[0]).group(1))
    numbers = [total]
    for s in sentences[1:-1]:
        n = int(re.search(r"\d+", s).group())
        if re.search(r"(buys|finds|gets) \d+ more", s):
            total += n
            numbers.append(n)
        elif re.search(r"(gives|loses|sells) \d+", s):
            total -= n
            numbers.append(n)
        elif "times as many" in s:
            total *= n
        elif "equally into" in s:
            assert total % n == 0, f"inexact division in {question!r}"
            total //= n
        else:
            raise AssertionError(f"unknown step {s!r}")
        assert total >= 1, f"total went to {total} in {question!r}"
    return total, len(sentences) - 2, numbers


@pytest.mark.parametrize("arith", [{}, {"min_steps": 3, "max_steps": 8, "max_digits": 4, "count": 300}])
def test_arithmetic_answers_match_the_text(arith):
    rows = arithmetic_rows(**arith)
    cfg = TaskConfig(arithmetic=arith).arithmetic
    assert len(rows) == cfg.count
    for row in rows:
        d = row.data
        answer, steps, numbers = recompute(d["question"])
        assert d["answer"] == str(answer)
        assert d["steps"] == steps and cfg.min_steps <= steps <= cfg.max_steps
        assert 1 <= d["digits"] <= cfg.max_digits
        assert len(str(numbers[0])) == d["digits"]  # the start amount has exactly `digits` digits
        assert all(len(str(n)) <= d["digits"] for n in numbers)
    assert {r.data["steps"] for r in rows} == set(range(cfg.min_steps, cfg.max_steps + 1))


def test_arithmetic_is_pinned():
    # Resumed runs and held-out sets rely on problem j being the same in every process and
    # version; a change here silently changes every run's problems.
    first = arithmetic_rows(count=1, max_digits=2)[0].data
    assert first == {
        "id": "arith-0",
        "question": "Chloe has 82 marbles. She finds 6 more marbles. How many marbles does Chloe have now?",
        "answer": "88",
        "steps": 1,
        "digits": 2,
    }


def test_arithmetic_deterministic_and_prefix_stable():
    assert arithmetic_rows(count=30) == arithmetic_rows(count=30)
    assert arithmetic_rows(count=80)[:30] == arithmetic_rows(count=30)
    limited = list(get_task(TaskConfig(limit=5, arithmetic={"count": 30})).rows())
    assert limited == arithmetic_rows(count=5)


def test_arithmetic_seed_offset():
    train = arithmetic_rows(count=200)
    held_out = arithmetic_rows(count=200, seed_offset=1_000_000)
    assert {r.data["id"] for r in train}.isdisjoint(r.data["id"] for r in held_out)
    assert {r.data["question"] for r in train}.isdisjoint(r.data["question"] for r in held_out)
    # the offset shifts the range of problem numbers: same id, same problem
    shifted = arithmetic_rows(count=5, seed_offset=10)
    assert [r.data for r in shifted] == [r.data for r in train[10:15]]
    assert [r.index for r in shifted] == list(range(5))


def test_arithmetic_to_problem():
    task = get_task(TaskConfig(arithmetic={"max_digits": 2}))
    assert task.default_verifier == "numeric"
    row = next(iter(task.rows()))
    p = task.to_problem(row.data)
    assert (p.id, p.answer, p.metadata) == ("arith-0", "88", {"steps": 1, "digits": 2})
    with pytest.raises(ValueError, match="question: missing"):
        task.to_problem({"id": "x", "answer": "1"})


# --- gsm8k and math on the real data sets -----------------------------------------------


def test_gsm8k_first_rows():
    raw = [json.loads(line) for line in GSM8K_TEST.read_text(encoding="utf-8").splitlines()[:10]]
    task = get_task(TaskConfig(name="gsm8k", path=str(GSM8K_TEST), limit=10))
    rows = list(task.rows())
    assert [r.index for r in rows] == list(range(10))
    problems = [task.to_problem(r.data) for r in rows]
    assert [p.question for p in problems] == [r["question"] for r in raw]
    assert [p.answer for p in problems] == [r["answer"].split("####")[-1].strip() for r in raw]
    assert problems[0].answer == "18"  # Janet's ducks
    assert problems[0].metadata["solution"] == raw[0]["answer"]
    assert task.default_verifier == "numeric"


def test_gsm8k_answer_rules():
    task = get_task(TaskConfig(name="gsm8k", path=str(GSM8K_TEST)))
    p = task.to_problem({"question": "q", "answer": "a #### b\n#### 1,250 ", "id": 7})
    assert (p.answer, p.id) == ("1250", "7")
    with pytest.raises(ValueError, match="answer: no '####' final answer"):
        task.to_problem({"question": "q", "answer": "42"})
    with pytest.raises(ValueError, match="answer: missing"):
        task.to_problem({"question": "q"})


def test_math_rows():
    raw = [json.loads(line) for line in MATH_TEST.read_text(encoding="utf-8").splitlines()[:20]]
    task = get_task(TaskConfig(name="math", path=str(MATH_TEST), limit=20))
    problems = [task.to_problem(r.data) for r in task.rows()]
    assert len(problems) == 20
    for p, r in zip(problems, raw):
        assert (p.question, p.answer, p.id) == (r["problem"], r["answer"], r["unique_id"])
        assert {k: p.metadata[k] for k in ("solution", "subject", "level")} == {
            k: r[k] for k in ("solution", "subject", "level")
        }
    assert task.default_verifier == "math"
    assert "\\boxed{}" in task.default_user_prompt


def test_math_answer_from_solution():
    task = get_task(TaskConfig(name="math", path=str(MATH_TEST)))
    solution = "So $x=\\boxed{3}$ or, better, $x = \\boxed{\\frac{1}{2}}$."
    assert task.to_problem({"problem": "p", "solution": solution}).answer == "\\frac{1}{2}"
    assert task.to_problem({"problem": "p", "answer": "", "solution": "is $\\boxed 9$."}).answer == "9"
    with pytest.raises(ValueError, match="answer"):
        task.to_problem({"problem": "p", "solution": "no boxed answer, or an empty one: \\boxed{}"})


# --- columns ----------------------------------------------------------------------------


def columns_cfg(path, **mapping):
    return TaskConfig(name="columns", path=str(path), columns=mapping)


def test_columns_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        'uid,prompt,target,source,notes\n'
        'a1,"What is {x} + 1, if x = 2?",3,web,\n'
        'a2,"Two\nlines",007,book,hard\n'
        'a3,too,few\n',
        encoding="utf-8",
    )
    task = get_task(columns_cfg(path, question="prompt", answer="target", id="uid"))
    rows = list(task.rows())
    assert [r.index for r in rows] == [0, 1, 2]
    assert "line 5: 3 fields, header has 5" in rows[2].error and rows[2].raw == "a3,too,few"
    p0, p1 = (task.to_problem(r.data) for r in rows[:2])
    assert (p0.question, p0.answer, p0.id) == ("What is {x} + 1, if x = 2?", "3", "a1")
    assert p0.metadata == {"source": "web", "notes": None}  # empty cell -> None
    assert (p1.question, p1.answer, p1.metadata) == ("Two\nlines", "007", {"source": "book", "notes": "hard"})

    kept = get_task(columns_cfg(path, question="prompt", answer=None, keep=["source"]))
    p = kept.to_problem(rows[0].data)
    assert (p.answer, p.id, p.metadata) == (None, None, {"source": "web"})

    with pytest.raises(ValueError, match=r"columns.answer: column 'answer' not found \(record has: uid, prompt"):
        get_task(columns_cfg(path, question="prompt")).to_problem(rows[0].data)
    with pytest.raises(ValueError, match="columns.keep: column 'nope'"):
        get_task(columns_cfg(path, question="prompt", answer="target", keep=["nope"])).to_problem(rows[0].data)


def test_csv_bad_bytes_and_bom(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbfq,a\n1,2\nbad\xff,3\n\n4,5\n")
    rows = list(read_records(str(path)))
    assert [r.data for r in rows] == [{"q": "1", "a": "2"}, None, {"q": "4", "a": "5"}]
    assert rows[1].error == "p.csv line 3: invalid UTF-8" and rows[1].raw == "bad\ufffd,3"


def test_columns_parquet(tmp_path):
    path = tmp_path / "p.parquet"
    table = pa.table({
        "q": ["1+1?", "2+2?", "3+3?"],
        "a": [2.0, math.nan, 6.5],
        "n": [1, 2, None],
        "tags": [["x"], [], ["y", "z"]],
    })
    pq.write_table(table, path, row_group_size=2)
    task = get_task(columns_cfg(path, question="q", answer="a"))
    problems = [task.to_problem(r.data) for r in task.rows()]
    assert [p.answer for p in problems] == [2.0, None, 6.5]  # NaN -> None
    assert [p.metadata for p in problems] == [
        {"n": 1, "tags": ["x"]}, {"n": 2, "tags": []}, {"n": None, "tags": ["y", "z"]}
    ]
    json.dumps([p.metadata for p in problems])


def test_columns_needs_a_path():
    with pytest.raises(ValueError, match="task.path: required"):
        get_task(TaskConfig(name="columns"))


# --- reading sources --------------------------------------------------------------------


def test_jsonl_bad_lines_become_error_rows(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"question": "ok 1", "answer": "1"}\n'
        b'{"question": "bad \xff\xfe bytes", "answer": "2"}\n'
        b"\n"
        b'{"question": "cut off", \n'
        b'["a", "list"]\n'
        b'{"question": "x' + b"y" * 1000 + b'\n'
        b'{"question": "ok 2", "answer": "3"}\r\n'
    )
    rows = list(read_records(str(path)))
    assert [r.index for r in rows] == [0, 1, 3, 4, 5, 6]  # index = 0-based line number
    assert [r.data["question"] for r in good(rows)] == ["ok 1", "ok 2"]
    errors = {r.index: r for r in rows if r.error}
    assert errors[1].error.startswith("mixed.jsonl line 2: invalid UTF-8")
    assert "bad" in errors[1].raw and errors[1].data is None
    assert errors[3].error.startswith("mixed.jsonl line 4: malformed JSON")
    assert errors[4].error == "mixed.jsonl line 5: expected a JSON object, got a list"
    assert len(errors[5].raw) == 500


def test_limit_counts_error_rows_too(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n{"a": 3}\n')
    assert [r.index for r in read_records(str(path), limit=3)] == [0, 1, 2]


def test_json_list_and_directory(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps([{"q": "b0"}, 5, {"q": "b2"}]))
    (tmp_path / "a.jsonl").write_text('{"q": "a0"}\n{"q": "a1"}\n')
    (tmp_path / "c.json").write_text('{"q": "c0"}\n{"q": "c1"}\n')  # JSON Lines named .json
    (tmp_path / "README.md").write_text("not data")
    rows = list(read_records(str(tmp_path)))
    assert [r.index for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert [r.data and r.data["q"] for r in rows] == ["a0", "a1", "b0", None, "b2", "c0", "c1"]
    assert rows[3].error == "b.json item 1: expected a JSON object, got a number"


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(ValueError, match="task.path: file not found: .*nope.jsonl"):
        read_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="task.path: file not found"):
        read_records("data/problems.jsonl")
    (tmp_path / "p.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        read_records(str(tmp_path / "p.txt"))


def offline(monkeypatch, tmp_path):
    """Hub offline for this test: the env var alone is read only when datasets is imported."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")  # nothing cached
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_hub_offline_is_a_clear_error(monkeypatch, tmp_path):
    offline(monkeypatch, tmp_path)
    task = get_task(TaskConfig(name="gsm8k"))  # no path: the hub data set
    with pytest.raises(ValueError) as err:
        list(task.rows())
    message = str(err.value)
    assert message.startswith("could not load 'openai/gsm8k' from the Hugging Face hub (offline?): ")
    assert message.endswith("Download it or point task.path at a local .jsonl/.parquet/.csv file, or at a directory "
                            "of them laid out by split (train.jsonl, test.jsonl).")
    assert "\n" not in message


def test_hub_ids_and_splits(monkeypatch):
    import datasets

    calls = []

    def fake_load(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list([{"problem": "p", "answer": "1", "x": math.nan}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    list(get_task(TaskConfig(name="gsm8k")).rows())
    rows = list(get_task(TaskConfig(name="math")).rows())
    list(get_task(TaskConfig(name="columns", path="someone/problems", split="test")).rows())
    list(get_task(TaskConfig(name="math", path="org/math", config="algebra", revision="v1.0")).rows())
    assert calls == [
        ("openai/gsm8k", "main", "train", None),
        ("HuggingFaceH4/MATH-500", None, "test", None),
        ("someone/problems", None, "test", None),
        ("org/math", "algebra", "train", "v1.0"),
    ]
    assert rows == [SourceRow(0, {"problem": "p", "answer": "1", "x": None})]


# --- prompts ----------------------------------------------------------------------------


def test_render_prompt_keeps_braces():
    task = get_task(TaskConfig(name="math", path=str(MATH_TEST)))
    question = "Find $\\frac{1}{2} + x$ where {x} = {question} and {0}."
    messages = render_prompt(task.cfg, task, question)
    assert messages == [{"role": "user", "content": task.default_user_prompt.replace("{question}", question)}]
    assert messages[0]["content"].endswith("Question: " + question)


def test_render_prompt_system_user_and_few_shot():
    cfg = TaskConfig(prompt={
        "system": "You are careful.",
        "user": "Problem {1}: {question}",
        "few_shot": [{"question": "1+1?", "answer": "The answer is 2."}, {"question": "2*3?", "answer": "6"}],
    })
    messages = render_prompt(cfg, get_task(cfg), "5-{4}?")
    assert messages == [
        {"role": "system", "content": "You are careful."},
        {
            "role": "user",
            "content": "Question: 1+1?\nAnswer: The answer is 2.\n\nQuestion: 2*3?\nAnswer: 6\n\nProblem {1}: 5-{4}?",
        },
    ]
