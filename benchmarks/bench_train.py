"""Training speed: the train stage's trainer vs a bare PyTorch loop over the very same batches.

The train stage fine-tunes with TRL (SFTTrainer with the stage's settings: `build_trainer`). Its
cost over plain PyTorch is what it adds per step (collation, logging, scheduler, loss
bookkeeping), so the bar is a bare loop (forward with labels, backward, AdamW step) over the
batches the trainer's own dataloader yields, in the same precision. Data: GSM8K train rationales
as replies to their questions, tokenized by the stage (`tokenize_example`), the default model
(or BENCH_MODEL), batch size 8. Each side starts from a fresh copy of the model (load not
timed); the sides alternate trainer, bare, bare, trainer.

Figures:
- `train_tokens_per_s`: tokens (padding excluded) per second through the stage's trainer.
- `train_vs_bare_pytorch_ratio`: the trainer's tokens/s / the bare loop's. Goal >= 0.95.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.outputs import gsm8k_rows, scale
from selfimprove.pipeline.config import load_config

MODEL = os.environ.get("BENCH_MODEL", "data/models/smollm2-135m-instruct")
BATCH = 8
STEPS = 4  # per timed run


def _examples(tokenizer) -> list[dict]:
    from selfimprove.pipeline.stages.train import tokenize_example

    rows = gsm8k_rows()[: scale(STEPS * BATCH) // BATCH * BATCH or BATCH]
    return [tokenize_example(tokenizer, [{"role": "user", "content": r["question"]},
                                         {"role": "assistant", "content": f"{r['rationale']}\nThe answer is {r['answer']}."}])
            for r in rows]


def _trainer(cfg, examples, tokenizer, work: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from selfimprove.pipeline.trainers import build_trainer

    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    return build_trainer(model, tokenizer, {"train": examples, "validation": []}, cfg, work)


def _tokens(batch) -> int:
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())


def _trainer_side(cfg, examples, tokenizer, work: Path) -> tuple[int, float]:
    trainer = _trainer(cfg, examples, tokenizer, work)
    tokens = sum(_tokens(b) for b in trainer.get_train_dataloader())
    started = time.perf_counter()
    trainer.train()
    return tokens, time.perf_counter() - started


def _bare_side(cfg, examples, tokenizer, work: Path) -> tuple[int, float]:
    """The same batches (the trainer's dataloader), the same model, optimizer and precision, no trainer."""
    import contextlib

    import torch

    trainer = _trainer(cfg, examples, tokenizer, work)
    model, batches = trainer.model, list(trainer.get_train_dataloader())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if trainer.args.bf16 else contextlib.nullcontext()
    model.train()
    started = time.perf_counter()
    for batch in batches:
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return sum(_tokens(b) for b in batches), time.perf_counter() - started


def run() -> dict[str, float]:
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    examples = _examples(tokenizer)
    cfg = load_config(None, [f"model.path={MODEL}", f"train.batch_size={BATCH}", "train.epochs=1"])
    totals = {"trainer": [0, 0.0], "bare": [0, 0.0]}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for k, side in enumerate(("trainer", "bare", "bare", "trainer")):
            run_side = _trainer_side if side == "trainer" else _bare_side
            tokens, seconds = run_side(cfg, examples, tokenizer, Path(tmp) / f"{side}-{k}")
            totals[side][0] += tokens
            totals[side][1] += seconds
            print(f"  {side:<8} {tokens:6d} tokens in {seconds:5.1f} s = {tokens / seconds:5.0f} tokens/s", flush=True)
    rate = {k: t / s for k, (t, s) in totals.items()}
    return {"train_tokens_per_s": rate["trainer"], "train_vs_bare_pytorch_ratio": rate["trainer"] / rate["bare"]}
