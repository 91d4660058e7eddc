import numpy as np
import pytest

from analysis import induction_formation, open_trials, phase_change
from analysis.phase import (LN2, bin_curve, first_crossing, induction_rise, sigmoid_midpoint, smooth,
                            steepest_descent)
from analysis.synthetic import loss_curve, small_config, write_trial

EVERY = 10_000.0  # sequences between evals, as in the paper's runs
T = np.arange(0, 1_000_001, EVERY)  # 101 evals over 1e6 sequences
WIDTH = 20_000.0
THRESHOLD = 0.4 * LN2


def crossing_eval(change_at, width=WIDTH, final=0.02):
    """The first eval after the noiseless curve crosses 0.4 ln 2, from the sigmoid's inverse."""
    sigma = (THRESHOLD - final) / (LN2 - final)
    return np.ceil((change_at + width * np.log(1 / sigma - 1)) / EVERY) * EVERY


def curves(*change_ats, noise=0.0, seed=0, t=T, width=WIDTH):
    rng = np.random.default_rng(seed)
    y = np.stack([loss_curve(t, c, width=width, settle=3_000.0) for c in change_ats])
    return y + rng.normal(0.0, noise, y.shape)


def threshold_times(y, t=T):
    index = first_crossing(y, THRESHOLD)
    return np.where(index >= 0, t[np.maximum(index, 0)], np.nan)


def capped(y):
    return np.minimum(y, LN2)


def test_threshold_finds_the_first_eval_below_0_4_ln2():
    change_ats = [150_000.0, 250_000.0, 800_000.0]
    expected = [crossing_eval(c) for c in change_ats]

    np.testing.assert_array_equal(threshold_times(curves(*change_ats)), expected)
    np.testing.assert_array_equal(threshold_times(curves(*change_ats, noise=0.01)), expected)


def test_steepest_and_sigmoid_find_the_midpoint_on_noiseless_and_noisy_curves():
    change_ats = np.array([150_000.0, 250_000.0, 555_000.0, 800_000.0])
    for noise, steepest_tol, sigmoid_tol in [(0.0, 0.3 * EVERY, 0.1 * EVERY), (0.02, 1.5 * EVERY, 0.5 * EVERY)]:
        y = capped(curves(*change_ats, noise=noise, seed=1))

        steepest = steepest_descent(y, T, sigma=1.0, min_drop=0.5 * LN2)
        sigmoid = sigmoid_midpoint(y, T, min_drop=0.5 * LN2)

        np.testing.assert_allclose(steepest, change_ats, atol=steepest_tol)
        np.testing.assert_allclose(sigmoid, change_ats, atol=sigmoid_tol)


def test_never_is_nan_for_every_detector():
    y = curves(None, None, noise=0.02, seed=2)  # the plateau, to the end

    assert np.isnan(threshold_times(y)).all()
    assert np.isnan(steepest_descent(capped(y), T, sigma=1.0, min_drop=0.5 * LN2)).all()
    assert np.isnan(sigmoid_midpoint(capped(y), T, min_drop=0.5 * LN2)).all()


def test_a_change_that_falls_by_less_than_min_drop_is_never():
    y = LN2 - 0.2 / (1 + np.exp(-(T - 300_000.0) / WIDTH))  # a partial fall, 0.2 nats

    assert np.isnan(steepest_descent(y[None], T, sigma=1.0, min_drop=0.5 * LN2)).all()
    assert np.isnan(sigmoid_midpoint(y[None], T, min_drop=0.5 * LN2)).all()


def test_non_monotone_curves_a_dip_on_the_plateau_and_a_rise_after():
    change_at = 400_000.0
    y = curves(change_at)[0]
    y -= 0.08 * np.exp(-0.5 * ((T - 150_000.0) / 30_000.0) ** 2)  # a shallow dip that recovers
    y += 0.1 * np.clip((T - 600_000.0) / 400_000.0, 0, None)  # loss creeping up at the end
    y = y[None]

    assert threshold_times(y)[0] == crossing_eval(change_at)
    np.testing.assert_allclose(steepest_descent(capped(y), T, sigma=1.0, min_drop=0.5 * LN2), [change_at],
                               atol=0.5 * EVERY)
    np.testing.assert_allclose(sigmoid_midpoint(capped(y), T, min_drop=0.5 * LN2), [change_at], atol=1.0 * EVERY)


def test_threshold_takes_the_first_eval_below_even_a_transient_dip():
    y = curves(500_000.0)
    y[0, 20] = 0.2  # one eval below 0.4 ln 2 at 200,000 sequences (the paper's definition counts it)

    assert threshold_times(y)[0] == 200_000.0


def test_a_clamp_that_removes_the_plateau_changes_at_once():
    y = 0.02 + 1.98 * np.exp(-T / 15_000.0)  # straight from init to near 0, no plateau

    assert threshold_times(y[None])[0] == 40_000.0
    assert steepest_descent(capped(y[None]), T, sigma=1.0, min_drop=0.5 * LN2)[0] <= 40_000.0
    assert sigmoid_midpoint(capped(y[None]), T, min_drop=0.5 * LN2)[0] <= 40_000.0


def test_missing_evals_of_a_running_trial_are_skipped():
    y = curves(250_000.0, 700_000.0)
    y[:, 60:] = np.nan  # written up to 590,000 sequences

    np.testing.assert_array_equal(threshold_times(y), [crossing_eval(250_000.0), np.nan])
    np.testing.assert_allclose(sigmoid_midpoint(capped(y), T, min_drop=0.5 * LN2), [250_000.0, np.nan],
                               atol=0.1 * EVERY)
    np.testing.assert_allclose(steepest_descent(capped(y), T, sigma=1.0, min_drop=0.5 * LN2), [250_000.0, np.nan],
                               atol=0.3 * EVERY)


def test_long_per_step_curves_are_binned_then_detected():
    steps = np.arange(31_250)
    t = steps * 32.0
    rng = np.random.default_rng(3)
    y = loss_curve(t, 300_000.0, width=WIDTH)[None] + rng.normal(0, 0.15, (1, len(t)))  # batch-32 noise

    yb, tb = bin_curve(y, t)

    assert yb.shape == (1, 512) and tb.shape == (512,)
    np.testing.assert_allclose(sigmoid_midpoint(capped(yb), tb, min_drop=0.5 * LN2), [300_000.0], atol=5_000)
    np.testing.assert_allclose(steepest_descent(capped(yb), tb, sigma=8.0, min_drop=0.5 * LN2), [300_000.0],
                               atol=10_000)


def test_smooth_ignores_nan_and_keeps_a_constant():
    y = np.array([[1.0, 1.0, np.nan, 1.0, 1.0]])

    np.testing.assert_array_equal(smooth(y, 1.0), y)


def test_induction_rise_finds_the_half_rise_and_heads_that_never_form():
    rise_at = 305_000.0  # between two evals: the first at or past half the rise is 310,000
    score = 0.6 / (1 + np.exp(-(T - rise_at) / WIDTH))
    flat = 0.02 * np.sin(T / 50_000.0)
    y = np.stack([score, flat])

    index = induction_rise(y, fraction=0.5, min_rise=0.1, sigma=1.0)

    assert T[index[0]] == 310_000.0 and index[1] == -1


# --- on an opened sweep ------------------------------------------------------------------------------------------

def test_phase_change_over_the_grid(sweep_dir, layout, quiet):
    from analysis import open_sweep
    ds = open_sweep(sweep_dir)

    pc = phase_change(ds)

    assert pc["change_step"].dims == ("n_labels", "clamp", "seed")
    assert pc["change_sequences"].attrs["units"] == "sequences" and pc["change_step"].attrs["units"] == "steps"
    assert pc.attrs["method"] == "threshold"
    for n_labels in (5, 10):
        for clamp in ("noclamp", "perfect_match"):
            for seed in (0, 1):
                cell = {"n_labels": n_labels, "clamp": clamp, "seed": seed}
                got = pc.sel(cell)
                if cell in (layout.MISSING, layout.NEVER):
                    assert np.isnan(got["change_sequences"].item())
                    assert got["never"].item() == (cell == layout.NEVER)
                    continue
                sigma = (THRESHOLD - 0.02) / (LN2 - 0.02)
                expected = np.ceil((layout.change_at(cell) + 5_000.0 * np.log(1 / sigma - 1)) / 2_000) * 2_000
                assert got["change_sequences"].item() == expected
                assert got["change_step"].item() == expected // 32  # the eval's step (the generator floors)
                assert not got["never"].item()


@pytest.mark.parametrize("method", ["steepest", "sigmoid"])
def test_other_methods_over_the_grid(full_sweep_dir, layout, method):
    from analysis import open_sweep
    ds = open_sweep(full_sweep_dir)

    pc = phase_change(ds, method)

    never = pc["never"].values
    assert never.sum() == 1 and pc["never"].sel(layout.NEVER).item()
    for cell in ({"n_labels": 5, "clamp": "noclamp", "seed": 0}, {"n_labels": 10, "clamp": "noclamp", "seed": 1}):
        assert abs(pc["change_sequences"].sel(cell).item() - layout.change_at(cell)) <= 2_000


def test_phase_change_on_the_per_step_training_loss(full_sweep_dir, layout):
    from analysis import open_sweep
    ds = open_sweep(full_sweep_dir)

    pc = phase_change(ds, "sigmoid", variable="loss")

    assert pc.attrs["time_dim"] == "step"
    cell = {"n_labels": 5, "clamp": "noclamp", "seed": 1}
    assert abs(pc["change_sequences"].sel(cell).item() - layout.change_at(cell)) <= 1_500


def test_induction_formation_per_head(full_sweep_dir, layout):
    from analysis import open_sweep
    ds = open_sweep(full_sweep_dir)

    formed = phase_change(ds, "induction")

    assert formed["change_step"].dims == ("n_labels", "clamp", "seed", "layer", "head")
    assert formed["never"].sel(layer=0).all()  # layer-1 heads carry no induction score
    cell = {"n_labels": 10, "clamp": "noclamp", "seed": 0}
    times = formed["change_sequences"].sel(cell | {"layer": 1, "head": slice(2, None)}).values
    assert np.all(np.abs(times - layout.change_at(cell)) <= 2_000)
    xr_identical = induction_formation(ds)
    assert xr_identical.identical(formed)


def test_change_sequences_follow_each_trials_own_batch_size(tmp_path):
    write_trial(tmp_path / "a.zarr", small_config(), 20_000.0)
    write_trial(tmp_path / "b.zarr", small_config(batch_size=64), 20_000.0)
    ds = open_trials([tmp_path / "a.zarr", tmp_path / "b.zarr"])

    pc = phase_change(ds)

    assert pc["change_sequences"].values.tolist() == [24_000.0, 24_000.0]
    assert pc["change_step"].values.tolist() == [750.0, 375.0]


def test_unknown_method_evaluator_and_variable(sweep_dir, quiet):
    from analysis import open_sweep
    ds = open_sweep(sweep_dir)

    with pytest.raises(ValueError, match="unknown method 'fastest'; choose one of threshold, steepest, sigmoid"):
        phase_change(ds, "fastest")
    with pytest.raises(KeyError, match="no evaluator 'fsl_nope'; evaluators are fsl_train"):
        phase_change(ds, evaluator="fsl_nope")
    with pytest.raises(KeyError, match="no variable 'val_loss'"):
        phase_change(ds, variable="val_loss")
