"""Each process's build snapshots (ProjectBuilds) of the projects it serves pages for, kept between
requests: a page must not cost a look at every record of its project.

A snapshot is current for one version of its project; a project's version moves on whenever one of its builds
changes (here, or, in a cluster, as a notification says). Versions come from one counter: after
``forget_all`` (a cluster process that lost its notification connection and may have missed some) every
project starts past every version handed out before, so no page rendered then is taken as current.
"""

from __future__ import annotations

from collections import OrderedDict

from proxy.builds.service import ProjectBuilds

# Projects whose snapshot is kept, least recently asked first: bounded, as the names are the clients' choice.
SNAPSHOTS_KEPT = 4096


class Snapshots:
    def __init__(self, kept: int = SNAPSHOTS_KEPT) -> None:
        self._kept = kept
        self._counter = 0
        self._floor = 0
        self._versions: dict[str, int] = {}
        self._snapshots: OrderedDict[str, ProjectBuilds] = OrderedDict()

    def version(self, project: str) -> int:
        return self._versions.get(project, self._floor)

    def current(self, project: str) -> ProjectBuilds | None:
        snapshot = self._snapshots.get(project)
        if snapshot is None or snapshot.version != self.version(project):
            return None
        self._snapshots.move_to_end(project)
        return snapshot

    def keep(self, snapshot: ProjectBuilds) -> ProjectBuilds:
        self._snapshots[snapshot.project] = snapshot
        self._snapshots.move_to_end(snapshot.project)
        if len(self._snapshots) > self._kept:
            self._snapshots.popitem(last=False)
        return snapshot

    def changed(self, project: str) -> None:
        self._counter += 1
        self._versions[project] = self._floor + self._counter
        self._snapshots.pop(project, None)

    def forget_all(self) -> None:
        self._floor += self._counter + 1
        self._counter = 0
        self._versions.clear()
        self._snapshots.clear()
