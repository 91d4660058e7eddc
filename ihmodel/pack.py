"""Packed training: K trials of identical tensor shapes trained in one process.

INTERIM (being replaced in this session by the batched engine): each trial runs alone, in turn. The interface is
final: `run_pack(configs, store_paths)` trains every trial into its store exactly as `run_trial` would, and
returns, per trial, None (complete) or the exception that failed it; `pack_key(config)` is equal for trials that
may share a pack; `auto_pack_size(config)` picks K for a device.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ihmodel.config import TrialConfig, result_defining

# Result-defining keys that may differ between the trials of one pack (they change no tensor shape).
PER_TRIAL_KEYS = ("seed", "seed_data", "seed_eval", "clamp", "train.lr", "train.beta1", "train.beta2",
                  "train.adam_eps", "data.n_train_classes", "data.n_test_classes", "data.n_train_exemplars",
                  "data.zipf_exponent", "data.noise", "data.seed_split", "data.val_pair_fraction")


def pack_key(config: TrialConfig) -> str:
    """Trials with equal keys may train in one pack: same shapes, schedule, statistics, device and threads."""
    values = result_defining(config)
    for key in PER_TRIAL_KEYS:
        section, _, name = key.rpartition(".")
        (values[section] if section else values).pop(name, None)
    values["device"], values["threads"] = config.device, config.threads
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_pack(configs: list[TrialConfig], store_paths: list[str | Path],
             progress: bool | None = None) -> list[BaseException | None]:
    from ihmodel.train import run_trial

    if len(configs) != len(store_paths):
        raise ValueError(f"run_pack: {len(configs)} configs but {len(store_paths)} store paths")
    if len({pack_key(c) for c in configs}) > 1:
        raise ValueError("run_pack: these trials cannot share a pack (shapes, schedule, device or threads differ); "
                         "group them by ihmodel.pack.pack_key")
    errors: list[BaseException | None] = []
    for config, path in zip(configs, store_paths):
        try:
            run_trial(config, path, progress=progress)
            errors.append(None)
        except Exception as error:  # one trial's failure never stops its pack-mates
            errors.append(error)
    return errors


def auto_pack_size(config: TrialConfig, limit: int = 1024) -> int:
    return 1
