"""Checkpoints: everything a trial needs to continue exactly where it stopped.

Model, optimizer, the step reached (the data stream is a function of the step) and how many rows the store held
then. Written to a temporary file and renamed, so a kill during the write leaves the previous checkpoint intact;
its bytes end in a checksum, verified at every load.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import google_crc32c
import torch

from ihmodel.config import TrialConfig, from_yaml, to_yaml, trial_id
from ihmodel.errors import DamagedStoreError, disk_error
from ihmodel.model import Transformer


# How the data stream is drawn: a checkpoint of another stream would continue with different batches than its
# trial began with (an uninterrupted run's statistics would not be reproduced), so resuming one is refused.
DATA_STREAM = "counter-splitmix64"


def save_checkpoint(path: Path, config: TrialConfig, model: Transformer, optimizer: torch.optim.Optimizer, step: int,
                    n_evals: int):
    write_checkpoint(path, checkpoint_state(config, model.state_dict(), optimizer.state_dict(), step, n_evals,
                                            model_shape(model)))


def checkpoint_state(config: TrialConfig, model_state: dict, optimizer_state: dict, step: int, n_evals: int,
                     shape: dict) -> dict:
    """One trial's checkpoint: the same whether it trained alone or in a pack (either can resume it)."""
    return {
        "config_yaml": to_yaml(config),
        "trial_id": trial_id(config),
        "model": model_state,
        "optimizer": optimizer_state,  # torch.optim.Adam's state_dict format
        "step": step,  # optimizer updates done; the store holds exactly this many step rows
        "data_stream": DATA_STREAM,  # the batch of every step is a function of (data seed, step)
        "n_evals": n_evals,  # eval rows in the store
        "model_shape": shape,
    }


def model_shape(model: Transformer) -> dict:
    return {"d_in": model.embed_exemplar.in_features, "d_vocab": model.d_vocab, "n_ctx": model.n_ctx}


def write_checkpoint(path: Path, state: dict):
    """torch.save's bytes, then CHECKSUM_TAG and their CRC-32C (4 bytes, little-endian): verified at load."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.write(CHECKSUM_TAG + google_crc32c.value(payload).to_bytes(4, "little"))
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise disk_error(error, path.parent) from None
    os.replace(tmp, path)


# Marks the checksum at a checkpoint's end; a file without it predates checksums and is loaded unverified.
CHECKSUM_TAG = b"\0icsweep-crc32c:"


def load_checkpoint(path: Path, map_location) -> dict:
    try:
        raw = path.read_bytes()
        tail = len(CHECKSUM_TAG) + 4
        if raw[-tail:-4] == CHECKSUM_TAG:
            payload = raw[:-tail]
            if google_crc32c.value(payload) != int.from_bytes(raw[-4:], "little"):
                raise DamagedStoreError(f"checkpoint {path} fails its checksum")
        else:
            payload = raw
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except DamagedStoreError:
        raise
    except Exception as error:  # a torn or foreign file: name it and the fix
        raise DamagedStoreError(f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); `icsweep run` "
                                f"sets it aside and trains the trial again") from None


def checkpoint_damage(path: Path) -> str | None:
    """What is wrong with the checkpoint at `path`, as `damage_phrase` says it (None: it loads and verifies)."""
    try:
        load_checkpoint(path, map_location="cpu")
    except DamagedStoreError as error:
        return damage_phrase(error, path)
    return None


def damage_phrase(error: DamagedStoreError, path: Path) -> str:
    """load_checkpoint's error as a phrase after "checkpoint": what is wrong, without the path and the fix."""
    return str(error).removeprefix(f"checkpoint {path} ").split("; ")[0]


def load_model(path: str | Path, device) -> Transformer:
    """The trained model of another trial's checkpoint (for grafts and analysis)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; point clamp checkpoint at a trial's .ckpt.pt")
    state = load_checkpoint(path, map_location=device)
    config = from_yaml(state["config_yaml"])
    shape = state["model_shape"]
    model = Transformer(config.model, shape["d_in"], shape["d_vocab"], shape["n_ctx"], seed=config.seed)
    model.load_state_dict(state["model"])
    return model.to(device).eval()
