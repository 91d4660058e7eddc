import re
import shutil

import pandas as pd
import pytest

from analysis.figures import induction_heads, loss_curves, phase_change_vs_property
from analysis.report import analyze, main
from analysis import open_sweep, phase_change_table
from ihmodel.sweepdir import read_manifest, store_path

FIGURES = ["induction_heads", "loss_curves", "phase_change_vs_n_labels"]


def test_analyze_writes_the_csv_and_figures(tmp_path, sweep_dir, quiet):
    shutil.copytree(sweep_dir, tmp_path / "sweep")

    table = analyze(tmp_path / "sweep", figures=True)

    written = pd.read_csv(tmp_path / "sweep" / "phase_change.csv")
    pd.testing.assert_frame_equal(written, table, check_dtype=False)
    names = sorted(p.name for p in (tmp_path / "sweep" / "figures").iterdir())
    assert names == sorted(f"{stem}.{ext}" for stem in FIGURES for ext in ("pdf", "png"))
    assert all(p.stat().st_size > 1000 for p in (tmp_path / "sweep" / "figures").iterdir())


def test_main_prints_the_table_and_warns_of_gaps(sweep_dir, tmp_path, capsys):
    status = main([str(sweep_dir), "--out", str(tmp_path), "--method", "sigmoid"])

    out, err = capsys.readouterr()
    assert status == 0
    assert out.splitlines()[0].startswith("phase change (sigmoid:")
    assert f"wrote {tmp_path / 'phase_change_sigmoid.csv'}" in out
    assert err.startswith("warning: sweep 'synthetic': 1 of 8 trials have no store")
    assert (tmp_path / "phase_change_sigmoid.csv").is_file()


def test_main_errors_are_one_line_naming_the_problem_and_fix(tmp_path, sweep_dir, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"icsweep analyze: {tmp_path}/manifest.json: no sweep manifest; is {tmp_path} a sweep")



def test_a_damaged_store_is_a_warning_naming_the_trial_and_the_table_is_made(tmp_path, sweep_dir, capsys):
    shutil.copytree(sweep_dir, tmp_path / "sweep")
    entry = read_manifest(tmp_path / "sweep").trials[0]
    (store_path(tmp_path / "sweep", entry.id) / "loss" / "zarr.json").write_text("{")
    assert main([str(tmp_path / "sweep")]) == 0
    captured = capsys.readouterr()
    assert "phase change" in captured.out
    assert re.search(rf"warning: sweep 'synthetic': 1 damaged trial stores.*{entry.id} \(unreadable metadata of "
                     rf"array 'loss'.*`icsweep run` sets them aside", captured.err), captured.err


def test_main_rejects_an_unknown_method(capsys):
    with pytest.raises(SystemExit):
        main(["somewhere", "--method", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


def test_figures_have_a_panel_per_cell_and_layer(full_sweep_dir):
    ds = open_sweep(full_sweep_dir)

    assert len([ax for ax in loss_curves(ds).axes if ax.get_visible()]) == 2  # n_labels 5 and 10
    assert len(induction_heads(ds).axes) == 4  # 2 layers x 2 clamp sets
    (name, fig), = phase_change_vs_property(phase_change_table(ds)).items()
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert name == "n_labels" and [ax.get_title() for ax in panels] == ds["clamp"].values.tolist()
    assert all(ax.get_yscale() == "log" and ax.get_xlabel() == "labels (n_labels)" for ax in panels)
