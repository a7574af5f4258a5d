"""Loopback stand-in for the Hugging Face Hub API, used by the publishing tests.

It speaks the wire protocol that huggingface_hub 2.x and datasets 5.x use for
dataset repositories: repo creation, preupload, the Git LFS batch API with
basic transfers, ndjson commits (also into pull-request refs), pull requests
and their merge, tags and refs, repo info, tree listing, paths-info and
resolve with ETag / X-Repo-Commit / X-Linked-Etag headers and Range. Xet is
not offered, so clients must run with HF_HUB_DISABLE_XET=1 and upload through
regular LFS. Everything lives in memory and the server binds to 127.0.0.1
only.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from hub_state import FIXED_DATE, Blob, Commit, FakeHub, PullRequest, Repo, git_blob_sha1

# Entries per page of a tree listing. The Hub pages by 1000 (50 with expand,
# as huggingface_hub 2.4's list_repo_tree notes), so a small page here makes
# the clients in the tests follow the Link header.
TREE_PAGE_SIZE = 10


class HubHandler(BaseHTTPRequestHandler):
    """Route each request to the Hub endpoint it names."""

    protocol_version = "HTTP/1.1"
    hub: FakeHub  # set on the subclass made by `start_hub`

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        pass

    # -- plumbing -------------------------------------------------------

    def _body(self) -> bytes:
        return self.request_body

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _authorized(self) -> bool:
        expected = self.hub.token
        return expected is None or self.headers.get("Authorization") == f"Bearer {expected}"

    def _repo(self, repo_id: str, write: bool = False) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or ((write or repo.private) and not self._authorized()):
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        return repo

    def _dispatch(self) -> None:
        # Read the body before routing: an unread body on a kept-alive
        # connection would be parsed as the next request.
        length = int(self.headers.get("Content-Length") or 0)
        self.request_body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.hub.requests.append((self.command, url.path))
        parts = url.path.strip("/").split("/")
        with self.hub.lock:
            for pattern, method, handler in ROUTES:
                match = re.fullmatch(pattern, "/".join(parts))
                if match and method == (self.command if self.command != "HEAD" else "GET"):
                    return handler(self, *[unquote(group or "") for group in match.groups()])
        self.hub.unhandled.append(f"{self.command} {self.path}")
        self._error(404, f"no route for {self.command} {url.path}")

    do_GET = do_POST = do_PUT = do_HEAD = _dispatch

    # -- repos, refs, tags ---------------------------------------------------

    def create_repo(self) -> None:
        payload = json.loads(self._body())
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if repo_id in self.hub.repos:
            return self._json(409, {"error": "You already created this dataset repo", "url": f"{self._base()}/datasets/{repo_id}"})
        # huggingface_hub 2.x sends "visibility"; older clients sent "private".
        private = payload.get("visibility") in ("private", "protected") or bool(payload.get("private"))
        self.hub.create_repo(repo_id, private)
        self._json(200, {"url": f"{self._base()}/datasets/{repo_id}", "name": repo_id})

    def update_settings(self, repo_id: str) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        payload = json.loads(self._body())
        if "gated" in payload:
            if payload["gated"] not in ("auto", "manual", False):
                return self._error(400, f"invalid gated value {payload['gated']!r}")
            repo.gated = payload["gated"]
        if "private" in payload:
            repo.private = bool(payload["private"])
        self._json(200, {})

    def repo_info(self, repo_id: str, revision: str = "main") -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = repo.resolve(revision or "main")
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if "blobs" in self.query:
                entry = blob.entry(path)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    sibling["lfs"] = {"size": entry["size"], "sha256": entry["lfs"]["oid"], "pointerSize": entry["lfs"]["pointerSize"]}
            siblings.append(sibling)
        self._json(200, {
            "id": repo_id, "_id": repo_id, "author": repo_id.split("/")[0], "sha": commit.sha,
            "private": repo.private, "gated": repo.gated, "disabled": False, "downloads": 0, "likes": 0,
            "tags": [], "lastModified": FIXED_DATE, "createdAt": FIXED_DATE, "siblings": siblings,
        })

    def list_refs(self, repo_id: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return

        def ref(name: str, full: str, sha: str) -> dict:
            return {"name": name, "ref": full, "targetCommit": sha}

        payload = {
            "branches": [ref(name, f"refs/heads/{name}", sha) for name, sha in repo.branches.items()],
            "tags": [ref(name, f"refs/tags/{name}", sha) for name, sha in repo.tags.items()],
            "converts": [],
        }
        if "include_prs" in self.query:
            payload["pullRequests"] = [ref(f"refs/pr/{num}", f"refs/pr/{num}", sha) for num, sha in repo.pr_heads.items()]
        self._json(200, payload)

    def create_tag(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        payload = json.loads(self._body())
        if self.hub.should_fail("tag"):
            return self._error(507, "storage failure injected by the test")
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if payload["tag"] in repo.tags:
            return self._error(409, f"Tag {payload['tag']} already exists")
        repo.tags[payload["tag"]] = commit.sha
        self._json(200, {})

    # -- upload ----------------------------------------------------------------

    def validate_yaml(self) -> None:
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        payload = json.loads(self._body())
        commit = repo.resolve(revision) if "create_pr" not in self.query else repo.resolve("main")
        files = []
        for item in payload["files"]:
            is_lfs = item["path"].endswith((".gz", ".parquet")) or item["size"] > 10 * 1024 * 1024
            existing = commit.files.get(item["path"]) if commit else None
            oid = existing.entry(item["path"])["oid"] if existing is not None and existing.lfs_oid is None else None
            files.append({"path": item["path"], "uploadMode": "lfs" if is_lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files, "commitOid": commit.sha if commit else None})

    def lfs_batch(self, repo_id: str) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        payload = json.loads(self._body())
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in self.hub.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self._base()}/lfs-upload/{item['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), content_type="application/vnd.git-lfs+json")

    def lfs_put(self, oid: str) -> None:
        data = self._body()
        if self.hub.should_fail("lfs_put"):
            return self._error(507, "storage failure injected by the test")
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "content does not match its oid")
        self.hub.lfs_objects[oid] = data
        self._send(200)

    def commit(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if self.hub.should_fail("commit"):
            return self._error(507, "storage failure injected by the test")
        create_pr = "create_pr" in self.query
        base = repo.resolve(revision)
        if base is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = dict(base.files)
        header = {}

        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                if value["oid"] not in self.hub.lfs_objects:
                    return self._error(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = Blob(self.hub.lfs_objects[value["oid"]], value["oid"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return self._error(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: blob for path, blob in files.items() if not path.startswith(prefix)}

        sha = self.hub.new_sha(header.get("summary", ""))
        repo.commits[sha] = Commit(sha, files, header.get("summary", ""), base.sha)
        pr_url = None
        pr_match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if create_pr:
            num = self._open_pull(repo, header.get("summary", ""), base.sha)
            repo.pr_heads[num] = sha
            pr_url = f"{self._base()}/datasets/{repo_id}/discussions/{num}"
        elif pr_match:
            repo.pr_heads[int(pr_match.group(1))] = sha
        else:
            repo.branches[revision] = sha
        self._json(200, {"commitOid": sha, "commitUrl": f"{self._base()}/datasets/{repo_id}/commit/{sha}", "pullRequestUrl": pr_url, "success": True})

    # -- pull requests ---------------------------------------------------------

    def _open_pull(self, repo: Repo, title: str, head: str) -> int:
        num = len(repo.pulls) + 1
        repo.pulls[num] = PullRequest(num, title)
        repo.pr_heads[num] = head
        return num

    def _pull_json(self, repo: Repo, pull: PullRequest) -> dict:
        return {
            "num": pull.num, "title": pull.title, "status": pull.status, "isPullRequest": True,
            "createdAt": FIXED_DATE, "author": {"name": "tester"},
            "repo": {"name": repo.repo_id, "type": "dataset"}, "pinned": False,
        }

    def create_discussion(self, repo_id: str) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        payload = json.loads(self._body())
        if not payload.get("pullRequest"):
            return self._error(400, "only pull requests are supported by this stand-in")
        num = self._open_pull(repo, payload["title"], repo.branches["main"])
        self._json(200, {"num": num, "url": f"{self._base()}/datasets/{repo_id}/discussions/{num}"})

    def list_discussions(self, repo_id: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        status = self.query.get("status", [None])[0]
        pulls = [self._pull_json(repo, pull) for pull in repo.pulls.values() if status in (None, "all", pull.status)]
        self._json(200, {"discussions": pulls, "count": len(pulls), "start": 0, "numClosedDiscussions": 0})

    def discussion_details(self, repo_id: str, num: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        pull = repo.pulls.get(int(num))
        if pull is None:
            return self._error(404, "Discussion not found")
        payload = self._pull_json(repo, pull)
        payload.update(events=[], filesWithConflicts=[], changes={"base": "refs/heads/main", "mergeCommitId": pull.merge_commit})
        self._json(200, payload)

    def change_status(self, repo_id: str, num: str) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        pull = repo.pulls.get(int(num))
        status = json.loads(self._body()).get("status")
        if pull is None or pull.status == "merged" or status not in ("open", "closed"):
            return self._error(400, "Cannot change the status of this pull request")
        pull.status = status
        self._json(200, {"newStatus": {"id": "status", "type": "status-change", "createdAt": FIXED_DATE,
                                       "author": {"name": "tester"}, "data": {"status": status}}})

    def merge_pull(self, repo_id: str, num: str) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        pull = repo.pulls.get(int(num))
        if pull is None or pull.status != "open":
            return self._error(400, "Pull request is not open")
        head = repo.commits[repo.pr_heads[pull.num]]
        # The Hub merges a pull request by committing its tree onto main.
        sha = self.hub.new_sha(f"merge {pull.num}")
        repo.commits[sha] = Commit(sha, dict(head.files), f"Merge pull request #{pull.num}", repo.branches["main"])
        repo.branches["main"] = sha
        pull.status, pull.merge_commit = "merged", sha
        self._json(200, {})

    # -- download --------------------------------------------------------------

    def tree(self, repo_id: str, revision: str, path: str = "") -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        entries = self._list(commit, path.strip("/"), self.query.get("recursive", ["false"])[0].lower() == "true")
        if entries is None:
            return self._error(404, f"{path} does not exist", "EntryNotFound")
        start = int(self.query.get("cursor", ["0"])[0])
        page = entries[start:start + TREE_PAGE_SIZE]
        headers = {}
        if start + TREE_PAGE_SIZE < len(entries):
            query = f"recursive={self.query.get('recursive', ['false'])[0]}&expand={self.query.get('expand', ['false'])[0]}&cursor={start + TREE_PAGE_SIZE}"
            headers["Link"] = f'<{self._base()}{urlsplit(self.path).path}?{query}>; rel="next"'
        self._json(200, page, headers)

    def _list(self, commit: Commit, prefix: str, recursive: bool) -> list[dict] | None:
        folders: dict[str, None] = {}
        files = []
        for path, blob in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if depth > 1 and not recursive:
                    break
                folders["/".join(filter(None, [prefix, *parts[:depth]]))] = None
            if recursive or len(parts) == 1:
                files.append(blob.entry(path))
        if prefix and not files and not folders:
            return None
        folder_entries = [{"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0} for folder in folders]
        return sorted(folder_entries + files, key=lambda entry: entry["path"])

    def paths_info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        raw = self._body().decode()
        form = parse_qs(raw) if "json" not in (self.headers.get("Content-Type") or "") else json.loads(raw)
        result = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                result.append(commit.files[path].entry(path))
            elif any(name.startswith(path + "/") for name in commit.files) or path == "":
                result.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0})
        self._json(200, result)

    def resolve_file(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        blob = commit.files.get(path)
        if blob is None:
            return self._error(404, "Entry not found", "EntryNotFound")
        entry = blob.entry(path)
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if blob.lfs_oid:
            headers.update({"X-Linked-Etag": f'"{blob.lfs_oid}"', "X-Linked-Size": str(len(blob.content))})
        body, status = blob.content, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
        if match and body:
            first = int(match.group(1) or 0)
            last = min(int(match.group(2)) if match.group(2) else len(body) - 1, len(body) - 1)
            headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
            body, status = body[first:last + 1], 206
        self._send(status, body, headers, content_type="application/octet-stream")

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


REPO = r"([^/]+/[^/]+)"
REV = r"((?:refs%2F[^/]+%2F[^/]+)|(?:refs/(?:pr|convert)/[^/]+)|[^/]+)"
ROUTES = [
    (r"api/repos/create", "POST", HubHandler.create_repo),
    (r"api/validate-yaml", "POST", HubHandler.validate_yaml),
    (rf"api/datasets/{REPO}", "GET", HubHandler.repo_info),
    (rf"api/datasets/{REPO}/revision/{REV}", "GET", HubHandler.repo_info),
    (rf"api/datasets/{REPO}/refs", "GET", HubHandler.list_refs),
    (rf"api/datasets/{REPO}/settings", "PUT", HubHandler.update_settings),
    (rf"api/datasets/{REPO}/tag/{REV}", "POST", HubHandler.create_tag),
    (rf"api/datasets/{REPO}/preupload/{REV}", "POST", HubHandler.preupload),
    (rf"api/datasets/{REPO}/commit/{REV}", "POST", HubHandler.commit),
    (rf"api/datasets/{REPO}/discussions", "POST", HubHandler.create_discussion),
    (rf"api/datasets/{REPO}/discussions", "GET", HubHandler.list_discussions),
    (rf"api/datasets/{REPO}/discussions/(\d+)", "GET", HubHandler.discussion_details),
    (rf"api/datasets/{REPO}/discussions/(\d+)/merge", "POST", HubHandler.merge_pull),
    (rf"api/datasets/{REPO}/discussions/(\d+)/status", "POST", HubHandler.change_status),
    (rf"api/datasets/{REPO}/tree/{REV}(?:/(.*))?", "GET", HubHandler.tree),
    (rf"api/datasets/{REPO}/paths-info/{REV}", "POST", HubHandler.paths_info),
    (rf"datasets/{REPO}\.git/info/lfs/objects/batch", "POST", HubHandler.lfs_batch),
    (r"lfs-upload/([0-9a-f]{64})", "PUT", HubHandler.lfs_put),
    (rf"datasets/{REPO}/resolve/{REV}/(.+)", "GET", HubHandler.resolve_file),
]


def start_hub(token: str | None = None) -> tuple[ThreadingHTTPServer, FakeHub, str]:
    """Start the stand-in on 127.0.0.1 with a free port; return server, state and URL."""
    hub = FakeHub(token)
    handler = type("BoundHubHandler", (HubHandler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hub, f"http://127.0.0.1:{server.server_address[1]}"


__all__ = ["FakeHub", "start_hub", "git_blob_sha1"]
