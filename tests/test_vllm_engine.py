"""The vLLM engine's continuous feeding (`generate_shards`) on the real engine and the default model (CPU)."""

import pytest

from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.engines import Request, SamplingParams

pytestmark = pytest.mark.engine


def test_generate_shards_results_errors_and_early_stop():
    from selfimprove.pipeline.engines.vllm import VLLMEngine

    cfg = load_config(None, ["model.max_model_len=256", "sample.max_tokens=8", "sample.n=2"])
    # p1-1 is too long for the context; so is every request of part-2 and of nine shards before it
    # all, more than the shards the engine keeps in flight
    too_long = "word " * 400  # over 256 tokens
    shards = [
        (f"part-{k}", [Request(f"p{k}-{i}", [{"role": "user", "content": too_long if (k, i) == (1, 1) or k == 2 else f"What is {k} + {i}?"}])
                       for i in range(3)])
        for k in range(4)
    ]
    served = shards
    shards = [(f"refused-{k}", [Request(f"r{k}", [{"role": "user", "content": too_long}])]) for k in range(9)] + served
    pulled = []

    def source():
        for shard in shards:
            pulled.append(shard[0])
            yield shard

    engine = VLLMEngine(cfg)
    try:
        got = {}
        for name, results in engine.generate_shards(source(), SamplingParams.of(cfg.sample)):
            assert name in pulled and name not in got
            got[name] = results
        assert sorted(got) == sorted(name for name, _ in shards)
        for name, requests in shards:
            for req, res in zip(requests, got[name], strict=True):
                if req.key == "p1-1" or name == "part-2" or name.startswith("refused"):  # refused alone; the rest of its shard is served
                    assert res.completions == [] and "model.max_model_len is 256" in res.error
                else:
                    assert res.error is None and len(res.completions) == 2
                    assert all(c.completion_tokens > 0 and c.finish_reason in ("stop", "length") for c in res.completions)

        # a consumer that stops after the first shard leaves nothing running in the engine
        stream = engine.generate_shards(iter(served), SamplingParams.of(cfg.sample))
        next(stream)
        stream.close()
        assert not engine.llm.llm_engine.has_unfinished_requests()
        assert [len(r.completions) for r in engine.generate(served[0][1], SamplingParams.of(cfg.sample))] == [2, 2, 2]
    finally:
        engine.close()


def test_raw_prompts_stop_strings_and_sampling_extras_on_the_real_engine():
    """A base-model run: raw text in (no chat template), top_k/min_p accepted, a stop string ends
    every completion it appears in and is left out of it."""
    from selfimprove.pipeline.engines.vllm import VLLMEngine
    from selfimprove.pipeline.prompts import raw_prompt

    cfg = load_config(None, ["model.max_model_len=256", "model.prompt_format=raw", "sample.max_tokens=48", "sample.n=4",
                             'sample.stop=[","]', "sample.top_k=5", "sample.min_p=0.05", "sample.temperature=1.0"])
    messages = [{"role": "user", "content": "one, two, three, four, five, six, seven, eight, nine"}]
    engine = VLLMEngine(cfg)
    try:
        assert not engine.chat
        (result,) = engine.generate([Request("count", messages)], SamplingParams.of(cfg.sample))
        assert result.error is None and len(result.completions) == 4
        assert result.prompt_tokens == len(engine.tokenizer.encode(raw_prompt(messages)))  # raw text, not the template
        for c in result.completions:
            assert "," not in c.text
            assert c.finish_reason in ("stop", "length")
        assert any(c.finish_reason == "stop" for c in result.completions)
    finally:
        engine.close()
