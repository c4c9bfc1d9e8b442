"""A hub-compatible HTTP server on loopback, for driving the real `huggingface_hub` client in tests.

Only the endpoints huggingface_hub 2.x uses to read model repos are implemented:

- `GET /api/models/{org}/{name}` and `GET /api/models/{org}/{name}/revision/{rev}`: repo info
  (`?blobs=true` adds `size` and `blobId` to each sibling);
- `GET /api/models/{org}/{name}/tree/{rev}[/{dir}]` (`?recursive=true`): one unpaginated page;
- `HEAD` and `GET /{org}/{name}/resolve/{rev}/{path}`: file metadata and content, `Range` included.

A repo's commit sha is derived from its file contents, and the only revisions are `main` and that
sha. Every file is hashed on every request, so keep fixture repos small.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self, cast
from urllib.parse import parse_qs, unquote, urlsplit


class HubRequest(NamedTuple):
    """One request the fake hub received: method, unquoted URL path without query, Range header."""

    method: str
    path: str
    range: str | None


class _File(NamedTuple):
    size: int
    sha256: str
    git_oid: str


class _Repo(NamedTuple):
    commit: str
    files: dict[str, _File]


def _scan(repo_id: str, folder: Path) -> _Repo:
    files: dict[str, _File] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        git_oid = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
        files[path.relative_to(folder).as_posix()] = _File(
            len(data), hashlib.sha256(data).hexdigest(), git_oid
        )
    state = json.dumps([repo_id, [(name, f.sha256) for name, f in files.items()]])
    return _Repo(hashlib.sha1(state.encode(), usedforsecurity=False).hexdigest(), files)


def _byte_range(header: str | None, size: int) -> tuple[int, int, bool] | None:
    """(first, last, partial) to serve for a `Range` header, or None if it cannot be satisfied."""
    spec = (header or "").removeprefix("bytes=").strip()
    first, _, last = spec.partition("-")
    if (
        header is None
        or spec == header
        or "," in spec
        or "-" not in spec
        or not (first + last).isdigit()
    ):
        return (0, size - 1, False)  # absent or unsupported: serve the whole file, like the hub
    if not first:
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    return (start, end, True) if start <= end and start < size else None


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() joins every handler thread
    hub: FakeHub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after stop()
    head = False  # answering a HEAD: headers only

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_GET(self) -> None:
        self._handle(head=False)

    def _handle(self, *, head: bool) -> None:
        hub = cast(_Server, self.server).hub
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.strip("/").split("/")]
        hub._record(HubRequest(self.command, "/" + "/".join(segments), self.headers.get("Range")))
        self.head = head
        auth = self.headers.get("Authorization")
        if hub.token is not None and auth != f"Bearer {hub.token}":
            if auth is None:  # what the hub says for a private repo and an anonymous caller
                self._error(401, "Invalid username or password.", code="RepoNotFound")
            else:
                self._error(401, "Invalid credentials in Authorization header")
            return
        query = {k: v[-1].lower() for k, v in parse_qs(url.query).items()}
        if any(s in ("", ".", "..") for s in segments):
            self._error(404, "Not found")
        elif segments[:2] == ["api", "models"] and len(segments) >= 4:
            repo_id, rest = "/".join(segments[2:4]), segments[4:]
            if not rest or (len(rest) == 2 and rest[0] == "revision"):
                if (repo := self._repo(hub, repo_id, rest[1] if rest else "main")) is not None:
                    self._info(repo_id, repo, blobs=query.get("blobs") in ("1", "true"))
            elif len(rest) >= 2 and rest[0] == "tree":
                if (repo := self._repo(hub, repo_id, rest[1])) is not None:
                    folder = "/".join(rest[2:])
                    self._tree(repo, folder, recursive=query.get("recursive") == "true")
            else:
                self._error(404, "Not found")
        elif len(segments) >= 5 and segments[2] == "resolve":
            repo_id = "/".join(segments[:2])
            if (repo := self._repo(hub, repo_id, segments[3])) is not None:
                self._resolve(hub.root / repo_id, repo, "/".join(segments[4:]))
        else:
            self._error(404, "Not found")

    def _repo(self, hub: FakeHub, repo_id: str, revision: str) -> _Repo | None:
        """The repo at `revision`, or None once the request got the hub's error for it."""
        if not (hub.root / repo_id).is_dir():
            self._error(404, "Repository not found", code="RepoNotFound")
            return None
        repo = _scan(repo_id, hub.root / repo_id)
        if revision not in ("main", repo.commit):
            self._error(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
            return None
        return repo

    def _info(self, repo_id: str, repo: _Repo, *, blobs: bool) -> None:
        siblings = [
            {"rfilename": name, **({"size": f.size, "blobId": f.git_oid} if blobs else {})}
            for name, f in repo.files.items()
        ]
        self._json(
            {
                "_id": repo.commit[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": repo.commit,
                "private": False,
                "gated": False,
                "disabled": False,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _tree(self, repo: _Repo, folder: str, *, recursive: bool) -> None:
        prefix = f"{folder}/" if folder else ""
        if folder and not any(name.startswith(prefix) for name in repo.files):
            self._error(404, f"{folder} does not exist", code="EntryNotFound", commit=repo.commit)
            return
        entries: dict[str, dict[str, object]] = {}
        for name, f in repo.files.items():
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                path = prefix + "/".join(parts[:depth])
                oid = hashlib.sha1(path.encode(), usedforsecurity=False).hexdigest()
                entries.setdefault(path, {"type": "directory", "oid": oid, "size": 0, "path": path})
            if recursive or len(parts) == 1:
                entries[name] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": name}
        self._json(sorted(entries.values(), key=lambda e: str(e["path"])))

    def _resolve(self, folder: Path, repo: _Repo, name: str) -> None:
        entry = repo.files.get(name)
        if entry is None:
            self._error(404, "Entry not found", code="EntryNotFound", commit=repo.commit)
            return
        span = _byte_range(self.headers.get("Range"), entry.size)
        if span is None:
            extra = {"Content-Range": f"bytes */{entry.size}"}
            self._error(416, "Range Not Satisfiable", extra=extra)
            return
        start, end, partial = span
        self.send_response(206 if partial else 200)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{entry.sha256}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        self.end_headers()
        if not self.head:
            with (folder / name).open("rb") as fh:
                fh.seek(start)
                self.wfile.write(fh.read(end - start + 1))

    def _json(self, value: object) -> None:
        body = json.dumps(value).encode()
        self._send(200, body, {"Content-Type": "application/json"})

    def _error(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        commit: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code is not None:
            headers["X-Error-Code"] = code
        if commit is not None:
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if not self.head:
            self.wfile.write(body)


class FakeHub:
    """Serves each `<root>/<org>/<name>/` folder as a model repo on 127.0.0.1 while in a `with`."""

    def __init__(self, root: Path | str, *, token: str | None = None) -> None:
        """Serve `root`; with `token`, every request must carry `Authorization: Bearer <token>`."""
        self.root = Path(root)
        self.token = token
        self._lock = threading.Lock()
        self._requests: list[HubRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint for huggingface_hub, like `http://127.0.0.1:PORT`; only while serving."""
        if self._server is None:
            raise RuntimeError("FakeHub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[HubRequest]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the requests received so far."""
        with self._lock:
            self._requests.clear()

    def _record(self, request: HubRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def __enter__(self) -> Self:
        """Start serving on a free loopback port in a background thread."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.hub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-hub",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving, wait for in-flight requests, and release the port."""
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._server.server_close()
        self._server = self._thread = None
