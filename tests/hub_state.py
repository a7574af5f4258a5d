"""In-memory state of the loopback Hub stand-in: repos, commits, refs, pull requests and LFS objects.

The request handlers in hub_server.py read and change this state; tests
read it to check what a client uploaded.
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
FIXED_DATE = "2026-01-01T00:00:00.000Z"


def git_blob_sha1(content: bytes) -> str:
    """Return git's object id for a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Blob:
    """One file in a commit: its bytes and, for LFS files, the SHA-256 oid."""

    content: bytes
    lfs_oid: str | None = None

    def entry(self, path: str) -> dict:
        """Return the tree / paths-info JSON entry for this file."""
        if self.lfs_oid is None:
            return {"type": "file", "path": path, "size": len(self.content), "oid": git_blob_sha1(self.content)}
        pointer = LFS_POINTER.format(oid=self.lfs_oid, size=len(self.content)).encode()
        return {
            "type": "file",
            "path": path,
            "size": len(self.content),
            "oid": git_blob_sha1(pointer),
            "lfs": {"oid": self.lfs_oid, "size": len(self.content), "pointerSize": len(pointer)},
        }


@dataclass
class Commit:
    """A snapshot of every file in the repo, by path."""

    sha: str
    files: dict[str, Blob]
    title: str
    parent: str | None


@dataclass
class PullRequest:
    """A pull request: its number, title, status and head ref refs/pr/N."""

    num: int
    title: str
    status: str = "open"
    merge_commit: str | None = None


@dataclass
class Repo:
    """One dataset repo: commits, branches, tags and pull requests."""

    repo_id: str
    private: bool
    gated: str | bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pr_heads: dict[int, str] = field(default_factory=dict)
    pulls: dict[int, PullRequest] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """Return the commit that a branch, tag, refs/pr/N or commit sha names."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if match and int(match.group(1)) in self.pr_heads:
            return self.commits[self.pr_heads[int(match.group(1))]]
        return self.commits.get(revision)


class FakeHub:
    """In-memory Hub state shared by the request handlers, plus fault injection.

    ``fail_after`` maps a request kind ("lfs_put", "commit", "tag") to how many such
    requests succeed before every further one gets HTTP 507, which
    huggingface_hub does not retry. ``requests`` logs (method, path) of every
    request, so tests can see what a client sent.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.fail_after: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[str] = []
        self.lock = threading.RLock()
        self._counter = 0

    def new_sha(self, seed: str) -> str:
        """Return a fresh 40-hex commit id."""
        self._counter += 1
        return hashlib.sha1(f"{self._counter}:{seed}".encode()).hexdigest()

    def should_fail(self, kind: str) -> bool:
        """Count one request of ``kind`` and return True when it must fail."""
        with self.lock:
            if kind not in self.fail_after:
                return False
            if self.fail_after[kind] > 0:
                self.fail_after[kind] -= 1
                return False
            return True

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        """Create a repo with an initial commit holding .gitattributes."""
        repo = Repo(repo_id=repo_id, private=private)
        sha = self.new_sha(repo_id)
        repo.commits[sha] = Commit(sha, {".gitattributes": Blob(b"*.gz filter=lfs diff=lfs merge=lfs -text\n")}, "initial commit", None)
        repo.branches["main"] = sha
        self.repos[repo_id] = repo
        return repo
