"""Bad inputs as a new user gives them, through the real CLI: each is exit 2 and one line on stderr naming the
problem, and no finished store changes (every file of a finished sweep compared before and after)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from orch_helpers import TINY, icsweep

RUN = ["run", "sweep=smoke", "local.workers=0", "seeds=[1]", "clamps=[none]", *TINY]
TRAIN = ["train", "train.sequences=640", "train.eval_every=320", "eval.size=64", "data.n_train_classes=10"]
KEYS = "sweep keys: name, base, axes"


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and "logs" not in p.parts}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished smoke sweep (two tiny trials) that no bad input may change."""
    out = tmp_path_factory.mktemp("finished") / "smoke"
    icsweep(*RUN, f"out={out}", check=True)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Features files that are wrong in one way each."""
    d = tmp_path_factory.mktemp("features")
    good = np.random.default_rng(0).random((200, 3, 8), dtype=np.float32)
    with_nan = good.copy()
    with_nan[7, 2, 5] = np.nan
    np.save(d / "nan.npy", with_nan)
    np.save(d / "inf.npy", np.where(good > 0.999, np.inf, good))
    np.save(d / "strings.npy", np.full((200, 3, 8), "x"))
    np.save(d / "complex.npy", good.astype(np.complex64))
    np.save(d / "rank2.npy", good[:, 0])
    np.save(d / "few_classes.npy", good[:20])
    np.save(d / "one_exemplar.npy", good[:, :1])
    np.savez(d / "two.npz", a=good, b=good)
    with h5py.File(d / "other_key.h5", "w") as file:
        file["feat"] = good
    (d / "not_hdf5.h5").write_text("hello, I am text\n")
    (d / "not_npy.npy").write_bytes(b"\x00" * 64)
    (d / "not_zip.npz").write_text("plain text")
    np.save(d / "truncated.npy", good)
    (d / "truncated.npy").write_bytes((d / "truncated.npy").read_bytes()[:500])
    (d / "features.csv").write_text("1,2,3\n")
    (d / "a_directory.npy").mkdir()
    (d / "foreign").mkdir()
    (d / "foreign" / "notes.txt").write_text("mine")
    (d / "a_file").write_text("not a directory")
    return d


CASES = [
    # (id, args (FILES: the features directory, DONE: the finished sweep, NEW: a fresh directory), expected line)
    ("unknown sweep", ["run", "sweep=nope"], r"unknown sweep 'nope'; sweeps: "),
    ("unknown clamp set", [*RUN, "clamps=[nope]", "out=NEW"], r"unknown clamp set nope; clamp sets: "),
    ("unknown backend", [*RUN, "backend=slurm", "out=NEW"], r"backend='slurm'; choose one of local, ray, submitit"),
    ("unknown axis key", [*RUN, "+axes.data.labels=[5]", "out=NEW"], r"unknown axis key 'data.labels'"),
    ("unknown sweep key", [*RUN, "data.n_labels=5", "out=NEW"], rf"bad sweep override: Key 'data' not in .*{KEYS}"),
    ("override syntax", [*RUN, "axes.data.n_labels=[5,", "out=NEW"], rf"bad sweep override: .*'\[5,'.*{KEYS}"),
    ("negative budget", [*RUN, "base.train.sequences=-5", "out=NEW"], r"train.sequences=-5; must be positive"),
    ("non-numeric lr", [*RUN, "base.train.lr=abc", "out=NEW"], r"Value 'abc' of type 'str' could not be converted"),
    ("one label", [*RUN, "axes.data.n_labels=[1]", "out=NEW"], r"data.n_labels=1; needs at least 2 labels"),
    ("empty grid", [*RUN, "seeds=[]", "out=NEW"], r"empty grid: seeds has no values"),
    ("bad seeds", [*RUN, "seeds=abc", "out=NEW"], r"seeds='abc'; give a list"),
    ("no cpus", [*RUN, "resources.cpus_per_trial=0", "out=NEW"], r"resources.cpus_per_trial=0; must be at least 1"),
    ("bad pack size", [*RUN, "resources.pack_size=0", "out=NEW"], r"resources.pack_size=0; give an int >= 1"),
    ("out is a file", [*RUN, "out=FILES/a_file"], r"out=.*a_file is a file; give a directory"),
    ("out is a stranger's", [*RUN, "out=FILES/foreign"], r"foreign is not empty \(notes.txt\) and holds no sweep"),
    ("another sweep's dir", ["run", "sweep=paper_fig6", "backend=local", "out=DONE"], r"holds sweep 'smoke', not 'paper_fig6'"),
    ("another base config", [*RUN, "base.train.batch_size=16", "out=DONE"],
     r"holds sweep 'smoke' with another base config \(train.batch_size: 32 -> 16\)"),
    ("missing features", [*RUN, "base.data.features=FILES/nope.npy", "out=NEW"], r"features file .*nope.npy not found"),
    ("features a directory", [*RUN, "base.data.features=FILES/a_directory.npy", "out=NEW"],
     r"features file .*a_directory.npy is a directory"),
    ("features not HDF5", [*RUN, "base.data.features=FILES/not_hdf5.h5", "out=NEW"],
     r"features file .*not_hdf5.h5 is not a valid .h5 file \(.*file signature not found"),
    ("features not npy", [*RUN, "base.data.features=FILES/not_npy.npy", "out=NEW"],
     r"features file .*not_npy.npy is not a valid .npy file"),
    ("features not npz", [*RUN, "base.data.features=FILES/not_zip.npz", "out=NEW"],
     r"features file .*not_zip.npz is not a valid .npz file"),
    ("features truncated", [*RUN, "base.data.features=FILES/truncated.npy", "out=NEW"],
     r"features file .*truncated.npy is not a valid .npy file"),
    ("features unknown format", [*RUN, "base.data.features=FILES/features.csv", "out=NEW"],
     r"features file .*features.csv: unknown format '.csv'"),
    ("features with NaN", [*RUN, "base.data.features=FILES/nan.npy", "out=NEW"],
     r"features file .*nan.npy: class 7 exemplar 2 holds non-finite values"),
    ("features with inf", [*RUN, "base.data.features=FILES/inf.npy", "out=NEW"],
     r"features file .*inf.npy: class \d+ exemplar \d holds non-finite values"),
    ("features of strings", [*RUN, "base.data.features=FILES/strings.npy", "out=NEW"],
     r"strings.npy: values of dtype <U1; expected real numbers"),
    ("features complex", [*RUN, "base.data.features=FILES/complex.npy", "out=NEW"],
     r"complex.npy: values of dtype complex64; expected real numbers"),
    ("features wrong rank", [*RUN, "base.data.features=FILES/rank2.npy", "out=NEW"],
     r"rank2.npy: found an array of shape \(200, 8\); expected an array of shape \(classes, exemplars, dim\)"),
    ("features too few classes", [*RUN, "base.data.features=FILES/few_classes.npy", "out=NEW"],
     r"data.n_train_classes \+ data.n_test_classes = 110 but the features have 20 classes"),
    ("features one exemplar", [*RUN, "base.data.features=FILES/one_exemplar.npy", "out=NEW"],
     r"data.n_train_exemplars=1; the features have 1 exemplars per class"),
    ("npz without a key", [*RUN, "base.data.features=FILES/two.npz", "out=NEW"],
     r"two.npz holds arrays \['a', 'b'\]; set data.features_key"),
    ("hdf5 without the key", [*RUN, "base.data.features=FILES/other_key.h5", "out=NEW"],
     r"other_key.h5 has no dataset 'resnet18/224/feat' \(found: \['feat'\]\)"),
    ("status of no sweep", ["status", "FILES/nowhere"], r"no sweep manifest"),
    ("list of no sweep", ["list", "FILES/nowhere"], r"no sweep manifest"),
    ("cancel of no sweep", ["cancel", "FILES/nowhere"], r"no sweep manifest"),
    ("verify of no sweep", ["verify", "FILES/nowhere"], r"no sweep manifest"),
    ("analyze of no sweep", ["analyze", "FILES/nowhere"], r"no sweep manifest"),
    ("unknown command", ["fly"], r"unknown command 'fly'; commands: run, status"),
    ("train diverges", [*TRAIN, "store=NEW/t.zarr", "train.lr=1e6"],
     r"the training loss is not finite from step \d+; it diverged: lower train.lr \(now 1e\+06\)"),
    ("train features not HDF5", [*TRAIN, "store=NEW/t.zarr", "data.features=FILES/not_hdf5.h5"],
     r"not_hdf5.h5 is not a valid .h5 file"),
    ("train features NaN", [*TRAIN, "store=NEW/t.zarr", "data.features=FILES/nan.npy"],
     r"nan.npy: class 7 exemplar 2 holds non-finite values"),
    ("train features a directory", [*TRAIN, "store=NEW/t.zarr", "data.features=FILES/a_directory.npy"],
     r"a_directory.npy is a directory"),
    ("train override syntax", [*TRAIN, "store=NEW/t.zarr", "data.n_labels=[5,"], r"bad override: "),
    ("train without a store", TRAIN, r"no store path: give store=PATH.zarr"),
]


@pytest.mark.parametrize("args, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_exit_2_and_one_line_and_changes_no_finished_store(args, expected, finished, files, tmp_path):
    before = digest(finished)
    args = [a.replace("FILES", str(files)).replace("DONE", str(finished)).replace("NEW", str(tmp_path / "new"))
            for a in args]

    proc = icsweep(*args)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.match(r"icsweep( \w+)?: ", lines[0])
    assert re.search(expected, lines[0]), lines[0]
    assert digest(finished) == before


def test_the_table_has_at_least_30_cases():
    assert len(CASES) >= 30


def test_debug_shows_the_traceback_of_an_expected_failure(files):
    proc = icsweep(*TRAIN, f"store={files}/t.zarr", f"data.features={files}/nan.npy", env={"ICSWEEP_DEBUG": "1"})

    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr and "FeaturesError" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("icsweep train: features file")


def test_a_diverged_trial_in_a_sweep_is_failed_with_that_one_line(tmp_path):
    out = tmp_path / "diverged"
    proc = icsweep(*RUN, f"out={out}", "base.train.lr=1e6", "axes.data.n_labels=[5]")
    assert proc.returncode == 1

    status = icsweep("status", str(out)).stdout
    failed = [line for line in status.splitlines() if "not finite" in line]
    assert len(failed) == 1
    assert re.search(r"n_labels=5 clamp=none seed=1: trial \w+: the training loss is not finite from step \d+; it "
                     r"diverged: lower train.lr \(now 1e\+06\) \(log: ", failed[0]), failed[0]

