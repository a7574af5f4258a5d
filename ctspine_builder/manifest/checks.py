"""Manifest stage: field-by-field checks of parsed manifest records, collecting every problem."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ctspine_builder.manifest import schema
from ctspine_builder.manifest.model import FORMAT_VERSION, SPLITS


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (file, record, field) and what is wrong."""

    file: str
    record: str
    field: str
    message: str

    def format(self) -> str:
        """Return the problem as `FILE: RECORD: FIELD: message`."""
        return f"{self.file}: {self.record}: {self.field}: {self.message}"


class JsonObject(dict):
    """A parsed JSON object that remembers keys which appeared more than once."""

    duplicate_keys: tuple[str, ...] = ()


def json_object_hook(pairs: list[tuple[str, object]]) -> JsonObject:
    """Build a JsonObject from key/value pairs, recording repeated keys (for json.loads)."""
    result = JsonObject()
    repeated = []
    for key, value in pairs:
        if key in result:
            repeated.append(key)
        result[key] = value
    result.duplicate_keys = tuple(repeated)
    return result


@dataclass(frozen=True)
class CaseEntry:
    """A raw case object with the place it was read from."""

    data: object
    file: str
    record: str


def _quote(value: object) -> str:
    """Quote a value as JSON writes it, so messages show strings the way the file does."""
    return json.dumps(value, ensure_ascii=False)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass
class ManifestChecker:
    """Check the records of one manifest and collect a Problem for each fault.

    ``known_kinds`` are the source kinds accepted in `sources[].kind`: the
    documented kinds plus any registered at run time.
    """

    known_kinds: frozenset[str]
    problems: list[Problem] = field(default_factory=list)
    kind_by_source: dict[str, str] = field(default_factory=dict)
    case_places: dict[str, str] = field(default_factory=dict)
    sources_readable: bool = True

    def add(self, file: str, record: str, field_name: str, message: str) -> None:
        """Record one problem."""
        self.problems.append(Problem(file, record, field_name, message))

    def check_keys(self, value: object, spec: dict[str, bool], file: str, record: str, prefix: str = "") -> bool:
        """Check that `value` is an object with every required key and no unknown key.

        Returns False when `value` is not an object, so the caller skips its fields.
        """
        if not isinstance(value, dict):
            self.add(file, record, prefix.rstrip(".") or "-", f"expected an object, got {_json_type(value)}")
            return False
        for key in getattr(value, "duplicate_keys", ()):
            self.add(file, record, prefix + key, "key appears more than once; only the last value would be kept")
        for key, required in spec.items():
            if required and key not in value:
                self.add(file, record, prefix + key, "missing required field")
        allowed = ", ".join(spec)
        for key in value:
            if key not in spec:
                self.add(file, record, prefix + key, f"unknown field; allowed fields: {allowed}")
        return True

    def string_field(self, obj: dict, key: str, file: str, record: str, prefix: str = "") -> str | None:
        """Return obj[key] when it is a non-empty string; report a wrong type or an empty value."""
        if key not in obj:
            return None
        value = obj[key]
        if not isinstance(value, str):
            self.add(file, record, prefix + key, f"expected a string, got {_json_type(value)}")
            return None
        if not value.strip():
            self.add(file, record, prefix + key, "must not be empty")
            return None
        return value

    def check_format(self, top: dict, file: str) -> bool:
        """Check the `format` key; return False when this reader cannot read the rest."""
        if "format" not in top:
            self.add(file, "top level", "format", f"missing required field; set it to {FORMAT_VERSION}")
            return False
        version = top["format"]
        if type(version) is not int:
            self.add(file, "top level", "format", f"expected the integer {FORMAT_VERSION}, got {_json_type(version)}")
            return False
        if version != FORMAT_VERSION:
            self.add(
                file,
                "top level",
                "format",
                f"unsupported format version {version}; this ctspine reads format {FORMAT_VERSION}",
            )
            return False
        return True

    def check_dataset(self, value: object, file: str) -> None:
        """Check the `dataset` object: name, semantic version, citation."""
        record = "dataset"
        if not self.check_keys(value, schema.DATASET_KEYS, file, record):
            return
        for key in schema.DATASET_KEYS:
            self.string_field(value, key, file, record)
        version = value.get("version")
        if isinstance(version, str) and version.strip() and not schema.SEMVER_PATTERN.match(version):
            self.add(file, record, "version", f"invalid semantic version {_quote(version)}; write MAJOR.MINOR.PATCH, e.g. 1.0.0")

    def check_sources(self, value: object, file: str) -> None:
        """Check the `sources` array and remember each source id and kind."""
        if not isinstance(value, list):
            self.add(file, "top level", "sources", f"expected an array of source objects, got {_json_type(value)}")
            self.sources_readable = False
            return
        if not value:
            self.add(file, "top level", "sources", "no sources; list at least one")
        places: dict[str, str] = {}
        for index, source in enumerate(value):
            source_id = source.get("id") if isinstance(source, dict) else None
            record = f"sources[{index}]" + (f" {_quote(source_id)}" if isinstance(source_id, str) else "")
            if not self.check_keys(source, schema.SOURCE_KEYS, file, record):
                continue
            self._check_source(source, file, record, places)

    def _check_source(self, source: dict, file: str, record: str, places: dict[str, str]) -> None:
        source_id = self.string_field(source, "id", file, record)
        kind = self.string_field(source, "kind", file, record)
        license_id = self.string_field(source, "license", file, record)
        self.string_field(source, "locator", file, record)
        citation = self.string_field(source, "citation", file, record)
        doi = self.string_field(source, "doi", file, record)
        self.string_field(source, "license_note", file, record)

        if source_id is not None:
            if not schema.SAFE_NAME_PATTERN.match(source_id):
                self.add(file, record, "id", f"invalid source id {_quote(source_id)}; use letters, digits, '.', '_' and '-' only")
            elif source_id in places:
                self.add(file, record, "id", f"duplicate source id {_quote(source_id)}; first defined at {places[source_id]}")
            else:
                places[source_id] = record
                self.kind_by_source[source_id] = kind or ""
        if kind is not None and kind not in self.known_kinds:
            self.add(file, record, "kind", f"unknown source kind {_quote(kind)}; known kinds: {', '.join(sorted(self.known_kinds))}")
        if license_id is not None and not _is_license_id(license_id):
            self.add(
                file,
                record,
                "license",
                f"{_quote(license_id)} is not an SPDX licence id; use one such as CC-BY-4.0 or CC0-1.0, "
                "or LicenseRef-<name> for a licence without an SPDX id",
            )
        if citation is None and doi is None and "citation" not in source and "doi" not in source:
            self.add(file, record, "citation", "missing citation; give a citation, a doi, or both")
        if doi is not None and not schema.DOI_PATTERN.match(doi):
            self.add(file, record, "doi", f"invalid DOI {_quote(doi)}; write it as 10.<registrant>/<suffix>, without https://doi.org/")
        if "options" in source:
            self._check_options(source["options"], kind, file, record)

    def _check_options(self, options: object, kind: str | None, file: str, record: str) -> None:
        if not isinstance(options, dict):
            self.add(file, record, "options", f"expected an object, got {_json_type(options)}")
            return
        allowed = schema.SOURCE_OPTIONS.get(kind or "")
        if allowed is None:
            return
        for key in options:
            if key not in allowed:
                names = ", ".join(sorted(allowed)) or "none"
                self.add(file, record, f"options.{key}", f"unknown option for kind {_quote(kind)}; allowed options: {names}")

    def check_case(self, entry: CaseEntry) -> None:
        """Check one case object and its references to sources."""
        case = entry.data
        case_id = case.get("case_id") if isinstance(case, dict) else None
        record = entry.record + (f", case {_quote(case_id)}" if isinstance(case_id, str) else "")
        file = entry.file
        if not self.check_keys(case, schema.CASE_KEYS, file, record):
            return

        case_id = self.string_field(case, "case_id", file, record)
        if case_id is not None:
            self._check_case_id(case_id, file, record)
        subset = self.string_field(case, "subset", file, record)
        if subset is not None and not schema.SAFE_NAME_PATTERN.match(subset):
            self.add(file, record, "subset", "invalid subset name; use letters, digits, '.', '_' and '-' only")
        split = self.string_field(case, "split", file, record)
        if split is not None and split not in SPLITS:
            self.add(file, record, "split", f"unknown split {_quote(split)}; allowed splits: {', '.join(SPLITS)}")
        self.string_field(case, "series_hint", file, record)

        if "image" in case:
            self._check_file_ref(case["image"], "image", schema.IMAGE_SOURCE_KINDS, file, record)
        if case.get("mask") is not None:
            self._check_file_ref(case["mask"], "mask", schema.MASK_SOURCE_KINDS, file, record)
        for key in ("image_sha256", "mask_sha256"):
            self._check_hash(case, key, file, record)
        if "mask_sha256" in case and "mask" in case and case["mask"] is None:
            self.add(file, record, "mask_sha256", "a mask hash is pinned but mask is null; remove the hash or add the mask")

    def _check_case_id(self, case_id: str, file: str, record: str) -> None:
        place = f"{file} {record}"
        if not schema.SAFE_NAME_PATTERN.match(case_id):
            self.add(file, record, "case_id", "invalid case id; use letters, digits, '.', '_' and '-' only, not starting with '.'")
        elif case_id in self.case_places:
            self.add(file, record, "case_id", f"duplicate case id {_quote(case_id)}; first defined in {self.case_places[case_id]}")
        else:
            self.case_places[case_id] = place

    def _check_file_ref(self, value: object, name: str, role_kinds: frozenset[str], file: str, record: str) -> None:
        prefix = f"{name}."
        if not self.check_keys(value, schema.FILE_REF_KEYS, file, record, prefix):
            return
        source_id = self.string_field(value, "source", file, record, prefix)
        # An empty locator is allowed. It selects the source's default file
        # for the case id (local-dicom then uses the case id as folder name).
        locator = value.get("locator", "")
        if not isinstance(locator, str):
            self.add(file, record, prefix + "locator", f"expected a string, got {_json_type(locator)}")
        if source_id is None or not self.sources_readable:
            return
        if source_id not in self.kind_by_source:
            known = ", ".join(sorted(self.kind_by_source)) or "none"
            self.add(file, record, prefix + "source", f"unknown source id {_quote(source_id)}; sources defined: {known}")
            return
        kind = self.kind_by_source[source_id]
        if kind in schema.KNOWN_SOURCE_KINDS and kind not in role_kinds:
            self.add(
                file, record, prefix + "source", f"source {_quote(source_id)} has kind {_quote(kind)}, which cannot provide a {name}"
            )

    def _check_hash(self, case: dict, key: str, file: str, record: str) -> None:
        if key not in case:
            return
        value = case[key]
        if not isinstance(value, str):
            self.add(file, record, key, f"expected a string of 64 lowercase hexadecimal digits, got {_json_type(value)}")
        elif not schema.SHA256_PATTERN.match(value):
            self.add(file, record, key, f"malformed SHA-256 {_quote(value)}; expected 64 lowercase hexadecimal digits")


def _is_license_id(value: str) -> bool:
    return value in schema.SPDX_LICENSE_IDS or bool(schema.LICENSE_REF_PATTERN.match(value))
