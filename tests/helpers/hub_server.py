"""A Hugging Face Hub stand-in on loopback: serves local folders as model repositories through
the few endpoints `huggingface_hub.snapshot_download` calls (point HF_ENDPOINT at `url`):

    GET  /api/models/{repo}/revision/{rev}       repo info: the commit sha and the file list
    GET  /api/models/{repo}/tree/{rev}[/{path}]  the files, with sizes, blob ids, LFS sha256
    HEAD /{repo}/resolve/{rev}/{file}            X-Repo-Commit, ETag (X-Linked-* for LFS)
    GET  /{repo}/resolve/{rev}/{file}            the bytes

Revisions: "main", any name given in `tags`, and the commit sha itself (made from the files'
contents). Unknown repositories and revisions get the hub's 404 with X-Error-Code."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".onnx", ".bin")  # stored with git LFS on the hub


class Repo:
    def __init__(self, folder: Path, tags: tuple[str, ...] = ()) -> None:
        self.files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        digest = hashlib.sha1()
        for name, data in self.files.items():
            digest.update(name.encode() + hashlib.sha1(data).digest())
        self.sha = digest.hexdigest()
        self.revisions = {"main", self.sha, *tags}

    def entry(self, name: str) -> dict:
        data = self.files[name]
        entry = {"type": "file", "path": name, "size": len(data),
                 "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                            "pointerSize": 134}
        return entry


class HubServer:
    """`with HubServer({"owner/name": folder}) as hub:` ... hub.url, hub.requests."""

    def __init__(self, repos: dict[str, Path], tags: tuple[str, ...] = ()) -> None:
        self.repos = {name: Repo(folder, tags) for name, folder in repos.items()}
        self.requests: list[tuple[str, str]] = []
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append((self.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            return self._api("/".join(parts[2:4]), parts[4], parts[5], head)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
        return self._error(404, "EntryNotFound", "no such endpoint")

    def _repo(self, name: str, revision: str) -> Repo | None:
        repo = self.hub.repos.get(name)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {name}")
        elif revision not in repo.revisions:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            repo = None
        return repo

    def _api(self, name: str, kind: str, revision: str, head: bool) -> None:
        repo = self._repo(name, revision)
        if repo is None:
            return
        if kind == "revision":
            body = {"id": name, "modelId": name, "sha": repo.sha, "private": False,
                    "siblings": [{"rfilename": f} for f in repo.files], "tags": [],
                    "lastModified": "2026-01-01T00:00:00.000Z"}
        else:
            body = [repo.entry(f) for f in repo.files]
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

    def _file(self, name: str, revision: str, file: str, head: bool) -> None:
        repo = self._repo(name, revision)
        if repo is None:
            return
        if file not in repo.files:
            return self._error(404, "EntryNotFound", f"{file} not in {name}")
        entry, data = repo.entry(file), repo.files[file]
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{entry["oid"]}"',
                   "Content-Type": "application/octet-stream"}
        if "lfs" in entry:
            headers |= {"X-Linked-Etag": f'"{entry["lfs"]["oid"]}"',
                        "X-Linked-Size": str(len(data))}
        self._send(200, data, headers, head)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"Content-Type": "application/json", "X-Error-Code": code,
                                  "X-Error-Message": message}, self.command == "HEAD")

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
