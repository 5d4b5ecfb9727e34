"""A built wheel's provenance as a standard document: an in-toto Statement v1 whose subject is the wheel, with
a SLSA Provenance v1 predicate (https://slsa.dev/spec/v1.0/provenance).

Pure: made from the build's record (what the farm stored and checked: the wheel's and the log's sha256) and
the worker's facts (its report's ``provenance``: sdist, interpreter, the build requirements it installed by
sha256, the sandbox, the repair step). A remote builder's facts are its word, which the statement says
(``runDetails.builder.id`` names it); the farm's signature vouches for the wheel it inspected and for who
reported the rest.

The build type, ``BUILD_TYPE``, is documented in docs/provenance.md: its external parameters are the sdist
(URL and sha256) and the target (CPython version and platform tag); everything else the build used is a
resolved dependency.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from builder.jobs import BuildRecord

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"  # DSSE payloadType of in-toto statements
BUILD_TYPE = "urn:wheelfarm:build-type:wheel-from-sdist:v1"
FARM_BUILDER = "urn:wheelfarm:builder:"
REPRODUCIBILITY = "wheelfarm_reproducibility"  # in runDetails.metadata, once a second build was compared


def wheel_statement(record: BuildRecord, facts: Mapping[str, Any], builder_version: str) -> dict[str, Any]:
    """The statement for ``record``'s wheel (a done build: it names a wheel and its sha256)."""
    if not record.wheel_sha256 or not record.wheel_filename:
        raise ValueError(f"the build of {record.key} left no wheel to state anything of")
    sdist = _mapping(facts.get("sdist"))
    build_system = _mapping(facts.get("build_system"))
    interpreter = _mapping(facts.get("interpreter"))
    dependencies: list[dict[str, Any]] = [
        _descriptor(record.sdist_filename, str(sdist.get("url", "")), record.key.sdist_sha256),
    ]
    if interpreter:
        dependencies.append(
            {
                "name": "cpython",
                "uri": "file://" + str(interpreter.get("path", "")),
                "annotations": {"version": str(interpreter.get("version", ""))},
            }
        )
    for installed in build_system.get("installed", []) or []:
        each = _mapping(installed)
        dependencies.append(
            _descriptor(str(each.get("filename", "")), str(each.get("url", "")), str(each.get("sha256", "")))
        )
    byproducts = []
    if record.log_sha256:
        byproducts.append({"name": "build.log", "digest": {"sha256": record.log_sha256}})
    if record.metadata_sha256:
        byproducts.append({"name": "METADATA", "digest": {"sha256": record.metadata_sha256}})
    for library in facts.get("bundled_libraries", []) or []:
        each = _mapping(library)
        byproducts.append(
            {
                "name": str(each.get("name", "")),
                "digest": {"sha256": str(each.get("sha256", ""))},
                "annotations": {
                    "source_path": str(each.get("source_path", "")),
                    "package": str(each.get("package", "")),
                    "package_version": str(each.get("package_version", "")),
                },
            }
        )
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": record.wheel_filename, "digest": {"sha256": record.wheel_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "sdist": _descriptor(
                        record.sdist_filename, str(sdist.get("url", "")), record.key.sdist_sha256
                    ),
                    "target": record.key.target,
                },
                "internalParameters": {
                    "build_backend": str(build_system.get("backend", "")),
                    "build_requires": [str(each) for each in build_system.get("requires", []) or []],
                    "dynamic_requires": [
                        str(each) for each in build_system.get("dynamic_requires", []) or []
                    ],
                    "sandbox": _mapping(facts.get("sandbox")),
                    "reproducibility": _mapping(facts.get("reproducibility")),
                    "repair": str(facts.get("repair", "")),
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": FARM_BUILDER + (record.made_by or "farm"),
                    "version": {"wheelfarm-builder": builder_version},
                },
                "metadata": {
                    "invocationId": f"{record.key.sdist_sha256}/{record.key.target}",
                    "startedOn": rfc3339(record.started_at),
                    "finishedOn": rfc3339(record.finished_at),
                    **_reproducibility(record),
                },
                "byproducts": byproducts,
            },
        },
    }


def _reproducibility(record: BuildRecord) -> dict[str, Any]:
    """The verdict of a second, independent build (an extension field of wheelfarm's: SLSA v1 has none)."""
    if record.reproduced is None:
        return {}
    verdict = {
        "reproduced": record.reproduced,
        "differing": list(record.differing),
        "note": record.reproduction_note,
        "second_builder": FARM_BUILDER + (record.reproduced_by or "farm"),
    }
    return {REPRODUCIBILITY: verdict}


def _descriptor(name: str, uri: str, sha256: str) -> dict[str, Any]:
    """An in-toto ResourceDescriptor; empty fields left out, as the spec asks."""
    descriptor: dict[str, Any] = {"name": name}
    if uri:
        descriptor["uri"] = uri
    if sha256:
        descriptor["digest"] = {"sha256": sha256}
    return descriptor


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def rfc3339(timestamp: float) -> str:
    """A statement's time (UTC, to the second, "Z"), as SLSA's startedOn and finishedOn take it."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def timestamp_of(rfc3339_text: str) -> float:
    return datetime.datetime.fromisoformat(rfc3339_text.replace("Z", "+00:00")).timestamp()
