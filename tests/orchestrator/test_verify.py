"""`icsweep verify`, `status --verify`, `analyze` and `run` on a sweep whose finished stores were damaged."""
from __future__ import annotations

import shutil

import xarray as xr
from orch_helpers import TINY, icsweep

from ihmodel.store import checkpoint_path
from ihmodel.sweepdir import read_manifest, store_path

RUN = ["run", "sweep=smoke", "local.workers=0", "seeds=[1]", "clamps=[none]", *TINY]


def flip(path, at: float = 0.5):
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0xFF
    path.write_bytes(bytes(raw))


def statistics(store) -> xr.Dataset:
    return xr.open_zarr(store, consolidated=False).load().drop_attrs(deep=False)


def test_damage_is_named_by_verify_and_set_aside_and_retrained_by_run(tmp_path):
    out = tmp_path / "smoke"
    icsweep(*RUN, f"out={out}", check=True)
    first, second = read_manifest(out).trial_ids()
    original = tmp_path / "original.zarr"
    shutil.copytree(store_path(out, first), original)
    assert icsweep("verify", str(out)).returncode == 0

    flip(store_path(out, first) / "eval_loss" / "c" / "0" / "0")
    flip(checkpoint_path(store_path(out, second)))

    proc = icsweep("verify", str(out))
    assert proc.returncode == 1
    assert f"damaged: trial {first}: store: array 'eval_loss' chunk c/0/0 fails its checksum" in proc.stdout
    assert f"damaged: trial {second}: checkpoint fails its checksum" in proc.stdout
    assert "verified 2 stores and 2 checkpoints of sweep smoke" in proc.stdout and "2 damaged" in proc.stdout
    assert icsweep("status", str(out), "--verify").returncode == 1

    proc = icsweep("analyze", str(out))
    assert proc.returncode == 0
    assert f"1 damaged trial stores, their cells NaN and `complete` False: {first} (array 'eval_loss' chunk c/0/0 " \
           f"fails its checksum)" in proc.stderr

    proc = icsweep(*RUN, f"out={out}", check=True)
    assert (f"icsweep: trial {first}: store damaged (array 'eval_loss' chunk c/0/0 fails its checksum): moved to "
            f"{first}.zarr.damaged-1; it trains again from the start") in proc.stdout
    assert (f"icsweep: trial {second}: checkpoint fails its checksum: moved to {second}.ckpt.pt.damaged-1; its "
            f"store is complete") in proc.stdout
    assert "1 complete, 1 to run" in proc.stdout
    assert (out / "trials" / f"{first}.zarr.damaged-1").is_dir()
    assert icsweep("verify", str(out)).returncode == 0
    xr.testing.assert_identical(statistics(original), statistics(store_path(out, first)))
