"""Status roll-up, conditions and events."""

from __future__ import annotations

from aperag_operator.status import (
    ComponentState,
    Problem,
    component_state,
    compute_status,
    condition,
    transitions,
)


def dep(desired: int, ready: int, updated: int | None = None, generation: int = 2, observed: int = 2) -> dict:  # type: ignore[type-arg]
    updated = ready if updated is None else updated
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": observed,
            "replicas": desired,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "availableReplicas": ready,
        },
    }


def test_component_state() -> None:
    assert component_state(2, dep(2, 2)).is_ready
    assert not component_state(2, dep(2, 1)).is_ready
    assert not component_state(2, dep(2, 2, observed=1)).is_ready
    assert not component_state(2, None).is_ready
    st = component_state(2, dep(2, 1))
    assert (st.desired, st.ready, st.updated) == (2, 1, 1)


def ready_components() -> dict[str, ComponentState]:
    return {"api": component_state(2, dep(2, 2)), "worker": component_state(1, dep(1, 1))}


def test_ready_status() -> None:
    status = compute_status(
        generation=4,
        version="1.0",
        previous=None,
        components=ready_components(),
        problems=[],
        paused=False,
        now="T1",
    )
    assert status["phase"] == "Ready"
    assert status["observedGeneration"] == 4
    assert status["version"] == "1.0"
    ready = condition(status, "Ready")
    assert ready is not None and ready["status"] == "True" and ready["observedGeneration"] == 4
    assert status["components"]["api"] == {
        "desired": 2,
        "ready": 2,
        "updated": 2,
        "available": 2,
        "isReady": True,
    }
    for ctype in ("Ready", "Progressing", "Degraded", "Paused"):
        cond = condition(status, ctype)
        assert cond is not None and set(cond) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }


def test_status_is_stable_when_nothing_changes() -> None:
    first = compute_status(
        generation=1,
        version="1.0",
        previous=None,
        components=ready_components(),
        problems=[],
        paused=False,
        now="T1",
    )
    second = compute_status(
        generation=1,
        version="1.0",
        previous=first,
        components=ready_components(),
        problems=[],
        paused=False,
        now="T2",
    )
    assert first == second


def test_transition_time_moves_only_on_flip() -> None:
    progressing = {"api": component_state(2, dep(2, 1))}
    first = compute_status(
        generation=1,
        version="1.0",
        previous=None,
        components=progressing,
        problems=[],
        paused=False,
        now="T1",
    )
    assert first["phase"] == "Progressing"
    second = compute_status(
        generation=1,
        version="1.0",
        previous=first,
        components=ready_components(),
        problems=[],
        paused=False,
        now="T2",
    )
    assert condition(second, "Ready")["lastTransitionTime"] == "T2"  # type: ignore[index]
    assert condition(second, "Degraded")["lastTransitionTime"] == "T1"  # type: ignore[index]
    events = transitions(first, second)
    assert ("Normal", "Ready") in [(e[0], e[1]) for e in events]


def test_problem_makes_degraded_and_not_ready() -> None:
    status = compute_status(
        generation=1,
        version="1.0",
        previous=None,
        components=ready_components(),
        problems=[Problem("SecretNotFound", "Secret llm (referenced by spec.app.env[0]) not found")],
        paused=False,
        now="T1",
    )
    assert status["phase"] == "Degraded"
    assert condition(status, "Ready")["status"] == "False"  # type: ignore[index]
    degraded = condition(status, "Degraded")
    assert degraded is not None and degraded["reason"] == "SecretNotFound" and "llm" in degraded["message"]
    events = transitions(None, status)
    assert ("Warning", "SecretNotFound") in [(e[0], e[1]) for e in events]


def test_paused() -> None:
    status = compute_status(
        generation=1,
        version="1.0",
        previous=None,
        components=ready_components(),
        problems=[],
        paused=True,
        now="T1",
    )
    assert status["phase"] == "Paused"
    assert condition(status, "Paused")["status"] == "True"  # type: ignore[index]


def test_expected_wait_is_progressing_not_degraded() -> None:
    status = compute_status(
        generation=1,
        version="1.0",
        previous=None,
        components={},
        problems=[Problem("DatabasesNotReady", "postgresql is Creating", degraded=False)],
        paused=False,
        now="T1",
    )
    assert condition(status, "Degraded")["status"] == "False"  # type: ignore[index]
    assert condition(status, "Ready")["reason"] == "DatabasesNotReady"  # type: ignore[index]
    progressing = condition(status, "Progressing")
    assert progressing is not None and progressing["status"] == "True" and progressing["reason"] == "DatabasesNotReady"
    assert status["phase"] == "Progressing"


def test_an_unreadable_spec_keeps_the_components_and_no_components_means_no_key() -> None:
    running = compute_status(generation=1, version="1.0", previous=None, components=ready_components(),
                             problems=[], paused=False, now="T1")  # fmt: skip
    invalid = compute_status(
        generation=2, version="1.0", previous=running, components={},
        problems=[Problem("InvalidSpec", "spec.components.sidecar: extra inputs are not permitted")],
        paused=False, now="T2", kept_components=running["components"],
    )  # fmt: skip
    assert invalid["components"] == running["components"]
    assert condition(invalid, "Ready")["reason"] == "InvalidSpec"  # type: ignore[index]
    # Nothing to show: the key is left out, never applied as an empty map (server-side apply would make
    # it null, which the schema refuses).
    none = compute_status(generation=1, version="1.0", previous=None, components={}, problems=[], paused=False,
                          now="T1")  # fmt: skip
    assert "components" not in none
