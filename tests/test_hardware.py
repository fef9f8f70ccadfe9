"""`dtype: auto` follows what the processor can do, detected, never assumed."""

from pathlib import Path

from selfimprove.pipeline.engines.vllm import engine_dtype
from selfimprove.pipeline.hardware import cpu_dtype, cpu_flags


def test_bfloat16_only_with_native_bfloat16_instructions():
    assert cpu_dtype(frozenset({"avx2", "avx512f", "avx512bw"}))[0] == "float32"
    assert cpu_dtype(frozenset({"avx2", "avx512f", "avx512_bf16"})) == ("bfloat16", "this CPU has native bfloat16 (avx512_bf16)")
    assert cpu_dtype(frozenset({"amx_bf16", "amx_tile"}))[0] == "bfloat16"
    assert cpu_dtype(frozenset({"fp", "asimd", "bf16"}))[0] == "bfloat16"  # Arm
    assert cpu_dtype(frozenset())[0] == "float32"  # nothing known: the safe choice


def test_this_machine_is_read_from_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text()
    native = any(f in text.split() for f in ("avx512_bf16", "amx_bf16"))
    assert bool(cpu_flags()) == ("flags" in text or "Features" in text)
    assert cpu_dtype()[0] == ("bfloat16" if native else "float32")


def test_engine_dtype_auto_on_cpu_and_gpu_and_explicit():
    assert engine_dtype("auto", cpu=True)[0] == cpu_dtype()[0]
    assert "auto:" in engine_dtype("auto", cpu=True)[1]
    assert engine_dtype("auto", cpu=False)[0] == "auto"  # vLLM's own: the model's dtype
    assert engine_dtype("float16", cpu=True) == ("float16", "model.dtype")


def test_training_precision_follows_the_same_rule():
    """train.dtype auto: bfloat16 autocast on a CPU with native bfloat16, float32 without; explicit wins."""
    import torch

    from selfimprove.pipeline.config import load_config
    from selfimprove.pipeline.trainers import _common_args, train_precision

    if not torch.cuda.is_available():
        assert train_precision("auto") == (cpu_dtype()[0], f"auto: {cpu_dtype()[1]}")
    assert train_precision("float32") == ("float32", "train.dtype")
    for setting, bf16 in (("auto", train_precision("auto")[0] == "bfloat16"), ("float32", False), ("bfloat16", True)):
        args = _common_args(load_config(None, [f"train.dtype={setting}"]), Path("unused"), has_eval=False)
        assert args["bf16"] is bf16, setting


def test_a_measurement_names_the_machine_it_ran_on():
    """Benchmarks record this beside each figure: the CPU, its cores and whether bfloat16 is native."""
    import os

    from selfimprove.pipeline.hardware import describe_machine

    assert describe_machine(frozenset({"avx2"})).endswith(f", {len(os.sched_getaffinity(0))} cores, no native bfloat16")
    assert describe_machine(frozenset({"avx512_bf16", "amx_bf16"})).endswith("native bfloat16 (avx512_bf16, amx_bf16)")
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None)
    if model:
        assert describe_machine().startswith(model + ", ")
