"""A small fake Hugging Face Hub for tests: stdlib `http.server` in a thread on 127.0.0.1.

It speaks the part of the Hub HTTP API that `huggingface_hub` 2.x uses for
`create_repo`, `create_commit`/`upload_folder` (preupload, LFS batch + PUT + verify, ndjson commit,
validate-yaml), `model_info`/`repo_info` (revision resolution), `list_repo_tree`, and
`hf_hub_download`/`snapshot_download` (HEAD/GET `/{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`,
`ETag`/`X-Linked-Etag`/`X-Linked-Size`, and a 302 `Location` to a CDN origin for LFS files).
Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) like the real Hub.
Model repos are keyed by their id ("user/name"); Space and dataset repos by "spaces/user/name" and
"datasets/user/name" (the prefix their git URLs carry), with the same routes under /api/spaces/... and
/spaces/...; a Space keeps its SDK (`repo.sdk`) and the variables set through the API (`repo.variables`).

Repos live in memory with real-looking 40-hex commit shas; every request (`hub.requests`) and every
uploaded file (`hub.uploads`) is recorded. Faults: `hub.go_offline()` closes the listening socket
(connections refused), `hub.go_offline("503")` answers 503 to everything; `hub.truncate[path] = n`
serves only the first n bytes of a file (the GET's own Content-Length says n, so the client sees a
short file, not a dropped connection); `hub.corrupt.add(path)` flips a byte, keeping the length.

Use with HF_ENDPOINT=hub.url and HF_HUB_DISABLE_XET=1 (the fake has no Xet storage).
The CDN origin is `http://localhost:{port}` (a different origin from `http://127.0.0.1:{port}`), so
`huggingface_hub` treats it like the real Hub's CDN: it does not follow the HEAD redirect there and
does not send the Authorization header to it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
LFS_BATCH = ["info", "lfs", "objects", "batch"]  # /{repo}.git/info/lfs/objects/batch
BACKGROUND_PATHS = {"/api/agent-harnesses"}  # fetched by huggingface_hub when it builds its user agent
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")
REPO_TYPES = {"models": "model", "spaces": "space", "datasets": "dataset"}


def repo_key(repo_type: str | None, repo_id: str) -> str:
    """How the fake keys a repo: "user/name" for models, "spaces/user/name" for Spaces, like git URLs."""
    return repo_id if repo_type in (None, "model") else f"{repo_type}s/{repo_id}"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(data)}\nsize {len(data)}\n").encode()


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, bytes]          # path -> content
    lfs: set[str] = field(default_factory=set)

    def oid(self, path: str) -> str:
        """The ETag the Hub gives a file: sha256 for LFS files, the git blob sha1 otherwise."""
        data = self.files[path]
        return sha256(data) if path in self.lfs else git_blob_sha1(data)


@dataclass
class Repo:
    repo_id: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    sdk: str | None = None                                   # Spaces: the SDK given at creation
    variables: dict[str, str] = field(default_factory=dict)  # Spaces: variables set through the API

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and revision in self.commits:
            sha = revision
        return self.commits.get(sha) if sha else None


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class FakeHub:
    """`with FakeHub() as hub:` ... `hub.url` is the endpoint; `hub.requests`, `hub.uploads` are logs."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}      # sha256 -> content uploaded through the LFS endpoint
        self.requests: list[dict] = []
        self.uploads: list[dict] = []              # one entry per file committed: repo, commit, path, mode, data
        self.truncate: dict[str, int] = {}         # repo path -> bytes served
        self.corrupt: set[str] = set()             # repo paths served with one byte flipped
        self.offline: str | None = None            # None, "refuse" or "503"
        self.background_requests: list[dict] = []  # BACKGROUND_PATHS: not in `requests`
        self.errors: list[str] = []                # exceptions raised inside the fake (bugs), for asserts
        self.require_token_for_writes = True
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        """Another origin on the same server, like the Hub's CDN; the Hub origin if localhost is not 127.0.0.1."""
        try:
            cdn_host = "localhost" if socket.gethostbyname("localhost") == "127.0.0.1" else "127.0.0.1"
        except OSError:
            cdn_host = "127.0.0.1"
        return f"http://{cdn_host}:{self.port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass
        Handler.hub = hub
        server = ThreadingHTTPServer(("127.0.0.1", self.port or 0), Handler)
        server.daemon_threads = True
        self._server, self.port = server, server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def go_offline(self, how: str = "refuse") -> None:
        """"refuse": close the listening socket (connection refused); "503": answer 503 Service Unavailable."""
        if how == "refuse":
            self.stop()
        elif how != "503":
            raise ValueError(how)
        self.offline = how

    def go_online(self) -> None:
        if self.offline == "refuse":
            for _ in range(50):  # the port was ours a moment ago; retry briefly if the OS holds it
                try:
                    self.start()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise RuntimeError(f"could not rebind 127.0.0.1:{self.port}")
        self.offline = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ state helpers for tests

    def create_repo(self, repo_id: str) -> Repo:
        with self._lock:
            if repo_id in self.repos:
                return self.repos[repo_id]
            repo = Repo(repo_id)
            self.repos[repo_id] = repo
            self._commit(repo, "main", "initial commit", {".gitattributes": GITATTRIBUTES}, set())
            return repo

    def add_files(self, repo_id: str, files: dict[str, bytes], message: str = "add files",
                  branch: str = "main") -> str:
        """Commit `files` straight into the repo (no HTTP); returns the new commit sha."""
        with self._lock:
            repo = self.create_repo(repo_id)
            return self._commit(repo, branch, message, files, {p for p in files if p.endswith(LFS_SUFFIXES)}).sha

    def head(self, repo_id: str, branch: str = "main") -> str:
        return self.repos[repo_id].branches[branch]

    def file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return self.repos[repo_id].resolve(revision).files[path]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].resolve(revision).files)

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def paths_requested(self, method: str | None = None) -> list[str]:
        return [r["path"] for r in self.requests if method is None or r["method"] == method]

    def _commit(self, repo: Repo, branch: str, message: str, changes: dict[str, bytes | None],
                lfs: set[str]) -> Commit:
        parent = repo.commits.get(repo.branches.get(branch, ""))
        files = dict(parent.files) if parent else {}
        lfs_paths = set(parent.lfs) if parent else set()
        for path, data in changes.items():
            if data is None:
                files.pop(path, None)
                lfs_paths.discard(path)
            else:
                files[path] = data
                (lfs_paths.add if path in lfs else lfs_paths.discard)(path)
        tree = "".join(f"{p}\0{git_blob_sha1(d)}\n" for p, d in sorted(files.items()))
        stamp = f"{parent.sha if parent else ''}\n{tree}\n{message}\n{time.time_ns()}\n{len(repo.commits)}"
        sha = hashlib.sha1(stamp.encode()).hexdigest()
        commit = Commit(sha, parent.sha if parent else None, message, files, lfs_paths)
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        return commit

    # ------------------------------------------------------------ API

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
        return repo

    def _rev(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _tree_entry(self, commit: Commit, path: str) -> dict:
        data = commit.files[path]
        if path in commit.lfs:
            pointer = lfs_pointer(data)
            return {"type": "file", "oid": git_blob_sha1(pointer), "size": len(data), "path": path,
                    "lfs": {"oid": sha256(data), "size": len(data), "pointerSize": len(pointer)}}
        return {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}

    def _served_bytes(self, path: str, data: bytes) -> bytes:
        if path in self.corrupt and data:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        if path in self.truncate:
            data = data[: self.truncate[path]]
        return data


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # -------------------------------------------------------- plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json", length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.close_connection = True

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _handle(self) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        raw_path = split.path
        body = self._body() if self.command in ("POST", "PUT") else b""
        host = (self.headers.get("Host") or "").split(":")[0]
        entry = {"method": self.command, "path": path, "query": query, "host": host,
                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body_size": len(body)}
        if path in BACKGROUND_PATHS:  # huggingface_hub's own once-a-day fetches, not part of any API call
            hub.background_requests.append(entry)
            return self._json(404, {"error": "not served by the fake hub"})
        with hub._lock:
            hub.requests.append(entry)
        if hub.offline == "503":
            return self._json(503, {"error": "Service Unavailable"})
        try:
            with hub._lock:
                self._route(raw_path, path, query, body, host)
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json(e.status, {"error": e.message}, headers)
        except Exception as e:  # a bug in the fake: answer 400 (not retried by the client) and keep it for asserts
            hub.errors.append(f"{self.command} {path}: {type(e).__name__}: {e}")
            self._json(400, {"error": f"fake hub error: {e}"})

    do_GET = do_HEAD = do_POST = do_PUT = _handle

    # -------------------------------------------------------- routes

    def _route(self, raw_path: str, path: str, query: dict, body: bytes, host: str) -> None:
        m = self.command
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]

        if m == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if m == "POST" and path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        if path.startswith("/__lfs__/"):
            return self._lfs_object(parts[1], body)
        if path.startswith("/__cdn__/"):
            return self._cdn(parts[1])
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in REPO_TYPES:
            repo_id = repo_key(REPO_TYPES[parts[1]], f"{parts[2]}/{parts[3]}")
            rest = parts[4:]
            if m == "POST" and rest == ["variables"] and parts[1] == "spaces":
                return self._space_variable(repo_id, json.loads(body or b"{}"))
            if m == "GET" and not rest:
                return self._model_info(repo_id, "main", query)
            if m == "GET" and rest[0] == "revision" and len(rest) == 2:
                return self._model_info(repo_id, rest[1], query)
            if m == "GET" and rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
            if m == "POST" and rest[0] == "preupload" and len(rest) == 2:
                return self._preupload(repo_id, rest[1], json.loads(body))
            if m == "POST" and rest[0] == "commit" and len(rest) == 2:
                return self._commit_api(repo_id, rest[1], body)
        prefix = parts[:1] if parts and parts[0] in REPO_TYPES and parts[0] != "models" else []
        rel = parts[len(prefix):]
        if m == "POST" and len(rel) == 6 and rel[1].endswith(".git") and rel[2:] == LFS_BATCH:
            return self._lfs_batch("/".join(prefix + [rel[0], rel[1][:-4]]), json.loads(body))
        if m in ("GET", "HEAD") and len(rel) >= 5 and rel[2] == "resolve":
            return self._resolve("/".join(prefix + rel[:2]), rel[3], "/".join(rel[4:]))
        raise HubError(404, None, f"no route for {m} {path}")

    def _check_write(self) -> None:
        if self.hub.require_token_for_writes and not self.headers.get("Authorization", "").startswith("Bearer "):
            raise HubError(401, None, "Invalid credentials in Authorization header")

    def _create_repo(self, payload: dict) -> None:
        self._check_write()
        name = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        repo_type = payload.get("type") or "model"
        if repo_type == "space" and not payload.get("sdk"):
            raise HubError(400, None, "a Space needs an sdk")
        repo_id = repo_key(repo_type, name)
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._json(409, {"error": f"You already created this {repo_type} repo", "url": url})
        repo = self.hub.create_repo(repo_id)
        repo.sdk = payload.get("sdk")
        repo.variables.update({v["key"]: v["value"] for v in payload.get("variables") or []})
        self._json(200, {"url": url, "name": name, "id": name})

    def _space_variable(self, repo_id: str, payload: dict) -> None:
        self._check_write()
        repo = self.hub._repo(repo_id)
        repo.variables[payload["key"]] = payload["value"]
        self._json(200, {k: {"value": v} for k, v in repo.variables.items()})

    def _model_info(self, repo_id: str, revision: str, query: dict) -> None:
        repo = self.hub._repo(repo_id)
        commit = self.hub._rev(repo, revision)
        self._json(200, {"id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": commit.sha,
                         "private": False, "disabled": False, "gated": False, "tags": [],
                         "siblings": [{"rfilename": p} for p in sorted(commit.files)],
                         "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"})

    def _tree(self, repo_id: str, revision: str, prefix: str, query: dict) -> None:
        repo = self.hub._repo(repo_id)
        commit = self.hub._rev(repo, revision)
        recursive = query.get("recursive", ["False"])[0].lower() in ("1", "true")
        prefix = prefix.strip("/")
        base = f"{prefix}/" if prefix else ""
        entries, dirs = [], set()
        for p in sorted(commit.files):
            if not p.startswith(base):
                continue
            rel = p[len(base):]
            if "/" in rel:
                segments = rel.split("/")
                for k in range(1, len(segments) if recursive else 2):
                    dirs.add(base + "/".join(segments[:k]))
                if not recursive:
                    continue
            entries.append(self.hub._tree_entry(commit, p))
        if prefix and not entries and not dirs:
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist on {revision}",
                           {"X-Repo-Commit": commit.sha})
        folders = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                   for d in sorted(dirs)]
        self._json(200, folders + entries)

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> None:
        self._check_write()
        repo = self.hub._repo(repo_id)
        commit = repo.resolve(revision)
        files = []
        for f in payload["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10 * 1024 * 1024
            remote = commit.oid(f["path"]) if commit and f["path"] in commit.files else None
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": remote})
        self._json(200, {"files": files, "commitOid": commit.sha if commit else None})

    def _lfs_batch(self, repo_id: str, payload: dict) -> None:
        self._check_write()
        self.hub._repo(repo_id)
        objects = []
        for obj in payload["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_store:
                item["actions"] = {"upload": {"href": f"{self.hub.url}/__lfs__/{obj['oid']}", "header": {}},
                                   "verify": {"href": f"{self.hub.url}/__lfs__/verify", "header": {}}}
            objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_object(self, oid: str, body: bytes) -> None:
        if self.command == "PUT":
            if sha256(body) != oid:
                raise HubError(400, None, f"sha256 of the uploaded body does not match {oid}")
            self.hub.lfs_store[oid] = body
            return self._send(200, b"", {"ETag": f'"{oid}"'}, content_type="text/plain")
        if not (self.command == "POST" and oid == "verify"):
            raise HubError(405, None, f"{self.command} not allowed here")
        payload = json.loads(body or b"{}")
        stored = self.hub.lfs_store.get(payload.get("oid"))
        if stored is None or len(stored) != payload.get("size"):
            raise HubError(404, None, f"LFS object {payload.get('oid')} not uploaded")
        self._json(200, {"success": True})

    def _commit_api(self, repo_id: str, revision: str, body: bytes) -> None:
        self._check_write()
        repo = self.hub._repo(repo_id)
        if revision not in repo.branches:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        parent = header.get("parentCommit")
        if parent and parent != repo.branches[revision]:
            raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
        changes: dict[str, bytes | None] = {}
        lfs: set[str] = set()
        modes: dict[str, str] = {}
        for item in lines:
            key, v = item["key"], item["value"]
            if key == "file":
                if v.get("encoding", "base64") != "base64":
                    raise HubError(400, None, f"unsupported encoding {v.get('encoding')}")
                changes[v["path"]], modes[v["path"]] = base64.b64decode(v["content"]), "regular"
            elif key == "lfsFile":
                if v["oid"] not in self.hub.lfs_store:
                    raise HubError(422, None, f"LFS file {v['path']} ({v['oid']}) was never uploaded")
                changes[v["path"]], modes[v["path"]] = self.hub.lfs_store[v["oid"]], "lfs"
                lfs.add(v["path"])
            elif key == "deletedFile":
                changes[v["path"]] = None
            elif key != "header":
                raise HubError(400, None, f"unsupported commit operation {key}")
        commit = self.hub._commit(repo, revision, header.get("summary", ""), changes, lfs)
        for p, data in changes.items():
            if data is not None:
                self.hub.uploads.append({"repo": repo_id, "commit": commit.sha, "path": p, "mode": modes[p],
                                         "data": data})
        self._json(200, {"success": True, "commitOid": commit.sha,
                         "commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit.sha}", "pullRequestUrl": None})

    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        repo = self.hub._repo(repo_id)
        commit = self.hub._rev(repo, revision)
        if filename not in commit.files:
            raise HubError(404, "EntryNotFound", f"{filename} does not exist on {revision}",
                           {"X-Repo-Commit": commit.sha})
        data = commit.files[filename]
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if filename in commit.lfs:
            oid = sha256(data)
            headers |= {"X-Linked-Etag": f'"{oid}"', "X-Linked-Size": str(len(data)),
                        "ETag": f'"{git_blob_sha1(lfs_pointer(data))}"',
                        "Location": f"{self.hub.cdn_url}/__cdn__/{oid}?path={quote(filename)}&commit={commit.sha}"}
            return self._send(302, b"", headers, content_type="text/plain")
        served = self.hub._served_bytes(filename, data) if self.command == "GET" else data
        headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self._send(200, served, headers, content_type="application/octet-stream")

    def _cdn(self, oid: str) -> None:
        data = self.hub.lfs_store.get(oid)
        query = parse_qs(urlsplit(self.path).query)
        path = query.get("path", [""])[0]
        if data is None:  # files added with add_files() go straight into commits: look them up there
            for repo in self.hub.repos.values():
                for c in repo.commits.values():
                    for p, d in c.files.items():
                        if p in c.lfs and sha256(d) == oid:
                            data = d
        if data is None:
            raise HubError(404, None, "NoSuchKey")
        served = self.hub._served_bytes(path, data) if self.command == "GET" else data
        # Hub headers too, so that a client following the redirect on the same origin still gets them
        headers = {"ETag": f'"{oid}"', "X-Linked-Etag": f'"{oid}"', "X-Linked-Size": str(len(data)),
                   "X-Repo-Commit": query.get("commit", [""])[0]}
        self._send(200, served, headers, content_type="application/octet-stream")
