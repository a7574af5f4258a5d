"""Tests for the shipped CTSpine1K manifest and the script that generates it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT, SHARED_DIR

from ctspine_builder.cli import main
from ctspine_builder.manifest.loader import load_manifest, resolve_manifest, validate_manifest

SCRIPT = REPO_ROOT / "scripts" / "make_ctspine1k_manifest.py"
UPSTREAM = SHARED_DIR / "upstream"


@pytest.fixture(scope="module")
def shipped():
    """The installed ctspine1k manifest, loaded."""
    return load_manifest(resolve_manifest("ctspine1k"))


@pytest.fixture
def upstream() -> Path:
    """The authors' Path.csv and data_split.txt."""
    if not (UPSTREAM / "Path.csv").is_file():
        pytest.skip(f"upstream lists not found at {UPSTREAM}; set CTSPINE_SHARED to the shared folder")
    return UPSTREAM


def run_script(*args: str) -> subprocess.CompletedProcess:
    """Run the generator as a maintainer would."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_shipped_manifest_validates_clean():
    assert validate_manifest(resolve_manifest(None)) == []


def test_shipped_stats_counts():
    result = CliRunner().invoke(main, ["manifest", "stats", "--json"], catch_exceptions=False)

    stats = json.loads(result.output)
    assert result.exit_code == 0
    assert stats["cases"] == 1005
    assert stats["subsets"] == {"COLONOG": 784, "COVID-19": 40, "HNSCC-3DCT-RT": 31, "MSD-T10": 150}
    assert stats["splits"] == {"trainset": 610, "test_public": 197, "test_private": 198}
    assert sum(sum(row.values()) for row in stats["subset_split"].values()) == 1005
    assert stats["with_mask"] == 1005


def test_shipped_case_ids_unique(shipped):
    case_ids = [case.case_id for case in shipped.cases]

    assert len(case_ids) == 1005
    assert len(set(case_ids)) == 1005


def test_shipped_colonog_id_forms(shipped):
    colonog = [case.case_id for case in shipped.cases if case.subset == "COLONOG"]

    assert sum(case_id.startswith("1.3.6.1.4.1.9328.50.4.") for case_id in colonog) == 750
    assert sum(case_id.startswith("CTC-") for case_id in colonog) == 34


def test_shipped_dicom_cases_have_series_hint(shipped):
    for case in shipped.cases:
        is_dicom = shipped.sources[case.image.source].kind == "tcia"
        assert (case.series_hint is not None) == is_dicom, case.case_id
        if is_dicom:
            assert case.series_hint.split("/")[0] == case.case_id
            assert case.series_hint.count("/") == 2
            assert case.image.locator == case.case_id


def test_shipped_msd_locators(shipped):
    locators = {case.case_id: case.image.locator for case in shipped.cases if case.subset == "MSD-T10"}

    assert locators["liver_0"] == "imagesTr/liver_0.nii.gz"
    assert locators["liver_130"] == "imagesTr/liver_130.nii.gz"
    assert locators["liver_135"] == "imagesTs/liver_135.nii.gz"
    assert locators["liver_199"] == "imagesTs/liver_199.nii.gz"


def test_shipped_covid_locators_drop_ct_suffix(shipped):
    locators = {case.case_id: case.image.locator for case in shipped.cases if case.subset == "COVID-19"}

    assert locators["volume-covid19-A-0003_ct"] == "volume-covid19-A-0003.nii.gz"
    assert locators["volume-covid19-A-0202_0_ct"] == "volume-covid19-A-0202_0.nii.gz"
    assert all(not locator.endswith("_ct.nii.gz") for locator in locators.values())


def test_shipped_sources_and_licences(shipped):
    licences = {source_id: (source.kind, source.license) for source_id, source in shipped.sources.items()}

    assert licences == {
        "tcia-ct-colonography": ("tcia", "CC-BY-3.0"),
        "tcia-hnscc-3dct-rt": ("tcia", "CC-BY-3.0"),
        "msd-task03-liver": ("msd", "CC-BY-SA-4.0"),
        "tcia-covid19": ("covid19", "CC-BY-4.0"),
        "ctspine1k-masks": ("masks-hf", "CC-BY-NC-SA-4.0"),
    }
    assert "assumption" in shipped.sources["ctspine1k-masks"].license_note
    assert shipped.sources["msd-task03-liver"].options["md5"] == "a90ec6c4aa7f6a3d087205e23d4e6397"


def test_generator_reproduces_shipped_files(tmp_path, upstream):
    result = run_script("--upstream", str(upstream), "--out", str(tmp_path))

    # Only the generated files are compared: a lock.json committed beside
    # them comes from `ctspine lock`, not from this script.
    shipped_dir = REPO_ROOT / "manifests" / "ctspine1k"
    shipped_files = sorted(path.name for path in [shipped_dir / "manifest.json", *shipped_dir.glob("cases*.jsonl")])
    stale = "out of date: run python scripts/make_ctspine1k_manifest.py and commit manifests/ctspine1k"
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == shipped_files
    for path in sorted(tmp_path.iterdir()):
        assert path.read_bytes() == (shipped_dir / path.name).read_bytes(), f"{path.name} {stale}"


def test_generator_reports_unmatched_ids(tmp_path, upstream):
    fake = tmp_path / "upstream"
    fake.mkdir()
    (fake / "Path.csv").write_bytes((upstream / "Path.csv").read_bytes())
    split_text = (upstream / "data_split.txt").read_text(encoding="utf-8")
    (fake / "data_split.txt").write_text(split_text + "scan_42.nii.gz\r\nliver_x.nii.gz\r\n", encoding="utf-8")
    out = tmp_path / "out"

    result = run_script("--upstream", str(fake), "--out", str(out))

    assert result.returncode == 1
    assert "case 'scan_42': fits no subset rule" in result.stderr
    assert "case 'liver_x': fits no subset rule" in result.stderr
    assert "2 problem(s); nothing written" in result.stderr
    assert not out.exists()


def test_generator_reports_dicom_case_without_row(tmp_path, upstream):
    fake = tmp_path / "upstream"
    fake.mkdir()
    rows = (upstream / "Path.csv").read_text(encoding="utf-8").splitlines()
    dropped = rows[0].split("/")[0]
    (fake / "Path.csv").write_text("\r\n".join(rows[1:]) + "\r\n", encoding="utf-8")
    (fake / "data_split.txt").write_bytes((upstream / "data_split.txt").read_bytes())

    result = run_script("--upstream", str(fake), "--out", str(tmp_path / "out"))

    assert result.returncode == 1
    assert f"case {dropped!r}: DICOM case with no Path.csv row" in result.stderr


def test_generator_missing_upstream(tmp_path):
    result = run_script("--upstream", str(tmp_path), "--out", str(tmp_path / "out"))

    assert result.returncode == 1
    assert f"{tmp_path / 'Path.csv'} not found" in result.stderr
