"""model_identity: every file a model generates from is in it, and large files are hashed once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from selfimprove.pipeline import model


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh hash cache per test, and every file counts as large enough to be cached."""
    path = tmp_path / "cache" / "model-hashes.json"
    monkeypatch.setattr(model, "HASH_CACHE", path)
    monkeypatch.setattr(model, "CACHE_MIN_BYTES", 0)
    return path


@pytest.fixture
def hashed(monkeypatch):
    """The names of the files hashed, in order (model._sha256 patched to record them)."""
    seen: list[str] = []
    real = model._sha256

    def counting(path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(model, "_sha256", counting)
    return seen


def _model_dir(path: Path, weights: bytes = b"\x01" * 64, template: str = "{{ messages }}",
               weight_name: str = "model.safetensors") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8}))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    (path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (path / "chat_template.jinja").write_text(template)
    (path / weight_name).write_bytes(weights)
    return path


def test_a_changed_chat_template_changes_the_identity(tmp_path):
    d = _model_dir(tmp_path / "m")
    before = model.model_identity(str(d))
    (d / "chat_template.jinja").write_text("{{ messages }}\n<|im_start|>assistant\n")
    after = model.model_identity(str(d))
    assert before != after
    assert {k for k in before["files"] if before["files"][k] != after["files"][k]} == {"chat_template.jinja"}


def test_a_chat_template_inside_tokenizer_config_counts(tmp_path):
    d = _model_dir(tmp_path / "m")
    before = model.model_identity(str(d))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": "{{ x }}"}))
    assert model.model_identity(str(d)) != before


@pytest.mark.parametrize("weight_name", ["model.safetensors", "pytorch_model.bin"])
def test_another_checkpoint_with_the_same_names_and_sizes_changes_the_identity(tmp_path, weight_name):
    a = _model_dir(tmp_path / "a", weights=b"\x01" * 64, weight_name=weight_name)
    b = _model_dir(tmp_path / "b", weights=b"\x02" * 64, weight_name=weight_name)
    assert (a / weight_name).stat().st_size == (b / weight_name).stat().st_size
    assert model.model_identity(str(a)) != model.model_identity(str(b))


def test_a_checkpoint_saved_in_place_with_its_mtime_kept_is_hashed_again(tmp_path, hashed):
    """Same path, inode, size and mtime (a copy over the file that keeps its times): the cache
    must not answer with the old checkpoint's hash."""
    d = _model_dir(tmp_path / "m", weights=b"\x01" * 64)
    w = d / "model.safetensors"
    before = model.model_identity(str(d))
    st = w.stat()
    with open(w, "r+b") as f:  # in place: the inode stays
        f.write(b"\x02" * 64)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert w.stat().st_ino == st.st_ino and w.stat().st_mtime_ns == st.st_mtime_ns
    hashed.clear()
    after = model.model_identity(str(d))
    assert "model.safetensors" in hashed
    assert before["files"]["model.safetensors"] != after["files"]["model.safetensors"]


def test_an_unchanged_directory_gives_the_same_identity_and_the_second_call_reads_the_cache(
        tmp_path, cache, hashed):
    d = _model_dir(tmp_path / "m")
    first = model.model_identity(str(d))
    assert sorted(hashed) == sorted(first["files"]) and cache.exists()
    hashed.clear()
    second = model.model_identity(str(d))
    assert second == first
    assert hashed == [], "nothing is hashed again while the files are unchanged"


def test_only_large_files_are_cached(tmp_path, cache, hashed, monkeypatch):
    monkeypatch.setattr(model, "CACHE_MIN_BYTES", 1000)
    d = _model_dir(tmp_path / "m", weights=b"\x01" * 4096)
    first = model.model_identity(str(d))
    hashed.clear()
    assert model.model_identity(str(d)) == first
    assert "model.safetensors" not in hashed and "config.json" in hashed
    assert list(json.loads(cache.read_text())["files"]) == [str((d / "model.safetensors").resolve())]


def test_a_damaged_or_unwritable_cache_only_costs_a_rehash(tmp_path, cache, hashed, monkeypatch):
    d = _model_dir(tmp_path / "m")
    first = model.model_identity(str(d))
    cache.write_text("{not json")
    assert model.model_identity(str(d)) == first
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(model, "HASH_CACHE", blocker / "model-hashes.json")  # its parent is a file
    assert model.model_identity(str(d)) == first


def test_files_that_do_not_change_generation_are_left_out(tmp_path):
    d = _model_dir(tmp_path / "m")
    before = model.model_identity(str(d))
    (d / "README.md").write_text("# a model card")
    (d / "training_args.bin").write_bytes(b"\x00" * 8)
    (d / ".gitattributes").write_text("*.safetensors filter=lfs")
    (d / "checkpoint-10").mkdir()
    (d / "checkpoint-10" / "model.safetensors").write_bytes(b"\x03" * 64)
    assert model.model_identity(str(d)) == before
    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "tool_use.jinja").write_text("{{ tools }}")
    assert "additional_chat_templates/tool_use.jinja" in model.model_identity(str(d))["files"]


def test_a_hub_id_without_a_local_directory_gives_its_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model.model_identity("HuggingFaceTB/SmolLM2-135M-Instruct") == {"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def test_a_directory_the_train_stage_wrote_is_identified_by_its_recorded_hash(tmp_path, hashed):
    d = _model_dir(tmp_path / "iter-1" / "model")
    (d / "_manifest.json").write_text(json.dumps({"stage": "train", "stats": {"model_hash": "abc123"}}))
    assert model.model_identity(str(d)) == {"trained": "abc123"}
    assert hashed == [], "the train stage hashed its files when it wrote them"


def test_a_pinned_hub_revision_is_part_of_the_sample_fingerprint():
    from selfimprove.pipeline.config import load_config
    from selfimprove.pipeline.engines.vllm import llm_kwargs
    from selfimprove.pipeline.generation import sampling_fingerprint

    base = ["model.path=org/some-model", "sample.engine=openai"]
    a = sampling_fingerprint(load_config(None, base + ["model.revision=v1"]), 1, "x")
    b = sampling_fingerprint(load_config(None, base + ["model.revision=v2"]), 1, "x")
    assert a["model"]["revision"] == "v1" and a != b
    cfg = load_config(None, ["model.path=org/some-model", "model.revision=abc123"])
    assert llm_kwargs(cfg)["revision"] == "abc123"
