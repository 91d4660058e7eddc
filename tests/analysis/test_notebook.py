"""docs/analysis.ipynb runs top to bottom against a generated sweep, so the example never rots."""
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]


def test_notebook_runs_top_to_bottom(sweep_dir, monkeypatch):
    monkeypatch.setenv("ICSWEEP_SWEEP", str(sweep_dir))
    # The kernel imports `analysis` from the checkout, installed or not.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(ROOT / "docs" / "analysis.ipynb", as_version=4)

    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(str(out.get("data", {}).get("text/plain", "")) for out in outputs)
    assert str(sweep_dir) in text and "mean_sequences" in text
    assert sum("image/png" in out.get("data", {}) for out in outputs) >= 4
    assert sys.executable  # the kernelspec's "python" resolves to this interpreter (jupyter_client)
