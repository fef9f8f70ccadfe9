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
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("cumulative_logprob", pa.float64()),
        ("model", pa.string()),
        ("seed", pa.int64()),
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

EXPORT = pa.schema(
    [
        ("messages", pa.list_(MESSAGE)),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("problem_id", pa.string()),
        ("sample_idx", pa.int32()),
        ("answer", pa.string()),
        ("rationalized", pa.bool_()),
        ("iteration", pa.int32()),
        ("model", pa.string()),
        ("task", pa.string()),
        ("verifier", pa.string()),
    ]
)

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
