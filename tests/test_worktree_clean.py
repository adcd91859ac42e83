"""A test run leaves the work tree as it found it: the viewer tests' screenshots go to the
test's tmp_path, and only OPGRAPH_UPDATE_DOC_IMAGES=1 refreshes the pictures in docs/img
(docs/viewer.md says how). conftest.py refuses, during every test, a write under docs/
without that variable; these tests check the screenshot helper and that refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_viewer
from conftest import WroteUnderDocs
from test_viewer import open_viewer, screenshot

from opgraph import Engine

PROBE = "worktree-clean-probe.png"  # a name docs/img never holds


@pytest.fixture
def server():
    with Engine(name="worktree-clean", entry_points=False).serve(port=0) as server:
        yield server


def test_a_screenshot_goes_to_tmp_path_not_docs(page, server, monkeypatch, tmp_path):
    monkeypatch.delenv("OPGRAPH_UPDATE_DOC_IMAGES", raising=False)
    open_viewer(page, server)
    path = screenshot(page, PROBE, tmp_path)
    assert path == tmp_path / PROBE
    assert path.read_bytes().startswith(b"\x89PNG")
    assert not (test_viewer.DOCS_IMG / PROBE).exists()


def test_the_variable_refreshes_docs_img(page, server, monkeypatch, tmp_path):
    docs_img = tmp_path / "docs-img"  # stands for docs/img, so the test writes no real file
    monkeypatch.setattr(test_viewer, "DOCS_IMG", docs_img)
    monkeypatch.setenv("OPGRAPH_UPDATE_DOC_IMAGES", "1")
    open_viewer(page, server)
    path = screenshot(page, PROBE, tmp_path)
    assert path == docs_img / PROBE
    assert path.read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / PROBE).exists()


def test_a_test_writing_under_docs_fails_and_writes_nothing(monkeypatch):
    monkeypatch.delenv("OPGRAPH_UPDATE_DOC_IMAGES", raising=False)
    target = test_viewer.DOCS_IMG / PROBE
    try:
        with pytest.raises(WroteUnderDocs, match="OPGRAPH_UPDATE_DOC_IMAGES=1"):
            target.write_bytes(b"not a picture")
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)  # without the guard, the write above happened


def test_the_docs_say_how_to_refresh_the_pictures():
    viewer = (Path(__file__).resolve().parent.parent / "docs" / "viewer.md").read_text()
    assert "OPGRAPH_UPDATE_DOC_IMAGES=1" in viewer
