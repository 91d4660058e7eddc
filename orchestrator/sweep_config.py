"""Sweep configs: a base trial config + grid axes + backend and resources, composed with Hydra from `sweeps/`.

A sweep YAML (sweeps/smoke.yaml) is typed by `SweepConfig` (ConfigStore name `sweep_schema`). Its `base` is a
full trial config (ihmodel.config.TrialConfig); each clamp set named in `clamps` is resolved by composing the
sweep once more with the clamp group mounted at `base.clamp` (`clamp@base.clamp=<name>`), so a clamp set means
exactly what `icsweep train clamp=<name>` means. Data-property axes are nested under `axes` by their trial config
key (`axes.data.n_labels=[5,10,15]`; a new one with `+axes.data.burstiness=[1,2]`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import ihmodel.compose  # noqa: F401  (registers trial_schema; the clamp group lives beside it)
from ihmodel.compose import clamp_set_names, compose_config
from ihmodel.config import TrialConfig

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"
BACKENDS = ("local", "ray", "submitit")
CLAMP_SEARCHPATH = "pkg://ihmodel.conf"


@dataclass
class Resources:
    """What one pack gets. A pack is `pack_size` trials trained together in one process (ihmodel.run_pack); the
    `*_per_trial` names predate packs: they are the resources of that one process, however many trials it trains."""

    cpus_per_trial: int = 1  # CPU threads a pack's process owns (torch.set_num_threads; OMP/MKL_NUM_THREADS)
    gpus_per_trial: float = 0.0  # GPUs a pack's process owns; fractions share one GPU (Ray only); 0 = CPU
    max_concurrent: int | None = None  # packs at once; None = as many as the cpus/gpus allow
    max_failures: int = 1  # retries of a failed pack (only its incomplete trials rerun, from their checkpoints)
    pack_size: Any = 1  # trials per pack (only trials of equal ihmodel.pack.pack_key share one): an int >= 1, or
    # auto = ihmodel.pack.auto_pack_size of each group's first trial, measured once by the driver on its machine


@dataclass
class LocalOptions:
    workers: int | None = None  # worker processes (one pack each); None = cores // cpus_per_trial; 0 = in this process


@dataclass
class RayOptions:
    address: str | None = None  # None = a fresh local ray.init(); host:port of a running cluster otherwise
    num_cpus: int | None = None  # local Ray only: CPUs it may use; None = every core


@dataclass
class SubmititOptions:
    partition: str | None = None  # None = the cluster's default partition
    timeout_min: int = 60  # per array task; at the limit the pack is requeued, its trials resume from checkpoints
    mem_gb: float = 2.0  # per array task (one pack: raise it with resources.pack_size)
    gres: str | None = None  # e.g. gpu:1; None = derived from resources.gpus_per_trial
    array_parallelism: int = 64  # array tasks running at once
    account: str | None = None
    qos: str | None = None
    max_num_timeout: int = 20  # requeues after timeout/preemption before giving up
    wait: bool = True  # false = submit the array and exit (icsweep status DIR follows it)
    additional: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH options, e.g. {constraint: a100}


@dataclass
class RefineOptions:
    """Adaptive refinement of numeric axes (orchestrator.refine): off while `axes` is empty."""

    axes: list[str] = field(default_factory=list)  # numeric data-property axes by key, e.g. [data.n_labels]
    rounds: int = 1  # refinement rounds after the grid, each run to completion before the next is decided
    min_ratio: float = 1.5  # neighbours whose seed-mean phase-change times differ by more get a midpoint


@dataclass
class SweepConfig:
    name: str = MISSING  # the sweep's name; a sweep directory belongs to one sweep
    base: TrialConfig = field(default_factory=TrialConfig)  # every trial starts from this config
    axes: dict[str, Any] = field(default_factory=dict)  # nested by trial config key: {data: {n_labels: [5, 10]}}
    clamps: list[str] = field(default_factory=lambda: ["none"])  # clamp sets by name (ihmodel/conf/clamp)
    per_clamp: dict[str, Any] = field(default_factory=dict)  # base overrides per clamp set: {noclamp: {train: ...}}
    seeds: Any = field(default_factory=lambda: [5])  # init seeds: a list, or "start:stop" (a range)
    backend: str = "local"  # local | ray | submitit
    out: str | None = None  # the sweep directory; None = runs/<name>
    resources: Resources = field(default_factory=Resources)
    local: LocalOptions = field(default_factory=LocalOptions)
    ray: RayOptions = field(default_factory=RayOptions)
    submitit: SubmititOptions = field(default_factory=SubmititOptions)
    refine: RefineOptions = field(default_factory=RefineOptions)


ConfigStore.instance().store(name="sweep_schema", node=SweepConfig)
# Arithmetic for keys tied to an axis, resolved per trial: data.context_len: ${icsweep.mul:2,${data.burstiness}}
OmegaConf.register_new_resolver("icsweep.mul", lambda *factors: math.prod(factors), replace=True)


@dataclass
class Sweep:
    """A composed sweep: its typed settings, its config (for the manifest) and one base trial per clamp set."""

    name: str
    cfg: DictConfig  # the composed sweep config (its YAML goes into the manifest)
    axes: dict[str, list[Any]]  # trial config key -> values, in YAML order (data-property axes only)
    clamps: list[str]
    seeds: list[int]
    bases: dict[str, dict[str, Any]]  # clamp set -> base trial config (an unresolved container)
    backend: str
    out: Path
    resources: Resources
    local: LocalOptions
    ray: RayOptions
    submitit: SubmititOptions
    refine: RefineOptions

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.cfg)


def sweep_names(config_dir: Path = SWEEPS_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def load_sweep(sweep: str, overrides: list[str] = ()) -> Sweep:
    """Compose sweep `sweep` (a name in sweeps/, or a path to a sweep YAML) with Hydra overrides."""
    config_dir, name = _locate(sweep)
    overrides = [expand_ranges(o) for o in overrides]
    cfg = _compose(config_dir, name, overrides)
    settings = _typed(cfg)
    clamps = list(cfg.clamps)
    _check_values("clamps", clamps)
    unknown = sorted(set(clamps) - set(clamp_set_names()))
    if unknown:
        raise ValueError(f"unknown clamp set {', '.join(unknown)}; clamp sets: {', '.join(clamp_set_names())}")
    stray = sorted(set(cfg.per_clamp) - set(clamps))
    if stray:
        raise ValueError(f"per_clamp names {', '.join(stray)}, not in clamps={clamps}; add it to clamps or drop it")
    bases = {}
    for clamp in clamps:
        bases[clamp] = _base_for_clamp(config_dir, name, overrides, clamp, cfg)
    axes = flatten_axes(OmegaConf.to_container(cfg.axes, resolve=True))
    for key, values in axes.items():
        _check_values(f"axes.{key}", values)
    seeds = cfg.seeds  # only this node is resolved: base's interpolations are relative to the trial root
    seeds = parse_seeds(OmegaConf.to_container(seeds, resolve=True) if OmegaConf.is_config(seeds) else seeds)
    _check_values("seeds", seeds)
    backend = cfg.backend
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; choose one of {', '.join(BACKENDS)}")
    out = Path(cfg.out) if cfg.out else Path("runs") / cfg.name
    check_refine(settings["refine"], axes)
    return Sweep(name=cfg.name, cfg=cfg, axes=axes, clamps=clamps, seeds=seeds, bases=bases, backend=backend,
                 out=out, **settings)


def _locate(sweep: str) -> tuple[Path, str]:
    path = Path(sweep)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"sweep={sweep}: no such file; give a sweep name ({', '.join(sweep_names())}) or a YAML path")
        return path.resolve().parent, path.stem
    if sweep not in sweep_names():
        raise ValueError(f"unknown sweep {sweep!r}; sweeps: {', '.join(sweep_names())} (or sweep=path/to/sweep.yaml)")
    return SWEEPS_DIR, sweep


def _compose(config_dir: Path, name: str, overrides: list[str]) -> DictConfig:
    return compose_config(name, overrides, config_dir, what="sweep override",
                          keys_hint=f"sweep keys: {', '.join(_sweep_keys())}; trial keys under base.*; "
                                    f"a new axis with +axes.data.KEY=[...]")


def _base_for_clamp(config_dir: Path, name: str, overrides: list[str], clamp: str, cfg: DictConfig) -> dict:
    """The base trial config with clamp set `clamp` composed in (Hydra's clamp group at base.clamp)."""
    group = f"clamp@base.clamp={clamp}"
    try:
        composed = _compose(config_dir, name, [group, *overrides])
    except ValueError as error:
        if "No match in the defaults list" not in str(error) and "does not exist" not in str(error):
            raise
        # The YAML did not list the clamp group (or its search path): append it.
        composed = _compose(config_dir, name, [f"+{group}", f"hydra.searchpath=[{CLAMP_SEARCHPATH}]", *overrides])
    base = OmegaConf.to_container(composed.base, resolve=False)
    extra = cfg.per_clamp.get(clamp)
    if extra is not None:
        base = OmegaConf.to_container(OmegaConf.merge(base, extra), resolve=False)
    to_trial(base)  # fail here, once per clamp set, on a bad base
    return base


def to_trial(values: dict[str, Any]) -> TrialConfig:
    """A typed, resolved trial config from a container whose interpolations are relative to the trial root."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrialConfig), values))
    except OmegaConfBaseException as error:
        raise ValueError(f"bad trial config in the sweep: {_first_line(error)}") from None


def _typed(cfg: DictConfig) -> dict[str, Any]:
    settings = {name: OmegaConf.to_object(cfg[name]) for name in ("resources", "local", "ray", "submitit", "refine")}
    res = settings["resources"]
    if res.cpus_per_trial < 1:
        raise ValueError(f"resources.cpus_per_trial={res.cpus_per_trial}; must be at least 1")
    if res.gpus_per_trial < 0 or res.max_failures < 0 or (res.max_concurrent is not None and res.max_concurrent < 1):
        raise ValueError("resources: gpus_per_trial and max_failures must be >= 0, max_concurrent >= 1 or null")
    size = res.pack_size
    if size != "auto" and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"resources.pack_size={size!r}; give an int >= 1 (trials trained together in one process, "
                         f"e.g. resources.pack_size=8) or resources.pack_size=auto")
    return settings


def check_refine(refine: RefineOptions, axes: dict[str, list[Any]]):
    """Refinement settings that could not work, refused before any work."""
    if refine.rounds < 0:
        raise ValueError(f"refine.rounds={refine.rounds}; give 0 or more rounds")
    if not refine.min_ratio > 1:
        raise ValueError(f"refine.min_ratio={refine.min_ratio}; must be above 1 (a ratio of phase-change times)")
    for key in refine.axes:
        if key not in axes:
            swept = ", ".join(axes) or "none"
            raise ValueError(f"refine.axes names {key}, not an axis of this sweep (axes: {swept}); refine one of "
                             f"them, or add it with +axes.{key}=[...]")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in axes[key]):
            raise ValueError(f"refine.axes: axis {key} has non-numeric values {axes[key]}; only a numeric axis has "
                             f"values between its values")


def flatten_axes(tree: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """{data: {n_labels: [5, 10]}} -> {"data.n_labels": [5, 10]}; a leaf must be a list of values."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_axes(value, path + "."))
        elif isinstance(value, list):
            flat[path] = value
        else:
            raise ValueError(f"axes.{path}={value!r}; an axis is a list of values, e.g. axes.{path}=[{value}]")
    return flat


def parse_seeds(seeds: Any) -> list[int]:
    """A list of ints, one int, or "start:stop" (Python range, stop excluded)."""
    if isinstance(seeds, int):
        return [seeds]
    if isinstance(seeds, str):
        match = re.fullmatch(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*", seeds)
        if not match:
            raise ValueError(f"seeds={seeds!r}; give a list [5,6], a range 0:10 or range(0,10)")
        return list(range(int(match[1]), int(match[2])))
    if isinstance(seeds, list) and all(isinstance(s, int) for s in seeds):
        return list(seeds)
    raise ValueError(f"seeds={seeds!r}; give a list of ints [5,6], a range 0:10 or range(0,10)")


_RANGE = re.compile(r"^([^=]+)=range\((-?\d+)\s*,\s*(-?\d+)(?:\s*,\s*(-?\d+))?\)$")


def expand_ranges(override: str) -> str:
    """`seeds=range(0,4)` -> `seeds=[0,1,2,3]` (Hydra's compose refuses its own sweep syntax)."""
    match = _RANGE.match(override)
    if not match:
        return override
    start, stop, step = int(match[2]), int(match[3]), int(match[4] or 1)
    return f"{match[1]}=[{','.join(str(v) for v in range(start, stop, step))}]"


def _check_values(name: str, values: list[Any]):
    if not values:
        raise ValueError(f"empty grid: {name} has no values; give at least one (e.g. {name}=[...])")
    seen = set()
    for value in values:
        marker = repr(value)
        if marker in seen:
            raise ValueError(f"{name} lists {value!r} twice; give each value once")
        seen.add(marker)


def _sweep_keys() -> list[str]:
    return [f for f in SweepConfig.__dataclass_fields__]


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0]
