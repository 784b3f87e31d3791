"""A fake Hugging Face Hub on loopback, speaking the endpoints ``huggingface_hub`` uses to publish.

Only 127.0.0.1, in a background thread of the test process. Endpoints (huggingface_hub 2.x):

* ``POST /api/repos/create``                       create a repo (409 if it exists)
* ``POST /api/validate-yaml``                      README metadata check (before hashing files)
* ``POST /api/models/{repo}/branch/{branch}``      create a branch from main (409 if it exists)
* ``POST /api/models/{repo}/preupload/{rev}``      upload modes: always ``regular`` (content inline)
* ``POST /api/models/{repo}/commit/{rev}``         NDJSON commit: header line, then base64 files
* ``GET  /api/models/{repo}[/revision/{rev}]``     repo info (sha, siblings)
* ``GET|HEAD /{repo}/resolve/{rev}/{path}``        file download; missing files (the model-card
  lookup of README.md) get 404 with ``X-Error-Code: EntryNotFound``
* ``GET  /api/agent-harnesses``                    huggingface_hub's best-effort agent registry (empty)

Every request is recorded (``server.requests``). Writes need ``Authorization: Bearer <token>`` with
a token in ``server.tokens``, else 401. Failures are injected per endpoint kind with
:meth:`HubState.fail` (status, how many times; ``None`` = until cleared).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

ENDPOINT_KINDS = ("create", "validate-yaml", "branch", "preupload", "commit", "info", "resolve", "agent-harnesses")


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    heads: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})
    commits: list[dict] = field(default_factory=list)


class HubState:
    def __init__(self, tokens=("hf_test_token",)):
        self.lock = threading.Lock()
        self.tokens = set(tokens)
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str, int]] = []  # (method, kind, path, status)
        self._failures: dict[str, list] = {}

    def fail(self, kind: str, status: int, times: int | None = None) -> None:
        """Answer the next ``times`` requests of ``kind`` (all of them if None) with ``status``."""
        assert kind in ENDPOINT_KINDS or kind == "any", kind
        with self.lock:
            self._failures[kind] = [status, times]

    def clear_failures(self) -> None:
        with self.lock:
            self._failures.clear()

    def _take_failure(self, kind: str) -> int | None:
        with self.lock:
            for key in (kind, "any"):
                entry = self._failures.get(key)
                if entry is None:
                    continue
                status, times = entry
                if times is not None:
                    if times <= 0:
                        continue
                    entry[1] = times - 1
                return status
        return None

    def count(self, kind: str) -> int:
        return sum(1 for _, k, _, _ in self.requests if k == kind)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].branches[revision])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    # --------------------------------------------------------------- plumbing

    @property
    def state(self) -> HubState:
        return self.server.state  # type: ignore[attr-defined]

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None, head=False):
        body = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self._status = status

    def _error(self, status: int, message: str, code: str | None = None, head=False):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers=headers, head=head)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[len("Bearer "):] in self.state.tokens

    def _route(self, method: str):
        path = urlsplit(self.path).path
        routes = [
            ("create", "POST", r"/api/repos/create"),
            ("validate-yaml", "POST", r"/api/validate-yaml"),
            ("agent-harnesses", "GET", r"/api/agent-harnesses"),
            ("branch", "POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>.+)"),
            ("preupload", "POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>.+)"),
            ("commit", "POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>.+)"),
            ("info", "GET", r"/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>.+))?"),
            ("resolve", "GET", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)"),
        ]
        for kind, verb, pattern in routes:
            if method in (verb, "HEAD" if verb == "GET" else verb) and (m := re.fullmatch(pattern, path)):
                return kind, {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
        return "unknown", {}

    def _handle(self, method: str):
        self._status = 0
        kind, args = self._route(method)
        body = self._body() if method in ("POST", "PUT") else b""
        try:
            failure = self.state._take_failure(kind)
            if kind == "unknown":
                self._error(404, f"unknown endpoint {method} {self.path}")
            elif failure is not None:
                self._error(failure, f"injected failure {failure}")
            else:
                getattr(self, "do_" + kind.replace("-", "_"))(args, body, head=(method == "HEAD"))
        except Exception as err:  # noqa: BLE001 - a bug in the fake must show as a 500, not a hang
            if not self._status:
                self._error(500, f"fake hub error: {err!r}")
        finally:
            with self.state.lock:
                self.state.requests.append((method, kind, self.path, self._status))

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    # --------------------------------------------------------------- endpoints

    def _repo(self, repo_id: str, rev: str | None = None, head=False):
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound", head=head)
            return None
        if rev is not None and rev not in repo.branches:
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound", head=head)
            return None
        return repo

    def do_create(self, args, body, head=False):
        if not self._authorized():
            return self._error(401, "Invalid username or password.")
        data = json.loads(body or b"{}")
        repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
        url = f"http://{self.headers['Host']}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:  # the Hub's 409 carries the repo url too
                return self._send(409, {"error": "You already created this model repo", "url": url},
                                  headers={"X-Error-Code": "RepoExists"})
            self.state.repos[repo_id] = Repo(private=data.get("visibility") == "private" or bool(data.get("private")))
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def do_validate_yaml(self, args, body, head=False):
        content = json.loads(body or b"{}").get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, flags=re.DOTALL)
        if not match:
            return self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            meta = yaml.safe_load(match.group(1))
            assert isinstance(meta, dict)
        except Exception as err:  # noqa: BLE001
            return self._send(400, {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []})
        self._send(200, {"errors": [], "warnings": []})

    def do_agent_harnesses(self, args, body, head=False):
        self._send(200, {"standardEnvVars": [], "harnesses": {}}, head=head)

    def do_branch(self, args, body, head=False):
        if not self._authorized():
            return self._error(401, "Invalid username or password.")
        repo = self._repo(args["repo"])
        if repo is None:
            return None
        with self.state.lock:
            if args["rev"] in repo.branches:
                return self._error(409, "Reference already exists", "RevisionExists")
            repo.branches[args["rev"]] = dict(repo.branches["main"])
            repo.heads[args["rev"]] = repo.heads["main"]
        self._send(200, {})

    def do_preupload(self, args, body, head=False):
        if not self._authorized():
            return self._error(401, "Invalid username or password.")
        repo = self._repo(args["repo"], args["rev"])
        if repo is None:
            return None
        files = repo.branches[args["rev"]]
        out = []
        for item in json.loads(body)["files"]:
            existing = files.get(item["path"])
            out.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing) if existing is not None else None,
                }
            )
        self._send(200, {"files": out, "commitOid": repo.heads[args["rev"]]})

    def do_commit(self, args, body, head=False):
        if not self._authorized():
            return self._error(401, "Invalid username or password.")
        repo = self._repo(args["repo"], args["rev"])
        if repo is None:
            return None
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "commit payload must start with a header line")
        changes: dict[str, bytes | None] = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                if value.get("encoding") != "base64":
                    return self._error(400, "only base64 file content is supported")
                changes[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                changes[value["path"]] = None
            else:  # lfsFile / deletedFolder: this fake never asks for LFS
                return self._error(400, f"unsupported commit operation {line['key']!r}")
        with self.state.lock:
            files = repo.branches[args["rev"]]
            for path, content in changes.items():
                if content is None:
                    files.pop(path, None)
                else:
                    files[path] = content
            oid = hashlib.sha1(f"{args['rev']}:{len(repo.commits)}:{sorted(changes)}".encode()).hexdigest()
            repo.heads[args["rev"]] = oid
            repo.commits.append({"revision": args["rev"], "summary": lines[0]["value"].get("summary"), "oid": oid,
                                 "paths": sorted(changes)})
        url = f"http://{self.headers['Host']}/{args['repo']}/commit/{oid}"
        self._send(200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None})

    def do_info(self, args, body, head=False):
        rev = args.get("rev", "main")
        repo = self._repo(args["repo"], rev, head=head)
        if repo is None:
            return None
        siblings = [{"rfilename": p} for p in sorted(repo.branches[rev])]
        self._send(
            200,
            {"id": args["repo"], "modelId": args["repo"], "sha": repo.heads[rev], "private": repo.private,
             "siblings": siblings, "tags": [], "downloads": 0, "likes": 0},
            head=head,
        )

    def do_resolve(self, args, body, head=False):
        repo = self._repo(args["repo"], args["rev"], head=head)
        if repo is None:
            return None
        content = repo.branches[args["rev"]].get(args["file"])
        if content is None:
            return self._error(404, "Entry not found", "EntryNotFound", head=head)
        headers = {"X-Repo-Commit": repo.heads[args["rev"]], "ETag": f'"{git_blob_oid(content)}"'}
        self._send(200, raw=content, headers=headers, head=head)


class FakeHub:
    """``with FakeHub() as hub: ... hub.url ...`` -- a fake Hub on ``http://127.0.0.1:<port>``."""

    def __init__(self, tokens=("hf_test_token",)):
        self.state = HubState(tokens)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
