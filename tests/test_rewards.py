"""Verifiers as rewards: what each kind of completion earns, the worker pool behind it, and a real
GRPOTrainer step with it as its reward function."""

import os
import pickle
import time

import pytest

from selfimprove.pipeline.config import DEFAULT_MODEL_DIR, load_config
from selfimprove.pipeline.model import resolve_model_path
from selfimprove.pipeline.rewards import RequestError, format_reward, verifier_reward, verifier_reward_from_config
from tests.conftest import ROOT

GOLD = "5"


@pytest.fixture(scope="module")
def reward():
    with verifier_reward(workers=1) as r:
        yield r


def score(reward, completions, gold=GOLD, **columns):
    return reward(prompts=["What is 2 + 3?"] * len(completions), completions=completions,
                  answer=[gold] * len(completions), **columns)


def test_each_kind_of_completion_earns_what_the_verifier_says(reward):
    cases = {
        "2 + 3 = 5. The answer is 5.": 1.0,
        "2 + 3 = 6. The answer is 6.": 0.0,
        "I am not sure how to add these.": 0.0,  # no clear final answer
        "The answer is 5. Hmm, actually, it should be 6.": 0.0,  # retracted
        "<think>2 + 3 = 5, so the answer is 5.</think>": 0.0,  # the answer only inside the thinking
        "<think>2 + 3 is 5, so the answer is 5. Maybe": 0.0,  # stopped while thinking
        "<think>The answer is 7.</think>2 + 3 = 5. The answer is 5.": 1.0,  # judged on what follows the thinking
        "<think>The answer is 5.</think>The answer is 7.": 0.0,
    }
    assert score(reward, list(cases)) == list(cases.values())


def test_string_and_conversational_completions_score_alike(reward):
    texts = ["The answer is 5.", "The answer is 4.", "<think>The answer is 5.</think>Not sure."]
    conversational = [[{"role": "assistant", "content": t}] for t in texts]
    blocks = [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in texts]
    expected = [1.0, 0.0, 0.0]
    assert score(reward, texts) == expected
    assert score(reward, conversational) == expected
    assert score(reward, blocks) == expected


def test_each_row_is_judged_against_its_own_gold(reward):
    got = reward(prompts=["a", "b", "c"], completions=["The answer is 5."] * 3, answer=["5", 7, None])
    assert got == [1.0, 0.0, None]  # a row without a gold answer cannot be judged


def test_a_missing_answer_column_names_it_and_the_columns_present(reward):
    with pytest.raises(RequestError) as e:
        reward(prompts=["q"], completions=["The answer is 5."], solution=["5"], trainer_state=None,
               completion_ids=[[1]], log_metric=print)
    message = str(e.value)
    assert "'answer'" in message and "solution" in message
    assert "trainer_state" not in message and "completion_ids" not in message
    with verifier_reward(answer_column="solution", workers=1) as other:
        assert other(prompts=["q"], completions=["The answer is 5."], solution=["5"]) == [1.0]


def test_a_hanging_or_crashing_verifier_gives_none_and_the_rest_are_scored():
    started = time.monotonic()
    with verifier_reward("tests.helpers_verifiers:SleepyVerifier", timeout_s=1.0, workers=1) as r:
        assert r(prompts=["q", "q"], completions=["sleep", "fine"], answer=["x", "x"]) == [None, 1.0]
    assert time.monotonic() - started < 30  # the hard limit, not the verifier, ended the hanging item
    with verifier_reward("tests.helpers_verifiers:CrashyVerifier", workers=1) as r:
        assert r(completions=["exit", "raise", "fine"], answer=["x"] * 3) == [None, None, 1.0]


def test_format_reward_asks_for_a_clear_answer_right_or_wrong():
    with format_reward(workers=1) as f:
        assert f.__name__ == "format_reward"
        got = f(completions=["The answer is 5.", "The answer is 6.", "No idea.", "<think>The answer is 5.</think>"],
                answer=[GOLD] * 4)
    assert got == [1.0, 1.0, 0.0, 0.0]


def test_the_pool_runs_outside_the_trainer_and_serves_every_call():
    with verifier_reward("tests.helpers_verifiers:ProcessInfoVerifier", workers=1, memory_limit_mb=2048) as r:
        first = r.verdicts(["x"], ["x"])[0].extracted
        second = r.verdicts(["y"], ["x"])[0].extracted
        assert first.startswith("pid ") and first == second  # one worker, reused
        assert first.split()[1] != str(os.getpid())
        assert first.split()[3] == str(2048 * 1024 * 1024)  # under the pool's memory limit
        r.close()
        assert r.verdicts(["x"], ["x"])[0].extracted != first  # closed, then a new pool on the next call
        copy = pickle.loads(pickle.dumps(r))  # a copy (another process) starts its own pool
        try:
            assert copy(completions=["x"], answer=["x"]) == [1.0]
        finally:
            copy.close()


def test_rows_of_one_problem_reach_a_group_verifier_together():
    with verifier_reward("tests.helpers_verifiers:GroupVerifier", workers=1) as r:
        got = r(prompts=["p1", "p1", "p1", "p2", "p2", "p2"], completions=["x", "x", "y", "y", "z", "z"],
                answer=["-"] * 6)
    assert got == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_from_config_uses_the_runs_verifier_limits_and_tags():
    cfg = load_config(None, ["verify.timeout_s=3", "verify.workers=1", "sample.think_tags=null"])
    with verifier_reward_from_config(cfg) as r:
        assert (r.verifier_name, r.limits, r.think_tags) == ("numeric", (1, 3.0, 4096), None)
        # without thinking tags the whole text is searched: the answer after the tag still counts
        assert r(completions=["<think>hm</think>The answer is 5."], answer=["5"]) == [1.0]
    with verifier_reward_from_config(load_config(None, ["task.name=math"])) as r:
        assert r.verifier_name == "math"
    with verifier_reward_from_config(cfg, verifier="exact") as r:
        assert r.verifier_name == "exact"


def test_a_bad_verifier_or_tags_fail_before_any_batch():
    with pytest.raises(ValueError, match="unknown verifier 'nope'"):
        verifier_reward("nope")
    with pytest.raises(ValueError, match="think_tags"):
        verifier_reward(think_tags=("<think>",))
    with pytest.raises(ValueError, match="timeout_s"):
        verifier_reward(timeout_s=0)


# -- TRL --------------------------------------------------------------------------------------------
def _tiny_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def test_grpo_trainer_trains_a_step_on_the_verifier_reward(tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(str(ROOT / DEFAULT_MODEL_DIR)))
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": str(a + b)}
                              for a, b in [(1, 2), (2, 3), (3, 4), (4, 5)]])
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=1, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                      dataloader_num_workers=0, seed=0)
    with verifier_reward(workers=1) as reward:
        trainer = GRPOTrainer(model=_tiny_model(tokenizer), reward_funcs=[reward], args=args, train_dataset=rows,
                              processing_class=tokenizer)
        trainer.train()
    logged = next(h for h in trainer.state.log_history if "rewards/verifier_reward/mean" in h)
    assert 0.0 <= logged["rewards/verifier_reward/mean"] <= 1.0
    # our reward ran on TRL's batch: a verdict per completion, and the share of each in the metrics
    statuses = trainer._logs["extra"]["verifier_status"]
    assert len(statuses) == 4 and set(statuses) <= {"correct", "wrong", "no_answer"}
    shares = [logged[f"verifier/{s}"] for s in ("correct", "wrong", "no_answer", "timeout", "error")]
    assert sum(shares) == pytest.approx(1.0)


def test_a_completion_cut_off_at_the_length_limit_gets_no_last_number_answer():
    """TRL passes completion_ids: one not ending in an end-of-sequence id was cut off, and the
    number it stopped at is not its final answer (the verify stage's rule)."""
    with verifier_reward(workers=1, eos_token_ids=[0]) as reward:
        texts = ["2 + 3 = 5", "2 + 3 = 5", "2 + 3 = 5. The answer is 5."]
        ids = [[11, 12, 0], [11, 12, 13], [11, 12, 13]]  # finished, cut off, cut off after an explicit answer
        assert score(reward, texts, completion_ids=ids) == [1.0, 0.0, 1.0]
        assert score(reward, texts[:2]) == [1.0, 1.0], "without token ids every completion counts as finished"
