"""Synthetic trial stores and sweep directories with known phase changes, written with the real store writer.

For tests, the benchmark and the example notebook: training is not needed to exercise the analysis. A synthetic
trial's eval loss falls from about 2 nats (init) to the ln 2 plateau within a few thousand sequences, stays there
until `change_at` sequences, then drops along a sigmoid to near 0; its layer-2 induction scores rise at the same
time. `change_at=None` is a trial that never leaves the plateau.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ihmodel.config import ClampConfig, TrainConfig, TrialConfig, to_yaml, trial_id
from ihmodel.store import EVALUATORS, StoreWriter
from ihmodel.sweepdir import Axis, Manifest, TrialEntry, store_path, write_manifest

LN2 = float(np.log(2))


def loss_curve(sequences, change_at: float | None, *, width: float = 5_000.0, plateau: float = LN2,
               init: float = 2.0, final: float = 0.02, settle: float = 1_500.0) -> np.ndarray:
    """Loss at `sequences`: init -> plateau (time constant `settle`), then plateau -> final around `change_at`."""
    t = np.asarray(sequences, dtype=np.float64)
    before = plateau - final + (init - plateau) * np.exp(-t / settle)
    if change_at is None:
        return final + before
    return final + before * _falling(t, change_at, width)


def _falling(t, change_at: float | None, width: float) -> np.ndarray:
    """1 before the change, 0 after; 1 everywhere when there is no change."""
    if change_at is None:
        return np.ones_like(np.asarray(t, dtype=np.float64))
    return 1.0 / (1.0 + np.exp(np.clip((np.asarray(t, dtype=np.float64) - change_at) / width, -60, 60)))


def induction_strengths(n_layers: int, n_heads: int) -> np.ndarray:
    """Final induction score per head: 0 in layer 1 (and below), 0.10..0.85 across the last layer's heads."""
    strengths = np.zeros((n_layers, n_heads))
    strengths[-1] = np.linspace(0.10, 0.85, n_heads)
    return strengths


def trial_rows(config: TrialConfig, change_at: float | None, *, width: float = 5_000.0, seed: int = 0,
               eval_noise: float = 0.01, step_noise: float = 0.15, steps_too: bool = True):
    """Every row a finished trial of `config` would write: (step coords, step rows), (eval coords, eval rows).

    With `steps_too` false the per-step rows are None (the eval rows are the same either way).
    """
    rng = np.random.default_rng([seed, 0])
    batch = config.train.batch_size
    n_steps = config.train.steps
    n_layers, n_heads = config.model.n_layers, config.model.n_heads
    steps = np.arange(n_steps)
    seqs = steps * batch
    eval_seqs = np.unique(np.r_[np.arange(0, config.train.sequences, config.train.eval_every),
                                n_steps * batch])
    eval_steps = eval_seqs // batch

    def noisy(x, sigma):
        return (x + rng.normal(0.0, sigma, np.shape(x))).astype(np.float32)

    rise = 1.0 - _falling(seqs, change_at, width)  # (step,)
    strengths = induction_strengths(n_layers, n_heads)
    step_rows = None if not steps_too else {
        "loss": noisy(loss_curve(seqs, change_at, width=width), step_noise),
        "acc": noisy(0.5 + 0.5 * rise, 0.05),
        "grad_norm": noisy(0.2 + np.exp(-((seqs - (change_at or -1e12)) / width) ** 2), 0.02),
        "prev_token_score": noisy(np.zeros((n_steps, n_layers, n_heads)) + 0.3 * rise[:, None, None], 0.02),
        "induction_score": noisy(rise[:, None, None] * strengths, 0.02),
        "pattern_entropy": noisy(np.ones((n_steps, n_layers, n_heads)) * (1.0 - 0.5 * rise[:, None, None]), 0.01),
        "head_out_norm": noisy(np.ones((n_steps, n_layers, n_heads)) * (1.0 + rise[:, None, None]), 0.01),
    }
    rng = np.random.default_rng([seed, 1])  # its own stream: eval rows do not depend on steps_too
    eval_rise = 1.0 - _falling(eval_seqs, change_at, width)
    n_eval = len(eval_seqs)
    eval_loss = np.stack([loss_curve(eval_seqs, change_at, width=width) + 0.05 * k
                          for k in range(len(EVALUATORS))], axis=1)
    eval_rows = {
        "eval_loss": noisy(eval_loss, eval_noise),
        "eval_acc": noisy(np.repeat((0.5 + 0.5 * eval_rise)[:, None], len(EVALUATORS), 1), eval_noise),
        "eval_icl_acc": noisy(np.repeat((0.5 + 0.5 * eval_rise)[:, None], len(EVALUATORS), 1), eval_noise),
        "eval_icl_prob": noisy(np.repeat((0.5 + 0.49 * eval_rise)[:, None], len(EVALUATORS), 1), eval_noise),
        "eval_context_prob": noisy(np.full((n_eval, len(EVALUATORS)), 0.99), eval_noise),
        "eval_induction_score": noisy(eval_rise[:, None, None] * strengths, eval_noise),
    }
    return (steps, seqs, step_rows), (eval_steps, eval_seqs, eval_rows)


def write_trial(path: str | Path, config: TrialConfig, change_at: float | None, *, fraction: float = 1.0,
                width: float = 5_000.0, seed: int = 0) -> Path:
    """Write a synthetic trial store; `fraction` < 1 stops part way (an incomplete, running trial)."""
    (steps, seqs, step_rows), (eval_steps, eval_seqs, eval_rows) = trial_rows(config, change_at, width=width,
                                                                              seed=seed)
    n = int(round(len(steps) * fraction))
    m = int(np.searchsorted(eval_steps, n, side="right")) if fraction < 1 else len(eval_steps)
    writer = StoreWriter.create(path, config)
    flush = config.train.flush_every
    for start in range(0, n, flush):  # whole blocks, as training writes them
        block = slice(start, min(start + flush, n))
        writer.append("step", steps[block], seqs[block], {k: v[block] for k, v in step_rows.items()})
    if m:
        writer.append("eval_step", eval_steps[:m], eval_seqs[:m], {k: v[:m] for k, v in eval_rows.items()})
    if fraction >= 1:
        trained = (int(steps[-1]) + 1) * config.train.batch_size
        writer.mark_complete(stopped_early=False, stop_sequences=trained, budget_sequences=config.train.sequences)
    return Path(path)


def axis_name(key: str) -> str:
    """A sweep axis's Dataset dimension name: the last part of its config key (data.n_labels -> n_labels)."""
    return key.rsplit(".", 1)[-1]


def with_value(config: TrialConfig, key: str, value: Any) -> TrialConfig:
    """A copy of `config` with the dotted `key` set; `clamp` takes a clamp set name."""
    config = copy.deepcopy(config)
    if key == "clamp":
        config.clamp = value if isinstance(value, ClampConfig) else ClampConfig(name=value)
        return config
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = getattr(node, part)
    if not hasattr(node, last):
        raise KeyError(f"no config key {key!r}; keys are like data.n_labels, clamp, seed")
    setattr(node, last, value)
    if hasattr(node, "__post_init__"):
        node.__post_init__()  # the same checks a config built from scratch gets
    return config


def small_config(**train) -> TrialConfig:
    """A trial config of test size: 64,000 sequences at batch 32 (2,000 steps), an eval every 2,000 sequences."""
    values = dict(sequences=64_000, batch_size=32, eval_every=2_000, flush_every=256) | train
    return TrialConfig(train=TrainConfig(**values))


def default_change_at(cell: Mapping[str, Any]) -> float | None:
    """Later with more labels and more classes, earlier under a clamp, seed jitter: a shape like the paper's."""
    labels = cell.get("n_labels", 5)
    classes = cell.get("n_train_classes", 50)
    base = 10_000.0 + 2_000.0 * labels + 20.0 * classes
    if cell.get("clamp", "none") not in ("none", "noclamp", "perfect_prev_tok_attn_single"):
        base *= 0.5
    return base + 500.0 * (cell.get("seed", 0) % 3)


def write_sweep(sweep_dir: str | Path, axes: Mapping[str, Sequence[Any]], *, base: TrialConfig | None = None,
                change_at: Callable[[dict], float | None] = default_change_at, name: str = "synthetic",
                skip: Callable[[dict], bool] = lambda cell: False,
                running: Callable[[dict], float | None] = lambda cell: None) -> Manifest:
    """A sweep directory over the product of `axes` ({config key: values}), its manifest and stores.

    `skip(cell)` true leaves a trial without a store (missing); `running(cell)` a fraction < 1 writes it part way.
    `cell` maps axis names (n_labels, clamp, seed) to the trial's values.
    """
    base = base or small_config()
    axis_list = [Axis(axis_name(key), key, list(values)) for key, values in axes.items()]
    trials, configs = [], []
    for values in itertools.product(*(axis.values for axis in axis_list)):
        config = base
        for axis, value in zip(axis_list, values):
            config = with_value(config, axis.key, value)
        cell = {axis.name: value for axis, value in zip(axis_list, values)}
        trials.append(TrialEntry(trial_id(config), cell, to_yaml(config)))
        configs.append((config, cell))
    manifest = Manifest(sweep=name, sweep_config_yaml=f"name: {name}\n", axes=axis_list, trials=trials)
    write_manifest(sweep_dir, manifest)
    for index, (entry, (config, cell)) in enumerate(zip(trials, configs)):
        if skip(cell):
            continue
        write_trial(store_path(sweep_dir, entry.id), config, change_at(cell),
                    fraction=running(cell) or 1.0, seed=index)
    return manifest
