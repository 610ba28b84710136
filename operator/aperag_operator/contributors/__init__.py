"""The features that plug into the engine, one contributor each (see base.py)."""

from __future__ import annotations

from aperag_operator.contributors.autoscaling import AutoscalingContributor
from aperag_operator.contributors.base import Contributor
from aperag_operator.contributors.databases import DatabasesContributor
from aperag_operator.contributors.object_storage import ObjectStorageContributor
from aperag_operator.contributors.observability import ObservabilityContributor
from aperag_operator.contributors.upgrades import UpgradesContributor


def default_contributors() -> list[Contributor]:
    return [
        DatabasesContributor(), ObjectStorageContributor(), AutoscalingContributor(), UpgradesContributor(),
        ObservabilityContributor(),
    ]  # fmt: skip
