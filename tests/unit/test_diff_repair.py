"""Drift in lists merged by something other than the name converges (a Service port edited by hand)."""

from __future__ import annotations

import copy

from aperag_operator.builders import service
from aperag_operator.diff import list_repair_patch

from .helpers import instance


def test_a_hand_edited_port_is_replaced_whole() -> None:
    desired = service.build(instance(), "api")
    observed = copy.deepcopy(desired)
    observed["metadata"]["resourceVersion"] = "42"
    observed["spec"]["ports"] = [{"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}]
    patch = list_repair_patch(desired, observed)
    assert patch == {"spec": {"ports": desired["spec"]["ports"]}, "metadata": {"resourceVersion": "42"}}


def test_nothing_to_repair_when_the_lists_match() -> None:
    desired = service.build(instance(), "api")
    observed = copy.deepcopy(desired)
    observed["spec"]["ports"][0]["nodePort"] = None  # fields of other managers do not count
    observed["spec"]["ports"][0].pop("nodePort")
    assert list_repair_patch(desired, observed) is None
