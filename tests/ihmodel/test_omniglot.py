"""`icsweep features omniglot`: Omniglot's ResNet18 features as the paper's HDF5 file (ihmodel.omniglot).

No network: a generated folder in Omniglot's layout (8 characters of 4 drawings, 105x105 PNGs) and randomly
initialised resnet18 weights. The extraction needs torchvision, which does not import beside the main venv's CPU
torch, so it runs through the features venv's CLI (.ci/install makes it); the file is then read and trained on
with this venv's code, as a user would.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from ihmodel.features import read_features_file
from ihmodel.omniglot import (class_order, list_characters, load_image, normalise, pick_exemplars,
                              read_weights)
from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[2]
FEATURES_ICSWEEP = Path(os.environ.get("ICSWEEP_FEATURES_ICSWEEP") or REPO / ".venv-features" / "bin" / "icsweep")
requires_features_venv = pytest.mark.skipif(
    not FEATURES_ICSWEEP.is_file(),
    reason=f"no features venv ({FEATURES_ICSWEEP} missing): `bash .ci/install` makes it, or set "
           f"ICSWEEP_FEATURES_ICSWEEP to an icsweep whose venv has torchvision")

# The generated Omniglot: set -> alphabet -> characters; each character has DRAWINGS drawings.
LAYOUT = {"images_background": {"Latin": 3, "Greek": 2}, "images_evaluation": {"Tengwar": 2, "Angelic": 1}}
DRAWINGS = 5
SORTED = ["images_background/Greek/character01", "images_background/Greek/character02",
          "images_background/Latin/character01", "images_background/Latin/character02",
          "images_background/Latin/character03",
          "images_evaluation/Angelic/character01",
          "images_evaluation/Tengwar/character01", "images_evaluation/Tengwar/character02"]


def write_drawing(path: Path, rng: np.random.Generator):
    """Like Omniglot's: 105x105, 1-bit, black strokes (False) on white (True)."""
    Image.fromarray(rng.random((105, 105)) > 0.1).save(path)


@pytest.fixture(scope="module")
def omniglot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("omniglot")
    rng = np.random.default_rng(0)
    for set_name, alphabets in LAYOUT.items():
        for alphabet, n_characters in alphabets.items():
            for c in range(n_characters, 0, -1):  # made in reverse: the order must come from sorting
                character = root / set_name / alphabet / f"character{c:02d}"
                character.mkdir(parents=True)
                for drawer in range(DRAWINGS, 0, -1):
                    write_drawing(character / f"{900 + c:04d}_{drawer:02d}.png", rng)
    return root


def features_cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(FEATURES_ICSWEEP), "features", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)


def extract(out: Path, omniglot: Path, weights: Path, *args) -> Path:
    proc = features_cli("omniglot", out, "--images", omniglot, "--weights", weights, "--device", "cpu", *args)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Randomly initialised resnet18 weights, as torch.save(state_dict) writes them (made in the features venv)."""
    path = tmp_path_factory.mktemp("weights") / "resnet18_random.pt"
    code = ("import sys, torch, torchvision; torch.manual_seed(0); "
            "torch.save(torchvision.models.resnet18(weights=None).state_dict(), sys.argv[1])")
    subprocess.run([str(FEATURES_ICSWEEP.parent / "python"), "-c", code, str(path)], check=True, timeout=300)
    return path


@pytest.fixture(scope="module")
def features_s0(tmp_path_factory, omniglot, weights) -> Path:
    return extract(tmp_path_factory.mktemp("features") / "omniglot_s0.h5", omniglot, weights, "--exemplars", 3)


def read(path: Path) -> tuple[np.ndarray, list[str], list[list[str]], dict]:
    with h5py.File(path, "r") as file:
        return (file["resnet18/224/feat"][...], file["characters"][...].astype(str).tolist(),
                file["drawings"][...].astype(str).tolist(), dict(file.attrs))


def assert_one_line_error(proc: subprocess.CompletedProcess, match: str):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert re.search(match, proc.stderr), proc.stderr


# ---- the parts (this venv: no torchvision needed) ---------------------------------------------------------

def test_characters_are_listed_background_then_evaluation_with_names_sorted(omniglot):
    assert list_characters(omniglot) == SORTED


def test_exemplars_are_the_first_drawings_by_file_name(omniglot):
    expected = ["0902_01.png", "0902_02.png", "0902_03.png"]

    assert pick_exemplars(omniglot / "images_background/Latin/character02", 3) == expected


def test_class_order_is_numpys_seeded_permutation():
    np.testing.assert_array_equal(class_order(1623, 0), np.random.default_rng(0).permutation(1623))
    assert not np.array_equal(class_order(1623, 0), class_order(1623, 1))


def test_the_whole_drawing_is_resized_so_strokes_at_the_edge_survive(tmp_path):
    drawing = np.ones((105, 105), dtype=bool)
    drawing[:, 0] = False  # a stroke along the left edge, which a centre crop (256 then 224) would cut
    Image.fromarray(drawing).save(tmp_path / "edge.png")

    image = load_image(tmp_path / "edge.png")

    assert image.shape == (224, 224) and image.dtype == np.uint8
    assert image[:, 0].max() < 128 and image[:, 112].min() == 255


def test_normalise_gives_three_equal_channels_with_the_weights_mean_and_std():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    white = np.full((2, 224, 224), 255, dtype=np.uint8)

    x = normalise(white, mean, std, device=torch.device("cpu"))

    assert tuple(x.shape) == (2, 3, 224, 224)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), (1 - np.array(mean)) / np.array(std), rtol=1e-6)


@pytest.mark.parametrize("args, match", [
    (["mnist", "out.h5"], r"argument dataset: invalid choice: 'mnist' \(choose from '?omniglot'?\); usage: "
                          r"icsweep features omniglot OUT.h5 \[--images DIR\]"),
    (["omniglot"], r"the following arguments are required: OUT.h5"),
    (["omniglot", "out.h5", "--exemplars", "five"], r"argument --exemplars: invalid int value: 'five'"),
])
def test_usage_errors_are_one_line(args, match, capsys):
    assert main(["features", *args]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(rf"^icsweep features: {match}", err), err


def test_help_names_the_flags(capsys):
    assert main(["features", "--help"]) == 0

    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--images DIR", "--weights FILE", "--exemplars", "--seed", "--device"))


@pytest.mark.skipif(find_spec("torchvision") is not None, reason="torchvision is importable in this venv")
def test_without_torchvision_it_says_how_to_get_it(tmp_path, omniglot, capsys):
    assert main(["features", "omniglot", str(tmp_path / "out.h5"), "--images", str(omniglot)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(r"^icsweep features: needs torchvision, built for this torch .*pip install "
                     r"'icsweep\[features\]'.*\.venv-features/bin/icsweep", err), err


# ---- the file, made by the features venv's CLI --------------------------------------------------------------

@requires_features_venv
def test_the_file_has_the_paper_layout_order_and_provenance(features_s0, weights):
    features, characters, drawings, attrs = read(features_s0)

    assert features.shape == (8, 3, 512) and features.dtype == np.float32
    assert np.isfinite(features).all() and (features >= 0).all()  # after ReLU and the average pool
    assert characters == [SORTED[i] for i in np.random.default_rng(0).permutation(8)]
    assert drawings == [[f"{900 + int(c[-2:]):04d}_{d:02d}.png" for d in (1, 2, 3)] for c in characters]
    assert attrs["seed"] == 0 and attrs["exemplars"] == 3
    assert attrs["torchvision_version"].startswith("0.") and attrs["torch_version"].startswith("2.")
    assert attrs["weights"] == f"local file {weights}"
    assert attrs["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "first 3 drawings" in attrs["exemplar_choice"] and "224x224" in attrs["preprocessing"]
    np.testing.assert_array_equal(read_features_file(features_s0, "resnet18/224/feat"), features)


@requires_features_venv
def test_the_same_seed_gives_the_same_file_and_another_seed_reorders_the_classes(tmp_path, features_s0, omniglot,
                                                                               weights):
    first, characters, _, _ = read(features_s0)
    again, characters_again, _, _ = read(extract(tmp_path / "again.h5", omniglot, weights, "--exemplars", 3))
    other, characters_other, _, _ = read(extract(tmp_path / "s1.h5", omniglot, weights, "--exemplars", 3,
                                                 "--seed", 1, "--batch-size", 5))

    assert characters_again == characters
    np.testing.assert_array_equal(again, first)
    assert characters_other == [SORTED[i] for i in np.random.default_rng(1).permutation(8)] != characters
    same_character = [characters.index(c) for c in characters_other]
    np.testing.assert_allclose(other, first[same_character], rtol=1e-4, atol=1e-5)  # other batches, same images


@requires_features_venv
def test_icsweep_train_trains_on_the_file(tmp_path, features_s0):
    args = [f"data.features={features_s0}", f"store={tmp_path / 'trial.zarr'}", "device=cpu",
            "data.n_train_classes=5", "data.n_test_classes=3", "data.n_train_exemplars=2",
            "train.sequences=640", "train.batch_size=32", "train.eval_every=320", "train.checkpoint_every=320",
            "train.flush_every=10", "eval.size=64", "model.d_model=16", "model.n_heads=4", "model.d_head=4"]
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300, stdin=subprocess.DEVNULL)

    assert proc.returncode == 0, proc.stderr
    assert "complete in" in proc.stdout


# ---- one-line errors ----------------------------------------------------------------------------------------

@pytest.fixture
def bad_inputs(tmp_path, omniglot) -> dict[str, Path]:
    flat = tmp_path / "flat" / "images_background" / "Latin"  # drawings straight in the alphabet
    flat.mkdir(parents=True)
    write_drawing(flat / "0901_01.png", np.random.default_rng(0))
    (tmp_path / "flat" / "images_evaluation").mkdir()
    other_weights = tmp_path / "not_resnet18.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, other_weights)
    return {"OMNIGLOT": omniglot, "MISSING": tmp_path / "nowhere", "FLAT": tmp_path / "flat",
            "OTHER_WEIGHTS": other_weights}


@requires_features_venv
@pytest.mark.parametrize("args, match", [
    (["--images", "MISSING", "--weights", "WEIGHTS"], r"Omniglot folder .*nowhere not found; give --images DIR "
                                                      r"holding images_background/ and images_evaluation/"),
    (["--images", "FLAT", "--weights", "WEIGHTS"], r"Omniglot alphabet .*flat/images_background/Latin has no "
                                                   r"character folders; expected images_background/ and "
                                                   r"images_evaluation/, each <alphabet>/<character>/<NNNN_DD>.png"),
    (["--images", "OMNIGLOT", "--weights", "OTHER_WEIGHTS"], r"weights file .*not_resnet18.pt does not fit "
                                                             r"torchvision's resnet18: \d+ missing keys .*; 1 shapes "
                                                             r"that differ \(first: conv1.weight \(8, 3, 3, 3\)"),
], ids=["missing folder", "wrong layout", "weights of another model"])
def test_bad_inputs_are_one_line_and_leave_no_file(tmp_path, bad_inputs, weights, args, match):
    paths = {**bad_inputs, "WEIGHTS": weights}
    out = tmp_path / "out.h5"

    proc = features_cli("omniglot", out, *[paths.get(a, a) for a in args])

    assert_one_line_error(proc, rf"^icsweep features: {match}")
    assert not out.exists() and not out.with_name("out.h5.tmp").exists()


def test_a_folder_without_images_evaluation_names_what_it_holds(tmp_path):
    character = tmp_path / "images_background" / "Latin" / "character01"
    character.mkdir(parents=True)

    with pytest.raises(ValueError, match=rf"Omniglot folder {re.escape(str(tmp_path))} has no alphabets in "
                                         r"images_evaluation/ \(found in .*: \['images_background'\]\); expected "
                                         r"images_background/ and images_evaluation/"):
        list_characters(tmp_path)


def test_a_character_with_too_few_drawings(omniglot):
    with pytest.raises(ValueError, match=r"Omniglot character .*Greek/character01 has 5 drawings \(.png\); "
                                         r"--exemplars 6 needs at least 6"):
        pick_exemplars(omniglot / "images_background/Greek/character01", 6)


def test_a_weights_file_that_is_not_a_state_dict(tmp_path):
    (tmp_path / "weights.txt").write_text("not a checkpoint\n")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")

    with pytest.raises(ValueError, match=r"weights file .*weights.txt is not a state_dict saved with torch.save"):
        read_weights(tmp_path / "weights.txt")
    with pytest.raises(ValueError, match=r"weights file .*list.pt holds a list, not a state_dict of tensors"):
        read_weights(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match=r"weights file .*nowhere.pt not found"):
        read_weights(tmp_path / "nowhere.pt")


@pytest.fixture
def offline(tmp_path) -> dict[str, str]:
    """An environment whose every download goes to a closed port here (bound, never listening), with empty
    caches: nothing leaves this machine, and each attempt is refused at once."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    env = {name: proxy for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                                    "ALL_PROXY")}
    env.update(no_proxy="", NO_PROXY="", XDG_CACHE_HOME=str(tmp_path / "cache"), TORCH_HOME=str(tmp_path / "torch"))
    yield env
    closed.close()


@requires_features_venv
@pytest.mark.parametrize("local", [[], ["--images", "OMNIGLOT"]], ids=["nothing local", "images local"])
def test_offline_without_a_local_copy_names_both_flags(tmp_path, offline, omniglot, local):
    args = [omniglot if a == "OMNIGLOT" else a for a in local]

    proc = features_cli("omniglot", tmp_path / "out.h5", "--device", "cpu", *args, env=offline, timeout=120)

    what = "Omniglot" if not local else "the ResNet18 weights"
    assert_one_line_error(proc, rf"^icsweep features: cannot download {what} .*; offline\? give a local copy with "
                                r"--images DIR .* and --weights FILE")
    assert not (tmp_path / "out.h5").exists()
