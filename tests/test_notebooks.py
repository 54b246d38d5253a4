"""
The notebooks as GitHub shows them: stored with the outputs of one run from top to bottom. That they
run, from a clean clone, is .ci/run's last step (`jupyter execute`), which takes minutes.
"""
import json

import pytest

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_is_a_notebook():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_as_one_run_from_top_to_bottom_with_its_pictures(path):
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    # numbered 1, 2, 3...: every cell ran, once, in order, in one kernel (no cell edited and left unrun)
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    outputs = [o for c in cells for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
