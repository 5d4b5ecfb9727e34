"""The proxy's URL layout, in one place, and the rewriting of upstream file URLs into it.

Pages are served at ``<mount>/simple/<project>/``, files at ``<mount>/files/<project>/<key>/<filename>``,
build-pending links at ``<mount>/build/<target>/<project>/<sdist sha256>/<filename>`` and what builds left
at ``<mount>/built/<sdist sha256>/<target>/<artifact sha256>/<filename>`` (content-addressed: a rebuild gets
new URLs, so every one of them may be cached forever). Links in pages are written relative (``../../``):
PEP 503 and PEP 691 both resolve relative URLs against the page URL, and relative links keep working behind
a reverse proxy that mounts us under a prefix. The admin API links the same paths from the root.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

from builder.jobs import Artifact, BuildRecord, artifact_filename, artifact_sha256
from builder.tags import Target
from proxy.index.model import DistFile, ProjectPage, file_key

FROM_PAGE = "../../"  # from <mount>/simple/<project>/ (or /t/<target>/simple/<project>/) to the mount
FILES_FROM_PAGE = FROM_PAGE + "files/"
FILE_ROUTE = "/files/{project}/{key}/{filename}"
PENDING_ROUTE = "/build/{target}/{project}/{sdist}/{filename}"
BUILT_ROUTE = "/built/{sdist}/{target}/{sha256}/{filename}"
BUILT_BY_NAME_ROUTE = "/built/{sdist}/{target}/{filename}"  # before content addresses: lock files name it
METADATA_SUFFIX = ".metadata"  # PEP 658: the metadata file lives at the file's URL plus ".metadata"
PROVENANCE_SUFFIX = ".provenance"


def file_path(project: str, dist: DistFile) -> str:
    """The path below ``files/``: project, content key, then the real filename (pip names files by it)."""
    return f"{project}/{file_key(dist)}/{quote(dist.filename, safe='')}"


def proxied_page(page: ProjectPage) -> ProjectPage:
    return dataclasses.replace(page, files=tuple(_proxied_file(page.name, dist) for dist in page.files))


def _proxied_file(project: str, dist: DistFile) -> DistFile:
    url = FILES_FROM_PAGE + file_path(project, dist)
    return dataclasses.replace(
        dist,
        url=url,
        provenance=url + PROVENANCE_SUFFIX if dist.provenance else None,
    )


def pending_path(target: Target, project: str, sdist_sha256: str, filename: str) -> str:
    """A build-pending link, below the mount."""
    return f"build/{target.id}/{project}/{sdist_sha256}/{quote(filename, safe='')}"


def built_address(record: BuildRecord, artifact: Artifact) -> str:
    """The sha256 in an artifact's URL: its own, except the METADATA's, which lives at its wheel's URL plus
    ".metadata" (PEP 658) and so under the wheel's sha256 (the wheel's bytes fix their METADATA's)."""
    return artifact_sha256(record, Artifact.WHEEL if artifact is Artifact.METADATA else artifact)


def built_path(record: BuildRecord, artifact: Artifact) -> str:
    """What a build left, below the mount; content-addressed (see ``built_address``)."""
    key = record.key
    filename = quote(artifact_filename(record, artifact), safe="")
    return f"built/{key.sdist_sha256}/{key.target}/{built_address(record, artifact)}/{filename}"
