"""The collections page: list and create, with the form's errors."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.console.conftest import csrf_of


def _create(console: TestClient, name: str, description: str = "") -> object:
    token = csrf_of(console.get("/console/").text)
    return console.post(
        "/console/collections",
        data={"name": name, "description": description, "csrf_token": token},
        follow_redirects=False,
    )


def test_create_goes_to_the_collection_and_lists_it(console: TestClient) -> None:
    created = _create(console, "handbook", "Staff handbook")
    assert created.status_code == 303  # type: ignore[attr-defined]
    assert created.headers["location"].startswith("/console/collections/")  # type: ignore[attr-defined]
    page = console.get("/console/").text
    assert "handbook" in page and "Staff handbook" in page and "No documents yet" in page


def test_bad_names_show_a_message_and_keep_what_was_typed(console: TestClient) -> None:
    empty = _create(console, "   ", "kept")
    assert empty.status_code == 400  # type: ignore[attr-defined]
    assert 'role="alert"' in empty.text and "Enter a name" in empty.text  # type: ignore[attr-defined]
    assert "kept" in empty.text  # type: ignore[attr-defined]
    spaces = _create(console, "my docs")
    assert spaces.status_code == 400 and "no spaces" in spaces.text  # type: ignore[attr-defined]
    assert 'value="my docs"' in spaces.text  # type: ignore[attr-defined]
    assert _create(console, "twice").status_code == 303  # type: ignore[attr-defined]
    again = _create(console, "twice")
    assert again.status_code == 409 and "already exists" in again.text  # type: ignore[attr-defined]


def test_names_and_descriptions_are_escaped(console: TestClient) -> None:
    assert _create(console, "safe", "<script>alert(1)</script>").status_code == 303  # type: ignore[attr-defined]
    page = console.get("/console/").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
