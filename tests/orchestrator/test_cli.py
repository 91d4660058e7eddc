"""The icsweep command line: status, list, cancel, dispatch to train/analyze, and one-line errors."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest
from orch_helpers import PYTHON, TINY, icsweep

from ihmodel.sweepdir import read_manifest
from orchestrator.cli import main
from orchestrator.status import pid_alive


@pytest.mark.parametrize("args, match", [
    (["run"], r"give sweep=NAME \(one of .*smoke"),
    (["run", "sweep=nope"], r"unknown sweep 'nope'; sweeps: "),
    (["run", "sweep=smoke", "clamps=[nope]"], r"unknown clamp set nope; clamp sets: "),
    (["run", "sweep=smoke", "+axes.data.labels=[5]"], r"unknown axis key 'data.labels'"),
    (["run", "sweep=smoke", "seeds=[]"], r"empty grid: seeds has no values"),
    (["run", "sweep=smoke", "backend=slurm"], r"backend='slurm'; choose one of local, ray, submitit"),
    (["status", "/nonexistent/sweep"], r"no sweep manifest"),
    (["list", "/nonexistent/sweep"], r"no sweep manifest"),
    (["cancel", "/nonexistent/sweep"], r"no sweep manifest"),
    (["fly"], r"unknown command 'fly'; commands: run, status"),
])
def test_bad_input_is_one_line_on_stderr(args, match, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert __import__("re").search(match, err), err


def test_help_and_dispatch(capsys):
    assert main(["--help"]) == 0
    assert "icsweep run sweep=smoke" in capsys.readouterr().out
    assert main(["run", "--help"]) == 0
    assert "sweeps: " in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "icsweep train" in capsys.readouterr().out


def test_status_list_and_analyze_after_a_run(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert main(["run", "sweep=smoke", f"out={out}", "local.workers=0", "seeds=[1]", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "4 trials" in printed and "phase change" in printed  # the run ends with the analysis table
    assert main(["status", str(out)]) == 0
    assert "complete 4  running 0  failed 0  pending 0" in capsys.readouterr().out
    assert main(["status", str(out), "--watch"]) == 0  # a live bar, which ends at once: nothing left to run
    assert "complete 4" in capsys.readouterr().out
    assert main(["list", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(" complete  640/640  n_labels=" in line for line in lines)  # trained/budget
    assert main(["analyze", str(out)]) == 0
    assert "phase change" in capsys.readouterr().out
    assert main(["cancel", str(out)]) == 0
    assert "nothing is running" in capsys.readouterr().out


@pytest.mark.slow
def test_cancel_stops_a_local_driver_and_its_workers(tmp_path):
    out = tmp_path / "long"
    sweep = ["sweep=smoke", f"out={out}", "seeds=[1]", "clamps=[none]", *TINY, "base.train.sequences=64000",
             "base.train.checkpoint_every=640"]
    driver = subprocess.Popen([PYTHON, "-m", "orchestrator.cli", "run", *sweep], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ("running 2" in icsweep("status", str(out)).stdout
                                              and len(list(out.glob("trials/*.ckpt.pt"))) == 2):
            time.sleep(0.5)
        status = icsweep("status", str(out)).stdout
        assert "running 2" in status, status
        workers = [int(line.split(" pid ")[1]) for line in status.splitlines() if " pid " in line]
        proc = icsweep("cancel", str(out), check=True)
        assert "sent SIGTERM to the driver" in proc.stdout
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGKILL)
    assert driver.returncode == 130
    deadline = time.time() + 10
    while time.time() < deadline and any(pid_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in workers)
    status = icsweep("status", str(out)).stdout
    assert "running 0" in status and "pending 2" in status and "checkpoint and will resume" in status
    assert len(read_manifest(out).trials) == 2
