"""A core/v1 Affinity, typed, so that the API server rejects a malformed one at admission.

Only the fields of Kubernetes' own Affinity (node affinity, pod affinity, pod anti-affinity), with the
same names and the checks the API server makes when it validates a pod template (operators, values
required or forbidden by the operator, weights 1-100, a topology key). A malformed affinity used to be
accepted (it was kept as free-form JSON) and failed only when the Deployment was applied.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from aperag_operator.spec.common import (
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_PATTERN,
    Spec,
    cel,
    spec_config,
)

LabelKey = Annotated[str, StringConstraints(pattern=QUALIFIED_NAME_PATTERN, max_length=317)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)]

_SET_OPERATOR_VALUES = cel(
    "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : "
    "(self.operator in ['Exists', 'DoesNotExist'] ? size(self.values) == 0 : size(self.values) == 1)",
    "values must be non-empty for In and NotIn, empty for Exists and DoesNotExist, and a single number for Gt and Lt",
    fieldPath=".values",
)


class NodeSelectorRequirement(Spec):
    """A node label (or field) and the values it may take."""

    model_config = spec_config(**{"x-kubernetes-validations": [_SET_OPERATOR_VALUES]})
    key: LabelKey = Field(..., description="The label key (or field name) the selector applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        ..., description="How the key relates to the values."
    )
    values: list[str] = Field(default_factory=list, max_length=16, description="The values (see operator).")


class NodeSelectorTerm(Spec):
    """Requirements that must all hold (an empty term matches no node)."""

    match_expressions: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=16, description="Requirements on node labels."
    )
    match_fields: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=16, description="Requirements on node fields."
    )


class NodeSelector(Spec):
    """Terms of which at least one must hold."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        ..., max_length=16, min_length=1, description="The terms (ORed)."
    )


class PreferredSchedulingTerm(Spec):
    """A weighted node preference."""

    weight: int = Field(..., ge=1, le=100, description="Weight, 1-100.")
    preference: NodeSelectorTerm = Field(..., description="The preferred nodes.")


class NodeAffinity(Spec):
    """Which nodes the pods must or should run on."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Hard requirement."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=16, description="Soft preferences."
    )


class LabelSelectorRequirement(Spec):
    """A label and the values it may take."""

    model_config = spec_config(
        **{
            "x-kubernetes-validations": [
                cel(
                    "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0",
                    "values must be non-empty for In and NotIn and empty for Exists and DoesNotExist",
                    fieldPath=".values",
                )
            ]
        }
    )
    key: LabelKey = Field(..., description="The label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        ..., description="How the key relates to the values."
    )
    values: list[LabelValue] = Field(default_factory=list, max_length=16, description="The values (see operator).")


class LabelSelector(Spec):
    """A label query over pods (or namespaces)."""

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Labels that must all be present with these values.",
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=16, description="Requirements that must all hold."
    )


class PodAffinityTerm(Spec):
    """Pods that must (or must not) run in the same topology domain."""

    label_selector: LabelSelector | None = Field(default=None, description="The pods.")
    namespaces: list[str] = Field(default_factory=list, max_length=16, description="Namespaces of the pods.")
    namespace_selector: LabelSelector | None = Field(default=None, description="Namespaces of the pods.")
    topology_key: Annotated[str, StringConstraints(pattern=QUALIFIED_NAME_PATTERN, max_length=317)] = Field(
        ..., description="The node label that defines a topology domain, e.g. kubernetes.io/hostname."
    )
    match_label_keys: list[LabelKey] = Field(
        default_factory=list, max_length=16, description="See core/v1 PodAffinityTerm."
    )
    mismatch_label_keys: list[LabelKey] = Field(
        default_factory=list, max_length=16, description="See core/v1 PodAffinityTerm."
    )


class WeightedPodAffinityTerm(Spec):
    """A weighted pod (anti-)affinity preference."""

    weight: int = Field(..., ge=1, le=100, description="Weight, 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(..., description="The term.")


class PodAffinity(Spec):
    """Pods to run near (affinity) or away from (anti-affinity)."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=16, description="Hard requirements."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=16, description="Soft preferences."
    )


class Affinity(Spec):
    """A core/v1 Affinity."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Pod anti-affinity.")
