"""The example notebook runs headless (nbclient, ipympl) and shows a live reconstruction."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipympl")

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "notebooks" / "live-scan.ipynb"


def _png(data: str | bytes) -> np.ndarray:
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(io.BytesIO(raw), format="png")


def _ink(image: np.ndarray) -> float:
    """Fraction of pixels that are not (nearly) white."""
    return float(np.mean(image[..., :3].min(axis=-1) < 0.95))


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), "commit the notebook without outputs"
    run_dir = tmp_path_factory.mktemp("notebook")
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(run_dir)}}
    )
    client.execute()
    return nb


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb) if o["output_type"] == "stream")


def test_the_notebook_runs_without_errors(executed) -> None:
    errors = [o for o in _outputs(executed) if o["output_type"] == "error"]
    assert not errors, errors[0].get("evalue") if errors else None


def test_the_live_figure_updated_while_the_scan_ran(executed) -> None:
    text = _text(executed)
    redraws = int(re.search(r"live figure redrawn (\d+) times during the scan", text).group(1))
    assert redraws >= 2
    # right after RE() returns, the status says the reconstruction is still at work
    assert re.search(r"81/81 frames used; (final passes running|\d+ frame\(s\) still)", text)
    assert "81/81 frames used; finished" in text


def test_the_live_figure_widget_ends_showing_the_reconstruction(executed) -> None:
    widgets = executed.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    (canvas,) = [w["state"] for w in widgets.values() if w["model_name"] == "MPLCanvasModel"]
    final_frame = _png(canvas["_data_url"])  # the last frame pushed to the browser
    (first,) = [
        o
        for o in _outputs(executed)
        if o["output_type"] in ("display_data", "execute_result")
        and "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    waiting = _png(first["data"]["image/png"])  # the figure as the cell made it
    assert final_frame.shape == waiting.shape
    assert _ink(final_frame) > _ink(waiting) + 0.2  # images and curves where there were none


def test_the_result_figure_and_numbers_show_a_good_reconstruction(executed) -> None:
    text = _text(executed)
    match = re.search(
        r"(\d+) patterns, (\d+) passes, validation ratio ([\d.]+) \(found the specimen\), "
        r"object error vs truth ([\d.]+)",
        text,
    )
    assert match, text
    assert int(match.group(1)) == 81
    assert float(match.group(3)) < 0.6 and float(match.group(4)) < 0.1
    last = _outputs(executed)[-1]
    assert last["output_type"] == "execute_result"
    image = _png(last["data"]["image/png"])
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert _ink(image) > 0.3
