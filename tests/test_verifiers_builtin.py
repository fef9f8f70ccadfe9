"""The built-in verifiers beyond numeric/math: choice, exact, regex, majority, judge, composition."""

import json

import pytest

from selfimprove.verifiers import Verdict, available_verifiers, get_verifier


def run(name, gold, text, metadata=None, **params):
    verdict = get_verifier(name, params).verify({"question": "q", "answer": gold, "metadata": metadata or {}},
                                               {"text": text, "finish_reason": "stop"})
    assert verdict.reason
    assert verdict.score == (1.0 if verdict.status == "correct" else 0.0)
    return verdict


def test_all_builtins_are_registered():
    found = available_verifiers()
    for name in ("numeric", "math", "choice", "exact", "regex", "code", "majority", "judge", "all_of", "any_of", "fallback"):
        assert found[name].startswith("built-in"), name


# --- choice -----------------------------------------------------------------------------------

OPTIONS = {"options": ["Paris", "London", "Berlin", "Rome"]}

CHOICE_CASES = [
    ("A", "The answer is (A).", "correct"),
    ("A", "\\boxed{A}", "correct"),
    ("A", "\\boxed{\\text{(A)}}", "correct"),
    ("A", "**Answer: A**", "correct"),
    ("A", "The answer is Paris.", "correct"),  # option text
    ("Paris", "The answer is A", "correct"),  # gold given as text
    ("(a)", "The answer is A) Paris", "correct"),
    ("A", "The answer is B) Paris", "wrong"),  # label and text disagree: never a coin toss
    ("A", "The answer is B.", "wrong"),
    ("A", "Answer: (E)", "wrong"),  # not an option
    ("A", "The answer is Madrid.", "wrong"),
    ("A", "Let me see.\nParis is big.\n(A)", "correct"),  # a last line that is just a label
    ("A", "Paris is the capital of France, a country.", "no_answer"),
    ("A", "I cannot tell.", "no_answer"),
]


@pytest.mark.parametrize("gold, text, status", CHOICE_CASES)
def test_choice(gold, text, status):
    assert run("choice", gold, text, OPTIONS).status == status


def test_choice_option_formats_and_modes():
    arc = {"choices": {"label": ["1", "2", "3"], "text": ["yes", "no", "maybe"]}}
    assert run("choice", "2", "The answer is 2.", arc).status == "correct"
    assert run("choice", "2", "The answer is no.", arc).status == "correct"
    mapping = {"options": json.dumps({"A": "red", "B": "blue"})}  # a JSON string, as from a CSV column
    assert run("choice", "B", "\\boxed{blue}", mapping).status == "correct"
    prefixed = {"options": ["A) red", "B) blue"]}
    assert run("choice", "B", "The answer is blue.", prefixed).status == "correct"
    assert run("choice", "B", "\\boxed{B}").status == "correct"  # no options: labels only
    numbers = {"options": ["7", "8"]}
    assert run("choice", "7", "The answer is 7.", numbers).status == "correct"  # a number that is an option's text
    assert run("choice", "A", "The answer is 8.", numbers).status == "wrong"
    assert "is not among the options A, B" in run("choice", "A", "The answer is 9.", numbers).reason
    assert run("choice", "A", "The answer is Paris.", OPTIONS, match="letter").status == "wrong"
    assert run("choice", "A", "The answer is (A).", OPTIONS, match="text").status == "wrong"
    assert run("choice", "1", "The answer is B", OPTIONS, gold_index_base=0).status == "correct"
    assert run("choice", "1", "The answer is A", OPTIONS, gold_index_base=1).status == "correct"


def test_choice_bad_gold_or_options_are_errors_that_say_why():
    v = run("choice", "1", "The answer is B", OPTIONS)
    assert v.status == "error" and "gold_index_base" in v.reason
    v = run("choice", "Z", "The answer is B", OPTIONS)
    assert v.status == "error" and "neither an option label (A-D)" in v.reason
    v = run("choice", "A", "The answer is A", {"options": 5})
    assert v.status == "error" and "metadata.options" in v.reason
    with pytest.raises(ValueError, match="match must be one of"):
        get_verifier("choice", {"match": "vibes"})


def test_choice_duplicate_option_texts_are_ambiguous():
    v = run("choice", "A", "The answer is same.", {"options": ["same", "same", "other"]})
    assert v.status == "wrong" and "several options" in v.reason


# --- exact and regex --------------------------------------------------------------------------

EXACT_CASES = [
    ("Paris", "The answer is paris.", {}, "correct"),
    ("New York", "The answer is  new   york!", {}, "correct"),
    ("Paris", "\\boxed{\\text{Paris}}", {}, "correct"),
    ("café", "The answer is CAFÉ.", {}, "correct"),
    ("Paris", "The answer is Pariss.", {}, "wrong"),
    ("Paris", "The answer is paris.", {"case_sensitive": True}, "wrong"),
    ("New York", "The answer is NewYork.", {}, "wrong"),
    ("New York", "The answer is NewYork.", {"whitespace": "remove"}, "correct"),
    ("U.S.A.", "The answer is USA", {}, "wrong"),
    ("U.S.A.", "The answer is USA", {"punctuation": "remove"}, "correct"),
    ("Paris", "Paris is lovely", {}, "no_answer"),  # no last-number or free-text guessing
]


@pytest.mark.parametrize("gold, text, params, status", EXACT_CASES)
def test_exact(gold, text, params, status):
    assert run("exact", gold, text, **params).status == status


def test_exact_aliases():
    meta = {"aliases": ["United States", "US"]}
    assert run("exact", "USA", "The answer is united states.", meta, aliases_key="aliases").status == "correct"
    assert run("exact", "USA", "The answer is united states.", meta).status == "wrong"
    assert run("exact", None, "The answer is US.", meta).status == "error"


def test_regex():
    km = {"pattern": r"{gold}\s*(?:km|kilometers)?"}
    assert run("regex", "12", "The answer is 12 km.", **km).status == "correct"
    assert run("regex", "12", "The answer is 120 km.", **km).status == "wrong"  # fullmatch by default
    assert run("regex", "1.5", "The answer is 1x5.", pattern="{gold}").status == "wrong"  # gold is escaped
    assert run("regex", "x", "The answer is X", pattern="{gold}", ignore_case=True).status == "correct"
    done = {"pattern": r"\bDONE\b", "target": "output", "match": "search"}
    assert run("regex", None, "so we are DONE here", **done).status == "correct"
    assert run("regex", None, "so we are DONEX here", **done).status == "wrong"
    assert run("regex", None, "   ", **done).status == "no_answer"
    assert run("regex", None, "The answer is 5", pattern="{gold}").status == "error"


def test_regex_params_are_checked():
    with pytest.raises(ValueError, match="params.pattern is required"):
        get_verifier("regex")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        get_verifier("regex", {"pattern": "(unclosed"})
    with pytest.raises(ValueError, match="target must be one of"):
        get_verifier("regex", {"pattern": "x", "target": "everything"})


# --- majority ---------------------------------------------------------------------------------


def vote(texts, **params):
    verdicts = get_verifier("majority", params).verify_group({"question": "q", "answer": None, "metadata": {}},
                                                           [{"text": t} for t in texts])
    assert len(verdicts) == len(texts)
    return verdicts


def test_majority_pseudo_label_and_share_are_recorded():
    verdicts = vote(["#### 42", "\\boxed{42.0}", "The answer is 41.", "no idea", "#### 42"])
    assert [v.status for v in verdicts] == ["correct", "correct", "wrong", "no_answer", "correct"]
    assert all(v.reason.startswith("pseudo-label 42, share 0.60 (3/5 votes)") for v in verdicts)
    assert verdicts[2].extracted == "41"


def test_majority_groups_equal_values_and_latex_text():
    verdicts = vote(["#### 1/2", "#### 0.5", "\\boxed{\\frac{1}{2}}", "#### 2"])
    assert [v.status for v in verdicts] == ["correct", "correct", "correct", "wrong"]
    verdicts = vote(["\\boxed{x^{2} + 1}", "\\boxed{x^2+1}", "\\boxed{x}"])
    assert [v.status for v in verdicts] == ["correct", "correct", "wrong"]


def test_majority_thresholds_and_ties():
    tie = vote(["#### 1", "#### 2", "#### 1", "#### 2"])
    assert all(v.status == "wrong" and "tie between 1 and 2" in v.reason for v in tie)
    weak = vote(["#### 1", "#### 1", "#### 2", "#### 3", "x", "y"], min_share=0.5)
    assert all(v.status != "correct" and "no pseudo-label: top answer 1 has 2/6 votes" in v.reason for v in weak)
    few = vote(["#### 7", "nothing", "nothing"], min_share=0.3, min_votes=2)
    assert [v.status for v in few] == ["wrong", "no_answer", "no_answer"]
    assert vote(["#### 7", "nothing", "nothing"], min_share=0.3, min_votes=1)[0].status == "correct"
    assert all(v.status == "no_answer" for v in vote(["a", "b"]))
    with pytest.raises(ValueError, match="min_share"):
        get_verifier("majority", {"min_share": 0})


# --- judge (the engine side is tested with the verify stage, in test_judge.py) -----------------


def test_judge_request_and_parsing():
    judge = get_verifier("judge", {"system": "Be strict."})
    messages = judge.judge_request({"question": "What is {x} + 1?", "answer": "5"}, {"text": "x" * 10_000 + " so 5"})
    assert messages[0] == {"role": "system", "content": "Be strict."}
    prompt = messages[1]["content"]
    assert "What is {x} + 1?" in prompt and "Reference answer:\n5\n" in prompt
    assert prompt.count("x") < 6200 and "[...]" in prompt  # the output's end, bounded
    assert judge.parse_judgement("Looks right.\nVERDICT: CORRECT").status == "correct"
    assert judge.parse_judgement("VERDICT: CORRECT at first, but no.\nVerdict: INCORRECT").status == "wrong"
    assert judge.parse_judgement("verdict - wrong").status == "wrong"
    assert judge.parse_judgement("I am not sure.").status == "no_answer"
    assert judge.parse_judgement(None).status == "no_answer"
    assert judge.parse_judgement("VERDICT: CORRECT" + "\x00\ud800" * 500_000).status == "no_answer"  # only the tail is read
    with pytest.raises(ValueError, match="template"):
        get_verifier("judge", {"template": "no placeholder"})


def test_judge_cannot_run_in_a_pool():
    from selfimprove.verifiers import VerifyPool

    with pytest.raises(ValueError, match="needs the generation engine"):
        VerifyPool("judge")
    with pytest.raises(ValueError, match="needs the generation engine"):
        VerifyPool("fallback", {"verifiers": ["math", "judge"]})


# --- composition ------------------------------------------------------------------------------


def test_fallback_runs_the_next_only_where_needed():
    chain = {"verifiers": [{"verifier": "numeric"}, {"verifier": "exact"}]}
    v = run("fallback", "five", "The answer is Five.", **chain)
    assert v == Verdict("correct", 1.0, "Five", "fallback: numeric: gold answer is not numeric: five -> "
                                                "exact: answer_is answer 'Five' matches 'five'")
    v = run("fallback", "5", "The answer is 6.", **chain)  # numeric decided: exact never runs
    assert v.status == "wrong" and "exact" not in v.reason
    v = run("fallback", "5", "The answer is six.", on_status=["wrong"], **chain)
    assert v.status == "wrong" and "exact: answer_is answer 'six' != gold '5'" in v.reason


def test_all_of_and_any_of():
    both = {"verifiers": ["numeric", {"verifier": "regex", "params": {"pattern": r"{gold}"}}]}
    assert run("all_of", "5", "The answer is 5.", **both).status == "correct"
    v = run("all_of", "5", "The answer is 5.0", **both)  # numeric yes, regex no
    assert v.status == "wrong" and v.reason.startswith("all_of: numeric: answer_is answer 5.0 == gold 5 -> regex:")
    v = run("all_of", "5", "The answer is 6.", **both)
    assert v.status == "wrong" and "regex" not in v.reason  # decided by the first
    either = {"verifiers": ["numeric", "exact"]}
    assert run("any_of", "five", "The answer is five.", **either).status == "correct"
    v = run("any_of", "5", "The answer is six.", **either)
    assert v.status == "wrong" and v.reason.startswith("any_of: none correct: numeric:")
    assert run("any_of", "5", "nothing here", **either).status == "no_answer"


def test_composite_with_a_group_child_is_a_group_verifier():
    v = get_verifier("any_of", {"verifiers": ["numeric", "majority"]})
    assert v.group
    verdicts = v.verify_group({"question": "q", "answer": "3", "metadata": {}},
                              [{"text": t} for t in ["#### 3", "#### 4", "#### 4", "#### 4"]])
    assert [x.status for x in verdicts] == ["correct", "correct", "correct", "correct"]
    assert "pseudo-label 4" in verdicts[1].reason and "majority" not in verdicts[0].reason


def test_composite_fingerprint_includes_every_child():
    spec = {"verifiers": ["numeric", {"verifier": "exact", "params": {"case_sensitive": True}}]}
    fp = get_verifier("fallback", spec).fingerprint()
    assert fp["name"] == "fallback" and fp["params"]["on_status"] == ["no_answer", "error"]
    assert [c["name"] for c in fp["params"]["verifiers"]] == ["numeric", "exact"]
    assert fp["params"]["verifiers"][1]["params"]["case_sensitive"] is True
    assert fp["params"]["verifiers"][0]["params"]["rel_tol"] == 1e-6  # effective params, defaults filled in
    other = get_verifier("fallback", {"verifiers": ["numeric", "exact"]}).fingerprint()
    assert other != fp
    assert json.loads(json.dumps(fp)) == fp


def test_composite_params_are_checked():
    with pytest.raises(ValueError, match=r"params.verifiers must be a non-empty list"):
        get_verifier("all_of", {})
    with pytest.raises(ValueError, match=r"params.verifiers\[1\]: unknown verifier 'nope'"):
        get_verifier("all_of", {"verifiers": ["numeric", "nope"]})
    with pytest.raises(ValueError, match=r"params.verifiers\[0\]: verifier 'numeric': unknown parameter"):
        get_verifier("any_of", {"verifiers": [{"verifier": "numeric", "params": {"tolerance": 1}}]})
    with pytest.raises(ValueError, match="can only be the last"):
        get_verifier("fallback", {"verifiers": ["judge", "math"]})
    with pytest.raises(ValueError, match="can only be the last"):
        get_verifier("fallback", {"verifiers": ["judge"]})
    with pytest.raises(ValueError, match="params.on_status"):
        get_verifier("fallback", {"verifiers": ["math"], "on_status": ["correct"]})


def test_judge_composite_splits_into_rules_and_engine():
    v = get_verifier("fallback", {"verifiers": ["math", {"verifier": "judge", "params": {"max_tokens": 64}}]})
    assert v.uses_engine and v.engine_child.name == "judge"
    spec, params = v.rules_part()
    rules = get_verifier(spec, params)
    assert not rules.uses_engine and [c.name for c in rules.children] == ["math"]
    problem = {"question": "q", "answer": "5", "metadata": {}}
    decided = rules.verify(problem, {"text": "The answer is 5."})
    undecided = rules.verify(problem, {"text": "I do not know."})
    assert not v.needs_engine(decided) and v.needs_engine(undecided)
    final = v.finish(undecided, Verdict("correct", 1.0, None, "judge: VERDICT: CORRECT"))
    assert final == Verdict("correct", 1.0, None, "fallback: math: no final answer found -> judge: judge: VERDICT: CORRECT")
