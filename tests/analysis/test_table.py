import numpy as np
import pandas as pd
import pytest

from analysis import open_sweep, open_trials, phase_change, phase_change_table
from analysis.table import format_table

COLUMNS = ["mean_sequences", "sem_sequences", "mean_step", "sem_step", "n_seeds", "n_never", "n_pending"]


def test_table_per_data_property_and_clamp_set(sweep_dir, quiet):
    ds = open_sweep(sweep_dir)
    pc = phase_change(ds)

    table = phase_change_table(ds)

    assert list(table.columns) == ["n_labels", "clamp", *COLUMNS]
    assert table[["n_labels", "clamp"]].values.tolist() == [[5, "noclamp"], [5, "perfect_match"],
                                                            [10, "noclamp"], [10, "perfect_match"]]
    for row in table.itertuples():
        times = pc["change_sequences"].sel(n_labels=row.n_labels, clamp=row.clamp).values
        found = times[np.isfinite(times)]
        assert row.n_seeds == len(found)
        np.testing.assert_allclose(row.mean_sequences, found.mean() if len(found) else np.nan)
        if len(found) >= 2:
            np.testing.assert_allclose(row.sem_sequences, found.std(ddof=1) / np.sqrt(len(found)))
        else:
            assert np.isnan(row.sem_sequences)
    counts = table.set_index(["n_labels", "clamp"])[["n_seeds", "n_never", "n_pending"]]
    assert counts.loc[(5, "noclamp")].tolist() == [2, 0, 0]
    assert counts.loc[(5, "perfect_match")].tolist() == [2, 0, 0]  # the running trial already changed
    assert counts.loc[(10, "noclamp")].tolist() == [1, 0, 1]  # one seed missing
    assert counts.loc[(10, "perfect_match")].tolist() == [1, 1, 0]  # one seed never changed
    # Two seeds two evals apart: 24,000 and 26,000 sequences.
    first = table.iloc[0]
    assert (first.mean_sequences, first.sem_sequences) == (25_000.0, 1_000.0)
    assert first.mean_step == pytest.approx(25_000 / 32, abs=1)
    assert table.attrs["method"] == "threshold"


def test_table_from_a_phase_change_result_equals_the_table_from_the_dataset(full_sweep_dir):
    ds = open_sweep(full_sweep_dir)

    pd.testing.assert_frame_equal(phase_change_table(phase_change(ds, "sigmoid")), phase_change_table(ds, "sigmoid"))


def test_table_of_flat_trials_groups_by_the_scalars_that_vary(full_sweep_dir):
    ds = open_trials(sorted((full_sweep_dir / "trials").glob("*.zarr")))

    table = phase_change_table(ds)

    assert list(table.columns) == ["clamp_set", "n_labels", *COLUMNS]
    assert len(table) == 4 and table["n_seeds"].sum() + table["n_never"].sum() == 8


def test_format_table_prints_every_row(sweep_dir, quiet):
    text = format_table(phase_change_table(open_sweep(sweep_dir)))

    assert text.splitlines()[0].startswith("phase change (threshold: first eval with eval_loss < 0.2773 nats")
    assert len(text.splitlines()) == 6 and "2.5e+04" in text
