"""analysis reads the on-disk formats only (ihmodel.store, ihmodel.sweepdir, ihmodel.config, ihmodel.integrity;
it raises ihmodel.errors) and shares the phase-change threshold with the early-stop rule (ihmodel.stopping); no
torch, no orchestrator."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "analysis"
ALLOWED_IHMODEL = {"ihmodel.store", "ihmodel.sweepdir", "ihmodel.config", "ihmodel.errors", "ihmodel.integrity",
                   "ihmodel.stopping"}


def test_analysis_imports_only_the_formats_from_ihmodel():
    imported = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert {m for m in imported if m.split(".")[0] == "ihmodel"} <= ALLOWED_IHMODEL
    assert not {m for m in imported if m.split(".")[0] in ("orchestrator", "torch")}


def test_importing_analysis_loads_neither_torch_nor_the_orchestrator():
    code = ("import sys, analysis, analysis.report, analysis.figures, analysis.synthetic; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'orchestrator')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
