"""`selfimprove push`: one iteration's export to a dataset repository on the Hugging Face hub.

What goes up is what a user of the data needs, at the repository's root, where the card's
`configs` (`sft-train-*.parquet`, ...) find it: every dataset shard, `README.md` (the card),
`config.yaml` (the effective config) and `stats.json` (the funnel, every problem's pass rate).
The store's internal files never do: nothing whose name, or a folder's, starts with `_` or `.`
(`_SUCCESS`, `_manifest.json`, `_progress.jsonl`, `_fingerprint.json`, `_rejects.parquet`,
`.lock`, temporary files).

Only a finished export that passes its audit and whose shards match their checksums is pushed,
in one commit (`create_commit`: all files or none), to `main` or the branch `--revision` names
(created from `main` when missing). Shards an earlier push left in the repository that this
export does not have are deleted in the same commit, or the card's patterns would load them.

The hub is `HF_ENDPOINT` (default https://huggingface.co), read when the push starts; the token
is huggingface_hub's (`HF_TOKEN`, else `hf auth login`'s). Offline (`HF_HUB_OFFLINE=1`, no
network, a host that does not answer) the push fails at once, before anything is sent: one
short request checks the hub answers (huggingface_hub's own requests have no timeout and retry
for half a minute on connection errors).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path, PurePosixPath

from selfimprove.pipeline import __version__, logs
from selfimprove.pipeline.config import Config, ConfigError
from selfimprove.pipeline.runs import stage_dir
from selfimprove.pipeline.schema import EXPORT_CONFIGS, EXPORT_SPLITS
from selfimprove.pipeline.store import MANIFEST, SUCCESS, StoreError, audit, read_json, sha256

DEFAULT_ENDPOINT = "https://huggingface.co"
REQUIRED = ("README.md", "config.yaml")  # the card and the effective config: an export without them is not one
PROBE_TIMEOUT_S = 10.0  # how long the first request may take before the hub counts as unreachable
SHARD_PATTERNS = [f"{c}-{s}-*.parquet" for c in EXPORT_CONFIGS for s in EXPORT_SPLITS]  # what the card loads


class PushError(RuntimeError):
    """Why nothing (or not all) was pushed, phrased for the user: starts with `push:`."""


def endpoint() -> str:
    """The hub to push to: HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any((f or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def internal(relative: str) -> bool:
    """A store file (or one inside a store folder): `_SUCCESS`, `_manifest.json`, `.lock`, ..."""
    return any(part.startswith(("_", ".")) for part in PurePosixPath(relative).parts)


def files_to_push(export_dir: Path) -> list[str]:
    """Every file of the export a user of the data needs, as paths relative to it, sorted."""
    return sorted(rel for f in export_dir.rglob("*")
                  if f.is_file() and not internal(rel := f.relative_to(export_dir).as_posix()))


def checked_export(cfg: Config, iteration: int) -> tuple[Path, dict]:
    """The export directory and its manifest, or a PushError naming it and what to do."""
    path = stage_dir(cfg, iteration, "export")
    redo = f"`selfimprove export --iter {iteration}` (with the same --config)"
    if not (path / SUCCESS).exists():
        raise PushError(f"push: {path} is not a finished export (no {SUCCESS}); run {redo}, or `selfimprove run`, "
                        "first; nothing was uploaded")
    problems = audit(path)
    try:
        manifest = read_json(path / MANIFEST)
        for shard in manifest["shards"]:
            f = path / shard["file"]
            if not f.exists() or sha256(f.read_bytes()) != shard["sha256"]:
                problems.append(f"{f} {'is missing' if not f.exists() else 'does not match its checksum'}")
    except (StoreError, KeyError, TypeError) as e:
        problems.append(str(e))
    problems += [f"{path / name} is missing" for name in REQUIRED if not (path / name).is_file()]
    if problems:
        raise PushError(f"push: {path} is not what its manifest promises: {'; '.join(problems[:3])}"
                        + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
                        + f". Run {redo} again to repair it (finished shards are kept), or `selfimprove status "
                          "--check`; nothing was uploaded")
    return path, manifest


def commit_message(cfg: Config, iteration: int, manifest: dict) -> tuple[str, str]:
    """A title naming the run, the iteration and the funnel; the rows per config and the hashes below it."""
    stats = manifest.get("stats", {})
    f, rows = stats.get("funnel", {}), stats.get("configs", {})
    title = (f"selfimprove {cfg.run.name} iteration {iteration}: {f.get('exported')} of {f.get('samples')} samples "
             f"exported ({f.get('problems')} problems, {f.get('correct')} correct, {f.get('kept')} kept)")
    lines = [f"Funnel: problems {f.get('problems')}, samples {f.get('samples')}, correct {f.get('correct')}, "
             f"kept {f.get('kept')}, exported {f.get('exported')}"
             + (f" ({f['rationalized_exported']} rationalized)" if f.get("rationalized_exported") else "") + ".",
             "Rows: " + ", ".join(f"{c} {sum(rows[c].values())} ({', '.join(f'{s} {n}' for s, n in rows[c].items())})"
                                  for c in EXPORT_CONFIGS if c in rows) + ".",
             f"Config hash {manifest.get('config_hash')}, export content {manifest.get('output_hash')}, "
             f"selfimprove {manifest.get('code_version', __version__)}. The card is README.md, the full config "
             "config.yaml."]
    return title, "\n".join(lines)


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the HTTP library under huggingface_hub raises when the hub cannot be reached (its
    OfflineModeIsEnabled and requests' errors are OSErrors; httpx's are not)."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _reason(e: BaseException) -> str:
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return "offline mode: HF_HUB_OFFLINE is set"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _refusal(e) -> str:
    """`403 Forbidden: <what the hub said>` from an HfHubHTTPError."""
    r = e.response
    said = (getattr(e, "server_message", None) or "").strip().splitlines()
    head = " ".join(str(x) for x in (getattr(r, "status_code", None), getattr(r, "reason_phrase", None)
                                     or getattr(r, "reason", None)) if x) or str(e).strip().splitlines()[0]
    return head + (f": {said[0]}" if said else "")


def unreachable(url: str, reason: str, fix: str = "check the network or HF_ENDPOINT") -> PushError:
    return PushError(f"push: cannot reach {url} ({reason}): {fix}; nothing was uploaded")


def probe(url: str, token: str | None) -> None:
    """One short request: the hub answers (any status), or a PushError at once."""
    from huggingface_hub.utils import build_hf_headers, get_session

    headers = build_hf_headers(token=token or False, library_name="selfimprove", library_version=__version__)
    try:
        response = get_session().get(f"{url}/api/whoami-v2", headers=headers, timeout=PROBE_TIMEOUT_S)
    except _network_errors() as e:
        raise unreachable(url, _reason(e)) from None
    if token is None:
        raise PushError("push: no Hugging Face token: set HF_TOKEN to a token with write access (or run "
                        "`hf auth login`); nothing was uploaded")
    if response.status_code == 401:
        raise PushError(f"push: {url} refused the token (401 Unauthorized): set HF_TOKEN to a valid token with write "
                        "access; nothing was uploaded")


def _stale_shards(api, repo_id: str, revision: str | None, keep: set[str]) -> list[str]:
    """Shards of an earlier push that this export does not have (the card's patterns would load them)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        remote = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code == 404:  # an empty repository, a new branch
            return []
        raise
    return sorted(p for p in remote if p not in keep and any(fnmatch.fnmatchcase(p, pat) for pat in SHARD_PATTERNS))


def push(cfg: Config, iteration: int, repo_id: str, *, private: bool = False, revision: str | None = None,
         token: str | None = None) -> dict:
    """Push iteration `iteration`'s export to the dataset repository `repo_id` in one commit.

    Returns what was done: url, commit_url, files (pushed), deleted (stale shards), revision.
    Raises PushError (nothing was uploaded, or the commit was not made) or ConfigError (a bad repo id).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import get_token, validate_repo_id

    logs.adopt_again()  # huggingface_hub adds its terminal handler when a submodule loads: its warnings to the log too
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"--repo {repo_id!r}: give the dataset repository as ORG/NAME (or USER/NAME)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"--repo {repo_id!r}: {e}") from None
    path, manifest = checked_export(cfg, iteration)
    url = endpoint()
    if offline():
        raise unreachable(url, "offline mode: HF_HUB_OFFLINE is set",
                          "unset HF_HUB_OFFLINE, check the network or HF_ENDPOINT")
    token = token or get_token()
    probe(url, token)

    api = HfApi(endpoint=url, token=token, library_name="selfimprove", library_version=__version__)
    files = files_to_push(path)
    title, description = commit_message(cfg, iteration, manifest)
    step = "creating the repository"
    try:
        repo_url = api.create_repo(repo_id, repo_type="dataset", private=True if private else None, exist_ok=True)
        if revision and revision != "main" and not revision.startswith("refs/"):
            step = f"creating the branch {revision}"
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        step = "listing the repository"
        stale = _stale_shards(api, repo_id, revision, set(files))
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path / rel)) for rel in files]
        operations += [CommitOperationDelete(path_in_repo=rel) for rel in stale]
        step = "uploading"
        info = api.create_commit(repo_id, operations, commit_message=title, commit_description=description,
                                 repo_type="dataset", revision=revision)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        hint = f": the token (HF_TOKEN) needs write access to {repo_id.split('/')[0]}" if status in (401, 403) else ""
        raise PushError(f"push: {repo_id}: the hub refused while {step} ({_refusal(e)}){hint}; "
                        "the commit was not made") from None
    except _network_errors() as e:
        raise PushError(f"push: lost {url} while {step} ({_reason(e)}); the commit was not made: rerun the same "
                        "command") from None
    return {"url": str(repo_url), "commit_url": info.commit_url, "commit": info.oid, "files": files,
            "deleted": stale, "revision": revision or "main", "export": path}
