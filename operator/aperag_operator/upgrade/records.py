"""What the machine knows about releases: the records in status.history, revisions as reported by the
app, and the order of two versions."""

from __future__ import annotations

from collections.abc import Sequence

from packaging.version import InvalidVersion, Version

from aperag_operator.builders.common import Release
from aperag_operator.spec.model import HistoryEntry, ReleaseStatus, TargetRef

SUCCEEDED = "Succeeded"
#: The revision of an empty schema, as Alembic spells the downgrade target.
BASE = "base"


def revision_of(revisions: tuple[str, ...] | None) -> str | None:
    """One revision string for the status: None when unknown, ``base`` for an empty schema."""
    if revisions is None:
        return None
    if not revisions:
        return BASE
    return ",".join(sorted(revisions))


def release_of(record: ReleaseStatus | TargetRef | HistoryEntry) -> Release:
    return Release(record.version, record.image)


def record_of(release: Release, revision: str | None = None) -> ReleaseStatus:
    return ReleaseStatus(version=release.version, image=release.image, revision=revision)


def ref_of(release: Release) -> TargetRef:
    return TargetRef(version=release.version, image=release.image)


def known_revision(history: Sequence[HistoryEntry], release: Release) -> HistoryEntry | None:
    """The newest successful record of ``release`` with its schema revision: what a rollback to it
    downgrades to. An empty schema (``base``) is no such record: nothing is dropped automatically."""
    for entry in reversed(history):
        if entry.outcome == SUCCEEDED and entry.revision not in (None, BASE) and release_of(entry) == release:
            return entry
    return None


def older(a: str, b: str) -> bool | None:
    """Whether version ``a`` is older than ``b`` (PEP 440 order, a leading "v" allowed); None when either
    cannot be ordered (e.g. "nightly")."""
    try:
        return Version(a) < Version(b)
    except InvalidVersion:
        return None


def trimmed(history: list[HistoryEntry], limit: int) -> list[HistoryEntry]:
    return history[-limit:]
