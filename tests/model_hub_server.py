"""Loopback stand-in for the Hugging Face Hub's model download API, for the predict tests.

It serves what huggingface_hub 2.x's ``snapshot_download`` of a model repo
requests: repo info at a revision, the recursive tree listing and file
resolve (GET and HEAD) with ETag and X-Repo-Commit headers. Repos are
in-memory ``{path: bytes}`` snapshots keyed by 40-hex commit, and the server
binds to 127.0.0.1 only.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class ModelRepo:
    """Commits of one model repo and the branch and tag names pointing at them."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def add_commit(self, files: dict[str, bytes], ref: str = "main") -> str:
        """Store a snapshot, point ``ref`` at it and return its commit id."""
        digest = hashlib.sha1(json.dumps(sorted((path, hashlib.sha256(data).hexdigest()) for path, data in files.items())).encode())
        commit = digest.hexdigest()
        self.commits[commit] = dict(files)
        self.refs[ref] = commit
        return commit

    def resolve(self, revision: str) -> str | None:
        """Return the commit that ``revision`` (commit id, branch or tag) names."""
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


class ModelHubState:
    """Repos by id, plus a log of the requests received."""

    def __init__(self) -> None:
        self.repos: dict[str, ModelRepo] = {}
        self.requests: list[str] = []


class ModelHubHandler(BaseHTTPRequestHandler):
    """Serve repo info, tree and resolve for model repos."""

    state: ModelHubState

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _not_found(self, message: str, code: str) -> None:
        self._send(404, json.dumps({"error": message}).encode(), {"X-Error-Code": code, "X-Error-Message": message})

    def _repo_commit(self, repo_id: str, revision: str) -> tuple[ModelRepo, str] | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._not_found("Repository not found", "RepoNotFound")
            return None
        commit = repo.resolve(unquote(revision))
        if commit is None:
            self._not_found(f"Invalid rev id: {revision}", "RevisionNotFound")
            return None
        return repo, commit

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        self.state.requests.append(f"{self.command} {path}")
        info = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if info:
            self._info(*info.groups())
        elif tree:
            self._tree(*tree.groups())
        elif resolve:
            self._resolve(*resolve.groups())
        else:
            self._not_found(f"no route for {path}", "EntryNotFound")

    do_HEAD = do_GET

    def _info(self, repo_id: str, revision: str) -> None:
        found = self._repo_commit(repo_id, revision)
        if found:
            repo, commit = found
            siblings = [{"rfilename": name} for name in sorted(repo.commits[commit])]
            self._send(200, json.dumps({"id": repo_id, "sha": commit, "private": False, "siblings": siblings}).encode())

    def _tree(self, repo_id: str, revision: str) -> None:
        found = self._repo_commit(repo_id, revision)
        if found:
            repo, commit = found
            entries = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in sorted(repo.commits[commit].items())
            ]
            self._send(200, json.dumps(entries).encode())

    def _resolve(self, repo_id: str, revision: str, file_path: str) -> None:
        found = self._repo_commit(repo_id, revision)
        if found:
            repo, commit = found
            data = repo.commits[commit].get(unquote(file_path))
            if data is None:
                return self._not_found("Entry not found", "EntryNotFound")
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            self._send(200, data, {"X-Repo-Commit": commit, "ETag": etag}, content_type="application/octet-stream")


def start_model_hub() -> tuple[ThreadingHTTPServer, ModelHubState, str]:
    """Start the stand-in on 127.0.0.1 with a free port; return server, state and URL."""
    state = ModelHubState()
    handler = type("BoundModelHubHandler", (ModelHubHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state, f"http://127.0.0.1:{server.server_address[1]}"
