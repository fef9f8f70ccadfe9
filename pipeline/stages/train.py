"""train: fine-tune on the export with TRL, by `train.method`: sft (default), dpo or grpo.

- sft: the export's `sft` config, loss on the rationale only (below).
- dpo: its `preference` config (a verified rationale chosen over a wrong or answerless sample of
  the same problem), TRL's DPOTrainer with the starting model as the frozen reference
  (`train.dpo`: beta, loss_type, learning_rate).
- grpo: its `prompts` config (train split), TRL's GRPOTrainer: the model samples
  `train.grpo.num_generations` completions per prompt, the run's verifier scores each (1 right,
  0 wrong or no clear final answer, pipeline/rewards.py, in the killable worker pool) and each is
  pushed up or down by its reward against its group's mean. Generation is the trainer's own
  (pipeline/trainers.py says why not vLLM).

STaR and ReST-EM fine-tune the base model afresh each iteration (`train.from: base`, the
default); `train.from: previous` continues from iteration k-1's model instead, and
`train.include_previous_exports` trains on the exports of iterations 1..k together (every method).

Rows (the `prompt` messages, then the reply) are tokenized here, prompt and reply separately,
exactly as the engine sees them at sampling time (the chat template's generation prompt, then
the generated tokens): for SFT labels are -100 on every prompt token, so only the rationale and
its end-of-turn token are learned; DPO is given the same token ids. A row longer than
`train.max_length` goes to _rejects (for GRPO: prompt plus max_completion_length): truncating it
would teach the model never to stop. Weights stay float32 while training (bfloat16 weights would
round small updates away) and are saved in the starting model's dtype; the compute runs in
bfloat16 autocast where the hardware has native bfloat16 (`train.dtype: auto`, the sample
stage's rule, pipeline/trainers.py), and the summary says which and why.

`iter-k/model/` is an HF model directory (weights, config, tokenizer) that vLLM loads, plus
`loss.json`, `loss.csv` and `loss.png` (DPO: also its reward margins and accuracies; GRPO: the
mean reward per step), `part-00000.parquet` (one row per trained row: what the model saw) and
the usual stage files, `_SUCCESS` last. The model is saved to a temporary directory and its
files renamed into place before `_SUCCESS`, so a crash never leaves a half-written model marked
done; a rerun trains again from the start (minutes on the default).

An export with no rows for the method (no pairs, no prompts) is not an error, so the loop can go
on: the model directory is then the starting model, saved unchanged, and the stage says so.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config, digest
from selfimprove.pipeline.model import resolve_model_path, resolve_tokenizer_path
from selfimprove.pipeline.prompts import prompt_ids, raw_prompt, uses_chat_template
from selfimprove.pipeline.runs import model_fingerprint, model_for_iteration, starting_model, trained_model
from selfimprove.pipeline.stages import open_writer, stage_dir, summary, up_to_date
from selfimprove.pipeline.store import MANIFEST, SUCCESS, StageReader, StoreError, part_name, sha256
from selfimprove.pipeline.trainers import (build_dpo_trainer, build_grpo_trainer, build_trainer, grpo_generation,
                                         train_precision)
from selfimprove.pipeline.verification import build_verifier, verifier_spec

ROWS = pa.schema(
    [
        ("iteration", pa.int32()),  # the export the row came from
        ("split", pa.string()),  # train (learned from) or validation (eval loss only)
        ("problem_id", pa.string()),
        ("sample_idx", pa.int32()),
        ("tokens", pa.int32()),
        ("loss_tokens", pa.int32()),  # the assistant's tokens: the only ones with a loss
    ]
)
PAIR_ROWS = pa.schema(
    [
        ("iteration", pa.int32()),
        ("split", pa.string()),
        ("problem_id", pa.string()),
        ("chosen_sample_idx", pa.int32()),
        ("rejected_sample_idx", pa.int32()),
        ("prompt_tokens", pa.int32()),
        ("chosen_tokens", pa.int32()),
        ("rejected_tokens", pa.int32()),
    ]
)
PROMPT_ROWS = pa.schema(
    [
        ("iteration", pa.int32()),
        ("split", pa.string()),  # train only: GRPO has no validation loss without sampling
        ("problem_id", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("pass_rate", pa.float64()),  # in the export's iteration
    ]
)
METHOD_DATA = {"sft": ("sft", ROWS), "dpo": ("preference", PAIR_ROWS), "grpo": ("prompts", PROMPT_ROWS)}
# what loss.json/csv/png keep of TRL's logs beside the loss, per method
METRICS = {
    "sft": (),
    "dpo": ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"),
    "grpo": ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
             "kl", "verifier/correct", "verifier/no_answer"),
}
TMP_MODEL = ".tmp-model"
TMP_TRAINER = ".tmp-trainer"


# -- data -------------------------------------------------------------------------------------
def export_readers(cfg: Config, k: int) -> dict[int, StageReader]:
    iterations = range(1, k + 1) if cfg.train.include_previous_exports else [k]
    readers = {}
    for j in iterations:
        path = stage_dir(cfg, j, "export")
        if not (path / SUCCESS).exists():
            raise StoreError(f"train iteration {k} needs the export of iteration {j} ({path}); run `make iterate ITER={j}` first")
        readers[j] = StageReader(path, "export")
    return readers


def tokenize_example(tokenizer, messages: list[dict], chat: bool = True, template_kwargs: dict | None = None) -> dict:
    """input_ids and labels of one chat; labels are -100 except on the last (assistant) turn.

    Prompt and reply are encoded separately, as at sampling time: the engine encodes the
    rendered prompt (generation prompt included) and the model generates the rest. Without a
    chat template (`chat` false: a base model) the prompt is the raw text the engine sent and the
    reply ends with the EOS token, so the model learns to stop.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("messages: the last turn must be the assistant's")
    if not (messages[-1].get("content") or "").strip():
        raise ValueError("messages: the assistant turn is empty")
    if not chat:
        reply_ids = tokenizer.encode(messages[-1]["content"], add_special_tokens=False) + [tokenizer.eos_token_id]
        ids = prompt_ids(tokenizer, messages[:-1], chat=False)
        return {"input_ids": ids + reply_ids, "labels": [-100] * len(ids) + reply_ids}
    kwargs = template_kwargs or {}
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True, **kwargs)
    full = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    if not full.startswith(prompt):
        raise ValueError("chat template: the rendered chat does not start with the rendered prompt, "
                         "so the assistant's tokens cannot be told apart")
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    reply_ids = tokenizer.encode(full[len(prompt):], add_special_tokens=False)
    return {"input_ids": ids + reply_ids, "labels": [-100] * len(ids) + reply_ids}


def export_shards(export: StageReader, iteration: int, config: str = "sft") -> list[tuple[str, str]]:
    """(file, split) of every shard of one export config; an export from before the configs
    existed (unprefixed `train-*.parquet` shards) cannot be read, so it is named for a rerun."""
    shards = [(s["file"], schema.export_shard_of(s["file"])) for s in export.shards]
    if export.rows and not any(cs for _, cs in shards):
        raise StoreError(f"{export.path} was written by an older selfimprove (no {config}-*.parquet shards); "
                         f"rerun `selfimprove export --iter {iteration} --force`")
    return [(name, cs[1]) for name, cs in shards if cs and cs[0] == config]


def _export_rows(readers: dict[int, StageReader], config: str, columns: list[str]):
    """(iteration, split, row) of every row of one config of the exports, in order."""
    for j, export in readers.items():
        for name, split in export_shards(export, j, config):
            for r in export.read_shard(name, columns=columns).to_pylist():
                yield j, split, r


def _reject(where: str, problem_id: str, error: Exception) -> dict:
    return {"stage": "train", "source_index": None, "problem_id": problem_id, "reason": f"{where}: {error}", "raw": None}


def _too_long(n: int, max_length: int, what: str = "tokens") -> ValueError:
    return ValueError(f"{n} {what} exceeds train.max_length={max_length}; raise it to train on this row")


def load_examples(readers: dict[int, StageReader], tokenizer, max_length: int, chat: bool = True,
                  template_kwargs: dict | None = None):
    """Tokenized train and validation examples of the exports' `sft` config (prompt messages,
    then the completion's), their record rows, and rejects (with reasons)."""
    examples = {"train": [], "validation": []}
    rows, rejects = [], []
    for j, split, r in _export_rows(readers, "sft", ["prompt", "completion", "problem_id", "sample_idx"]):
        where = f"iteration {j} {split} row (problem {r['problem_id']}, sample {r['sample_idx']})"
        try:
            ex = tokenize_example(tokenizer, (r["prompt"] or []) + (r["completion"] or []), chat, template_kwargs)
            if len(ex["input_ids"]) > max_length:
                raise _too_long(len(ex["input_ids"]), max_length)
        except ValueError as e:
            rejects.append(_reject(where, r["problem_id"], e))
            continue
        examples[split].append(ex)
        rows.append({"iteration": j, "split": split, "problem_id": r["problem_id"], "sample_idx": r["sample_idx"],
                     "tokens": len(ex["input_ids"]), "loss_tokens": sum(t != -100 for t in ex["labels"])})
    return examples, rows, rejects


def tokenize_pair(tokenizer, prompt: list[dict], chosen: list[dict], rejected: list[dict], chat: bool = True,
                  template_kwargs: dict | None = None) -> dict:
    """prompt_ids, chosen_ids and rejected_ids of one preference pair, tokenized as SFT rows are."""
    sides = {}
    for side, reply in (("chosen", chosen), ("rejected", rejected)):
        try:
            ex = tokenize_example(tokenizer, (prompt or []) + (reply or []), chat, template_kwargs)
        except ValueError as e:
            raise ValueError(f"{side}: {e}") from None
        n = next(i for i, t in enumerate(ex["labels"]) if t != -100)  # where the reply starts
        sides[side] = (ex["input_ids"][:n], ex["input_ids"][n:])
    return {"prompt_ids": sides["chosen"][0], "chosen_ids": sides["chosen"][1], "rejected_ids": sides["rejected"][1]}


def load_pairs(readers: dict[int, StageReader], tokenizer, max_length: int, chat: bool = True,
               template_kwargs: dict | None = None):
    """Tokenized train and validation pairs of the exports' `preference` config, their record
    rows, and rejects: a pair whose longer side (prompt + reply) exceeds max_length."""
    pairs = {"train": [], "validation": []}
    rows, rejects = [], []
    columns = ["prompt", "chosen", "rejected", "problem_id", "chosen_sample_idx", "rejected_sample_idx"]
    for j, split, r in _export_rows(readers, "preference", columns):
        where = (f"iteration {j} {split} pair (problem {r['problem_id']}, samples {r['chosen_sample_idx']} "
                 f"over {r['rejected_sample_idx']})")
        try:
            ex = tokenize_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"], chat, template_kwargs)
            longest = len(ex["prompt_ids"]) + max(len(ex["chosen_ids"]), len(ex["rejected_ids"]))
            if longest > max_length:
                raise _too_long(longest, max_length, "tokens (prompt and its longer reply)")
        except ValueError as e:
            rejects.append(_reject(where, r["problem_id"], e))
            continue
        pairs[split].append(ex)
        rows.append({"iteration": j, "split": split, "problem_id": r["problem_id"],
                     "chosen_sample_idx": r["chosen_sample_idx"], "rejected_sample_idx": r["rejected_sample_idx"],
                     "prompt_tokens": len(ex["prompt_ids"]), "chosen_tokens": len(ex["chosen_ids"]),
                     "rejected_tokens": len(ex["rejected_ids"])})
    return pairs, rows, rejects


def load_prompts(readers: dict[int, StageReader], tokenizer, cfg: Config, chat: bool, verifier: tuple[str, dict]):
    """The exports' `prompts` rows of the train split, as GRPO reads them (the prompt as messages,
    or raw text without a chat template; the gold answer and metadata for the reward), their
    record rows, and rejects: a prompt too long for max_completion_length more tokens, or one
    exported for another verifier than the run's (its reward would judge by other rules)."""
    max_length, completion = cfg.train.max_length, grpo_generation(cfg)["max_completion_length"]
    prompts = {"train": [], "validation": []}
    rows, rejects = [], []
    columns = ["prompt", "problem_id", "answer", "metadata", "verifier", "verifier_params", "pass_rate"]
    for j, split, r in _export_rows(readers, "prompts", columns):
        if split != "train":
            continue
        where = f"iteration {j} prompt (problem {r['problem_id']})"
        try:
            if (r["verifier"], json.loads(r["verifier_params"] or "{}")) != verifier:
                raise ValueError(f"exported for the verifier {r['verifier']} {r['verifier_params']}, while the run's "
                                 f"reward is {verifier[0]} {json.dumps(verifier[1], sort_keys=True)}")
            n = len(prompt_ids(tokenizer, r["prompt"], chat, cfg.sample.chat_template_kwargs))
            if n + completion > max_length:
                raise ValueError(f"{n} prompt tokens + train.grpo.max_completion_length {completion} exceeds "
                                 f"train.max_length={max_length}; raise it, or lower max_completion_length")
        except ValueError as e:
            rejects.append(_reject(where, r["problem_id"], e))
            continue
        prompts["train"].append({"prompt": r["prompt"] if chat else raw_prompt(r["prompt"]), "answer": r["answer"],
                                 "metadata": r["metadata"], "problem_id": r["problem_id"]})
        rows.append({"iteration": j, "split": split, "problem_id": r["problem_id"], "prompt_tokens": n,
                     "pass_rate": r["pass_rate"]})
    return prompts, rows, rejects


def load_rows(cfg: Config, readers: dict[int, StageReader], tokenizer, chat: bool):
    """The method's train and validation data, its record rows and its rejects."""
    method, kwargs = cfg.train.method, cfg.sample.chat_template_kwargs
    if method == "dpo":
        return load_pairs(readers, tokenizer, cfg.train.max_length, chat, kwargs)
    if method == "grpo":  # the verifier as the export names it: its spec and effective parameters
        return load_prompts(readers, tokenizer, cfg, chat, (verifier_spec(cfg), build_verifier(cfg).params()))
    return load_examples(readers, tokenizer, cfg.train.max_length, chat, kwargs)


# -- training ---------------------------------------------------------------------------------
def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def train_model(start: str, tokenizer, data: dict[str, list[dict]], cfg: Config, out: Path, work: Path,
                reward=None) -> list[dict]:
    """Fine-tune `start` on the data by `train.method` and save model and `tokenizer` (the one the
    data was tokenized with) to `out`; the log history. With no training rows, the starting model
    is saved unchanged."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = cfg.model.trust_remote_code
    save_dtype = getattr(torch, _dtype_name(getattr(AutoConfig.from_pretrained(start, trust_remote_code=remote), "dtype",
                                                    None)), torch.float32)
    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32, trust_remote_code=remote)
    tokenizer.save_pretrained(out)  # before the trainer sets a pad token on it
    history: list[dict] = []
    if data["train"]:
        method = cfg.train.method
        if method == "dpo":
            reference = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32, trust_remote_code=remote)
            trainer = build_dpo_trainer(model, reference, tokenizer, data, cfg, work)
        elif method == "grpo":
            trainer = build_grpo_trainer(model, tokenizer, data["train"], reward, cfg, work)
        else:
            trainer = build_trainer(model, tokenizer, data, cfg, work)
        trainer.train()
        history = trainer.state.log_history
        model = trainer.model
    model.to(save_dtype).save_pretrained(out)
    return history


def write_loss_curve(path: Path, history: list[dict], title: str, method: str = "sft") -> dict:
    """loss.json, loss.csv (step, epoch, loss, eval_loss, then the method's metrics: DPO's reward
    margins and accuracies, GRPO's mean reward) and loss.png; returns the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = METRICS[method]
    steps = [{"step": h["step"], "epoch": round(h["epoch"], 4), "loss": h["loss"], "learning_rate": h.get("learning_rate"),
              **{m: h[m] for m in names if m in h}} for h in history if "loss" in h]
    evals = [{"step": h["step"], "epoch": round(h["epoch"], 4), "eval_loss": h["eval_loss"],
              **{m: h[f"eval_{m}"] for m in names if f"eval_{m}" in h}} for h in history if "eval_loss" in h]
    end = next((h for h in history if "train_runtime" in h), {})
    result = {"method": method, "steps": steps, "eval": evals, "train_runtime_s": end.get("train_runtime"),
              "train_loss": end.get("train_loss")}
    (path / "loss.json").write_text(json.dumps(result, indent=2) + "\n")
    shown = [m for m in names if any(m in s for s in steps)]
    with open(path / "loss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "loss", "eval_loss", *shown])
        for s in steps:
            w.writerow([s["step"], s["epoch"], s["loss"], "", *(s.get(m, "") for m in shown)])
        for e in evals:
            w.writerow([e["step"], e["epoch"], "", e["eval_loss"], *(e.get(m, "") for m in shown)])
    plotted = [m for m in shown if m in ("rewards/margins", "rewards/accuracies", "reward")]
    fig, axes = plt.subplots(1, 1 + bool(plotted), figsize=(6 + 4 * bool(plotted), 3.5), squeeze=False)
    ax = axes[0][0]
    if steps:
        ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train loss")
        if evals:
            ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="validation loss")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no training rows: the starting model, unchanged", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="step", ylabel="loss (assistant tokens)" if method == "sft" else f"{method} loss", title=title)
    if plotted:
        right = axes[0][1]
        for m in plotted:
            right.plot([s["step"] for s in steps if m in s], [s[m] for s in steps if m in s],
                       label="mean reward (verifier: 1 right, 0 not)" if m == "reward" else m)
        right.set(xlabel="step", title="reward" if method == "grpo" else "DPO implicit reward")
        right.legend()
    fig.tight_layout()
    fig.savefig(path / "loss.png", dpi=100)
    plt.close(fig)
    return result


def _move_into_place(tmp: Path, target: Path) -> dict[str, str]:
    """Rename every file of the saved model into the stage directory; their sha256 by name."""
    hashes = {}
    for f in sorted(tmp.iterdir()):
        hashes[f.name] = sha256(f.read_bytes())
        os.replace(f, target / f.name)
    tmp.rmdir()
    return hashes


def _model_intact(path: Path, manifest: dict) -> bool:
    files = manifest.get("stats", {}).get("model_files", {})
    return bool(files) and all((path / n).exists() and sha256((path / n).read_bytes()) == h for n, h in files.items())


def load_tokenizer(cfg: Config, start: str):
    """The starting model's tokenizer, or `model.tokenizer` where set (saved with every trained model)."""
    from transformers import AutoTokenizer

    source = resolve_tokenizer_path(cfg.model.tokenizer) if cfg.model.tokenizer else start
    return AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)


def fingerprint(cfg: Config, readers: dict[int, StageReader], start: str) -> dict:
    # how prompts become text (tokenizer, prompt format, chat-template arguments): only where set
    prompting = {k: v for k, v in {**cfg.model.fingerprint_dump(), **cfg.sample.fingerprint_dump()}.items()
                 if k in ("tokenizer", "trust_remote_code", "prompt_format", "chat_template_kwargs")}
    method = cfg.train.method
    extra = {}
    if method == "grpo":  # how it samples (defaults from `sample`) and what judges the samples
        extra = {"generation": grpo_generation(cfg), "reward": {**cfg.verify.fingerprint_dump(exclude={"workers"}),
                                                                 "think_tags": cfg.sample.think_tags}}
    return {
        "exports": {str(j): r.output_hash for j, r in readers.items()},
        # the method's own section only (none for sft): an SFT run made before methods existed stays up to date
        "train": cfg.train.fingerprint_dump(exclude={"dpo", "grpo"} - {method}),
        "start": {"path": start, "identity": model_fingerprint(start)},
        **({"prompting": prompting} if prompting else {}),
        **extra,
    }


def _stats(cfg: Config, data: dict, curve: dict) -> dict:
    """What the method did: rows, steps, first and last loss, and its own metrics' first and last value."""
    steps = curve["steps"]
    losses = [s["loss"] for s in steps]
    stats = {"method": cfg.train.method, "train_rows": len(data["train"]), "validation_rows": len(data["validation"]),
             "steps": len(losses), "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
             "eval_loss": [e["eval_loss"] for e in curve["eval"]]}
    stats["precision"], stats["precision_why"] = train_precision(cfg.train.dtype)
    for m in ("rewards/margins", "rewards/accuracies", "reward"):
        values = [s[m] for s in steps if s.get(m) is not None]
        if values:
            stats[m] = {"first": values[0], "last": values[-1], "mean": sum(values) / len(values)}
    if cfg.train.method == "grpo":
        stats["completions_per_step"] = cfg.train.batch_size * cfg.train.gradient_accumulation
        stats["generation"] = grpo_generation(cfg)
    return stats


def _summary_text(cfg: Config, stats: dict, start: str) -> str:
    n, method = stats["train_rows"], cfg.train.method
    if not n:
        return f"{method}: 0 rows: the starting model {start}, unchanged"
    times = f"{cfg.train.grpo.num_generations} completions" if method == "grpo" else f"{cfg.train.epochs:g} epochs"
    text = (f"{method}: {n} {dict(sft='rows', dpo='pairs', grpo='prompts')[method]} x {times} from {start}: "
            f"{stats['steps']} steps in {stats['precision']} ({stats['precision_why']}), "
            f"loss {stats['first_loss']:.3f} -> {stats['last_loss']:.3f}")
    for m, label in (("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"), ("reward", "mean reward")):
        if m in stats:
            text += f", {label} {stats[m]['first']:.3f} -> {stats[m]['last']:.3f}"
    return text


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    started = time.time()
    if iteration < 1:
        raise ValueError("train: --iter must be 1 or more (iteration 0 is the base model, which is not trained)")
    readers = export_readers(cfg, iteration)
    start = resolve_model_path(starting_model(cfg, iteration))
    method = cfg.train.method
    with open_writer(cfg, iteration, "train", fingerprint(cfg, readers, start), force) as writer:
        if writer.up_to_date:
            manifest = StageReader(writer.path).manifest
            if not _model_intact(writer.path, manifest):
                raise StoreError(f"{writer.path}: the model files no longer match the manifest; rerun with --force to retrain")
            return up_to_date("train", writer)
        tokenizer = load_tokenizer(cfg, start)
        reward = None
        if method == "grpo":  # the run's verifier in its worker pool, the spec load_prompts checks rows against
            from selfimprove.pipeline.rewards import verifier_reward_from_config

            # the end-of-sequence id tells a finished completion from one cut off at
            # max_completion_length, whose last number is no final answer
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else None
            reward = verifier_reward_from_config(cfg, verifier=verifier_spec(cfg), eos_token_ids=eos)
        try:
            chat = uses_chat_template(tokenizer, cfg.model.prompt_format)
            data, rows, rejects = load_rows(cfg, readers, tokenizer, chat)
            name = part_name(0)
            if not writer.is_done(name):
                writer.write_shard(name, schema.table(rows, METHOD_DATA[method][1]), schema.table(rejects, schema.REJECTS))
            if not data["train"]:
                print(f"train: no {METHOD_DATA[method][0]} rows for {method} in the export of iteration(s) "
                      f"{', '.join(map(str, readers))}{f' ({len(rejects)} rejected, see _rejects.parquet)' if rejects else ''}; "
                      f"{writer.path} is the starting model {start}, unchanged", flush=True)
            tmp, work = writer.path / TMP_MODEL, writer.path / TMP_TRAINER
            for d in (tmp, work):
                shutil.rmtree(d, ignore_errors=True)
            tmp.mkdir()
            history = train_model(start, tokenizer, data, cfg, tmp, work, reward)
        finally:
            if reward is not None:
                reward.close()
        shutil.rmtree(work, ignore_errors=True)
        files = _move_into_place(tmp, writer.path)
        curve = write_loss_curve(writer.path, history, f"{cfg.run.name} iteration {iteration}: {method}, "
                                 f"{len(data['train'])} rows", method)
        stats = {"trained": bool(data["train"]), "start": start, "exports": list(readers),
                 **_stats(cfg, data, curve), "rejected": len(rejects),
                 "train_runtime_s": curve["train_runtime_s"], "model_files": files, "model_hash": digest(files)}
        manifest = writer.finish([name], stats=stats)
    summary("train", f"{_summary_text(cfg, stats, start)}; {len(rejects)} rows rejected -> {writer.path}", started)
    return manifest
