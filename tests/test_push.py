"""`selfimprove push`: the real huggingface_hub client uploads an export to a hub on 127.0.0.1.

`HubServer` answers, over HTTP, the part of the Hub API that huggingface_hub uses to push a
dataset (whoami, create repo, create branch, validate YAML, tree, preupload, commit) and keeps
each repository's files per branch. Its preupload answer makes every file "regular", so a
commit carries the files' bytes inline (base64 in the NDJSON body) and the server holds exactly
what was sent. The export is made by the project's stages on the deterministic test engine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants
import pyarrow.parquet as pq
import pytest

from selfimprove.pipeline import hub as hub_module
from selfimprove.pipeline.cli import main
from selfimprove.pipeline.config import load_config
from selfimprove.pipeline.stages import stage_dir
from tests.conftest import FAKE, selfimprove, write_config

TOKEN = "hf_test_token"
REPO = "org/iter-data"
INTERNAL = ("_SUCCESS", "_manifest.json", "_progress.jsonl", "_fingerprint.json", "_rejects.parquet", ".lock")
CONFIGS = ("sft", "preference", "prompts")


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """A Hugging Face hub on 127.0.0.1 that records what was uploaded.

    repos: repo id -> {"type", "private", "branches": {branch: {path: bytes}}, "heads": {branch:
    commit oid}}; creates: every create-repo payload; commits: every commit as received; requests:
    (method, path, authorization) of every request but huggingface_hub's telemetry (its agent
    registry, fetched once a day); unknown: requests it has no answer for (a test fails on any).
    fail: action ("commit", ...) -> an HTTP status to answer it with, or "drop" to close the
    connection without an answer.
    """

    def __init__(self, token: str = TOKEN):
        self.token = token
        self.repos: dict[str, dict] = {}
        self.commits: list[dict] = []
        self.creates: list[dict] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.unknown: list[str] = []
        self.fail: dict[str, int | str] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                server.handle(self, "GET", b"")

            def do_POST(self):
                server.handle(self, "POST", self._body())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def seed(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> None:
        self.repos[repo_id] = {"type": "dataset", "private": private, "branches": {"main": dict(files)},
                               "heads": {"main": hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()}}

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][branch]

    # -- the API -------------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        path = urlsplit(h.path).path
        auth = h.headers.get("Authorization")
        if path == "/api/agent-harnesses":  # telemetry: "no registry here" is an answer it takes
            return h._send(404, {"error": "not here"})
        with self.lock:
            self.requests.append((method, path, auth))
            if path == "/api/whoami-v2" and method == "GET":
                if auth != f"Bearer {self.token}":
                    return h._send(401, {"error": "Invalid credentials in Authorization header"})
                return h._send(200, {"type": "user", "name": "tester", "auth": {"type": "access_token"}})
            if auth != f"Bearer {self.token}":
                return h._send(401, {"error": "Invalid credentials in Authorization header"})
            if path == "/api/validate-yaml" and method == "POST":
                return h._send(200, {"errors": [], "warnings": []})
            if path == "/api/repos/create" and method == "POST":
                return self.create(h, json.loads(body))
            parts = path.split("/")  # "", "api", "datasets", org, name, action, revision, ...
            if len(parts) >= 7 and parts[:3] == ["", "api", "datasets"]:
                repo_id, action, revision = f"{parts[3]}/{parts[4]}", parts[5], unquote(parts[6])
                repo = self.repos.get(repo_id)
                if action in self.fail:
                    if self.fail[action] == "drop":
                        h.close_connection = True
                        return None
                    return h._send(self.fail[action], {"error": "You don't have the rights to write here"})
                if repo is None:
                    return h._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                if action == "branch" and method == "POST":
                    if revision in repo["branches"]:
                        return h._send(409, {"error": f"Reference {revision} already exists"})
                    start = json.loads(body or b"{}").get("startingPoint") or "main"
                    repo["branches"][revision] = dict(repo["branches"][start])
                    repo["heads"][revision] = repo["heads"][start]
                    return h._send(200, {})
                files = repo["branches"].get(revision)
                if files is None:
                    return h._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
                if action == "revision" and method == "GET":  # repo_info, after a commit with nothing new
                    return h._send(200, {"id": repo_id, "sha": repo["heads"][revision], "private": repo["private"]})
                if action == "tree" and method == "GET":
                    return h._send(200, [{"type": "file", "path": p, "size": len(d), "oid": git_oid(d)}
                                         for p, d in sorted(files.items())])
                if action == "preupload" and method == "POST":
                    asked = json.loads(body)["files"]
                    return h._send(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                         "oid": git_oid(files[f["path"]]) if f["path"] in files else None} for f in asked]})
                if action == "commit" and method == "POST":
                    return self.commit(h, repo_id, revision, files, body)
            self.unknown.append(f"{method} {h.path}")
            return h._send(404, {"error": f"no such endpoint: {method} {path}"})

    def create(self, h, payload: dict) -> None:
        self.creates.append(payload)
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.url}/datasets/{repo_id}"
        if repo_id in self.repos:
            return h._send(409, {"error": "You already created this dataset repo", "url": url})
        self.repos[repo_id] = {"type": payload.get("type"), "private": payload.get("visibility") == "private",
                               "branches": {"main": {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"}},
                               "heads": {"main": hashlib.sha1(repo_id.encode()).hexdigest()}}
        return h._send(200, {"url": url})

    def commit(self, h, repo_id: str, revision: str, files: dict, body: bytes) -> None:
        assert h.headers.get("Content-Type") == "application/x-ndjson"
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        commit = {"repo": repo_id, "revision": revision, "summary": header["summary"],
                  "description": header.get("description", ""), "added": [], "deleted": [], "lfs": []}
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                assert value["encoding"] == "base64"
                files[value["path"]] = base64.b64decode(value["content"])
                commit["added"].append(value["path"])
            elif key == "deletedFile":
                del files[value["path"]]
                commit["deleted"].append(value["path"])
            else:  # lfsFile (never asked for), deletedFolder: not expected from a push
                commit["lfs" if key == "lfsFile" else "deleted"].append(value)
        self.commits.append(commit)
        oid = hashlib.sha1(body).hexdigest()
        self.repos[repo_id]["heads"][revision] = oid
        return h._send(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/datasets/{repo_id}/commit/{oid}"})


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def export_run(tmp_path_factory):
    """One fake-engine iteration, with several shards per config and split."""
    base = tmp_path_factory.mktemp("push")
    config = write_config(base / "config.yaml", {
        "run": {"dir": str(base / "run"), "problems_per_shard": 8},
        "task": {"name": "arithmetic", "arithmetic": {"count": 20}},
        "sample": {"engine": FAKE, "n": 4}, "verify": {"workers": 1},
        "export": {"validation_fraction": 0.3, "rows_per_shard": 5}})
    assert main(["run", "--config", str(config)]) == 0
    cfg = load_config(config)
    return {"config": config, "cfg": cfg, "dir": stage_dir(cfg, 1, "export")}


@pytest.fixture
def online(monkeypatch, tmp_path):
    """HF_ENDPOINT and HF_TOKEN set, offline mode off, no token file of the machine's."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    return monkeypatch


@pytest.fixture
def hub(online):
    with HubServer() as server:
        online.setenv("HF_ENDPOINT", server.url)
        yield server
    assert not server.unknown, f"requests the test hub has no answer for: {server.unknown}"


def push(config, *args) -> int:
    return main(["push", "--config", str(config), *args])


def published(export_dir: Path) -> dict[str, bytes]:
    """What a user of the data gets: every file of the export but the store's own."""
    return {f.name: f.read_bytes() for f in export_dir.iterdir()
            if f.is_file() and not f.name.startswith(("_", "."))}


# -- pushing ----------------------------------------------------------------------------------------
def test_push_uploads_every_config_the_card_and_config_never_the_store_files(export_run, hub, capsys, tmp_path):
    export_dir = export_run["dir"]
    for name in INTERNAL:
        assert (export_dir / name).exists(), f"the export should hold {name} for this test to mean something"
    expected = published(export_dir)
    shards = [name for name in expected if name.endswith(".parquet")]
    assert {s.split("-")[0] for s in shards} == set(CONFIGS) and len(shards) >= 10
    assert {"README.md", "config.yaml", "stats.json"} <= set(expected)

    assert push(export_run["config"], "--repo", REPO) == 0
    out = capsys.readouterr().out

    uploaded = {p: d for p, d in hub.files(REPO).items() if p != ".gitattributes"}
    assert uploaded == expected, "every shard, the card, config.yaml and stats.json, byte for byte, and nothing else"
    assert not any(p.startswith(("_", ".")) for p in hub.commits[0]["added"])
    assert not set(INTERNAL) & set(hub.files(REPO))
    assert hub.creates == [{"name": "iter-data", "organization": "org", "type": "dataset"}]  # not private
    assert hub.repos[REPO]["type"] == "dataset" and not hub.repos[REPO]["private"]
    # one commit on main, every file inline, named after the run, the iteration and the funnel
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["revision"] == "main" and not commit["lfs"] and not commit["deleted"]
    assert sorted(commit["added"]) == sorted(expected)
    stats = json.loads(expected["stats.json"])
    f = stats["funnel"]
    assert commit["summary"] == (f"selfimprove {export_run['cfg'].run.name} iteration 1: {f['exported']} of "
                                 f"{f['samples']} samples exported ({f['problems']} problems, {f['correct']} correct, "
                                 f"{f['kept']} kept)")
    assert f"sft {sum(stats['configs']['sft'].values())} (train" in commit["description"]
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)
    assert f"{hub.url}/datasets/{REPO}" in out and f"datasets.load_dataset('{REPO}')" in out

    # at the repository's root the card's `configs` load every config with the export's rows
    import datasets

    clone = tmp_path / "clone"
    clone.mkdir()
    for name, data in uploaded.items():
        (clone / name).write_bytes(data)
    for config in CONFIGS:
        ds = datasets.load_dataset(str(clone), config, cache_dir=str(tmp_path / "hf-cache"))
        for split in ds:
            on_disk = [r for p in sorted(export_dir.glob(f"{config}-{split}-*.parquet")) for r in pq.read_table(p).to_pylist()]
            assert ds[split].to_list() == on_disk and len(on_disk) == stats["configs"][config][split]


def test_push_to_an_existing_repo_on_a_branch_deletes_stale_shards_only(export_run, hub):
    """An earlier push with more shards: the card's `sft-train-*.parquet` would load its leftovers."""
    stale = "sft-train-00007-of-00009.parquet"
    hub.seed(REPO, {stale: b"old rows", "notes.md": b"a note of the owner's", "README.md": b"old card"})

    assert push(export_run["config"], "--repo", REPO, "--private", "--revision", "iter-1") == 0

    assert hub.creates[0]["visibility"] == "private"  # asked for; an existing repo keeps its own
    assert not hub.repos[REPO]["private"]
    assert hub.files(REPO, "main") == {stale: b"old rows", "notes.md": b"a note of the owner's", "README.md": b"old card"}
    branch = hub.files(REPO, "iter-1")
    assert stale not in branch and branch["notes.md"] == b"a note of the owner's"
    assert {p: d for p, d in branch.items() if p != "notes.md"} == published(export_run["dir"])
    assert [(c["revision"], c["deleted"]) for c in hub.commits] == [("iter-1", [stale])]


def test_pushing_the_same_export_again_changes_nothing(export_run, hub, capsys):
    assert push(export_run["config"], "--repo", REPO) == 0
    files, head = dict(hub.files(REPO)), hub.repos[REPO]["heads"]["main"]
    assert push(export_run["config"], "--repo", REPO) == 0
    assert len(hub.commits) == 1 and hub.files(REPO) == files  # huggingface_hub skips a commit of unchanged files
    assert capsys.readouterr().out.count(f"/commit/{head}") == 2


@pytest.mark.parametrize("fault, said", [
    (403, "push: org/iter-data: the hub refused while uploading (403 Forbidden: You don't have the rights to write "
          "here): the token (HF_TOKEN) needs write access to org; the commit was not made"),
    ("drop", "push: lost {url} while uploading (RemoteProtocolError: Server disconnected without sending a response.); "
             "the commit was not made: rerun the same command")])
def test_a_refused_or_broken_commit_is_told_and_leaves_the_repo_as_it_was(export_run, hub, capsys, fault, said):
    hub.fail["commit"] = fault
    assert push(export_run["config"], "--repo", REPO) == 1
    assert capsys.readouterr().err.splitlines()[0] == "selfimprove: " + said.format(url=hub.url)
    assert not hub.commits and set(hub.files(REPO)) == {".gitattributes"}


# -- refusing ---------------------------------------------------------------------------------------
def _copy(export_run, tmp_path) -> tuple[Path, Path]:
    """The export in a run directory of its own, and a config that points at it."""
    run = tmp_path / "run"
    shutil.copytree(export_run["dir"], run / "iter-1" / "export")
    data = {"run": {"dir": str(run)}, "task": {"name": "arithmetic", "arithmetic": {"count": 20}},
            "sample": {"engine": FAKE, "n": 4}}
    return write_config(tmp_path / "copy.yaml", data), run / "iter-1" / "export"


def _damage_none(d: Path) -> None:
    (d / "_SUCCESS").unlink()


def _damage_stray(d: Path) -> None:
    shutil.copy(d / "sft-train-00000-of-00004.parquet", d / "sft-train-00009-of-00010.parquet")


def _damage_shard(d: Path) -> None:
    shard = d / "prompts-train-00001-of-00003.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, why", [(_damage_none, "is not a finished export (no _SUCCESS)"),
                                         (_damage_stray, "is not in _manifest.json"),
                                         (_damage_shard, "does not match its checksum")])
def test_an_unfinished_or_damaged_export_is_refused_before_anything_is_sent(export_run, hub, tmp_path, capsys,
                                                                            damage, why):
    config, export_dir = _copy(export_run, tmp_path)
    assert push(config, "--repo", REPO) == 0  # the copy itself pushes
    hub.requests.clear()
    damage(export_dir)

    assert push(config, "--repo", REPO) == 1
    err = capsys.readouterr().err
    assert f"selfimprove: push: {export_dir}" in err and why in err
    assert "`selfimprove export --iter 1`" in err and "nothing was uploaded" in err
    assert hub.requests == [], "nothing is sent for an export that is not what it promises"


def test_a_missing_iteration_is_refused(export_run, hub, capsys):
    assert push(export_run["config"], "--repo", REPO, "--iter", "2") == 1
    err = capsys.readouterr().err
    assert f"{stage_dir(export_run['cfg'], 2, 'export')} is not a finished export" in err
    assert hub.requests == []


def test_token_problems_are_told_before_anything_is_uploaded(export_run, hub, capsys, online):
    online.delenv("HF_TOKEN")
    assert push(export_run["config"], "--repo", REPO) == 1
    assert "push: no Hugging Face token: set HF_TOKEN" in capsys.readouterr().err
    online.setenv("HF_TOKEN", "hf_wrong")
    assert push(export_run["config"], "--repo", REPO) == 1
    assert f"push: {hub.url} refused the token (401 Unauthorized)" in capsys.readouterr().err
    assert [path for _, path, _ in hub.requests] == ["/api/whoami-v2"] * 2 and not hub.repos


@pytest.mark.parametrize("repo", ["no-namespace", "a/b/c", "org/bad name"])
def test_a_bad_repo_id_is_a_usage_error(export_run, online, capsys, repo):
    online.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert push(export_run["config"], "--repo", repo) == 2
    assert f"--repo '{repo}'" in capsys.readouterr().err


# -- offline ----------------------------------------------------------------------------------------
def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: connection refused


@pytest.fixture
def silent_host():
    """A port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.mark.parametrize("where", ["closed port", "unknown host", "offline mode", "silent host"])
def test_an_unreachable_hub_fails_at_once_with_a_clear_message(export_run, online, capsys, silent_host, where):
    url = {"closed port": _closed_port(), "unknown host": "http://selfimprove-hub.invalid",
           "offline mode": "http://127.0.0.1:9", "silent host": silent_host}[where]
    online.setenv("HF_ENDPOINT", url)
    if where == "offline mode":
        online.setenv("HF_HUB_OFFLINE", "1")
    if where == "silent host":
        online.setattr(hub_module, "PROBE_TIMEOUT_S", 1.0)

    started = time.monotonic()
    assert push(export_run["config"], "--repo", REPO) == 1
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert elapsed < 5, f"{where}: took {elapsed:.1f} s to fail"
    assert f"selfimprove: push: cannot reach {url} (" in err and err.rstrip().endswith("nothing was uploaded")
    assert ("HF_HUB_OFFLINE" in err) == (where == "offline mode")


def test_offline_from_the_command_line(export_run):
    """As a user sees it: HF_HUB_OFFLINE=1, read by huggingface_hub when it is imported."""
    proc = selfimprove("push", "--config", export_run["config"], "--repo", REPO,
                       env={"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "", "HF_TOKEN": TOKEN}, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == ("selfimprove: push: cannot reach https://huggingface.co (offline mode: HF_HUB_OFFLINE "
                                   "is set): unset HF_HUB_OFFLINE, check the network or HF_ENDPOINT; nothing was uploaded")
