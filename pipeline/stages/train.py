"""train: supervised fine-tuning on the export's `sft` config (TRL), with loss on the rationale only.

STaR and ReST-EM fine-tune the base model afresh each iteration (`train.from: base`, the
default); `train.from: previous` continues from iteration k-1's model instead, and
`train.include_previous_exports` trains on the exports of iterations 1..k together.

Rows (the `prompt` messages, then the `completion` message) are tokenized here, prompt and
rationale separately, exactly as the engine sees them at sampling time (the chat template's
generation prompt, then the generated tokens), as TRL does with the same config: labels are
-100 on every prompt token, so only the rationale and its end-of-turn token are learned. A row
longer than `train.max_length` goes to _rejects: truncating it would teach the model never to
stop. Weights stay float32 while training (bfloat16 weights would round small updates away)
and are saved in the starting model's dtype.

`iter-k/model/` is an HF model directory (weights, config, tokenizer) that vLLM loads, plus
`loss.json`, `loss.csv` and `loss.png`, `part-00000.parquet` (one row per trained row: what
the model saw) and the usual stage files, `_SUCCESS` last. The model is saved to a temporary
directory and its files renamed into place before `_SUCCESS`, so a crash never leaves a
half-written model marked done; a rerun trains again from the start (minutes on the default).

An export with no training rows is not an error, so the loop can go on: the model directory
is then the starting model, saved unchanged, and the stage says so.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa

from selfimprove.pipeline import schema
from selfimprove.pipeline.config import Config, digest
from selfimprove.pipeline.model import resolve_model_path, resolve_tokenizer_path
from selfimprove.pipeline.prompts import prompt_ids, uses_chat_template
from selfimprove.pipeline.runs import model_fingerprint, model_for_iteration, starting_model, trained_model
from selfimprove.pipeline.stages import open_writer, stage_dir, summary, up_to_date
from selfimprove.pipeline.store import MANIFEST, SUCCESS, StageReader, StoreError, part_name, sha256

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


def sft_shards(export: StageReader, iteration: int) -> list[tuple[str, str]]:
    """(file, split) of every `sft` shard of an export; an export from before the configs existed
    (unprefixed `train-*.parquet` shards) cannot be read, so it is named for a rerun."""
    shards = [(s["file"], schema.export_shard_of(s["file"])) for s in export.shards]
    if export.rows and not any(cs for _, cs in shards):
        raise StoreError(f"{export.path} was written by an older selfimprove (no sft-*.parquet shards); "
                         f"rerun `selfimprove export --iter {iteration} --force`")
    return [(name, cs[1]) for name, cs in shards if cs and cs[0] == "sft"]


def load_examples(readers: dict[int, StageReader], tokenizer, max_length: int, chat: bool = True,
                  template_kwargs: dict | None = None):
    """Tokenized train and validation examples of the exports' `sft` config (prompt messages,
    then the completion's), their record rows, and rejects (with reasons)."""
    examples = {"train": [], "validation": []}
    rows, rejects = [], []
    for j, export in readers.items():
        for name, split in sft_shards(export, j):
            table = export.read_shard(name, columns=["prompt", "completion", "problem_id", "sample_idx"])
            for r in table.to_pylist():
                where = f"iteration {j} {split} row (problem {r['problem_id']}, sample {r['sample_idx']})"
                try:
                    ex = tokenize_example(tokenizer, (r["prompt"] or []) + (r["completion"] or []), chat, template_kwargs)
                    if len(ex["input_ids"]) > max_length:
                        raise ValueError(f"{len(ex['input_ids'])} tokens exceeds train.max_length={max_length}; "
                                         "raise it to train on this row")
                except ValueError as e:
                    rejects.append({"stage": "train", "source_index": None, "problem_id": r["problem_id"],
                                    "reason": f"{where}: {e}", "raw": None})
                    continue
                examples[split].append(ex)
                rows.append({"iteration": j, "split": split, "problem_id": r["problem_id"], "sample_idx": r["sample_idx"],
                             "tokens": len(ex["input_ids"]), "loss_tokens": sum(t != -100 for t in ex["labels"])})
    return examples, rows, rejects


# -- training ---------------------------------------------------------------------------------
def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def build_trainer(model, tokenizer, examples: dict[str, list[dict]], cfg: Config, work: Path):
    """TRL's SFTTrainer over pre-tokenized examples: it keeps our labels, so the loss is on the
    assistant's tokens only, and pads them with -100."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    t = cfg.train
    cuda = torch.cuda.is_available()
    bf16 = t.dtype == "bfloat16" or (t.dtype == "auto" and cuda and torch.cuda.is_bf16_supported())
    has_eval = bool(examples.get("validation"))
    args = SFTConfig(
        output_dir=str(work),
        num_train_epochs=t.epochs,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        seed=t.seed,
        data_seed=t.seed,
        bf16=bf16,
        use_cpu=not cuda,
        gradient_checkpointing=cuda if t.gradient_checkpointing is None else t.gradient_checkpointing,
        max_length=None,  # rows over train.max_length were rejected, never truncated
        train_sampling_strategy="group_by_length",  # batches of similar length: 13% fewer tokens computed on the demo export
        logging_steps=1,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
    )
    # TRL's fused LM-head loss is fast only as a Triton kernel on a GPU; elsewhere the model's own loss is.
    trainer_class = SFTTrainer if cuda and importlib.util.find_spec("triton") is not None else _plain_loss_trainer()
    return trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples["train"]),
        eval_dataset=Dataset.from_list(examples["validation"]) if has_eval else None,
        processing_class=tokenizer,
    )


def _plain_loss_trainer():
    """SFTTrainer computing the loss from the model's own logits, as transformers' Trainer does.

    Without Triton on a GPU (on CPU, or a GPU without Triton), TRL's fused LM head scores every position in pure-PyTorch tiles:
    measured here on SmolLM2-135M, 55 s per 16-row step instead of 38 s this way.
    Same loss (labels -100 on the prompt); TRL's entropy and token-accuracy logs are left out."""
    from transformers import Trainer
    from trl import SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return PlainLossSFTTrainer


def train_model(start: str, examples: dict[str, list[dict]], cfg: Config, out: Path, work: Path) -> list[dict]:
    """Fine-tune `start` on the examples and save model and tokenizer to `out`; the log history.
    With no training rows, the starting model is saved unchanged."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    remote = cfg.model.trust_remote_code
    tokenizer = load_tokenizer(cfg, start)
    save_dtype = getattr(torch, _dtype_name(getattr(AutoConfig.from_pretrained(start, trust_remote_code=remote), "dtype",
                                                    None)), torch.float32)
    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32, trust_remote_code=remote)
    tokenizer.save_pretrained(out)  # before the trainer sets a pad token on it
    history: list[dict] = []
    if examples["train"]:
        trainer = build_trainer(model, tokenizer, examples, cfg, work)
        trainer.train()
        history = trainer.state.log_history
        model = trainer.model
    model.to(save_dtype).save_pretrained(out)
    return history


def write_loss_curve(path: Path, history: list[dict], title: str) -> dict:
    """loss.json, loss.csv (step, epoch, loss, eval_loss) and loss.png; returns the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [{"step": h["step"], "epoch": round(h["epoch"], 4), "loss": h["loss"], "learning_rate": h.get("learning_rate")}
             for h in history if "loss" in h]
    evals = [{"step": h["step"], "epoch": round(h["epoch"], 4), "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    end = next((h for h in history if "train_runtime" in h), {})
    result = {"steps": steps, "eval": evals, "train_runtime_s": end.get("train_runtime"), "train_loss": end.get("train_loss")}
    (path / "loss.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(path / "loss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "loss", "eval_loss"])
        for s in steps:
            w.writerow([s["step"], s["epoch"], s["loss"], ""])
        for e in evals:
            w.writerow([e["step"], e["epoch"], "", e["eval_loss"]])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if steps:
        ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train loss")
        if evals:
            ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="validation loss")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no training rows: the starting model, unchanged", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="step", ylabel="loss (assistant tokens)", title=title)
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
    return {
        "exports": {str(j): r.output_hash for j, r in readers.items()},
        "train": cfg.train.model_dump(mode="json"),
        "start": {"path": start, "identity": model_fingerprint(start)},
        **({"prompting": prompting} if prompting else {}),
    }


def run(cfg: Config, iteration: int, force: bool = False) -> dict:
    started = time.time()
    if iteration < 1:
        raise ValueError("train: --iter must be 1 or more (iteration 0 is the base model, which is not trained)")
    readers = export_readers(cfg, iteration)
    start = resolve_model_path(starting_model(cfg, iteration))
    with open_writer(cfg, iteration, "train", fingerprint(cfg, readers, start), force) as writer:
        if writer.up_to_date:
            manifest = StageReader(writer.path).manifest
            if not _model_intact(writer.path, manifest):
                raise StoreError(f"{writer.path}: the model files no longer match the manifest; rerun with --force to retrain")
            return up_to_date("train", writer)
        tokenizer = load_tokenizer(cfg, start)
        chat = uses_chat_template(tokenizer, cfg.model.prompt_format)
        examples, rows, rejects = load_examples(readers, tokenizer, cfg.train.max_length, chat,
                                                cfg.sample.chat_template_kwargs)
        name = part_name(0)
        if not writer.is_done(name):
            writer.write_shard(name, schema.table(rows, ROWS), schema.table(rejects, schema.REJECTS))
        n_train = len(examples["train"])
        if not n_train:
            print(f"train: no training rows in the export of iteration(s) {', '.join(map(str, readers))}"
                  f"{f' ({len(rejects)} rejected, see _rejects.parquet)' if rejects else ''}; "
                  f"{writer.path} is the starting model {start}, unchanged", flush=True)
        tmp, work = writer.path / TMP_MODEL, writer.path / TMP_TRAINER
        for d in (tmp, work):
            shutil.rmtree(d, ignore_errors=True)
        tmp.mkdir()
        history = train_model(start, examples, cfg, tmp, work)
        shutil.rmtree(work, ignore_errors=True)
        files = _move_into_place(tmp, writer.path)
        curve = write_loss_curve(writer.path, history, f"{cfg.run.name} iteration {iteration}: {n_train} rows")
        losses = [s["loss"] for s in curve["steps"]]
        stats = {
            "trained": bool(n_train),
            "start": start,
            "exports": list(readers),
            "train_rows": n_train,
            "validation_rows": len(examples["validation"]),
            "rejected": len(rejects),
            "steps": len(losses),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "eval_loss": [e["eval_loss"] for e in curve["eval"]],
            "train_runtime_s": curve["train_runtime_s"],
            "model_files": files,
            "model_hash": digest(files),
        }
        manifest = writer.finish([name], stats=stats)
    if n_train:
        text = (f"{n_train} rows x {cfg.train.epochs:g} epochs from {start}: {len(losses)} steps, "
                f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    else:
        text = f"0 rows: the starting model {start}, unchanged"
    summary("train", f"{text}; {len(rejects)} rows rejected -> {writer.path}", started)
    return manifest
