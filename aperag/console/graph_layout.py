"""A deterministic force-directed layout (Fruchterman-Reingold) for the graph page's SVG, computed on the
server so the page needs no script nor graph library.

The same nodes and edges in the same order give the same picture: the nodes start on a circle in their
given order and the forces are iterated a fixed number of times with a fixed cooling schedule; nothing is
random. For the few dozen nodes the page draws this takes a few milliseconds (numpy, all pairs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def layout(
    n: int,
    edges: Sequence[tuple[int, int]],
    width: float,
    height: float,
    margin: float = 40.0,
    iterations: int = 150,
) -> list[tuple[float, float]]:
    """Positions of nodes 0..n-1 inside (margin, margin)-(width - margin, height - margin); `edges` are
    pairs of node indexes."""
    if n == 0:
        return []
    if n == 1:
        return [(width / 2, height / 2)]
    angles = 2 * np.pi * np.arange(n) / n
    pos = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 0.5
    # Work in a unit square scaled to the canvas' aspect; k is the ideal distance between nodes.
    aspect = np.array([width / max(width, height), height / max(width, height)])
    pos *= aspect
    k = 0.9 * np.sqrt(float(aspect[0] * aspect[1]) / n)
    ends = np.array(edges, dtype=int).reshape(-1, 2)
    temperature = 0.1
    for _ in range(iterations):
        delta = pos[:, None, :] - pos[None, :, :]
        distance = np.sqrt((delta**2).sum(axis=2)) + 1e-9
        np.fill_diagonal(distance, 1.0)
        repulsion = (k * k / distance**2)[:, :, None] * delta
        displacement = repulsion.sum(axis=1)
        if len(ends):
            d = pos[ends[:, 0]] - pos[ends[:, 1]]
            length = np.sqrt((d**2).sum(axis=1))[:, None] + 1e-9
            pull = d * length / k
            np.add.at(displacement, ends[:, 0], -pull)
            np.add.at(displacement, ends[:, 1], pull)
        displacement -= pos * 10.0  # gravity: separate parts and lone nodes stay near the middle
        size = np.sqrt((displacement**2).sum(axis=1))[:, None] + 1e-9
        pos += displacement / size * np.minimum(size, temperature)
        temperature *= 0.97
    # Fit into the canvas, keeping the proportions.
    low, high = pos.min(axis=0), pos.max(axis=0)
    span = np.maximum(high - low, 1e-9)
    inner = np.array([width - 2 * margin, height - 2 * margin])
    scale = float(np.min(inner / span))
    centre = (low + high) / 2
    placed = (pos - centre) * scale + np.array([width / 2, height / 2])
    return [(round(float(x), 1), round(float(y), 1)) for x, y in placed]
