"""Tests for `ctspine publish` against the loopback Hub stand-in in hub_server.py.

Each test runs the real `ctspine` command in a subprocess, with HF_ENDPOINT
pointed at a stand-in started on 127.0.0.1 and HF_HUB_DISABLE_XET=1, so
uploads take huggingface_hub's regular LFS path (preupload, LFS batch with
basic transfers, ndjson commits into a pull request, merge, tag).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hub_server import start_hub
from hubdata import DEFAULT_CASES, TinyCase, write_dataset

TOKEN = "hf_ctspineTestTokenDoNotPrint1234"
REPO = "spine-lab/ctspine1k"

pytest.importorskip("ctspine_builder.verify", reason="the verify stage (ctspine_builder.verify) is not installed yet")


@pytest.fixture()
def hub(tmp_path):
    """A running Hub stand-in that accepts only TOKEN for writes."""
    server, state, url = start_hub(token=TOKEN)
    state.url = url
    yield state
    server.shutdown()
    server.server_close()


def hub_env(tmp_path: Path, endpoint: str, token: str | None = TOKEN) -> dict:
    """Return an environment that points huggingface_hub and datasets at ``endpoint``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(tmp_path / "hf-home"),
        HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_VERBOSITY="debug",
    )
    if token:
        env["HF_TOKEN"] = token
    return env


def run_ctspine(env: dict, *args: str) -> subprocess.CompletedProcess:
    """Run the `ctspine` command in a subprocess and return its result."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "ctspine"), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )


def publish(env: dict, root: Path, version: str, *extra: str) -> subprocess.CompletedProcess:
    """Run `ctspine -vv publish` of ``root`` as ``version``."""
    return run_ctspine(env, "-vv", "publish", str(root), "--repo", REPO, "--version", version, *extra)


LOAD_SCRIPT = """
import json, sys, hashlib
import numpy as np
from datasets import load_dataset
dataset = load_dataset(sys.argv[1], revision=sys.argv[2])
result = {}
for split, rows in dataset.items():
    for row in rows:
        image = np.asarray(row["image"].get_fdata())
        mask = np.asarray(row["mask"].dataobj)
        result[row["case_id"]] = {
            "split": split, "subset": row["subset"], "shape": list(image.shape),
            "image_max": float(image.max()), "labels": sorted(int(v) for v in np.unique(mask)),
        }
print(json.dumps(result))
"""


def load_release(env: dict, revision: str) -> dict:
    """Load the release with datasets.load_dataset in a subprocess; return {case_id: summary}."""
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, REPO, revision], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def file_at(hub, revision: str, path: str) -> bytes:
    """Return a file's bytes at a revision of the stand-in's repo."""
    return hub.repos[REPO].resolve(revision).files[path].content


def test_publish_two_versions_load_both(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    first = write_dataset(tmp_path / "v1")
    result = publish(env, first, "1.0.0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'load_dataset("{REPO}", revision="v1.0.0")' in result.stdout
    assert f"{hub.url}/datasets/{REPO}" in result.stdout

    changed = [
        TinyCase("liver_0", "MSD-T10", "trainset", 1),
        TinyCase("liver_1", "MSD-T10", "trainset", 9),
        TinyCase("HN_P002", "HNSCC-3DCT-RT", "test_public", 5),
        TinyCase("volume-covid19-A-0003_ct", "COVID-19", "test_private", 4),
    ]
    second = write_dataset(tmp_path / "v2", changed, version="1.1.0")
    result = publish(env, second, "1.1.0")
    assert result.returncode == 0, result.stderr[-3000:]

    repo = hub.repos[REPO]
    assert repo.gated is False
    assert set(repo.tags) == {"v1.0.0", "v1.1.0"}
    assert repo.tags["v1.1.0"] == repo.branches["main"]
    notes = file_at(hub, "v1.1.0", "README.md").decode()
    assert "Changes since v1.0.0" in notes
    assert "Added (1): `HN_P002`" in notes
    assert "Removed (1): `HN_P001`" in notes
    assert "Changed (1): `liver_1`" in notes
    assert "First release: 4 cases." in file_at(hub, "v1.0.0", "README.md").decode()

    old = load_release(env, "v1.0.0")
    new = load_release(env, "v1.1.0")
    assert set(old) == {case.case_id for case in DEFAULT_CASES}
    assert set(new) == {case.case_id for case in changed}
    assert old["HN_P001"]["split"] == "test_public"
    assert new["volume-covid19-A-0003_ct"]["split"] == "test_private"
    assert new["HN_P002"]["split"] == "test_public"
    assert old["liver_1"]["image_max"] == 702.0
    assert new["liver_1"]["image_max"] == 709.0
    assert new["liver_0"]["labels"] == [0, 18, 19, 20]
    assert new["liver_0"]["shape"] == [24, 20, 16]


def test_published_sums_match_files(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    root = write_dataset(tmp_path / "ds")
    assert publish(env, root, "1.0.0").returncode == 0
    commit = hub.repos[REPO].resolve("v1.0.0")
    lines = file_at(hub, "v1.0.0", "SHA256SUMS").decode().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}
    assert set(listed) == set(commit.files) - {".gitattributes", "SHA256SUMS"}
    for path, digest in listed.items():
        assert hashlib.sha256(commit.files[path].content).hexdigest() == digest, path


def test_interrupted_lfs_upload_resumes(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    root = write_dataset(tmp_path / "ds")
    # Identical files (the tiny cases share one mask) are one LFS object.
    lfs_objects = len({hashlib.sha256(path.read_bytes()).digest() for path in root.rglob("*.nii.gz")})
    hub.fail_after["lfs_put"] = 3
    result = publish(env, root, "1.0.0", "--files-per-commit", "4")
    assert result.returncode == 1
    assert "Run the same command again to resume" in result.stderr
    repo = hub.repos[REPO]
    assert repo.tags == {}
    assert set(repo.resolve("main").files) == {".gitattributes"}

    # Three PUTs succeeded, but two of them may have carried the same object.
    stored = len(hub.lfs_objects)
    assert 2 <= stored <= 3

    del hub.fail_after["lfs_put"]
    puts_before = sum(1 for method, _ in hub.requests if method == "PUT")
    result = publish(env, root, "1.0.0", "--files-per-commit", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    puts_after = sum(1 for method, _ in hub.requests if method == "PUT") - puts_before
    assert puts_after == lfs_objects - stored
    assert len(repo.pulls) == 1
    assert repo.pulls[1].status == "merged"
    assert "v1.0.0" in repo.tags


def test_interrupted_commit_resumes(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    root = write_dataset(tmp_path / "ds")
    hub.fail_after["commit"] = 2
    result = publish(env, root, "1.0.0", "--files-per-commit", "4")
    assert result.returncode == 1
    repo = hub.repos[REPO]
    committed = set(repo.resolve("refs/pr/1").files) - {".gitattributes"}
    assert len(committed) == 8
    assert set(repo.resolve("main").files) == {".gitattributes"}

    del hub.fail_after["commit"]
    result = publish(env, root, "1.0.0", "--files-per-commit", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "14 uploaded" in result.stdout
    assert "v1.0.0" in repo.tags


def test_stop_between_merge_and_tag_resumes(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    root = write_dataset(tmp_path / "ds")
    hub.fail_after["tag"] = 0
    result = publish(env, root, "1.0.0")
    assert result.returncode == 1
    repo = hub.repos[REPO]
    assert repo.pulls[1].status == "merged"
    assert repo.tags == {}
    merged = repo.branches["main"]

    del hub.fail_after["tag"]
    result = publish(env, root, "1.0.0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0 uploaded" in result.stdout
    assert repo.pulls[2].status == "closed"
    assert repo.branches["main"] == merged
    assert repo.tags["v1.0.0"] == merged


def test_existing_tag_rejected(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    root = write_dataset(tmp_path / "ds")
    assert publish(env, root, "1.0.0").returncode == 0
    tagged = hub.repos[REPO].tags["v1.0.0"]
    other = write_dataset(tmp_path / "other", [TinyCase("liver_0", "MSD-T10", "trainset", 7)])
    result = publish(env, other, "1.0.0")
    assert result.returncode == 1
    assert "tag v1.0.0 already exists" in result.stderr
    assert hub.repos[REPO].tags["v1.0.0"] == tagged
    assert len(hub.repos[REPO].pulls) == 1


def test_failed_verify_rejected(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    root = write_dataset(tmp_path / "ds")
    image = root / "data" / "trainset" / "images" / "liver_0.nii.gz"
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF
    image.write_bytes(bytes(data))
    result = publish(env, root, "1.0.0")
    assert result.returncode == 1
    assert "failed verification" in result.stderr
    assert "liver_0" in result.stderr
    assert hub.repos == {}


def test_undeclared_licence_rejected(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    root = write_dataset(tmp_path / "ds")
    card = (root / "README.md").read_text()
    card = card.replace("license: other\nlicense_name: per-subset-licences\nlicense_link: LICENSES/\n", "license: cc-by-4.0\n")
    (root / "README.md").write_text(card)
    from hubdata import write_sums

    write_sums(root)
    result = publish(env, root, "1.0.0")
    assert result.returncode == 1
    assert "does not declare CC-BY-NC-SA-4.0, CC-BY-SA-4.0" in result.stderr
    assert hub.repos == {}


def test_missing_licence_file_rejected(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    root = write_dataset(tmp_path / "ds")
    (root / "LICENSES" / "msd.md").unlink()
    from hubdata import write_sums

    write_sums(root)
    result = publish(env, root, "1.0.0")
    assert result.returncode == 1
    assert "LICENSES/msd.md is missing" in result.stderr


def test_dry_run_contacts_nothing(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except OSError:
                continue

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    env = hub_env(tmp_path, f"http://127.0.0.1:{listener.getsockname()[1]}")
    root = write_dataset(tmp_path / "ds")
    try:
        result = publish(env, root, "1.0.0", "--dry-run", "--gated")
    finally:
        stop.set()
        watcher.join()
        listener.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert accepted == []
    assert "data/trainset/images/liver_0.nii.gz" in result.stdout
    assert "KiB" in result.stdout or " B " in result.stdout
    assert "extra_gated_prompt:" in result.stdout
    assert "No server was contacted." in result.stdout


def test_token_never_printed(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    root = write_dataset(tmp_path / "ds")
    hub.fail_after["commit"] = 1
    failed = publish(env, root, "1.0.0", "--files-per-commit", "5")
    del hub.fail_after["commit"]
    succeeded = publish(env, root, "1.0.0", "--files-per-commit", "5")
    assert failed.returncode == 1
    assert succeeded.returncode == 0
    for output in (failed.stdout, failed.stderr, succeeded.stdout, succeeded.stderr):
        assert TOKEN not in output
        assert TOKEN[3:] not in output
    # huggingface_hub's own debug log ran, with the token in use.
    assert "(authenticated: True)" in succeeded.stderr


def test_no_token_rejected(tmp_path, hub):
    env = hub_env(tmp_path, hub.url, token=None)
    root = write_dataset(tmp_path / "ds")
    result = publish(env, root, "1.0.0")
    assert result.returncode == 1
    assert "no Hugging Face token found" in result.stderr
    assert hub.repos == {}


@pytest.mark.parametrize(("repo", "version", "message"), [
    ("no-slash", "1.0.0", "invalid repo id 'no-slash'"),
    (REPO, "1.0", "invalid version '1.0'"),
    (REPO, "v1.0.0", "invalid version 'v1.0.0'"),
])
def test_invalid_arguments_rejected(tmp_path, repo, version, message):
    env = hub_env(tmp_path, "http://127.0.0.1:9")
    root = write_dataset(tmp_path / "ds")
    result = run_ctspine(env, "publish", str(root), "--repo", repo, "--version", version, "--dry-run")
    assert result.returncode == 1
    assert message in result.stderr


def test_private_gated_repo(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    root = write_dataset(tmp_path / "ds")
    result = publish(env, root, "1.0.0", "--private", "--gated")
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.repos[REPO].private is True
    assert hub.repos[REPO].gated == "auto"
    card = file_at(hub, "v1.0.0", "README.md").decode()
    assert "extra_gated_fields:" in card
    assert load_release(env, "v1.0.0")["liver_0"]["labels"] == [0, 18, 19, 20]


def test_demo_build_published_and_loaded(tmp_path, hub):
    env = hub_env(tmp_path, hub.url)
    built = run_ctspine(env, "demo", "--out", str(tmp_path / "demo"))
    assert built.returncode == 0, built.stderr[-3000:]
    root = tmp_path / "demo" / "dataset"
    result = publish(env, root, "1.0.0", "--gated")
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_release(env, "v1.0.0")
    local = {}
    for split in ("trainset", "test_public", "test_private"):
        for line in (root / "data" / split / "metadata.jsonl").read_text().splitlines():
            local[json.loads(line)["case_id"]] = split
    assert {case_id: item["split"] for case_id, item in loaded.items()} == local
    card = file_at(hub, "v1.0.0", "README.md").decode()
    assert "extra_gated_fields:" in card
    assert hub.repos[REPO].gated == "auto"
    assert (root / "README.md").read_text().split("---", 2)[2].strip()[:200] in card
