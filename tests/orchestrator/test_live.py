"""`icsweep status --watch/--json` (orchestrator.live) and the sequences/compute-saved lines of status and list, on
real tiny sweeps."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time

import pytest
import zarr
from orch_helpers import PYTHON, TINY, icsweep
from rich.console import Console

from analysis import open_sweep
from ihmodel.sweepdir import read_manifest, store_path
from orchestrator.cli import main
from orchestrator.live import sweep_view, watch
from orchestrator.trial import trial_files

GRID = ["clamps=[none]", "seeds=[1,2]"]  # n_labels 5 and 10 (the smoke sweep's axis) x 2 seeds: 2 cells of 2


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A complete tiny sweep (4 trials of 640 sequences, evals at 0, 320, 640). Copy it before changing it."""
    out = tmp_path_factory.mktemp("live") / "smoke"
    icsweep("run", "sweep=smoke", f"out={out}", "local.workers=0", *GRID, *TINY, check=True)
    return out


def test_status_json_has_each_trial_each_cell_and_the_totals(sweep_dir):
    proc = icsweep("status", str(sweep_dir), "--json", check=True)
    view = json.loads(proc.stdout)

    ds = open_sweep(sweep_dir)
    last_loss = ds["eval_loss"].sel(evaluator="fsl_train").isel(eval_step=-1)
    assert [t["id"] for t in view["trials"]] == read_manifest(sweep_dir).trial_ids()
    for trial in view["trials"]:
        assert trial["state"] == "complete"
        assert (trial["sequences"], trial["budget"], trial["stopped_early"], trial["evals"]) == (640, 640, False, 3)
        assert trial["fsl_train_loss"] == pytest.approx(float(last_loss.sel(**trial["axes"])))
        assert trial["crossed_sequences"] is None  # 640 sequences are far too few for a phase change
    assert [cell["axes"] for cell in view["cells"]] == [{"n_labels": 5, "clamp": "none"},
                                                       {"n_labels": 10, "clamp": "none"}]
    for cell in view["cells"]:
        seeds = [t for t in view["trials"] if t["axes"]["n_labels"] == cell["axes"]["n_labels"]]
        assert (cell["trials"], cell["sequences"], cell["budget"], cell["crossed"]) == (2, 1280, 1280, 0)
        assert cell["fsl_train_loss"] == pytest.approx(sum(t["fsl_train_loss"] for t in seeds) / 2)
    totals = view["totals"]
    assert totals["states"] == {"complete": 4, "running": 0, "failed": 0, "pending": 0}
    assert (totals["sequences"], totals["budget"], totals["saved_sequences"], totals["saved_percent"]) == \
        (2560, 2560, 0, 0.0)


def test_an_early_stop_shows_as_compute_saved_in_status_list_and_json(sweep_dir, tmp_path, capsys):
    out = tmp_path / "smoke"
    shutil.copytree(sweep_dir, out)
    stopped = read_manifest(out).trials[0].id
    # What a trial that stops early records at completion (the integrator's ihmodel.store attrs).
    zarr.open_group(str(store_path(out, stopped)), mode="r+").attrs.update(
        {"stopped_early": True, "stop_sequences": 320, "budget_sequences": 640})

    totals = sweep_view(out)["totals"]
    assert main(["status", str(out)]) == 0
    report = capsys.readouterr().out
    assert main(["list", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert (totals["sequences"], totals["budget"], totals["saved_sequences"], totals["saved_percent"]) == \
        (2240, 2560, 320, 12.5)
    assert totals["stopped_early"] == 1
    assert "sequences 2,240 of 2,560 budget; compute saved 320 sequences (12.5%)" in report
    assert [line.split()[2] for line in lines] == ["320/640", "640/640", "640/640", "640/640"]
    assert lines[0].startswith(stopped) and lines[0].endswith("stopped early")


def test_watch_ends_by_itself_when_nothing_runs(sweep_dir):
    console = Console(file=io.StringIO(), width=120)  # not a terminal: the last table is printed once

    view = watch(sweep_dir, console=console, interval=0.0)

    printed = console.file.getvalue()
    assert view["totals"]["states"]["complete"] == 4
    assert printed.count("sweep smoke: complete 4") == 1
    assert "│ 5        │ none  │ 2/2      │ 1,280/1,280 (100%) │" in printed
    assert "never" in printed and "compute saved 0 sequences (0.0%)" in printed


def test_watch_keeps_refreshing_while_a_trial_runs(sweep_dir, tmp_path):
    out = tmp_path / "smoke"
    shutil.copytree(sweep_dir, out)
    running = read_manifest(out).trials[0].id
    shutil.rmtree(store_path(out, running))
    trial_files(out, running)["running"].write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    console = Console(file=io.StringIO(), width=120)

    view = watch(out, console=console, interval=0.0, refreshes=3)  # would wait on the heartbeat for ever

    assert view["totals"]["states"]["running"] == 1
    assert "1/2, 1 running" in console.file.getvalue() and "not yet" in console.file.getvalue()


def test_reading_a_sweep_while_its_trial_writes_never_fails_and_only_moves_forward(tmp_path):
    out = tmp_path / "busy"
    # 200 steps written 2 at a time (100 flushes), an eval every 10 steps.
    run = subprocess.Popen([PYTHON, "-m", "orchestrator.cli", "run", "sweep=smoke", f"out={out}", "local.workers=0",
                            "axes.data.n_labels=[5]", "clamps=[none]", "seeds=[1]", *TINY, "base.train.sequences=6400",
                            "base.train.flush_every=2"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    seen = []
    try:
        while run.poll() is None:
            if (out / "manifest.json").is_file():
                (trial,) = sweep_view(out)["trials"]
                seen.append((trial["sequences"], trial["evals"], trial["fsl_train_loss"] is None))
            time.sleep(0.02)
    finally:
        _, stderr = run.communicate(timeout=300)
    (final,) = sweep_view(out)["trials"]

    assert run.returncode == 0, stderr
    assert final["state"] == "complete" and (final["sequences"], final["evals"]) == (6400, 21)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(seen, seen[1:]))
    assert any(0 < sequences < 6400 for sequences, _, _ in seen), seen  # it read the store mid-write
    assert all(no_loss == (evals == 0) for _, evals, no_loss in seen)
