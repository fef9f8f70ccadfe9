"""The Arrow schema of every stage's table, in one place.

Stages write exactly these columns in this order, so a reader never has to guess and a
schema change is one edit. `metadata` is a JSON string so any source's extra columns survive.
"""

import pyarrow as pa

PROBLEMS = pa.schema(
    [
        ("problem_id", pa.string()),
        ("task", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),  # gold answer as text; null when a task has none
        ("source_index", pa.int64()),  # row position in the source, for tracing back
        ("metadata", pa.string()),  # JSON object of the source's extra fields
    ]
)

SAMPLES = pa.schema(
    [
        ("problem_id", pa.string()),
        ("sample_idx", pa.int32()),
        ("prompt", pa.string()),  # JSON list of chat messages exactly as sent to the model
        ("text", pa.string()),  # the completion, after its thinking section if it has one
        ("reasoning", pa.string()),  # a reasoning model's thinking section, verbatim with its tags (sample.think_tags)
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("cumulative_logprob", pa.float64()),
        ("model", pa.string()),
        ("seed", pa.int64()),
        # sample.strategy cot_decoding: the model's confidence in the path's final answer (mean top-1 minus
        # top-2 probability over its tokens; null: no answer found) and the rank of the path's first token
        # (1: greedy's); both null for ordinary samples and in shards written before they existed
        ("confidence", pa.float64()),
        ("branch_rank", pa.int32()),
    ]
)

VERIFIED = pa.schema(
    list(SAMPLES)
    + [
        ("gold", pa.string()),
        ("extracted", pa.string()),
        ("status", pa.string()),  # correct | wrong | no_answer | timeout | error
        ("score", pa.float64()),
        ("reason", pa.string()),
        ("verifier", pa.string()),
        # true for STaR rationalization rows: sampled with the gold answer as a hint, stored
        # (and exported) with the hint-free prompt; null/false for ordinary samples
        ("rationalized", pa.bool_()),
    ]
)

SELECTED = VERIFIED

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

# The export: one directory, three Hugging Face dataset configs, each in a format TRL reads one
# way. No config has both message and string columns named prompt/completion/messages: TRL
# decides a row's format from whichever of those keys a set.pop() returns (hash-seed dependent).
EXPORT_CONFIGS = ("sft", "preference", "prompts")
EXPORT_SPLITS = ("train", "validation")

# `sft`: conversational prompt-completion; TRL applies the chat template and masks the prompt.
SFT = pa.schema(
    [
        ("prompt", MESSAGES),  # the chat as the model saw it, up to its turn (hint-free for rationalizations)
        ("completion", MESSAGES),  # [the assistant turn]: the verified rationale
        ("problem_id", pa.string()),
        ("sample_idx", pa.int32()),
        ("answer", pa.string()),  # the gold answer the rationale reached
        ("rationalized", pa.bool_()),
        ("iteration", pa.int32()),
        ("model", pa.string()),
        ("task", pa.string()),
        ("verifier", pa.string()),
        ("difficulty", pa.string()),  # the problem's own difficulty bucket (`steps=2`, `level=Level 5`); null: none
        ("first_round_pass_rate", pa.float64()),  # correct / samples of the problem's first sampling round
    ]
)
EXPORT = SFT  # the export's main table

# `preference`: TRL's conversational preference format (prompt, chosen, rejected), one problem per pair.
PREFERENCE = pa.schema(
    [
        ("prompt", MESSAGES),
        ("chosen", MESSAGES),  # [assistant turn]: a rationale the sft config exports (verified correct)
        ("rejected", MESSAGES),  # [assistant turn]: a sample of the same problem with a wrong or no final answer
        ("problem_id", pa.string()),
        ("answer", pa.string()),  # gold answer
        ("chosen_sample_idx", pa.int32()),
        ("chosen_status", pa.string()),
        ("chosen_reason", pa.string()),
        ("chosen_rationalized", pa.bool_()),
        ("rejected_sample_idx", pa.int32()),
        ("rejected_status", pa.string()),  # wrong | no_answer (export.preference.rejected_statuses)
        ("rejected_reason", pa.string()),
        ("rejected_answer", pa.string()),  # the final answer the verifier extracted from it, if any
        ("iteration", pa.int32()),
        ("model", pa.string()),
        ("task", pa.string()),
        ("verifier", pa.string()),
    ]
)

# `prompts`: one row per sampled problem, for RL with verifiable rewards.
PROMPTS = pa.schema(
    [
        ("prompt", MESSAGES),
        ("problem_id", pa.string()),
        ("answer", pa.string()),  # gold answer
        ("verifier", pa.string()),  # registered name (or module:Class) for verifiers.get_verifier
        ("verifier_params", pa.string()),  # JSON object: its parameters
        ("pass_rate", pa.float64()),  # correct / samples in this iteration's (hint-free) samples
        ("samples", pa.int32()),
        ("correct", pa.int32()),
        ("metadata", pa.string()),  # the problem's JSON metadata from its source
        ("iteration", pa.int32()),
        ("model", pa.string()),
        ("task", pa.string()),
        ("difficulty", pa.string()),  # as in sft
        ("first_round_pass_rate", pa.float64()),  # pass_rate over the first round only (sample.until_correct adds rounds)
    ]
)

EXPORT_SCHEMAS = {"sft": SFT, "preference": PREFERENCE, "prompts": PROMPTS}


def export_shard_name(config: str, split: str, index: int, total: int) -> str:
    return f"{config}-{split}-{index:05d}-of-{total:05d}.parquet"


def export_shard_of(name: str) -> tuple[str, str] | None:
    """(config, split) of an export shard's file name; None for anything else (such as the
    unprefixed `train-*.parquet` shards of exports written before the configs existed)."""
    parts = name.split("-")
    if len(parts) > 2 and parts[0] in EXPORT_CONFIGS and parts[1] in EXPORT_SPLITS:
        return parts[0], parts[1]
    return None


REJECTS = pa.schema(
    [
        ("stage", pa.string()),
        ("source_index", pa.int64()),
        ("problem_id", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),  # the offending input, truncated, for the user to find and fix
    ]
)

VERDICT_STATUSES = ("correct", "wrong", "no_answer", "timeout", "error")


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows -> table with exactly `schema` (missing keys become null; extra keys are an error)."""
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"unexpected columns {sorted(extra)} for schema {schema.names}")
    return pa.Table.from_pylist(rows, schema=schema)
