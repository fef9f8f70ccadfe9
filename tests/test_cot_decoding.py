"""CoT-decoding (sample.strategy: cot_decoding, pipeline/decoding.py): the scoring helpers on
hand-made tokens, the sample stage on the deterministic test engine (rows, confidence, resume,
old shards), the openai engine's two-step protocol against a scripted server, and one test on
the real vLLM engine (offline and served) with the default model."""

import json
import math
import re
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from selfimprove.pipeline import schema
from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import DEFAULT_MODEL_DIR, ConfigError, load_config
from selfimprove.pipeline.decoding import (Decoded, answer_positions, cot_decode, locate_answer, margin, rank,
                                           token_spans, verifier_spans)
from selfimprove.pipeline.engines import Branch, BranchToken, Engine, Request, SamplingParams
from selfimprove.pipeline.generation import sampling_fingerprint
from selfimprove.pipeline.stages import reader, run_stage
from selfimprove.pipeline.stages.sample import SampleStage
from selfimprove.pipeline.verification import open_pool
from selfimprove.verifiers.extract import extract_answer
from tests.conftest import selfimprove, write_config
from tests.fake_engine import FakeEngine
from tests.test_resume import _kill_after_first_shard

N, K = 4, 5  # the 4 most confident of 5 paths: problems with two paths without an answer keep one


def _branch(words: list[str], probs: list[tuple[float, float]], first_rank: int = 1) -> Branch:
    tokens = [BranchToken(w, p1, p2) for w, (p1, p2) in zip(words, probs)]
    return Branch("".join(w for w in words), "stop", len(words), tokens, first_rank)


# -- the scoring helpers --------------------------------------------------------------------------

def test_a_multi_token_answer_is_scored_over_all_its_tokens_and_only_them():
    words = ["So", " the", " total", " is", " 1", ",", "234", ".", "\nThe", " answer", " is", " 1", ",", "234", "."]
    probs = [(0.9, 0.05)] * 11 + [(0.6, 0.3), (0.5, 0.4), (0.8, 0.1), (0.99, 0.0)]
    b = _branch(words, probs)
    span = locate_answer(b.text, "1,234")
    assert b.text[span[0]:span[1]] == "1,234" and span[0] > b.text.index("answer")  # the final statement's
    positions = answer_positions([t.text for t in b.tokens], b.text, span)
    assert positions == [11, 12, 13]
    assert margin(b.tokens, positions) == pytest.approx(((0.6 - 0.3) + (0.5 - 0.4) + (0.8 - 0.1)) / 3)


def test_token_spans_place_what_they_can_when_the_texts_do_not_join():
    # exact where they join
    assert token_spans(["The", " answer", " is", " 4", "2"], "The answer is 42") == [
        (0, 3), (3, 10), (10, 13), (13, 15), (15, 16)]
    # a character split across two tokens (each spelled U+FFFD), an end-of-turn token the text leaves out
    text = "Café: the answer is 42."
    spans = token_spans(["Caf", "\ufffd", "\ufffd", ":", " the", " answer", " is", " 42", ".", ""], text)
    assert spans[0] == (0, 3) and spans[1] is None and spans[2] is None
    assert [text[s:e] for s, e in spans[3:9]] == [":", " the", " answer", " is", " 42", "."]
    # a stop string cut from the text: its token is skipped, the rest is placed from the start
    assert token_spans([" 42", ".\n\n"], " 42.") == [(0, 3), None]
    assert answer_positions(["Caf", "\ufffd", "\ufffd", ":", " the", " answer", " is", " 42", ".", ""], text,
                            locate_answer(text, "42")) == [7]


def test_locate_answer_prefers_the_last_occurrence_that_stands_alone():
    text = "The answer is 4. Not 14, not 4x."
    assert locate_answer(text, "4") == (14, 15)
    boxes = "\\boxed{-2} and \\boxed{1}"  # a list answer the extraction joined: from its first item to its last
    assert boxes[slice(*locate_answer(boxes, "-2, 1"))] == "-2} and \\boxed{1"
    assert locate_answer("it is 3  dozen.", "3 dozen") == (6, 14)
    assert locate_answer("no such thing here", "42") is None
    assert locate_answer("The answer is 5.", None) is None and locate_answer("", "5") is None


def test_a_path_without_an_answer_ranks_last_however_confident_and_ties_go_to_the_lower_first_token_rank():
    confident = _branch(["I", " am", " not", " sure"], [(1.0, 0.0)] * 4, first_rank=1)
    a = _branch(["The", " answer", " is", " 7"], [(0.75, 0.5)] * 4, first_rank=3)
    b = _branch(["Answer", ":", " 8"], [(0.5, 0.25)] * 3, first_rank=2)  # the same margin as a: 0.25
    c = _branch(["So", " 9"], [(0.875, 0.125)] * 2, first_rank=4)
    spans = [None, locate_answer(a.text, "7"), locate_answer(b.text, "8"), locate_answer(c.text, "9")]
    ranked = rank([confident, a, b, c], spans)
    assert [s.branch.first_rank for s in ranked] == [4, 2, 3, 1]
    assert [s.confidence for s in ranked[:3]] == [0.75, 0.25, 0.25]
    assert ranked[3].confidence is None and ranked[3].span is None
    decoded = Decoded(prompt_tokens=9, ranked=ranked)
    assert decoded.best().branch is c
    result = decoded.result(3)
    assert [(c_.text, c_.branch_rank) for c_ in result.completions] == [(c.text, 4), (b.text, 2), (a.text, 3)]
    assert result.completions[0].confidence == 0.75 and result.prompt_tokens == 9
    assert "fewer than the 5 wanted" in decoded.result(5).error
    # an answer no token can be placed on counts as none; with no scored path there is no best one
    unplaced = rank([a], [(100, 101)])
    assert unplaced[0].confidence is None and Decoded(ranked=unplaced).best() is None


# -- the sample stage on the deterministic engine ---------------------------------------------------

def _expected(engine: FakeEngine, req: Request, k: int) -> list[tuple[int, float | None]]:
    """(first-token rank, confidence) of the fake engine's paths, most confident first, computed
    apart: an answered path's answer is its last word token (" 81."), so its margin is that token's."""
    out = []
    for r in range(1, k + 1):
        text = engine.branch_text(req, r)
        words = re.findall(r"\s*\S+", text)
        if "The answer is" in text:
            p1, p2 = engine.branch_probabilities(req.key, r, len(words) - 1)
            out.append((r, p1 - p2))
        else:
            out.append((r, None))
    return sorted(out, key=lambda x: (x[1] is None, -(x[1] or 0), x[0]))


def _cot(fake_config, **sample):
    return fake_config(sample={"n": N, "strategy": "cot_decoding", "cot_k": K, **sample})


def test_sample_stage_keeps_the_n_most_confident_paths_with_their_confidence(fake_config, capsys):
    path = _cot(fake_config)
    cfg = load_config(path)
    assert main(["prepare", "--config", str(path)]) == 0
    assert main(["sample", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    samples = reader(cfg, 1, "sample")
    rows = samples.read_all().to_pylist()
    assert samples.rows == 20 * N
    engine = FakeEngine(cfg)
    by_problem = defaultdict(list)
    for r in rows:
        by_problem[r["problem_id"]].append(r)
    answered = 0
    for pid, got in by_problem.items():
        got.sort(key=lambda r: r["sample_idx"])
        req = Request(pid, json.loads(got[0]["prompt"]))
        expected = _expected(engine, req, K)
        answered += sum(c is not None for _, c in expected)
        assert [r["sample_idx"] for r in got] == list(range(N))
        assert [r["branch_rank"] for r in got] == [rk for rk, _ in expected[:N]], pid
        assert [r["text"] for r in got] == [engine.branch_text(req, rk) for rk, _ in expected[:N]]
        for r, (_, conf) in zip(got, expected[:N]):
            assert (r["confidence"] is None) == (conf is None) and (conf is None or r["confidence"] == pytest.approx(conf))
    assert 0 < answered < 20 * K, "paths with and without an answer, so ranking them is tested"
    assert any(r["confidence"] is None for r in rows), "a kept path without an answer (ranked last)"
    stats = samples.manifest["stats"]["cot_decoding"]
    assert stats == {"k": K, "paths": 20 * K, "paths_with_answer": answered}
    assert f"cot_decoding k={K}: the {N} most confident of {20 * K} greedy paths, {answered} with an answer" in out
    # the new columns go through verify and dedup
    assert main(["verify", "--config", str(path)]) == 0
    verified = reader(cfg, 1, "verify").read_all().to_pylist()
    assert [(r["problem_id"], r["confidence"], r["branch_rank"]) for r in verified] == \
        [(r["problem_id"], r["confidence"], r["branch_rank"]) for r in rows]
    assert all(r["status"] == "no_answer" for r in verified if r["confidence"] is None)


def test_cot_decoding_with_the_verifier_finds_the_answers_in_the_pool(fake_config):
    """cot_decode + verifier_spans, the call evaluate makes: the span is the verifier's answer."""
    cfg = load_config(_cot(fake_config))
    engine = FakeEngine(cfg)
    problems = {}
    for i, (q, a) in enumerate(list(engine.gold.items())[:4]):
        problems[f"p{i}"] = {"problem_id": f"p{i}", "question": q, "answer": a, "metadata": "{}"}
    requests = [Request(pid, [{"role": "user", "content": p["question"]}]) for pid, p in problems.items()]
    with open_pool(cfg) as pool:
        decoded = cot_decode(engine, requests, K, 64, verifier_spans(problems, pool, "numeric"), desc="test")
    for req, d in zip(requests, decoded):
        expected = _expected(engine, req, K)
        assert [s.branch.first_rank for s in d.ranked] == [rk for rk, _ in expected]
        assert [s.confidence for s in d.ranked] == [c if c is None else pytest.approx(c) for _, c in expected]
        for s in d.ranked:
            if s.confidence is not None:
                assert s.branch.text[s.span[0]:s.span[1]] == extract_answer(s.branch.text)[0]
        assert d.result(1).completions[0].text == (d.best().branch.text if d.best() else d.ranked[0].branch.text)


def test_a_killed_cot_decoding_stage_resumes_without_rewriting_committed_shards(fake_config, tmp_path):
    path = fake_config(run={"dir": str(tmp_path / "killed"), "problems_per_shard": 4},
                       sample={"n": N, "strategy": "cot_decoding", "cot_k": K})
    selfimprove("prepare", "--config", path)
    samples_dir = _kill_after_first_shard(path, {"FAKE_ENGINE_DELAY": "1.0"})
    committed = {p.name: p.read_bytes() for p in samples_dir.glob("part-*.parquet")}
    assert committed and len(committed) < 5
    selfimprove("sample", "--config", path)
    for name, data in committed.items():
        assert (samples_dir / name).read_bytes() == data, f"{name} was rewritten"
    cfg = load_config(path)
    samples = reader(cfg, 1, "sample")
    keys = [(r["problem_id"], r["sample_idx"]) for r in samples.read_all().to_pylist()]
    assert len(keys) == len(set(keys)) == 20 * N
    assert samples.manifest["stats"]["cot_decoding"]["paths"] == 20 * K  # resumed shards' counts from the journal
    # the same rows as an uninterrupted run
    fresh = fake_config(run={"dir": str(tmp_path / "fresh"), "problems_per_shard": 4},
                        sample={"n": N, "strategy": "cot_decoding", "cot_k": K})
    selfimprove("prepare", "--config", fresh)
    selfimprove("sample", "--config", fresh)
    assert reader(load_config(fresh), 1, "sample").read_all().drop_columns(["prompt"]).equals(
        samples.read_all().drop_columns(["prompt"]))


def test_config_and_fingerprint(fake_config):
    plain = load_config(fake_config())
    default = load_config(fake_config(sample={"strategy": "sample", "cot_k": 10}))
    cot = load_config(_cot(fake_config))
    assert sampling_fingerprint(plain, 1, "x") == sampling_fingerprint(default, 1, "x") != sampling_fingerprint(cot, 1, "x")
    with pytest.raises(ConfigError, match="until_correct"):
        load_config(_cot(fake_config, until_correct={"enabled": True}))
    with pytest.raises(ConfigError, match="cot_k \\(2\\) is smaller than n \\(4\\)"):
        load_config(_cot(fake_config, cot_k=2))
    with pytest.raises(ConfigError, match="cot_k"):
        load_config(_cot(fake_config, cot_k=21))
    with pytest.raises(ConfigError, match="strategy"):
        load_config(fake_config(sample={"strategy": "beam"}))


class PlainEngine(FakeEngine):
    """An engine of someone else's, without per-token logprobs."""

    generate_branches = Engine.generate_branches


def test_an_engine_without_branches_is_refused_naming_it(fake_config):
    path = _cot(fake_config, engine="tests.test_cot_decoding:PlainEngine")
    selfimprove("prepare", "--config", path)
    proc = selfimprove("sample", "--config", path, check=False)
    assert proc.returncode == 1
    assert "cot_decoding needs per-token logprobs; engine 'fake'" in proc.stderr + proc.stdout
    assert "does not provide generate_branches" in proc.stderr + proc.stdout
    assert not list(load_config(path).iter_dir(1).glob("samples/part-*.parquet"))


def test_evaluate_refuses_an_engine_without_branches_before_any_greedy_work(fake_config):
    path = fake_config(sample={"engine": "tests.test_cot_decoding:PlainEngine"},
                       evaluate={"count": 6, "cot_decoding": {"k": 3}})
    proc = selfimprove("evaluate", "--config", path, "--iter", "0", check=False)
    assert proc.returncode == 1
    assert "does not provide generate_branches" in proc.stderr + proc.stdout
    assert not list(load_config(path).iter_dir(0).glob("eval/part-*.parquet"))


def test_shards_written_before_the_new_columns_still_verify_dedup_and_export(fake_config, monkeypatch):
    """Samples shards of an earlier version lack confidence and branch_rank: every later stage reads them."""
    path = fake_config()
    cfg = load_config(path)
    monkeypatch.setattr(SampleStage, "check_shard",
                        lambda self, name, out: setattr(out, "rows", out.rows.drop_columns(["confidence", "branch_rank"])))
    for stage in ("prepare", "sample"):
        run_stage(stage, cfg, 1)
    assert "confidence" not in reader(cfg, 1, "sample").read_all().column_names
    for stage in ("verify", "rationalize", "dedup", "export"):
        run_stage(stage, cfg, 1)
    verified = reader(cfg, 1, "verify").read_all()
    assert verified.num_rows == 20 * 4 and set(verified["confidence"].to_pylist()) == {None}
    selected = reader(cfg, 1, "dedup").read_all()
    assert selected.num_rows > 0 and selected.schema.names == schema.SELECTED.names


# -- the openai engine against a scripted server ---------------------------------------------------

FIRST = [("The", -0.2), (" Let", -1.0), ("\ufffd", -1.5), ("<|im_end|>", -2.0), ("So", -2.5), ("We", -3.0)]


class BranchServer:
    """Chat completions like vLLM's with logprobs: a first token from FIRST (top_logprobs of
    them), and, given an assistant message to continue, a deterministic path with an answer."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, {"data": [{"id": "branch-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with server.lock:
                    server.bodies.append(body)
                self._send(200, server.answer(body))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @staticmethod
    def path(prefix: str) -> list[tuple[str, float, float]]:
        """The continuation of an assistant prefix: (token, its logprob, the runner-up's)."""
        words = re.findall(r"\s*\S+", f" step: {len(prefix)} + 1 = {len(prefix) + 1}.\nThe answer is {len(prefix) + 1}.")
        return [(w, -0.05 * (i % 4), -1.0 - 0.1 * (len(prefix) + i)) for i, w in enumerate(words)] + [("<|im_end|>", -0.01, -6.0)]

    def answer(self, body: dict) -> dict:
        question = body["messages"][-1]["content"]
        if body.get("continue_final_message"):
            steps = self.path(question)
            if len(steps) > body["max_tokens"]:
                steps, finish = steps[: body["max_tokens"]], "length"
            else:
                finish = "stop"
            content = [{"token": t, "logprob": lp, "top_logprobs": [{"token": t, "logprob": lp}, {"token": "x", "logprob": lp2}]}
                       for t, lp, lp2 in steps]
            text = "".join(t for t, _, _ in steps if t != "<|im_end|>")
        elif "NO-LOGPROBS" in question:
            return {"choices": [{"index": 0, "message": {"content": "The"}, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
        else:
            top = [{"token": t, "logprob": lp} for t, lp in FIRST[: body["top_logprobs"]]]
            content, text, finish = [{"token": "The", "logprob": -0.2, "top_logprobs": top[::-1]}], "The", "length"
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                             "logprobs": {"content": content}}],
                "usage": {"prompt_tokens": len(question.split()), "completion_tokens": len(content)}}

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def _no_proxy(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_openai_engine_branches_by_continuing_the_assistant_turn(tmp_path, _no_proxy):
    from selfimprove.pipeline.engines.openai import OpenAIEngine

    with BranchServer() as server:
        cfg = load_config(write_config(tmp_path / "c.yaml", {
            "run": {"dir": str(tmp_path / "run")},
            "sample": {"engine": "openai", "server": {"base_url": server.base_url, "model": "branch-model",
                                                       "max_retries": 0, "concurrency": 3}}}))
        engine = OpenAIEngine(cfg)
        try:
            params = SamplingParams(max_tokens=40, stop=("\n\n\n",), chat_template_kwargs={"enable_thinking": False})
            q = Request("q", [{"role": "user", "content": "What is it?"}])
            bad = Request("bad", [{"role": "user", "content": "NO-LOGPROBS"}])
            (result, failed) = engine.generate_branches([q, bad], 5, params)
            (short,) = engine.generate_branches([q], 5, SamplingParams(max_tokens=4))
        finally:
            engine.close()
    assert "no top_logprobs" in failed.error and failed.branches == []
    assert result.error is None and result.prompt_tokens == 3
    # the undecodable candidate (part of a character) is left out; the end of turn ends its path at once
    assert [b.first_rank for b in result.branches] == [1, 2, 4, 5]
    ended = result.branches[2]
    assert (ended.text, ended.finish_reason, ended.completion_tokens) == ("", "stop", 1)
    first = [b for b in server.bodies if not b.get("continue_final_message")]
    assert {(b["max_tokens"], b["top_logprobs"], b["temperature"], b["logprobs"]) for b in first} == {(1, 5, 0.0, True)}
    continued = [b for b in server.bodies if b.get("continue_final_message") and b["max_tokens"] == 39]
    assert sorted(b["messages"][-1]["content"] for b in continued) == sorted(["The", " Let", "So"])
    for b in continued:
        assert b["messages"][-1]["role"] == "assistant" and b["add_generation_prompt"] is False
        assert (b["top_logprobs"], b["temperature"], b["stop"], b["chat_template_kwargs"]) == (2, 0.0, ["\n\n\n"], {"enable_thinking": False})
    for b in (result.branches[0], result.branches[1], result.branches[3]):
        prefix = b.tokens[0].text
        steps = BranchServer.path(prefix)
        assert b.text == prefix + "".join(t for t, _, _ in steps[:-1]) and b.finish_reason == "stop"
        assert b.completion_tokens == len(b.tokens) == 1 + len(steps)
        assert (b.tokens[0].top1, b.tokens[0].top2) == pytest.approx((math.exp(-0.2), math.exp(-1.0)))
        assert [t.top1 for t in b.tokens[1:]] == pytest.approx([math.exp(lp) for _, lp, _ in steps])
        assert [t.top2 for t in b.tokens[1:]] == pytest.approx([math.exp(lp2) for _, _, lp2 in steps])
        assert b.tokens[-1].text == "" and "".join(t.text for t in b.tokens) == b.text
        assert b.cumulative_logprob == pytest.approx(dict(FIRST)[prefix] + sum(lp for _, lp, _ in steps))
    assert [b.finish_reason for b in short.branches] == ["length", "length", "stop", "length"]
    assert all(b.completion_tokens == 4 for b in short.branches if b.finish_reason == "length")
    # ranked by the margin on the answer's token, whose runner-up the server makes less likely the
    # longer the path's first token: " Let", "The", "So"; the path that ended at once has no answer
    ranked = rank(result.branches, [locate_answer(b.text, (extract_answer(b.text) or (None,))[0]) for b in result.branches])
    assert [s.branch.first_rank for s in ranked] == [2, 1, 5, 4] and ranked[-1].confidence is None


# -- the real engine ---------------------------------------------------------------------------------

QUESTIONS = ["What is 7 + 5?", "Tom has 3 apples and buys 4 more. How many apples does he have?"]


@pytest.mark.engine
def test_real_vllm_branches_offline_and_served(tmp_path, _no_proxy):
    """k=3 paths per problem on the default model: distinct first tokens, greedy's own path the
    first of them, token texts that join to the text; the OpenAI-compatible server (vllm serve)
    gives the same paths through continue_final_message."""
    from selfimprove.pipeline.engines.openai import OpenAIEngine
    from selfimprove.pipeline.engines.vllm import VLLMEngine
    from tests.vllm_server import VLLMServer

    cfg = load_config(None, ["model.max_model_len=512", "model.dtype=float32", f"run.dir={tmp_path / 'run'}"])
    requests = [Request(f"q{i}", [{"role": "user", "content": q}]) for i, q in enumerate(QUESTIONS)]
    greedy = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_tokens=32)
    engine = VLLMEngine(cfg)
    try:
        offline = engine.generate_branches(requests, 3, greedy)
        plain = engine.generate(requests, greedy)
        problems = {r.key: {"problem_id": r.key, "question": q, "answer": a, "metadata": "{}"}
                    for r, q, a in zip(requests, QUESTIONS, ["12", "7"])}
        with open_pool(cfg) as pool:
            decoded = cot_decode(engine, requests, 3, 32, verifier_spans(problems, pool, "numeric"))
    finally:
        engine.close()
    for res, g, d in zip(offline, plain, decoded):
        assert res.error is None and [b.first_rank for b in res.branches] == [1, 2, 3]
        assert len({b.tokens[0].text for b in res.branches}) == 3, [b.text for b in res.branches]
        assert res.branches[0].text == g.completions[0].text  # greedy's own path is the rank-1 branch
        for b in res.branches:
            assert b.completion_tokens == len(b.tokens) and 1 < b.completion_tokens <= 32
            assert all(t.text is not None and 1 >= t.top1 >= t.top2 >= 0 for t in b.tokens)
            assert all(s is not None for s in token_spans([t.text for t in b.tokens], b.text)), b.text
        assert {s.branch.text for s in d.ranked} == {b.text for b in res.branches}
        confidences = [s.confidence for s in d.ranked]
        scored = [c for c in confidences if c is not None]
        assert scored == sorted(scored, reverse=True) and confidences[: len(scored)] == scored
    with VLLMServer(max_model_len=512) as server:
        scfg = load_config(None, ["sample.engine=openai", f"sample.server.base_url={server.base_url}",
                                  f"sample.server.model={DEFAULT_MODEL_DIR}", f"run.dir={tmp_path / 'run'}"])
        client = OpenAIEngine(scfg)
        try:
            served = client.generate_branches(requests, 3, greedy)
        finally:
            client.close()
    for a, b in zip(offline, served):
        assert b.error is None
        assert [(x.first_rank, x.text) for x in b.branches] == [(x.first_rank, x.text) for x in a.branches]
        for x, y in zip(a.branches, b.branches):
            assert [t.top1 for t in y.tokens] == pytest.approx([t.top1 for t in x.tokens], abs=1e-3)
