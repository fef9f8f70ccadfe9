"""train.method dpo and grpo, through the stage on a real (fake-engine) export.

The policy is a tiny Llama built here and primed to end any prompt with "The answer is 7." or
"The answer is 8." half the time each. Every problem's gold answer is 7, so the fake engine's
export has preference pairs (its right rationale over its wrong "71") and prompts, and the real
verifier rewards exactly the completions that say 7: each method must move the model toward
what the verifier accepts, which is measured on the saved model.
"""

import json
import shutil

import pytest

from selfimprove.pipeline import schema
from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import DEFAULT_MODEL_DIR, load_config
from selfimprove.pipeline.prompts import prompt_ids, raw_prompt
from selfimprove.pipeline.stages import open_writer, reader, stage_dir
from selfimprove.pipeline.stages.train import (export_readers, export_shards, load_rows, load_tokenizer, run as train,
                                                tokenize_pair)
from selfimprove.pipeline.store import StoreError
from selfimprove.pipeline.trainers import build_grpo_trainer
from tests.conftest import FAKE, ROOT, write_config

QUESTIONS = [f"{name} has {a} apples and gets {7 - a} more. How many apples does {name} have now?"
             for name in ("Ann", "Bob", "Cid") for a in range(1, 7)]


def _tiny_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def _prime(model, tokenizer, prompts: list[list[dict]], steps: int = 60, lr: float = 3e-3):
    """Teach the tiny model to reply "The answer is 7." or "... 8." (equally) to each prompt.
    Logits only where the reply is (the vocabulary is 49k wide): seconds, not minutes."""
    import torch

    seqs = []
    for messages in prompts:
        ids = prompt_ids(tokenizer, messages, chat=True)
        for answer in (7, 8):
            seqs.append((ids, tokenizer.encode(f"The answer is {answer}.<|im_end|>\n", add_special_tokens=False)))
    width = max(len(p) + len(r) for p, r in seqs)
    input_ids = torch.tensor([p + r + [tokenizer.pad_token_id] * (width - len(p) - len(r)) for p, r in seqs])
    rows = torch.tensor([i for i, (p, r) in enumerate(seqs) for _ in r])
    cols = torch.tensor([len(p) - 1 + k for p, r in seqs for k in range(len(r))])  # position predicting reply token k
    targets = torch.tensor([t for _, r in seqs for t in r])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        hidden = model.model(input_ids=input_ids).last_hidden_state[rows, cols]  # right padding: causal, so harmless
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run directory with iteration 1's export (fake engine, gold 7 everywhere) and the primed tiny model."""
    from transformers import AutoTokenizer

    from selfimprove.pipeline.tasks import get_task, render_prompt

    root = tmp_path_factory.mktemp("methods")
    tokenizer = AutoTokenizer.from_pretrained(ROOT / DEFAULT_MODEL_DIR)
    with open(root / "train.jsonl", "w") as f:
        for q in QUESTIONS:
            f.write(json.dumps({"question": q, "answer": f"{q.split(' and')[0]}... #### 7"}) + "\n")
    data = {"run": {"dir": str(root / "run"), "problems_per_shard": 16},
            "task": {"name": "gsm8k", "path": str(root / "train.jsonl")},
            "model": {"path": str(root / "tiny")},
            "sample": {"engine": FAKE, "n": 8, "max_tokens": 16, "temperature": 1.0},
            "verify": {"workers": 2},
            "export": {"validation_fraction": 0.2}}
    config = write_config(root / "config.yaml", data)
    cfg = load_config(config)
    prompts = [render_prompt(cfg.task, get_task(cfg.task), q) for q in QUESTIONS]  # as prepare renders them
    model = _tiny_model(tokenizer)
    loss = _prime(model, tokenizer, prompts)
    assert loss < 0.5, f"the tiny model did not learn its two replies (loss {loss:.3f})"  # ln 2 / reply length
    model.save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    assert main(["run", "--config", str(config)]) == 0
    return root, data


def _copy(exported, tmp_path, **train) -> tuple:
    """The exported run in tmp_path (each test trains into its own), with a train section."""
    root, data = exported
    shutil.copytree(root / "run", tmp_path / "run")
    data = {**data, "run": {**data["run"], "dir": str(tmp_path / "run")}, "train": train}
    config = write_config(tmp_path / "config.yaml", data)
    return config, load_config(config)


def _logprob(model, prompt: list[int], reply: list[int]) -> float:
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + reply])).logits[0, len(prompt) - 1:-1]
    return float(torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(reply)[:, None]).sum())


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_pair_tokens_are_the_sampled_prompt_and_replies():
    """DPO is given the prompt as the engine renders it and each reply with its end of turn
    (raw text for a base model: the reply ends with EOS), as SFT rows are."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / DEFAULT_MODEL_DIR)
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"}]
    chosen, rejected = "3 + 4 = 7. The answer is 7.", "The answer is 71."
    turn = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    chat = tokenize_pair(tokenizer, prompt, turn(chosen), turn(rejected))
    assert chat["prompt_ids"] == prompt_ids(tokenizer, prompt, chat=True)
    assert tokenizer.decode(chat["chosen_ids"]) == chosen + "<|im_end|>\n"
    assert tokenizer.decode(chat["rejected_ids"]) == rejected + "<|im_end|>\n"
    raw = tokenize_pair(tokenizer, prompt, turn(chosen), turn(rejected), chat=False)
    assert tokenizer.decode(raw["prompt_ids"]) == tokenizer.decode(tokenizer.encode(raw_prompt(prompt)))
    assert raw["chosen_ids"][-1] == tokenizer.eos_token_id and tokenizer.decode(raw["chosen_ids"][:-1]) == chosen
    with pytest.raises(ValueError, match="rejected: messages: the assistant turn is empty"):
        tokenize_pair(tokenizer, prompt, turn(chosen), turn(" "))


def _run_cli(*args) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([args[0], "--config", str(args[1]), *map(str, args[2:])]) == 0
    return buf.getvalue()


def test_dpo_prefers_the_verified_rationale_and_resumes(exported, tmp_path):
    config, cfg = _copy(exported, tmp_path, method="dpo", epochs=1, batch_size=4, max_length=512,
                        dpo={"beta": 0.1, "learning_rate": 5e-3})
    exported_pairs = reader(cfg, 1, "export").manifest["stats"]["configs"]["preference"]
    assert exported_pairs["train"] >= 4 and exported_pairs["validation"] >= 1

    manifest = train(cfg, 1)
    out = stage_dir(cfg, 1, "train")
    stats = manifest["stats"]
    assert stats["method"] == "dpo" and stats["trained"] and stats["rejected"] == 0
    assert (stats["train_rows"], stats["validation_rows"]) == (exported_pairs["train"], exported_pairs["validation"])
    assert manifest["rows"] == stats["train_rows"] + stats["validation_rows"]
    curve = json.loads((out / "loss.json").read_text())
    assert curve["method"] == "dpo" and len(curve["steps"]) == stats["steps"] > 1
    first = curve["steps"][0]
    # the first step scores the starting model against itself: the reference is the starting model
    assert abs(first["rewards/margins"]) < 1e-4 and abs(first["rewards/chosen"]) < 1e-4
    assert all(0 <= s["rewards/accuracies"] <= 1 for s in curve["steps"])
    assert curve["eval"] and "rewards/margins" in curve["eval"][0]  # validation pairs are scored each epoch
    assert (out / "loss.csv").read_text().startswith("step,epoch,loss,eval_loss,rewards/margins,rewards/accuracies")

    # the saved model loads, and prefers the chosen replies over the rejected ones more than the start did
    start, tokenizer = _load(cfg.model.path)
    trained, _ = _load(out)
    margins = []
    for r in reader(cfg, 1, "export").read_shard("preference-train-00000-of-00001.parquet").to_pylist():
        ex = tokenize_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"])
        margin = {m: _logprob(m, ex["prompt_ids"], ex["chosen_ids"]) - _logprob(m, ex["prompt_ids"], ex["rejected_ids"])
                  for m in (start, trained)}
        margins.append(margin[trained] - margin[start])
    assert sum(margins) / len(margins) > 0.5, margins

    # a rerun is a no-op; a changed beta is refused without --force
    assert "up to date" in _run_cli("train", config)
    with pytest.raises(StoreError, match=r"train\.dpo.*--force"):
        train(load_config(config, ["train.dpo.beta=0.2"]), 1)
    assert train(load_config(config), 1)["stats"]["model_hash"] == stats["model_hash"]


def test_dpo_rejects_a_pair_over_max_length(exported, tmp_path):
    """max_length just under the longest pair: that pair goes to _rejects, whole; the rest train."""
    from transformers import AutoTokenizer

    _, cfg = _copy(exported, tmp_path, method="dpo", epochs=1, batch_size=4)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    export = reader(cfg, 1, "export")
    lengths = {}
    for name, _ in export_shards(export, 1, "preference"):
        for r in export.read_shard(name).to_pylist():
            ex = tokenize_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"])
            lengths[r["problem_id"]] = len(ex["prompt_ids"]) + max(len(ex["chosen_ids"]), len(ex["rejected_ids"]))
    cut = max(lengths.values()) - 1
    too_long = {p for p, n in lengths.items() if n > cut}
    assert too_long and len(too_long) < len(lengths)  # one pair per problem (export.preference.pairs_per_problem)

    manifest = train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_length": cut})}), 1)
    assert manifest["stats"]["rejected"] == len(too_long) and manifest["rows"] == len(lengths) - len(too_long)
    rejects = reader(cfg, 1, "train").rejects().to_pylist()
    assert {r["problem_id"] for r in rejects} == too_long
    assert all(f"train.max_length={cut}" in r["reason"] and "pair (problem" in r["reason"] for r in rejects)
    trained = reader(cfg, 1, "train").read_all().to_pylist()
    assert all(r["prompt_tokens"] + max(r["chosen_tokens"], r["rejected_tokens"]) <= cut for r in trained)


def test_grpo_rewards_the_verified_answer(exported, tmp_path):
    """GRPO samples the primed model (half 7, half 8), the verifier rewards the 7s: it learns 7."""
    config, cfg = _copy(exported, tmp_path, method="grpo", batch_size=16, max_length=512,
                        grpo={"num_generations": 4, "steps": 3, "max_completion_length": 12, "learning_rate": 5e-4})
    prompts = reader(cfg, 1, "export").manifest["stats"]["configs"]["prompts"]
    manifest = train(cfg, 1)
    out = stage_dir(cfg, 1, "train")
    stats = manifest["stats"]
    assert stats["method"] == "grpo" and stats["trained"] and stats["steps"] == 3 and stats["rejected"] == 0
    exported_rows = reader(cfg, 1, "train").read_all().to_pylist()
    assert len(exported_rows) == stats["train_rows"] and {r["split"] for r in exported_rows} == {"train"}
    assert stats["train_rows"] == prompts["train"] and stats["validation_rows"] == 0  # GRPO: the train split
    curve = json.loads((out / "loss.json").read_text())
    rewards = [s["reward"] for s in curve["steps"]]
    assert len(rewards) == 3 and all(0 <= r <= 1 for r in rewards)
    assert 0 < rewards[0] < 1  # the primed model says 7 about half the time
    assert curve["steps"][0]["verifier/no_answer"] < 0.5  # the verifier read the primed model's answers
    # the reward is the verifier's verdict: 1 for each completion it judged correct, 0 for the rest
    assert all(abs(s["reward"] - s["verifier/correct"]) < 1e-6 for s in curve["steps"])
    assert "reward" in (out / "loss.csv").read_text().splitlines()[0].split(",")

    # the saved model puts more weight on the verified answer than the start did
    start, tokenizer = _load(cfg.model.path)
    trained, _ = _load(out)
    seven, eight = (tokenizer.encode(f"The answer is {a}.", add_special_tokens=False) for a in (7, 8))
    gains = []
    for r in reader(cfg, 1, "export").read_shard("prompts-train-00000-of-00001.parquet").to_pylist():
        ids = prompt_ids(tokenizer, r["prompt"], chat=True)
        odds = {m: _logprob(m, ids, seven) - _logprob(m, ids, eight) for m in (start, trained)}
        gains.append(odds[trained] - odds[start])
    assert sum(gains) / len(gains) > 0.1, gains


@pytest.mark.parametrize("prompt_format", ["auto", "raw"])
def test_grpo_samples_the_prompts_as_the_engine_does(exported, tmp_path, prompt_format):
    """TRL renders GRPO's prompts to the token ids the sample stage sends the engine: the chat
    template with its generation prompt, or (model.prompt_format raw) the raw text."""
    from transformers import AutoModelForCausalLM

    from selfimprove.pipeline.prompts import uses_chat_template
    from selfimprove.pipeline.rewards import verifier_reward_from_config

    _, cfg = _copy(exported, tmp_path, method="grpo", batch_size=4)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"prompt_format": prompt_format})})
    tokenizer = load_tokenizer(cfg, cfg.model.path)
    chat = uses_chat_template(tokenizer, prompt_format)
    assert chat is (prompt_format == "auto")
    data, rows, rejects = load_rows(cfg, export_readers(cfg, 1), tokenizer, chat)
    assert data["train"] and not rejects and len(rows) == len(data["train"])
    exported_prompts = {r["problem_id"]: r["prompt"] for name, _ in export_shards(reader(cfg, 1, "export"), 1, "prompts")
                        for r in reader(cfg, 1, "export").read_shard(name).to_pylist()}
    with verifier_reward_from_config(cfg) as reward:
        trainer = build_grpo_trainer(AutoModelForCausalLM.from_pretrained(cfg.model.path), tokenizer, data["train"],
                                     reward, cfg, tmp_path / "work")
        ids = trainer._tokenize_prompts([r["prompt"] for r in data["train"]])[0]
    assert ids == [prompt_ids(tokenizer, exported_prompts[r["problem_id"]], chat) for r in data["train"]]
    assert trainer.args.max_completion_length == cfg.sample.max_tokens  # unset: the sample stage's
    assert (trainer.args.temperature, trainer.args.top_p) == (cfg.sample.temperature, cfg.sample.top_p)


def test_grpo_needs_whole_groups():
    with pytest.raises(Exception, match=r"multiple of train\.grpo\.num_generations \(3\)"):
        load_config(None, ["train.method=grpo", "train.batch_size=16", "train.grpo.num_generations=3"])


@pytest.mark.parametrize("method, config", [("dpo", "preference"), ("grpo", "prompts")])
def test_a_method_without_rows_gives_the_starting_model(tmp_path, method, config):
    """An export with sft rows only (no pairs, no prompts): the starting model, unchanged, and the stage says so."""
    from safetensors.torch import load_file

    base = str(ROOT / DEFAULT_MODEL_DIR)
    path = write_config(tmp_path / "config.yaml", {"run": {"dir": str(tmp_path / "run")}, "model": {"path": base},
                                                   "train": {"method": method}})
    cfg = load_config(path)
    rows = [{"prompt": [{"role": "user", "content": "How many?"}], "completion": [{"role": "assistant", "content": "5."}],
             "problem_id": "p1", "sample_idx": 0, "iteration": 1}]
    with open_writer(cfg, 1, "export", {"test": 1}, force=False) as w:
        w.write_shard("sft-train-00000-of-00001.parquet", schema.table(rows, schema.SFT))
        w.finish(["sft-train-00000-of-00001.parquet"])
    out = _run_cli("train", path)
    assert f"no {config} rows for {method}" in out and f"{method}: 0 rows: the starting model" in out
    stats = json.loads((stage_dir(cfg, 1, "train") / "_manifest.json").read_text())["stats"]
    assert stats["method"] == method and stats["trained"] is False and stats["train_rows"] == 0
    trained, start = load_file(stage_dir(cfg, 1, "train") / "model.safetensors"), load_file(f"{base}/model.safetensors")
    assert trained.keys() == start.keys() and all((trained[k] == start[k]).all() for k in start)
