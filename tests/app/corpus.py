"""Small documents with distinctive content, for end-to-end tests."""

from __future__ import annotations

DOCS: dict[str, str] = {
    "volcanoes.md": (
        "# Volcanoes\n\nA volcano is a rupture in the crust of a planet where molten rock, called magma, "
        "escapes to the surface as lava. Shield volcanoes such as Mauna Loa have gentle slopes built from "
        "fluid basalt flows. Stratovolcanoes erupt explosively and produce pyroclastic flows and ash clouds."
    ),
    "sourdough.txt": (
        "Sourdough bread is leavened by a starter culture of wild yeast and lactic acid bacteria. Feed the "
        "starter with flour and water daily. A long cold fermentation in the refrigerator develops a tangy "
        "flavour and an open crumb. Bake in a preheated Dutch oven to get a crisp crust."
    ),
    "chess.html": (
        "<html><body><h1>Chess openings</h1><p>The Sicilian Defence begins 1.e4 c5 and is the most popular "
        "response to the king's pawn opening.</p><p>The Queen's Gambit offers a pawn on c4 to gain control "
        "of the centre; castling early keeps the king safe.</p></body></html>"
    ),
}

QUERIES: list[tuple[str, str]] = [
    ("how does magma reach the surface and become lava", "volcanoes.md"),
    ("wild yeast starter fermentation for bread", "sourdough.txt"),
    ("Sicilian Defence response to e4", "chess.html"),
]
