"""The openai engine against a scripted fault server (tests/fault_server.py): every retry path,
the persistent-error reject row, the `n` fallbacks, the request journal across a killed run, and
what the `openai` client brings: headers, extra_body, a proxy from the environment."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from selfimprove.pipeline.config import ConfigError, load_config
from selfimprove.pipeline.engines import Request, SamplingParams
from selfimprove.pipeline.engines.openai import OpenAIEngine, ServerError
from selfimprove.pipeline.generation import sampling_fingerprint
from selfimprove.pipeline.stages import reader, run_stage, stage_dir
from tests.conftest import ROOT, selfimprove, write_config
from tests.fault_server import MODEL, FaultServer, answer, parse_faults

FAST = {"timeout_s": 1.0, "max_retries": 3, "backoff_s": 0.01, "max_backoff_s": 0.05, "concurrency": 4}
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """The client takes a proxy from the environment: the fault server on 127.0.0.1 is reached directly."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _cfg(tmp_path, server: FaultServer, **server_cfg):
    data = {"run": {"dir": str(tmp_path / "run")},
            "sample": {"engine": "openai", "n": 3, "server": {"base_url": server.base_url, "model": MODEL, **FAST, **server_cfg}}}
    return load_config(write_config(tmp_path / "c.yaml", data))


def _requests(*texts):
    return [Request(f"p{i}", [{"role": "user", "content": t}], seed=100 + i) for i, t in enumerate(texts)]


def _generate(cfg, requests, n=3):
    engine = OpenAIEngine(cfg)
    try:
        return engine.generate(requests, SamplingParams.of(cfg.sample, n=n))
    finally:
        engine.close()


def test_n_samples_in_one_request_with_seeds_and_token_counts(tmp_path):
    with FaultServer() as server:
        cfg = _cfg(tmp_path, server)
        results = _generate(cfg, _requests("q one", "q two"))
    assert [len(r.completions) for r in results] == [3, 3] and all(r.error is None for r in results)
    assert sorted((text, n, seed) for text, n, seed, _ in server.log) == [("q one", 3, 100, ), ("q two", 3, 101)]
    first = results[0].completions
    assert [c.text for c in first] == [answer("q one", 100, i) for i in range(3)]
    assert all(c.completion_tokens == len(c.text.split()) and c.cumulative_logprob == -0.5 * c.completion_tokens for c in first)
    assert results[0].prompt_tokens == 2


def test_the_sampling_settings_of_the_call_are_sent_not_the_stage_defaults(tmp_path):
    with FaultServer() as server:
        cfg = _cfg(tmp_path, server)
        engine = OpenAIEngine(cfg)
        params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_tokens=7)  # e.g. a judge's
        engine.generate(_requests("judge this"), params)
    body = server.bodies[-1]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["model"]) == (0.0, 1.0, 7, MODEL)
    assert body["logprobs"] is True and body["seed"] == 100


@pytest.mark.parametrize("fault", ["429", "500", "503", "hang", "drop", "badjson", "nochoices"])
def test_each_fault_is_retried_until_the_request_succeeds(tmp_path, fault):
    with FaultServer(hang_s=3) as server:
        cfg = _cfg(tmp_path, server)
        results = _generate(cfg, _requests(f"[fault:{fault}*2] flaky", "steady"))
    assert all(r.error is None and len(r.completions) == 3 for r in results)
    assert [o for *_, o in server.requests_for("flaky")] == [fault, fault, "ok"]
    assert [c.text for c in results[0].completions] == [answer(f"[fault:{fault}*2] flaky", 100, i) for i in range(3)]
    assert len(server.requests_for("steady")) == 1


def test_mixed_faults_in_one_request(tmp_path):
    with FaultServer(hang_s=3) as server:
        cfg = _cfg(tmp_path, server, max_retries=5)
        results = _generate(cfg, _requests("[fault:429,500,hang,drop,badjson] mixed"))
    assert results[0].error is None and len(results[0].completions) == 3
    assert [o for *_, o in server.log] == ["429", "500", "hang", "drop", "badjson", "ok"]


def test_a_persistent_failure_becomes_an_error_result_after_bounded_attempts(tmp_path):
    with FaultServer() as server:
        cfg = _cfg(tmp_path, server)
        results = _generate(cfg, _requests("[fault:500*99] broken", "fine"))
    assert results[0].completions == [] and "HTTP 500" in results[0].error and "4 attempts" in results[0].error
    assert len(server.requests_for("broken")) == 1 + FAST["max_retries"]
    assert results[1].error is None and len(results[1].completions) == 3


def test_a_client_error_is_not_retried(tmp_path):
    with FaultServer() as server:
        cfg = _cfg(tmp_path, server)
        results = _generate(cfg, _requests("[fault:400*99] too long"), n=1)
    assert "HTTP 400" in results[0].error
    assert len(server.log) == 1


@pytest.mark.parametrize("n_mode", ["reject", "ignore"])
def test_server_without_n_gets_one_request_per_sample(tmp_path, n_mode):
    with FaultServer(n_mode=n_mode) as server:
        cfg = _cfg(tmp_path, server, concurrency=1)
        results = _generate(cfg, _requests("first", "second", "third"), n=4)
    assert all(r.error is None and len(r.completions) == 4 for r in results)
    for i, r in enumerate(results):
        texts = [c.text for c in r.completions]
        assert len(set(texts)) == 4, "single requests get distinct seeds, so distinct samples"
        assert texts == [answer(["first", "second", "third"][i], 100 + i + k, 0) for k in range(4)]
    # only the first request asks for n=4; once detected, every request is a single one
    assert server.log[0][1] == 4 and sum(n > 1 for _, n, _, _ in server.log) == 1
    # reject: the refused n=4, then 12 singles; ignore: the n=4 brought sample 0, then 11 singles
    assert len(server.log) == (13 if n_mode == "reject" else 12)


def test_token_counts_from_usage_when_the_server_sends_no_logprobs(tmp_path):
    with FaultServer(logprobs=False) as server:
        cfg = _cfg(tmp_path, server)
        single = _generate(cfg, _requests("one sample"), n=1)[0].completions[0]
        several = _generate(cfg, _requests("several"), n=3)[0].completions
    assert single.completion_tokens == len(single.text.split()) and single.cumulative_logprob is None
    assert sum(c.completion_tokens for c in several) == sum(len(c.text.split()) for c in several)


def test_unusable_server_fails_fast_naming_the_field(tmp_path, monkeypatch):
    with FaultServer(api_key="secret") as server:
        with pytest.raises(ServerError, match="SI_TEST_KEY"):
            OpenAIEngine(_cfg(tmp_path, server, api_key_env="SI_TEST_KEY"))
        monkeypatch.setenv("SI_TEST_KEY", "secret")
        with pytest.raises(ServerError, match="sample.server.model.*fault-model"):
            OpenAIEngine(_cfg(tmp_path, server, api_key_env="SI_TEST_KEY", model="other"))
        assert len(_generate(_cfg(tmp_path, server, api_key_env="SI_TEST_KEY"), _requests("ok"))[0].completions) == 3
        port = server.port
    with pytest.raises(ServerError, match="cannot reach"):
        OpenAIEngine(_cfg(tmp_path, server, base_url=f"http://127.0.0.1:{port}/v1", max_retries=1))


def test_journal_serves_finished_requests_and_ignores_stale_or_torn_lines(tmp_path):
    journal_dir = tmp_path / "stage"
    journal_dir.mkdir()
    with FaultServer() as server:
        cfg = _cfg(tmp_path, server)
        engine = OpenAIEngine(cfg)
        gen = engine.generate_shards([("part-00000.parquet", _requests("a", "b"))], SamplingParams.of(cfg.sample), journal_dir)
        name, first = next(gen)  # not resumed: as if the stage died before committing the shard
        gen.close()
        journal = journal_dir / "_requests-part-00000.jsonl"
        assert name == "part-00000.parquet" and journal.read_text().count("\n") == 2
        with open(journal, "a") as f:
            f.write('{"problem_id": "p0", "hash": "torn')  # killed mid-write
        sent = len(server.log)

        again = OpenAIEngine(cfg).generate_shards([("part-00000.parquet", _requests("a", "b"))], SamplingParams.of(cfg.sample), journal_dir)
        name, second = next(again)
        assert len(server.log) == sent, "everything came from the journal"
        assert [[c.text for c in r.completions] for r in second] == [[c.text for c in r.completions] for r in first]
        with pytest.raises(StopIteration):
            next(again)
        assert not journal.exists(), "the journal goes once the stage has committed the shard"

        # a changed request (here: temperature) must not be answered from an old journal
        old_hash = engine.request_hash(_requests("a")[0], SamplingParams.of(cfg.sample))
        journal.write_text(json.dumps({"problem_id": "p0", "hash": old_hash, "prompt_tokens": 1, "completions": [
            {"sample_idx": 0, "text": "stale", "finish_reason": "stop", "completion_tokens": 1, "cumulative_logprob": None}]}) + "\n")
        cfg.sample.temperature = 0.3
        results = OpenAIEngine(cfg).generate(_requests("a"), SamplingParams.of(cfg.sample))
        assert "stale" not in [c.text for c in results[0].completions]


@pytest.mark.parametrize("fault, reason", [("429", "HTTP 429"), ("503", "HTTP 503"), ("drop", "connection error"),
                                           ("hang", "timeout"), ("badjson", "malformed response")])
def test_a_request_failing_every_attempt_becomes_an_error_with_the_reason(tmp_path, fault, reason):
    with FaultServer(hang_s=2) as server:
        cfg = _cfg(tmp_path, server, max_retries=2, timeout_s=0.5)
        results = _generate(cfg, _requests(f"[fault:{fault}*99] doomed", "fine"))
    assert results[0].completions == [] and reason in results[0].error and "3 attempts" in results[0].error
    assert len(server.requests_for("doomed")) == 3
    assert results[1].error is None and len(results[1].completions) == 3


@pytest.mark.parametrize("faults, reason", [("500,badjson,429,badjson,500,500", "malformed response"),
                                            ("badjson,badjson,500*9", "HTTP 500")])
def test_one_budget_bounds_the_clients_retries_and_the_engines_together(tmp_path, faults, reason):
    # 500 and 429 are retried by the client, a malformed 200 by the engine: max_retries=3 is 4 attempts in all
    with FaultServer() as server:
        cfg = _cfg(tmp_path, server)
        results = _generate(cfg, _requests(f"[fault:{faults}] alternating"))
    assert reason in results[0].error and "4 attempts" in results[0].error
    assert [o for *_, o in server.requests_for("alternating")] == parse_faults(f"[fault:{faults}]")[:4]


@pytest.mark.parametrize("retry_after, max_backoff_s, waits", [("0.4", 5.0, True), ("30", 0.05, False),
                                                               ("300", 0.05, False)])
def test_retry_after_is_honoured_up_to_max_backoff(tmp_path, retry_after, max_backoff_s, waits):
    # 300 s is past the client's own limit (two minutes): it gives up, and the engine retries instead
    with FaultServer(retry_after=retry_after) as server:
        cfg = _cfg(tmp_path, server, max_backoff_s=max_backoff_s)
        start = time.monotonic()
        results = _generate(cfg, _requests("[fault:429*2] busy"), n=1)
        waited = time.monotonic() - start
    assert results[0].error is None and [o for *_, o in server.log] == ["429", "429", "ok"]
    assert waited >= 0.8 if waits else waited < 5


def test_retries_give_up_when_the_generation_ends(tmp_path):
    with FaultServer() as server:
        cfg = _cfg(tmp_path, server, max_retries=100, backoff_s=0.1, max_backoff_s=0.1)
        engine = OpenAIEngine(cfg)
        shards = [("part-00000.parquet", _requests("fine")), ("part-00001.parquet", _requests("[fault:500*999] stuck"))]
        gen = engine.generate_shards(shards, SamplingParams.of(cfg.sample, n=1))
        assert next(gen)[0] == "part-00000.parquet"
        deadline = time.time() + 10
        while time.time() < deadline and len(server.requests_for("stuck")) < 3:
            time.sleep(0.02)
        gen.close()  # the stage is done with it, a retrying request still in flight
        time.sleep(0.5)
        sent = len(server.requests_for("stuck"))
        time.sleep(1.0)
        assert len(server.requests_for("stuck")) == sent, "a stopped generation sends nothing more"
        engine.close()


def test_headers_go_with_every_request_and_no_authorization_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("SI_TEST_KEY", raising=False)
    monkeypatch.setenv("SI_GATEWAY_TOKEN", "tok-123")
    headers = {"X-Gateway-Route": "pool-a", "X-Gateway-Token": "Bearer ${SI_GATEWAY_TOKEN}"}
    with FaultServer() as server:
        cfg = _cfg(tmp_path, server, api_key_env="SI_TEST_KEY", headers=headers)
        results = _generate(cfg, _requests("[fault:503] hello"))
    assert results[0].error is None
    assert [(method, path) for method, path, _ in server.http] == [
        ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/chat/completions")]
    for _, _, received in server.http:  # retries included
        assert received["x-gateway-route"] == "pool-a" and received["x-gateway-token"] == "Bearer tok-123"
        assert "authorization" not in received, "no key set: no Authorization header, not even a placeholder"
    assert "${SI_GATEWAY_TOKEN}" in json.dumps(cfg.model_dump(mode="json")), "the config holds the reference only"

    monkeypatch.delenv("SI_GATEWAY_TOKEN")
    with FaultServer() as server:
        with pytest.raises(ServerError, match=r"sample.server.headers.X-Gateway-Token.*\$SI_GATEWAY_TOKEN"):
            OpenAIEngine(_cfg(tmp_path, server, headers=headers))


def test_an_api_key_or_an_authorization_header_is_sent(tmp_path, monkeypatch):
    monkeypatch.setenv("SI_TEST_KEY", "secret")
    with FaultServer(api_key="secret") as server:
        _generate(_cfg(tmp_path, server, api_key_env="SI_TEST_KEY"), _requests("with key"))
    assert {h["authorization"] for *_, h in server.http} == {"Bearer secret"}
    monkeypatch.delenv("SI_TEST_KEY")
    with FaultServer() as server:  # a gateway with an authorization scheme of its own
        _generate(_cfg(tmp_path, server, api_key_env="SI_TEST_KEY", headers={"Authorization": "Basic Z3c6cHc="}),
                  _requests("gateway"))
    assert {h["authorization"] for *_, h in server.http} == {"Basic Z3c6cHc="}


def test_extra_body_arrives_in_the_request_body_and_is_what_the_journal_hashes(tmp_path):
    extra = {"repetition_penalty": 1.1, "structured_outputs": {"regex": "The answer is [0-9]+"}}
    with FaultServer() as server:
        cfg = _cfg(tmp_path, server, extra_body=extra)
        engine = OpenAIEngine(cfg)
        params = SamplingParams.of(cfg.sample)
        req = _requests("extra")[0]
        results = engine.generate([req], params)
    assert results[0].error is None
    body = server.bodies[-1]
    assert body["repetition_penalty"] == 1.1 and body["structured_outputs"] == extra["structured_outputs"]
    assert body == {**engine.payload(req, params, 3, req.seed), "logprobs": True}, "sent exactly as journalled"
    assert not {"top_k", "min_p", "stop", "chat_template_kwargs"} & set(body), "settings at their defaults stay out"


def test_sampling_settings_beyond_the_openai_api_are_sent_where_set(tmp_path):
    with FaultServer() as server:
        cfg = _cfg(tmp_path, server)
        params = SamplingParams.of(cfg.sample, n=2, top_k=20, min_p=0.05, stop=("\n\n",),
                                   chat_template_kwargs={"enable_thinking": False})
        OpenAIEngine(cfg).generate(_requests("extras"), params)
    body = server.bodies[-1]
    assert (body["top_k"], body["min_p"], body["stop"], body["chat_template_kwargs"]) == (
        20, 0.05, ["\n\n"], {"enable_thinking": False})


def test_a_changed_extra_body_misses_the_journal(tmp_path):
    journal_dir = tmp_path / "stage"
    journal_dir.mkdir()
    shard = [("part-00000.parquet", _requests("a", "b"))]
    with FaultServer() as server:
        def run(extra_body):
            cfg = _cfg(tmp_path, server, extra_body=extra_body)
            gen = OpenAIEngine(cfg).generate_shards(shard, SamplingParams.of(cfg.sample), journal_dir)
            next(gen)
            gen.close()  # not committed: the journal stays
            return len(server.log)

        assert run({"repetition_penalty": 1.1}) == 2
        assert run({"repetition_penalty": 1.1}) == 2, "the same request: answered from the journal"
        assert run({"repetition_penalty": 1.3}) == 4, "another extra_body is another request"


def test_extra_body_is_part_of_the_fingerprint_and_headers_are_not(tmp_path):
    def fingerprint(**server):
        cfg = load_config(write_config(tmp_path / "c.yaml", {
            "run": {"dir": str(tmp_path / "run")}, "sample": {"engine": "openai", "server": {"model": MODEL, **server}}}))
        return sampling_fingerprint(cfg, 1, "input")

    plain = fingerprint()
    assert "server" not in plain["sample"], "no extra_body: the fingerprint of a run from before it"
    assert fingerprint(headers={"X-Route": "a"}, base_url="http://elsewhere:9000/v1", concurrency=64) == plain
    penalised = fingerprint(extra_body={"repetition_penalty": 1.1})
    assert penalised != plain and penalised["sample"]["server"] == {"extra_body": {"repetition_penalty": 1.1}}
    assert fingerprint(extra_body={"repetition_penalty": 1.1}, headers={"X-Route": "b"}) == penalised


@pytest.mark.parametrize("key, message", [("temperature", "set sample.temperature instead"),
                                          ("max_completion_tokens", "set sample.max_tokens instead"),
                                          ("top_k", "set sample.top_k instead"), ("model", "set sample.server.model"),
                                          ("n", "set sample.n instead"), ("messages", "is set by selfimprove")])
def test_extra_body_cannot_set_what_has_a_field_of_its_own(tmp_path, key, message):
    with pytest.raises(ConfigError, match=f"extra_body.{key}: {message}"):
        load_config(write_config(tmp_path / "c.yaml", {"sample": {"server": {"extra_body": {key: 1}}}}))


def test_a_line_break_in_a_header_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="line break"):
        load_config(write_config(tmp_path / "c.yaml", {"sample": {"server": {"headers": {"X-A": "1\r\nX-B: 2"}}}}))


def test_a_proxy_comes_from_the_environment(tmp_path, monkeypatch):
    with FaultServer() as proxy:  # it answers what it is sent, as if forwarded: enough to see the request go there
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        cfg = _cfg(tmp_path, proxy, base_url="http://model.invalid:8000/v1")
        results = _generate(cfg, _requests("via proxy"))
    assert results[0].error is None and len(results[0].completions) == 3
    assert [path for _, path, _ in proxy.http] == ["http://model.invalid:8000/v1/models",
                                                   "http://model.invalid:8000/v1/chat/completions"]


def _columns_config(tmp_path, server, questions, per_shard=4, **server_cfg):
    src = tmp_path / "problems.jsonl"
    src.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in questions))
    return write_config(tmp_path / "c.yaml", {
        "run": {"dir": str(tmp_path / "run"), "problems_per_shard": per_shard},
        "task": {"name": "columns", "path": str(src)},
        "sample": {"engine": "openai", "n": 2, "server": {"base_url": server.base_url, "model": MODEL, **FAST, **server_cfg}},
    })


def test_sample_stage_writes_a_reject_row_for_a_request_that_keeps_failing(tmp_path):
    with FaultServer() as server:
        config = _columns_config(tmp_path, server, ["What is 1?", "[fault:503*99] What is 2?", "What is 3?"])
        cfg = load_config(config)
        run_stage("prepare", cfg, 1)
        manifest = run_stage("sample", cfg, 1)
    assert manifest["rows"] == 2 * 2 and manifest["rejects"] == 1
    rejects = reader(cfg, 1, "sample").rejects().to_pylist()
    assert rejects[0]["stage"] == "sample" and "HTTP 503" in rejects[0]["reason"]
    rows = reader(cfg, 1, "sample").read_all().to_pylist()
    assert {r["model"] for r in rows} == {MODEL}
    assert not list(stage_dir(cfg, 1, "sample").glob("_requests-*")), "journals go once their shard is committed"
    fp = json.loads((stage_dir(cfg, 1, "sample") / "_manifest.json").read_text())["fingerprint_parts"]
    assert fp["model"]["identity"]["served_model"] == MODEL and "server" not in fp["sample"]


def test_killed_run_loses_no_finished_request_and_repeats_none(tmp_path):
    questions = [f"What is {i}?" for i in range(12)]
    with FaultServer(delay_s=0.3) as server:
        # one shard of 12 and two threads: the run is killed long before the shard is committed
        config = _columns_config(tmp_path, server, questions, per_shard=16, concurrency=2)
        selfimprove("prepare", "--config", config)
        samples_dir = load_config(config).iter_dir(1) / "samples"
        journal = samples_dir / "_requests-part-00000.jsonl"
        proc = subprocess.Popen([sys.executable, "-m", "selfimprove.pipeline", "sample", "--config", str(config)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and not (journal.exists() and journal.read_text().count("\n") >= 4):
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finished = {json.loads(line)["problem_id"] for line in journal.read_text().splitlines()}
        assert 4 <= len(finished) < 12 and not (samples_dir / "_SUCCESS").exists()
        before = len(server.log)

        selfimprove("sample", "--config", config)
        cfg = load_config(config)
        problems = {r["problem_id"]: r["question"] for r in reader(cfg, 1, "prepare").read_all().to_pylist()}
        resent = [text for text, *_ in server.log[before:]]
    for pid in finished:
        assert not any(problems[pid] in text for text in resent), f"{pid} was finished before the kill but sent again"
    rows = reader(cfg, 1, "sample").read_all().to_pylist()
    keys = [(r["problem_id"], r["sample_idx"]) for r in rows]
    assert len(keys) == len(set(keys)) == 12 * 2
    assert all(r["text"] for r in rows)


@pytest.mark.engine
def test_real_vllm_server_killed_mid_run_with_the_pipeline_then_both_restarted(tmp_path):
    """`vllm serve` of the default model: kill server and run mid-stage, restart both, rerun.

    Every (problem_id, sample_idx) exactly once, every sample complete, and the samples that
    had finished before the kill come from the journal instead of being generated again.
    """
    from tests.vllm_server import VLLMServer

    server = VLLMServer(log_path=tmp_path / "server.log")
    config = write_config(tmp_path / "c.yaml", {
        "run": {"dir": str(tmp_path / "run"), "problems_per_shard": 4},
        "task": {"name": "arithmetic", "arithmetic": {"count": 8}},
        "sample": {"engine": "openai", "n": 2, "max_tokens": 24, "per_request_seed": server.per_request_seed,
                   # default retries: a request must outlive the half second between the two kills
                   "server": {"base_url": server.base_url, "concurrency": 2}},
    })
    selfimprove("prepare", "--config", config)
    samples_dir = load_config(config).iter_dir(1) / "samples"
    proc = None
    try:
        server.start()
        proc = subprocess.Popen([sys.executable, "-m", "selfimprove.pipeline", "sample", "--config", str(config)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, journalled = time.time() + 600, {}
        while time.time() < deadline and proc.poll() is None and not journalled:
            for journal in samples_dir.glob("_requests-*.jsonl"):
                lines = [json.loads(x) for x in journal.read_text().splitlines() if x.endswith("}")]
                journalled.update({e["problem_id"]: len(e["completions"]) for e in lines})
            time.sleep(0.02)
        assert proc.poll() is None and journalled, "the stage finished (or failed) before it could be killed mid-run"
        server.kill()  # the server dies first, with requests in flight; then the pipeline
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (samples_dir / "_SUCCESS").exists()

        server.start()
        out = selfimprove("sample", "--config", config).stdout
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        server.kill()
    cfg = load_config(config)
    rows = reader(cfg, 1, "sample").read_all().to_pylist()
    keys = [(r["problem_id"], r["sample_idx"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8 * 2
    assert all(r["text"] and r["completion_tokens"] > 0 and r["finish_reason"] in ("stop", "length") for r in rows)
    assert {r["model"] for r in rows} == {cfg.model.path}
    resumed = int(out.split(" samples taken from the request journal")[0].rsplit(" ", 1)[-1])
    assert resumed >= sum(journalled.values()) > 0, out


def test_thinking_a_server_returns_apart_is_kept_and_never_read_for_the_answer(tmp_path):
    """A server with a reasoning parser (vLLM --reasoning-parser) sends the thinking in
    `reasoning_content`: it comes back inside the think tags, so the sample row keeps it in
    `reasoning` and the verifier reads only the answer after it."""
    from selfimprove.pipeline.generation import shard_rows

    with FaultServer() as server:
        cfg = _cfg(tmp_path, server)
        engine = OpenAIEngine(cfg)
        try:
            requests = _requests("q THINK-APART")
            results = engine.generate(requests, SamplingParams.of(cfg.sample, n=2))
            rows, _, _ = shard_rows("part-00000", requests, results, 2, engine, think_tags=cfg.sample.think_tags)
        finally:
            engine.close()
    for i, (c, row) in enumerate(zip(results[0].completions, rows)):
        assert c.text == f"<think>thinking {i}: The answer is 99.</think>" + answer("q THINK-APART", 100, i)
        assert row["reasoning"] == f"<think>thinking {i}: The answer is 99.</think>"
        assert row["text"] == answer("q THINK-APART", 100, i) and "99" not in row["text"]
