"""The train stage: loss on assistant tokens only, a real training step, the empty-export case."""

import json
import math

import pytest

from selfimprove.pipeline import schema
from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import DEFAULT_MODEL_DIR, load_config
from selfimprove.pipeline.model import resolve_model_path
from selfimprove.pipeline.stages import open_writer, reader, stage_dir
from selfimprove.pipeline.stages.train import (build_trainer, export_readers, fingerprint, load_examples, model_for_iteration,
                                                tokenize_example)
from selfimprove.pipeline.store import StoreError
from tests.conftest import ROOT, selfimprove

BASE = str(ROOT / DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(BASE))


def test_labels_cover_exactly_the_assistant_reply(tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    chats = [
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Ava has 3 apples. She buys 2 more apples. How many apples does Ava have now?"},
         {"role": "assistant", "content": "3 + 2 = 5. The answer is 5."}],
        [{"role": "user", "content": "Tom has 8 cards. He loses 5 cards. How many cards does Tom have now?"},
         {"role": "assistant", "content": "Tom had 8 cards and lost 5, so 8 - 5 = 3. The answer is 3."}],
    ]
    examples = [tokenize_example(tokenizer, c) for c in chats]
    for chat, ex in zip(chats, examples):
        ids, labels = ex["input_ids"], ex["labels"]
        n_prompt = next(i for i, label in enumerate(labels) if label != -100)
        assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
        # the masked part is exactly the prompt as the engine renders it; the rest the reply and its end of turn
        assert tokenizer.decode(ids[:n_prompt]) == tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(ids[n_prompt:]) == chat[-1]["content"] + "<|im_end|>\n"

    # TRL trains on these labels as given: the trainer's own batch has the loss only on the replies
    cfg = load_config(None, ["train.batch_size=2"])
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(BASE), dtype=torch.float32)
    trainer = build_trainer(model, tokenizer, {"train": examples, "validation": []}, cfg, tmp_path / "work")
    batch = next(iter(trainer.get_train_dataloader()))
    by_length = {len(ex["input_ids"]): ex for ex in examples}
    assert len(by_length) == 2
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        n = int(mask.sum())
        assert ids[:n].tolist() == by_length[n]["input_ids"] and labels[:n].tolist() == by_length[n]["labels"]
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()  # padding carries no loss


def _export_with(cfg, rows, name="sft-train-00000-of-00001.parquet", table_schema=schema.SFT):
    """An export directory as the export stage writes it (the sft config's train split only)."""
    with open_writer(cfg, 1, "export", {"test": len(rows)}, force=False) as w:
        w.write_shard(name, schema.table(rows, table_schema))
        w.finish([name])


def test_export_without_trainable_rows_gives_the_starting_model(tmp_path):
    from safetensors.torch import load_file

    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}", f"model.path={BASE}", "train.max_length=64"])
    long_reply = "Let me count them one by one. " * 40 + "The answer is 5."
    _export_with(cfg, [{"prompt": [{"role": "user", "content": "How many?"}],
                        "completion": [{"role": "assistant", "content": long_reply}],
                        "problem_id": "p1", "sample_idx": 0, "iteration": 1}])
    assert main(["train", "--set", f"run.dir={tmp_path / 'run'}", "--set", f"model.path={BASE}",
                 "--set", "train.max_length=64"]) == 0
    out = stage_dir(cfg, 1, "train")
    stats = json.loads((out / "_manifest.json").read_text())["stats"]
    assert stats["trained"] is False and stats["train_rows"] == 0 and stats["rejected"] == 1
    reasons = reader(cfg, 1, "train").rejects()["reason"].to_pylist()
    assert len(reasons) == 1 and "train.max_length=64" in reasons[0] and "problem p1" in reasons[0]
    trained, base = load_file(out / "model.safetensors"), load_file(f"{BASE}/model.safetensors")
    assert trained.keys() == base.keys()
    assert all(trained[k].dtype == base[k].dtype and (trained[k] == base[k]).all() for k in base)
    assert (out / "tokenizer.json").exists() and (out / "loss.png").exists()
    assert model_for_iteration(cfg, 2) == str(out)


def test_export_from_before_the_configs_is_named_for_a_rerun(tmp_path):
    """An export of unprefixed train-*.parquet shards (messages + string prompt/completion) is not misread."""
    import pyarrow as pa

    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}", f"model.path={BASE}"])
    old = pa.schema([("messages", schema.MESSAGES), ("prompt", pa.string()), ("completion", pa.string()),
                     ("problem_id", pa.string()), ("sample_idx", pa.int32())])
    _export_with(cfg, [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}],
                        "prompt": "Hi?", "completion": "Hi.", "problem_id": "p1", "sample_idx": 0}],
                 name="train-00000-of-00001.parquet", table_schema=old)
    with pytest.raises(StoreError, match=r"older selfimprove.*selfimprove export --iter 1 --force"):
        load_examples(export_readers(cfg, 1), None, 64)


def test_model_for_iteration_names_the_missing_iteration(tmp_path):
    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}"])
    assert model_for_iteration(cfg, 1) == cfg.model.path
    with pytest.raises(StoreError, match=r"make iterate ITER=2"):
        model_for_iteration(cfg, 3)


@pytest.mark.engine
def test_one_training_step_gives_a_model_vllm_serves(fake_config, tmp_path):
    """A real step on a tiny export (fake-engine rationales), then the saved model serves in vLLM."""
    from safetensors.torch import load_file

    config = fake_config(task={"arithmetic": {"count": 6}}, model={"path": BASE},
                         train={"epochs": 1, "batch_size": 32, "max_length": 256},
                         evaluate={"count": 4, "max_tokens": 16})
    assert main(["run", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config)]) == 0
    cfg = load_config(config)
    out = stage_dir(cfg, 1, "train")
    m = json.loads((out / "_manifest.json").read_text())
    exported = reader(cfg, 1, "export").manifest["stats"]["splits"]["train"]
    assert m["stats"]["trained"] and m["stats"]["steps"] == 1 and m["stats"]["train_rows"] == exported == m["rows"]
    curve = json.loads((out / "loss.json").read_text())
    assert len(curve["steps"]) == 1 and math.isfinite(curve["steps"][0]["loss"]) and curve["steps"][0]["loss"] > 0
    assert (out / "loss.png").stat().st_size > 0 and (out / "loss.csv").read_text().startswith("step,epoch,loss")
    trained, base = load_file(out / "model.safetensors"), load_file(f"{BASE}/model.safetensors")
    assert trained.keys() == base.keys() and all(trained[k].dtype == base[k].dtype for k in base)
    assert any(not (trained[k] == base[k]).all() for k in base)  # the step changed the weights
    assert "up to date" in selfimprove("train", "--config", config).stdout  # a rerun does not retrain

    # vLLM loads the trained directory and generates with it (greedy, a few tokens per problem)
    selfimprove("evaluate", "--config", config, "--iter", 1, "--set", "sample.engine=vllm")
    result = json.loads((stage_dir(cfg, 1, "evaluate") / "eval.json").read_text())
    assert result["model"] == str(out) and result["n"] == 4
    rows = reader(cfg, 1, "evaluate").read_all().to_pylist()
    assert len(rows) == 4 and all(r["completion_tokens"] > 0 and r["text"] for r in rows)


def test_train_methods_leave_sft_fingerprints_as_they_were():
    """A run trained before train.method existed stays up to date: at sft the train part of the
    fingerprint is the fields it always had; dpo and grpo add their method and what they change."""
    before = {"epochs": 3.0, "learning_rate": 0.0002, "batch_size": 16, "gradient_accumulation": 1, "max_length": 1024,
              "seed": 1234, "from_": "base", "include_previous_exports": False, "dtype": "auto",
              "gradient_checkpointing": None}
    assert fingerprint(load_config(None, []), {}, BASE)["train"] == before
    # another method's settings do not touch an SFT run
    assert fingerprint(load_config(None, ["train.dpo.beta=0.5", "train.grpo.steps=3"]), {}, BASE)["train"] == before
    dpo = fingerprint(load_config(None, ["train.method=dpo", "train.grpo.steps=3"]), {}, BASE)
    assert dpo["train"] == {**before, "method": "dpo"}  # DPO's own section at its defaults: left out
    dpo = fingerprint(load_config(None, ["train.method=dpo", "train.dpo.beta=0.5"]), {}, BASE)
    assert dpo["train"]["dpo"]["beta"] == 0.5 and "grpo" not in dpo["train"] and "generation" not in dpo
    grpo = fingerprint(load_config(None, ["train.method=grpo", "sample.temperature=0.6"]), {}, BASE)
    assert grpo["train"] == {**before, "method": "grpo"}
    # how GRPO samples (the sample stage's settings unless set) and what scores it are part of it
    assert grpo["generation"] == {"max_completion_length": 256, "temperature": 0.6, "top_p": 0.95}
    assert grpo["reward"]["verifier"] == "auto" and "workers" not in grpo["reward"]
