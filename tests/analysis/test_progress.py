"""analysis.progress: the evaluation facts `icsweep status --watch/--json` shows, from stores that may be mid-write."""
import shutil

import numpy as np
import zarr

from analysis import open_sweep, phase_change
from analysis.progress import EvalProgress, eval_progress, sweep_eval_progress
from ihmodel.sweepdir import read_manifest, store_path


def test_facts_agree_with_the_phase_change_table_and_the_last_eval(sweep_dir, layout, quiet):
    ds = open_sweep(sweep_dir)
    change = phase_change(ds)["change_sequences"]
    progress = sweep_eval_progress(sweep_dir)
    for entry in read_manifest(sweep_dir).trials:
        actual = progress[entry.id]
        if entry.axes == layout.MISSING:
            assert actual == EvalProgress()
            continue
        loss = ds["eval_loss"].sel(evaluator="fsl_train", **entry.axes).dropna("eval_step")
        expected_change = float(change.sel(**entry.axes))
        assert actual.evals == loss.sizes["eval_step"]
        assert actual.loss == float(loss[-1])
        assert actual.eval_sequences == int(ds["eval_sequences"].sel(eval_step=loss["eval_step"][-1]))
        assert actual.crossed_sequences == (None if np.isnan(expected_change) else int(expected_change))
    crossed = [p for p in progress.values() if p.crossed_sequences is not None]
    assert 0 < len(crossed) < len(progress)  # the fixture has crossings and not-yets, so both paths ran


def test_rows_grown_but_not_yet_written_are_left_out(sweep_dir, tmp_path):
    entry = read_manifest(sweep_dir).trials[0]
    store = tmp_path / "t.zarr"
    shutil.copytree(store_path(sweep_dir, entry.id), store)
    (expected,) = eval_progress([store])
    group = zarr.open_group(str(store), mode="r+")
    for name in ("eval_step", "eval_sequences", "eval_loss"):  # a writer's resize, before its values land
        array = group[name]
        array.resize((array.shape[0] + 2,) + array.shape[1:])

    (actual,) = eval_progress([store])

    assert actual == expected


def test_a_store_being_laid_down_or_absent_has_no_evaluations(tmp_path):
    begun = tmp_path / "begun.zarr"
    zarr.open_group(str(begun), mode="w", zarr_format=3)  # the group exists, its arrays do not yet
    (tmp_path / "empty.zarr").mkdir()

    actual = eval_progress([begun, tmp_path / "empty.zarr", tmp_path / "absent.zarr"])

    assert actual == [EvalProgress()] * 3
