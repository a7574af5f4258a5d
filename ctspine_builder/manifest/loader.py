"""Manifest stage: read a manifest file or folder, validate it and build the Manifest records."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ctspine_builder.errors import ManifestError
from ctspine_builder.manifest import schema
from ctspine_builder.manifest.checks import CaseEntry, ManifestChecker, Problem, json_object_hook
from ctspine_builder.manifest.model import CaseRecord, DatasetInfo, FileRef, Manifest, SourceRecord

logger = logging.getLogger(__name__)

# The manifest that `--manifest` selects when it is not given.
DEFAULT_MANIFEST_NAME = "ctspine1k"

__all__ = [
    "DEFAULT_MANIFEST_NAME",
    "ManifestValidationError",
    "Problem",
    "installed_manifests",
    "load_manifest",
    "resolve_manifest",
    "validate_manifest",
]


class ManifestValidationError(ManifestError):
    """A manifest failed validation; ``problems`` lists every problem found."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.problems = problems
        listing = "\n".join(f"  {problem.format()}" for problem in problems)
        super().__init__(
            f"invalid manifest, {len(problems)} problem(s):\n{listing}\n",
            path=path,
            hint="Fix these fields; `ctspine manifest validate PATH` lists the same problems.",
        )


@dataclass
class _ParsedManifest:
    """The raw JSON of a manifest and where each piece came from."""

    root: Path
    main_file: str
    top: dict
    cases: list[CaseEntry] = field(default_factory=list)


def _read_json(path: Path, problems: list[Problem]) -> object | None:
    """Parse one JSON file, adding a Problem with line and column on a syntax error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        problems.append(Problem(str(path), "-", "-", f"not UTF-8 text (byte {error.start}); save the file as UTF-8"))
        return None
    except OSError as error:
        problems.append(Problem(str(path), "-", "-", f"cannot be read: {error.strerror}"))
        return None
    try:
        return json.loads(text, object_pairs_hook=json_object_hook)
    except json.JSONDecodeError as error:
        place = f"line {error.lineno}, column {error.colno}"
        problems.append(Problem(str(path), place, "-", f"invalid JSON: {error.msg}"))
        return None


def _read_jsonl_cases(path: Path, problems: list[Problem]) -> list[CaseEntry]:
    """Parse a cases*.jsonl file: one case object per line, blank lines ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        problems.append(Problem(str(path), "-", "-", f"not UTF-8 text (byte {error.start}); save the file as UTF-8"))
        return []
    except OSError as error:
        problems.append(Problem(str(path), "-", "-", f"cannot be read: {error.strerror}"))
        return []

    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line, object_pairs_hook=json_object_hook)
        except json.JSONDecodeError as error:
            place = f"line {number}, column {error.colno}"
            problems.append(Problem(str(path), place, "-", f"invalid JSON: {error.msg}; each line must hold one case object"))
            continue
        entries.append(CaseEntry(data, str(path), f"line {number}"))
    return entries


def _read_manifest(path: Path, problems: list[Problem]) -> _ParsedManifest | None:
    """Read the manifest file, or a folder's manifest.json and cases*.jsonl files.

    A manifest.json named directly reads as its folder, so that the cases*.jsonl
    files beside it are not left out.
    """
    if path.is_file() and path.name == schema.FOLDER_MANIFEST_NAME:
        path = path.parent
    if path.is_dir():
        main_path = path / schema.FOLDER_MANIFEST_NAME
        if not main_path.is_file():
            problems.append(
                Problem(str(main_path), "-", "-", f"not found; a manifest folder must contain {schema.FOLDER_MANIFEST_NAME}")
            )
            return None
        case_files = sorted(path.glob(schema.CASES_FILE_GLOB))
        root = path
    elif path.is_file():
        main_path, case_files, root = path, [], path.parent
    else:
        problems.append(Problem(str(path), "-", "-", "not found; give a manifest .json file or a folder holding manifest.json"))
        return None

    top = _read_json(main_path, problems)
    if top is None:
        return None
    if not isinstance(top, dict):
        problems.append(Problem(str(main_path), "top level", "-", "expected a JSON object with format, dataset and sources"))
        return None

    parsed = _ParsedManifest(root=root.resolve(), main_file=str(main_path), top=top)
    if isinstance(top.get("cases"), list):
        parsed.cases.extend(CaseEntry(case, str(main_path), f"cases[{index}]") for index, case in enumerate(top["cases"]))
    for case_file in case_files:
        parsed.cases.extend(_read_jsonl_cases(case_file, problems))
    return parsed


def _accepted_source_kinds() -> frozenset[str]:
    """Return the documented source kinds plus those registered in this installation."""
    from ctspine_builder.sources.base import source_kinds

    try:
        registered = source_kinds()
    except ImportError as error:
        # A source module with a missing dependency must not stop manifest
        # checks; the documented kinds still validate.
        logger.warning("source kinds could not be listed, checking against the documented kinds only: %s", error)
        registered = []
    return frozenset(schema.KNOWN_SOURCE_KINDS) | frozenset(registered)


def _check(parsed: _ParsedManifest, problems: list[Problem]) -> None:
    """Run every record check on a parsed manifest, appending to `problems`."""
    checker = ManifestChecker(known_kinds=_accepted_source_kinds())
    file, top = parsed.main_file, parsed.top
    if not checker.check_format(top, file):
        problems.extend(checker.problems)
        return

    checker.check_keys(top, schema.TOP_LEVEL_KEYS, file, "top level")
    if "dataset" in top:
        checker.check_dataset(top["dataset"], file)
    if "sources" in top:
        checker.check_sources(top["sources"], file)
    else:
        checker.sources_readable = False
    if "cases" in top and not isinstance(top["cases"], list):
        checker.add(file, "top level", "cases", "expected an array of case objects")
    for entry in parsed.cases:
        checker.check_case(entry)
    if not parsed.cases:
        checker.add(file, "top level", "cases", "no cases; list them under `cases` or in cases*.jsonl files beside manifest.json")
    problems.extend(checker.problems)


def validate_manifest(path: str | Path) -> list[Problem]:
    """Check a manifest file or folder and return every problem found (empty when valid)."""
    problems: list[Problem] = []
    parsed = _read_manifest(Path(path), problems)
    if parsed is not None:
        _check(parsed, problems)
    return problems


def _file_ref(value: dict | None) -> FileRef | None:
    if value is None:
        return None
    return FileRef(source=value["source"], locator=value["locator"])


def _build(parsed: _ParsedManifest) -> Manifest:
    """Turn a manifest that passed validation into Manifest records."""
    top = parsed.top
    dataset = DatasetInfo(**{key: top["dataset"][key] for key in schema.DATASET_KEYS if key in top["dataset"]})
    sources = {}
    for source in top["sources"]:
        fields = {key: source[key] for key in schema.SOURCE_KEYS if key in source}
        fields["options"] = dict(fields.get("options", {}))
        sources[source["id"]] = SourceRecord(**fields)
    cases = []
    for entry in parsed.cases:
        case = entry.data
        cases.append(
            CaseRecord(
                case_id=case["case_id"],
                subset=case["subset"],
                split=case["split"],
                image=_file_ref(case["image"]),
                mask=_file_ref(case["mask"]),
                image_sha256=case.get("image_sha256"),
                mask_sha256=case.get("mask_sha256"),
                series_hint=case.get("series_hint"),
            )
        )
    return Manifest(dataset=dataset, sources=sources, cases=cases, root=parsed.root, format_version=top["format"])


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file or folder.

    Raises ManifestValidationError (a ManifestError) listing every problem
    when the manifest is invalid. Relative local locators resolve against the
    returned manifest's ``root``, the folder that contains the manifest.
    """
    path = Path(path)
    problems: list[Problem] = []
    parsed = _read_manifest(path, problems)
    if parsed is not None:
        _check(parsed, problems)
    if problems:
        raise ManifestValidationError(path, problems)
    manifest = _build(parsed)
    logger.info("loaded manifest %s %s: %d cases, %d sources", manifest.dataset.name, manifest.dataset.version,
                len(manifest.cases), len(manifest.sources))
    return manifest


def _installed_root() -> Path:
    """Return the folder of the manifests installed with the package."""
    root = resources.files("ctspine_builder.manifests")
    return Path(str(root))


def installed_manifests() -> list[str]:
    """Return the names of the manifests installed with the package, sorted."""
    root = _installed_root()
    names = []
    for entry in root.iterdir():
        if entry.is_dir() and (entry / schema.FOLDER_MANIFEST_NAME).is_file():
            names.append(entry.name)
        elif entry.is_file() and entry.suffix == ".json":
            names.append(entry.stem)
    return sorted(names)


def resolve_manifest(path_or_name: str | Path | None) -> Path:
    """Find a manifest given a path or the name of an installed manifest.

    ``None`` selects the installed CTSpine1K manifest. An existing file or
    folder wins over an installed manifest of the same name. Raises
    ManifestError when neither exists.
    """
    if path_or_name is None:
        path_or_name = DEFAULT_MANIFEST_NAME
    candidate = Path(path_or_name).expanduser()
    if candidate.exists():
        return candidate

    name = str(path_or_name)
    if candidate.name == name:
        root = _installed_root()
        if (root / name / schema.FOLDER_MANIFEST_NAME).is_file():
            return root / name
        if (root / f"{name}.json").is_file():
            return root / f"{name}.json"
    names = ", ".join(installed_manifests()) or "none"
    raise ManifestError(
        f"manifest {name!r} not found as a file, a folder or an installed manifest",
        hint=f"Give the path of a manifest .json file or folder, or one of the installed names: {names}.",
    )
