"""The paper's features file: ResNet18 (ImageNet) features of Omniglot's characters (`icsweep features omniglot`).

Omniglot (Lake et al. 2015) is 1623 handwritten characters (964 in images_background, 659 in images_evaluation),
each drawn once by 20 people: 105x105 black-on-white PNGs `<set>/<alphabet>/<character>/<NNNN_DD>.png`, DD the
drawer (01..20). What the file holds, and why:

- classes: every character, listed as torchvision.datasets.Omniglot lists them (images_background, then
  images_evaluation; alphabets, then the characters of each), except that names are sorted: torchvision takes
  os.listdir's order, which depends on the filesystem. Then shuffled, as the reference file's name
  (`..._randomized_order_s0`) says: class i of the file is character `sorted[numpy.random.default_rng(seed)
  .permutation(n)[i]]`. Dataset `characters` names them in the file's order (`images_background/Latin/character01`).
- exemplars: the first E drawings of each character by file name, i.e. drawers 01..E (`drawings` names them).
- preprocessing: grayscale, the whole image resized to 224x224 (bilinear, antialiased, as the weights' transforms
  resize), copied to 3 channels, normalised by the weights' mean and std. Not the weights' own transforms() (resize
  to 256, centre-crop 224): that would cut strokes near the edges. Strokes stay black on white, as in the files.
- model: torchvision's resnet18 with IMAGENET1K_V1 weights (or a local file of them), fc replaced by Identity: the
  512-d output of the average pool, float32, computed in batches under inference_mode.

Written as HDF5 dataset `resnet18/224/feat` (classes, E, 512), the layout `data.features=` reads
(ihmodel.features), with provenance (versions, weights, exemplar choice, seed) as attrs of the file; to OUT.tmp,
renamed to OUT when complete, so a killed run leaves no half file. torchvision is imported only here, lazily.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ihmodel.errors import IcsweepError, one_line
from ihmodel.train import resolve_device

SETS = ("images_background", "images_evaluation")  # torchvision's background=True, then background=False
SIZE = 224
FEATURES_KEY = "resnet18/224/feat"
WEIGHTS = "ResNet18_Weights.IMAGENET1K_V1"
LAYOUT = "images_background/ and images_evaluation/, each <alphabet>/<character>/<NNNN_DD>.png"
LOCAL_COPY = (f"--images DIR (Omniglot's {LAYOUT}) and --weights FILE (a torchvision resnet18 state_dict saved "
              f"with torch.save)")


def cache_dir() -> Path:
    """Where a downloaded Omniglot is kept (the weights go to torch's hub cache, as torchvision puts them)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "icsweep" / "omniglot"


# ---- which images -------------------------------------------------------------------------------------------

def list_characters(root: Path) -> list[str]:
    """Every character folder under `root`, as `<set>/<alphabet>/<character>`: sets in SETS order, names sorted."""
    if not root.is_dir():
        raise FileNotFoundError(f"Omniglot folder {root} not found; give --images DIR holding {LAYOUT}")
    characters = []
    for name in SETS:
        alphabets = _subfolders(root / name)
        if not (root / name).is_dir() or not alphabets:
            found = sorted(p.name for p in root.iterdir())[:8]
            raise ValueError(f"Omniglot folder {root} has no alphabets in {name}/ (found in {root}: {found}); "
                             f"expected {LAYOUT}")
        for alphabet in alphabets:
            found = _subfolders(root / name / alphabet)
            if not found:
                raise ValueError(f"Omniglot alphabet {root / name / alphabet} has no character folders; "
                                 f"expected {LAYOUT}")
            characters += [f"{name}/{alphabet}/{character}" for character in found]
    return characters


def _subfolders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def pick_exemplars(character: Path, n: int) -> list[str]:
    """The first n drawings of a character by file name (Omniglot's NNNN_DD.png: drawers 01..n)."""
    drawings = sorted(p.name for p in character.iterdir() if p.suffix == ".png" and p.is_file())
    if len(drawings) < n:
        raise ValueError(f"Omniglot character {character} has {len(drawings)} drawings (.png); --exemplars {n} "
                         f"needs at least {n}")
    return drawings[:n]


def class_order(n: int, seed: int) -> np.ndarray:
    """Class i of the file is character order[i] of the sorted list."""
    return np.random.default_rng(seed).permutation(n)


# ---- images to features -------------------------------------------------------------------------------------

def load_image(path: Path) -> np.ndarray:
    """One drawing as uint8 (224, 224): grayscale, the whole image resized (no crop)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            resized = image.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"Omniglot drawing {path} cannot be read as an image ({one_line(error)})") from None
    return np.asarray(resized)


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float], device: torch.device) -> Tensor:
    """uint8 (B, 224, 224) to the float (B, 3, 224, 224) the weights expect."""
    x = torch.from_numpy(images).to(device).float().div_(255)  # (B, H, W) in [0, 1]
    x = x.unsqueeze(1).expand(-1, 3, -1, -1)  # grayscale to the 3 channels the weights expect
    mean_ = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_ = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - mean_) / std_


def embed(model: torch.nn.Module, paths: Sequence[Path], mean: Sequence[float], std: Sequence[float],
          device: torch.device, batch_size: int) -> np.ndarray:
    """(len(paths), 512) float32, in the order of `paths`."""
    from tqdm import tqdm

    out = []
    with torch.inference_mode(), tqdm(total=len(paths), unit="image", desc="resnet18") as bar:
        for start in range(0, len(paths), batch_size):
            batch = np.stack([load_image(p) for p in paths[start:start + batch_size]])
            out.append(model(normalise(batch, mean, std, device)).float().cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(out)


# ---- the model ----------------------------------------------------------------------------------------------

def import_torchvision():
    try:
        import torchvision
    except (ImportError, RuntimeError) as error:  # RuntimeError: a torchvision built for another torch
        raise IcsweepError(f"needs torchvision, built for this torch {torch.__version__} "
                           f"({one_line(error)}): pip install 'icsweep[features]' beside a torch build it "
                           f"matches (dev: bash .ci/install, then .venv-features/bin/icsweep)") from None
    return torchvision


def resnet18_features(state: dict[str, Tensor], source: str) -> torch.nn.Module:
    """torchvision's resnet18 holding `state`, its fc replaced by Identity: images to 512-d pooled features."""
    model = import_torchvision().models.resnet18(weights=None)
    expected = model.state_dict()
    optional = ("fc.", "num_batches_tracked")  # fc is dropped; old checkpoints lack the BN counters
    missing = [k for k in expected if k not in state and not any(o in k for o in optional)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} (resnet18: {tuple(expected[k].shape)})" for k in state
                  if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        problems = [f"{len(keys)} {what} (first: {', '.join(keys[:3])})"
                    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                       ("shapes that differ", mismatched)) if keys]
        raise ValueError(f"{source} does not fit torchvision's resnet18: {'; '.join(problems)}; give a resnet18 "
                         f"state_dict (torch.save(torchvision.models.resnet18(weights='IMAGENET1K_V1')"
                         f".state_dict(), FILE))")
    model.load_state_dict(state, strict=False)
    model.fc = torch.nn.Identity()
    return model.eval()


def read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; give a torchvision resnet18 state_dict saved "
                                f"with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike mean: not a state_dict file
        raise ValueError(f"weights file {path} is not a state_dict saved with torch.save "
                         f"({one_line(error)[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state_dict of tensors; save "
                         f"one with torch.save(model.state_dict(), FILE)")
    return state


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- downloads (as torchvision does them) -------------------------------------------------------------------

def download_weights() -> dict[str, Tensor]:
    weights = import_torchvision().models.ResNet18_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except OSError as error:  # URLError, refused, timed out, no route
        raise _offline(f"the ResNet18 weights ({weights.url})", error) from None


def download_images(root: Path) -> Path:
    """Omniglot's two zips into root/omniglot-py (skipped when there and their md5 matches), extracted."""
    omniglot = import_torchvision().datasets.Omniglot
    for background in (True, False):
        try:
            omniglot(str(root), background=background, download=True)
        except OSError as error:
            raise _offline(f"Omniglot ({omniglot.download_url_prefix})", error) from None
    return root / omniglot.folder


def _offline(what: str, error: OSError) -> IcsweepError:
    return IcsweepError(f"cannot download {what}: {one_line(error)[:200]}; offline? give a local copy with "
                        f"{LOCAL_COPY}")


# ---- the whole extraction -----------------------------------------------------------------------------------

def extract(out: Path, images: Path | None = None, weights: Path | None = None, exemplars: int = 5,
            seed: int = 0, device: str = "auto", batch_size: int = 64) -> Path:
    """Write the features file `out` (see the module docstring); returns its path."""
    torchvision = import_torchvision()
    if exemplars < 1 or batch_size < 1:
        raise ValueError(f"--exemplars {exemplars}, --batch-size {batch_size}: both must be at least 1")
    target = resolve_device(device, option="--device ")
    # Local inputs are checked before anything is downloaded, so their errors come first.
    picked = _pick(images, exemplars) if images is not None else None
    model = resnet18_features(read_weights(weights), f"weights file {weights}") if weights is not None else None
    if picked is None:
        images = download_images(cache_dir())
        picked = _pick(images, exemplars)
    if model is None:
        model = resnet18_features(download_weights(), WEIGHTS)
    characters, drawings = picked
    order = class_order(len(characters), seed)
    characters = [characters[i] for i in order]
    drawings = [drawings[i] for i in order]
    transforms = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    paths = [images / c / d for c, ds in zip(characters, drawings) for d in ds]
    flat = embed(model.to(target), paths, transforms.mean, transforms.std, target, batch_size)
    features = flat.reshape(len(characters), exemplars, -1)  # (class, exemplar, 512)
    attrs = {
        "description": "ResNet18 (ImageNet) 512-d average-pool features of Omniglot's characters, classes in "
                       "random order (ihmodel/omniglot.py)",
        "torch_version": str(torch.__version__), "torchvision_version": str(torchvision.__version__),
        "weights": WEIGHTS if weights is None else f"local file {weights.absolute()}",
        "weights_sha256": sha256(weights) if weights is not None else "",
        "weights_url": torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url if weights is None else "",
        "images": str(images.absolute()),
        "preprocessing": f"grayscale, whole image resized to {SIZE}x{SIZE} (PIL bilinear), 3 equal channels, "
                         f"normalised by mean {transforms.mean} and std {transforms.std}",
        "exemplars": exemplars,
        "exemplar_choice": f"the first {exemplars} drawings of each character by file name (NNNN_DD.png: "
                           f"drawers 01..{exemplars:02d} for Omniglot's files); dataset 'drawings'",
        "seed": seed,
        "class_order": "class i is sorted[numpy.random.default_rng(seed).permutation(n)[i]], sorted = "
                       "images_background then images_evaluation, alphabets then characters by name; "
                       "dataset 'characters'",
    }
    return write_features(out, features, characters, drawings, attrs)


def _pick(root: Path, exemplars: int) -> tuple[list[str], list[list[str]]]:
    characters = list_characters(root)
    return characters, [pick_exemplars(root / c, exemplars) for c in characters]


def write_features(out: Path, features: np.ndarray, characters: list[str], drawings: list[list[str]],
                   attrs: dict) -> Path:
    """HDF5 at `out`, written to out.tmp first and renamed once complete."""
    import h5py

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".tmp")
    try:
        with h5py.File(partial, "w") as file:
            file.create_dataset(FEATURES_KEY, data=features.astype(np.float32, copy=False))
            file.create_dataset("characters", data=np.array(characters, dtype=object), dtype=h5py.string_dtype())
            file.create_dataset("drawings", data=np.array(drawings, dtype=object), dtype=h5py.string_dtype())
            file.attrs.update(attrs)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
