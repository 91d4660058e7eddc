"""Damaged stores and checkpoints are found by their checksums, set aside (kept) and trained again; a full disk
is one line, and a rerun with space resumes to the statistics of an uninterrupted run."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import xarray as xr

from ihmodel.checkpoint import checkpoint_damage
from ihmodel.compose import compose_trial
from ihmodel.errors import DiskFullError
from ihmodel.integrity import store_damage
from ihmodel.store import checkpoint_path, is_complete
from ihmodel.train import TrialStore, run_trial


class Killed(Exception):
    """Stands for a SIGKILL: training stops between two writes, leaving what was written."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_trial_overrides):
    """(config, store) of the tiny trial trained once without interruption."""
    config = compose_trial(list(tiny_trial_overrides))
    store = tmp_path_factory.mktemp("reference") / "trial.zarr"
    run_trial(config, store)
    return config, store


def statistics(store) -> xr.Dataset:
    return xr.open_zarr(store, consolidated=False).load().drop_attrs(deep=False)


def copy_trial(reference, tmp_path):
    config, store = reference
    target = tmp_path / "trials" / store.name
    shutil.copytree(store, target)
    shutil.copy(checkpoint_path(store), checkpoint_path(target))
    return config, target


def overwrite(path, at: float = 0.5):
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * at)
    raw[i:i + 8] = bytes(b ^ 0xFF for b in raw[i:i + 8])
    path.write_bytes(bytes(raw))


def damage_chunk(store):
    overwrite(store / "loss" / "c" / "1")


def truncate_zarr_json(store):
    path = store / "zarr.json"
    path.write_bytes(path.read_bytes()[:120])


def test_every_chunk_of_a_trial_store_is_checksummed_and_verifies(reference):
    _, store = reference
    assert store_damage(store) == []
    assert checkpoint_damage(checkpoint_path(store)) is None
    assert all('"crc32c"' in (array / "zarr.json").read_text() for array in store.iterdir() if array.is_dir())


@pytest.mark.parametrize("damage, found, after", [
    (damage_chunk, "store damaged (array 'loss' chunk c/1 fails its checksum)", "it trains again from the start"),
    (truncate_zarr_json, "store damaged (zarr.json unreadable (JSONDecodeError", "it trains again from the start"),
])
def test_a_damaged_finished_store_is_moved_aside_and_trained_again(reference, tmp_path, capsys, damage, found,
                                                                    after):
    config, store = copy_trial(reference, tmp_path)
    damage(store)
    damaged_bytes = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}

    run_trial(config, store)

    err = capsys.readouterr().err
    assert found in err and f"moved to {store.name}.damaged-1; {after}" in err
    aside = store.with_name(f"{store.name}.damaged-1")
    assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == damaged_bytes  # kept
    assert checkpoint_path(store).with_name(f"{checkpoint_path(store).name}.damaged-1").is_file()
    assert is_complete(store) and store_damage(store) == []
    xr.testing.assert_identical(statistics(reference[1]), statistics(store))


def test_a_damaged_checkpoint_of_a_finished_trial_is_moved_aside_and_the_store_kept(reference, tmp_path, capsys):
    config, store = copy_trial(reference, tmp_path)
    overwrite(checkpoint_path(store))
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}

    run_trial(config, store)

    assert "checkpoint fails its checksum: moved to trial.ckpt.pt.damaged-1; its store is complete" in \
        capsys.readouterr().err
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    assert not checkpoint_path(store).exists()


def interrupted(config, store, monkeypatch, after_step: int):
    """Train until the first write that ends past `after_step`, then stop as a kill would."""
    write = TrialStore.write

    def write_then_die(self, step, rows):
        write(self, step, rows)
        if step > after_step:
            raise Killed

    monkeypatch.setattr(TrialStore, "write", write_then_die)
    with pytest.raises(Killed):
        run_trial(config, store)
    monkeypatch.setattr(TrialStore, "write", write)


def test_a_store_torn_past_its_checkpoint_is_copied_aside_and_resumed(reference, tmp_path, capsys, monkeypatch):
    config, _ = reference
    store = tmp_path / "trials" / "trial.zarr"
    interrupted(config, store, monkeypatch, after_step=80)  # checkpoint at 50, rows to 82 (chunks of 16 rows)
    torn = store / "loss" / "c" / "4"  # rows 64..79: past the checkpoint; a kill mid-write leaves it short
    torn.write_bytes(torn.read_bytes()[:-7])
    torn_bytes = torn.read_bytes()

    run_trial(config, store)

    err = capsys.readouterr().err
    assert ("store damaged past its checkpoint at step 50 (array 'loss' chunk c/4 fails its checksum): copied to "
            "trial.zarr.damaged-1; it resumes from the checkpoint") in err
    assert (store.with_name("trial.zarr.damaged-1") / "loss" / "c" / "4").read_bytes() == torn_bytes  # kept
    xr.testing.assert_identical(statistics(reference[1]), statistics(store))


def test_a_store_damaged_before_its_checkpoint_restarts_from_the_start(reference, tmp_path, capsys, monkeypatch):
    config, _ = reference
    store = tmp_path / "trials" / "trial.zarr"
    interrupted(config, store, monkeypatch, after_step=80)
    overwrite(store / "loss" / "c" / "0")

    run_trial(config, store)

    assert "store damaged (array 'loss' chunk c/0 fails its checksum): moved to trial.zarr.damaged-1; it trains " \
           "again from the start" in capsys.readouterr().err
    assert (tmp_path / "trials" / "trial.ckpt.pt.damaged-1").is_file()
    xr.testing.assert_identical(statistics(reference[1]), statistics(store))


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs (root only): room for the tiny trial's skeleton and some rows, not for all of them."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_is_one_line_and_a_rerun_with_space_resumes(reference, small_disk):
    config, _ = reference
    store = small_disk / "trials" / "trial.zarr"

    with pytest.raises(DiskFullError) as caught:
        run_trial(config, store)

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"no space left in {store.parent} (No space left on device)")
    assert not is_complete(store)
    rows = xr.open_zarr(store, consolidated=False)["loss"].load()  # readable to its last complete flush
    assert np.isfinite(rows.values).all()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)

    run_trial(config, store)

    xr.testing.assert_identical(statistics(reference[1]), statistics(store))
