"""What this machine's processor can do, detected at run time, never assumed.

Precision is the lever on CPU: vLLM generated 1.6x the tokens/s in bfloat16 as in float32 on a
2-core AMD EPYC with AVX-512 BF16 and 1.8x on an Intel Xeon with AMX, and training ran 1.5x as
fast there; on an AVX2-only CPU bfloat16 falls back to slow emulated matmuls and runs at a
quarter of float32's speed (docs/performance.md). So `auto` picks bfloat16 only where the
processor has native bfloat16 instructions.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags of native bfloat16 arithmetic (Linux names)


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where it is missing or unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is missing or unreadable)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())  # x86, Arm


def describe_machine(flags: frozenset[str] | None = None) -> str:
    """One line naming what a measurement ran on: CPU model, cores, native bfloat16 or not.

    Benchmarks record it beside every figure, since a figure measured on one CPU (bfloat16 1.5x
    float32 with AVX-512 BF16, 4x slower without it) says nothing about another."""
    found = native_bf16_flags(flags)
    bf16 = f"native bfloat16 ({', '.join(found)})" if found else "no native bfloat16"
    model = _cpuinfo().get("model name") or "unknown CPU"
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {bf16}"


def native_bf16_flags(flags: frozenset[str] | None = None) -> list[str]:
    """The native-bfloat16 flags among `flags` (default: this CPU's): Arm's `bf16` counts too."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in (*BF16_FLAGS, "bf16") if f in flags]


def cpu_dtype(flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(dtype, why) for `dtype: auto` on a CPU: bfloat16 with native bfloat16 instructions, else float32."""
    found = native_bf16_flags(flags)
    if found:
        return "bfloat16", f"this CPU has native bfloat16 ({', '.join(found)})"
    return "float32", "this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16), where float32 is faster"
