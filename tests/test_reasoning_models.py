"""Reasoning models and your own model's options: a thinking section is kept as configured but
never searched for the final answer; sampling extras, chat-template arguments, a tokenizer of
its own and raw prompts for base models reach the engine and the trainer."""

import pytest
from pydantic import ValidationError

from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import Config, load_config
from selfimprove.pipeline.engines import SamplingParams
from selfimprove.pipeline.generation import sampling_fingerprint
from selfimprove.pipeline.prompts import prompt_ids, raw_prompt, split_thinking, uses_chat_template
from selfimprove.pipeline.stages import reader
from selfimprove.pipeline.stages.train import tokenize_example

THINKING = "tests.thinking_engine:ThinkingEngine"


def test_thinking_section_is_split_off_verbatim():
    assert split_thinking("<think>a</think>\n\nThe answer is 5.", ["<think>", "</think>"]) == ("<think>a</think>", "\n\nThe answer is 5.")
    # the chat template opened the section: only its end is in the completion
    assert split_thinking("hmm 4</think> 5", ["<think>", "</think>"]) == ("hmm 4</think>", " 5")
    # stopped while thinking: nothing after it, so no answer
    assert split_thinking("<think>The answer is 5.", ["<think>", "</think>"]) == ("<think>The answer is 5.", "")
    # the last closing tag ends the section
    assert split_thinking("<think>a</think> b </think> c", ["<think>", "</think>"]) == ("<think>a</think> b </think>", " c")
    assert split_thinking("The answer is 5.", ["<think>", "</think>"]) == (None, "The answer is 5.")
    assert split_thinking("<think>x</think> 5", None) == (None, "<think>x</think> 5")


def _run(config_path, *overrides):
    assert main(["run", "--config", str(config_path), *sum((["--set", o] for o in overrides), [])]) == 0
    return load_config(config_path, list(overrides))


@pytest.mark.parametrize("thinking", ["keep", "drop"])
def test_answer_is_never_taken_from_the_thinking_section(fake_config, thinking):
    cfg = _run(fake_config(sample={"engine": THINKING, "n": 4}, dedup={"max_per_problem": 4}),
               f"export.thinking={thinking}", "export.validation_fraction=0")
    verified = reader(cfg, 1, "verify").read_all().to_pylist()
    by_idx = {}
    for r in verified:
        by_idx.setdefault(r["sample_idx"], set()).add(r["status"])
        assert r["reasoning"] is not None and r["reasoning"] + r["text"]  # the section is stored apart, verbatim
    # 0: wrong answer thought, right one stated; 1: right one thought, wrong one stated;
    # 2: stopped while thinking; 3: the template opened the section, right answer after it
    assert by_idx == {0: {"correct"}, 1: {"wrong"}, 2: {"no_answer"}, 3: {"correct"}}
    sft = reader(cfg, 1, "export")
    rows = [r for _, t in sft.iter_shards() for r in t.to_pylist() if "completion" in r]
    assert rows and {r["sample_idx"] for r in rows} <= {0, 3}
    for r in rows:
        text = r["completion"][0]["content"]
        assert ("</think>" in text) == (thinking == "keep")
        assert text.rstrip().endswith(f"The answer is {r['answer']}.")
        if thinking == "drop":
            assert text == text.lstrip() and "Maybe" not in text and "checked twice" not in text


def test_dedup_compares_the_text_after_the_section(fake_config):
    """Samples 0 and 3 think differently (other calculations) but reason by the same step after
    the section: one reasoning path, so one is kept."""
    cfg = _run(fake_config(sample={"engine": THINKING, "n": 4}, dedup={"max_per_problem": 4}))
    kept = reader(cfg, 1, "dedup").read_all().to_pylist()
    per_problem = {}
    for r in kept:
        per_problem.setdefault(r["problem_id"], []).append(r["sample_idx"])
    assert per_problem and all(len(v) == 1 for v in per_problem.values()), per_problem


def test_sampling_extras_reach_the_engine_and_the_fingerprint():
    cfg = load_config(None, ["sample.top_k=20", "sample.min_p=0.05", 'sample.stop=["\\n\\n\\n"]',
                             "sample.chat_template_kwargs={enable_thinking: false}"])
    p = SamplingParams.of(cfg.sample)
    assert (p.top_k, p.min_p, p.stop, p.chat_template_kwargs) == (20, 0.05, ("\n\n\n",), {"enable_thinking": False})
    base = sampling_fingerprint(Config(), 1, "x")
    assert "top_k" not in base["sample"] and "vllm_kwargs" not in base["model"], "runs made before these fields stay up to date"
    assert sampling_fingerprint(cfg, 1, "x")["sample"]["top_k"] == 20
    tuned = load_config(None, ["model.vllm_kwargs={quantization: fp8}"])
    assert sampling_fingerprint(tuned, 1, "x")["model"]["vllm_kwargs"] == {"quantization": "fp8"}


def test_model_options_are_checked():
    with pytest.raises(ValidationError, match="vllm_kwargs.dtype: set model.dtype instead"):
        Config.model_validate({"model": {"vllm_kwargs": {"dtype": "float16"}}})
    with pytest.raises(ValidationError, match="vllm_kwargs.seed"):
        Config.model_validate({"model": {"vllm_kwargs": {"seed": 1}}})
    with pytest.raises(ValidationError, match="think_tags"):
        Config.model_validate({"sample": {"think_tags": ["<think>"]}})
    with pytest.raises(ValidationError, match="stop"):
        Config.model_validate({"sample": {"stop": [""]}})
    assert Config.model_validate({"sample": {"think_tags": None}}).sample.think_tags is None


def test_vllm_arguments_from_the_model_section(tmp_path):
    from selfimprove.pipeline.engines.vllm import llm_kwargs

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    cfg = Config.model_validate({"model": {"path": "org/model", "tokenizer": str(tok), "trust_remote_code": True,
                                           "vllm_kwargs": {"max_num_seqs": 64, "enable_prefix_caching": True}}})
    kw = llm_kwargs(cfg)
    assert kw["tokenizer"] == str(tok) and kw["trust_remote_code"] is True
    assert kw["max_num_seqs"] == 64 and kw["enable_prefix_caching"] is True and kw["model"] == "org/model"
    with pytest.raises(ValueError, match="model.tokenizer: .* holds no tokenizer"):
        llm_kwargs(Config.model_validate({"model": {"path": "org/model", "tokenizer": str(tmp_path)}}))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from selfimprove.pipeline.model import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(Config().model.path))


def test_raw_prompts_for_a_model_without_chat_template(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    assert raw_prompt(messages) == "Be brief.\n\nWhat is 2 + 3?\n"
    assert uses_chat_template(tokenizer, "auto") and not uses_chat_template(tokenizer, "raw")
    raw = tokenizer.decode(prompt_ids(tokenizer, messages, chat=False))
    assert "<|im_start|>" not in raw and raw.endswith("What is 2 + 3?\n")
    bare = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    bare.chat_template = None
    assert not uses_chat_template(bare, "auto")
    with pytest.raises(ValueError, match="prompt_format: raw"):
        uses_chat_template(bare, "chat")
    # training on raw text: the prompt is masked, the reply ends with EOS so the model learns to stop
    ex = tokenize_example(tokenizer, messages + [{"role": "assistant", "content": "2 + 3 = 5. The answer is 5."}], chat=False)
    loss = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100]
    assert tokenizer.decode(loss[:-1]) == "2 + 3 = 5. The answer is 5." and loss[-1] == tokenizer.eos_token_id
    assert ex["input_ids"][:len(ex["input_ids"]) - len(loss)] == prompt_ids(tokenizer, messages, chat=False)


def test_chat_template_arguments_reach_the_rendered_prompt(tokenizer):
    """A template that reads a variable (as Qwen3's reads enable_thinking) renders it, in sampling and training alike."""
    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% if enable_thinking is defined and not enable_thinking %}"
                         " <think></think>{% endif %}{% endif %}")
    messages = [{"role": "user", "content": "Hi"}]
    on = tok.decode(prompt_ids(tok, messages, chat=True))
    off = tok.decode(prompt_ids(tok, messages, chat=True, template_kwargs={"enable_thinking": False}))
    assert "<think></think>" not in on and off.endswith("assistant: <think></think>")
