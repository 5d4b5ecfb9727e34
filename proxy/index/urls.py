"""Pure URL rewriting: upstream file URLs become URLs of this proxy.

Pages are served at ``<mount>/simple/<project>/`` and files at ``<mount>/files/<project>/<key>/<filename>``,
so the links are written relative (``../../files/...``). PEP 503 and PEP 691 both resolve relative URLs
against the page URL, and relative links keep working behind a reverse proxy that mounts us under a prefix.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

from proxy.index.model import DistFile, ProjectPage, file_key

FILES_FROM_PAGE = "../../files/"
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
