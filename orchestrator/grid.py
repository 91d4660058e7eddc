"""Grid expansion: a composed sweep -> trials (id, resolved config, axis values).

Axes, in this order: the data-property axes (named by the last part of their key: data.n_labels -> n_labels),
`clamp` (the clamp set), `seed` (the init seed). The id is ihmodel.trial_id: a hash of the resolved config that
ignores paths, device and threads; backend and resources are not in the trial config at all.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from ihmodel.config import RESOURCE_FIELDS, TrialConfig, to_yaml, trial_id
from ihmodel.sweepdir import Axis
from orchestrator.sweep_config import Sweep, to_trial

CLAMP_AXIS = Axis(name="clamp", key="clamp", values=[])
SEED_AXIS = Axis(name="seed", key="seed", values=[])
RESERVED = ("seed", "clamp", *RESOURCE_FIELDS)


@dataclass
class Trial:
    id: str
    config: TrialConfig
    axes: dict[str, Any]  # axis name -> value

    @property
    def config_yaml(self) -> str:
        return to_yaml(self.config)


def axis_name(key: str) -> str:
    """A data-property axis's name: its config key's last part (data.n_labels -> n_labels)."""
    return key.rsplit(".", 1)[-1]


def axes_of(sweep: Sweep) -> list[Axis]:
    """The sweep's grid axes with their values; checks every data-property key against the trial schema."""
    axes = []
    for key, values in sweep.axes.items():
        check_axis_key(key)
        name = axis_name(key)
        if name in [a.name for a in axes] + ["clamp", "seed"]:
            raise ValueError(f"axis {key} is named {name!r} like another axis; sweep one of them only")
        axes.append(Axis(name=name, key=key, values=list(values)))
    axes.append(Axis(name="clamp", key="clamp", values=list(sweep.clamps)))
    axes.append(Axis(name="seed", key="seed", values=list(sweep.seeds)))
    return axes


def check_axis_key(key: str):
    top = key.split(".", 1)[0]
    if key in RESERVED or top == "clamp":
        raise ValueError(f"axes.{key}: not a data-property axis; clamp sets go in clamps=[...], seeds in seeds=[...], "
                         f"and {', '.join(RESOURCE_FIELDS)} are resources, not axes")
    schema = OmegaConf.structured(TrialConfig)
    node = schema
    for part in key.split("."):
        if not isinstance(node, type(schema)) or part not in node:
            options = ", ".join(f"{key.rsplit('.', 1)[0]}.{k}" if "." in key else k
                                for k in (node.keys() if hasattr(node, "keys") else []))
            raise ValueError(f"unknown axis key {key!r}; keys there: {options}")
        node = node[part]
    if hasattr(node, "keys"):
        raise ValueError(f"axis key {key!r} is a config group, not a value; pick one of its keys")


def expand(sweep: Sweep) -> list[Trial]:
    """Every cell of data axes x clamp sets x seeds, in that nesting order (seeds vary fastest)."""
    axes = axes_of(sweep)
    data_axes = axes[:-2]
    trials = []
    by_id: dict[str, Trial] = {}
    for clamp in sweep.clamps:
        base = sweep.bases[clamp]
        for cell in itertools.product(*(a.values for a in data_axes)):
            values = copy.deepcopy(base)
            for axis, value in zip(data_axes, cell):
                set_key(values, axis.key, value)
            for seed in sweep.seeds:
                values["seed"] = seed
                config = to_trial(values)
                config.store = None
                tid = trial_id(config)
                trial = Trial(id=tid, config=config,
                              axes={**{a.name: v for a, v in zip(data_axes, cell)}, "clamp": clamp, "seed": seed})
                if tid in by_id:
                    raise ValueError(f"trials {by_id[tid].axes} and {trial.axes} have the same config; "
                                     f"an axis does not change the trial (is it overridden in base or per_clamp?)")
                by_id[tid] = trial
                trials.append(trial)
    return trials


def set_key(values: dict[str, Any], key: str, value: Any):
    node = values
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def axis_value(config: TrialConfig, axis: Axis) -> Any:
    """The value a trial config has on an axis (for trials made before the axis existed)."""
    if axis.key == "clamp":
        return config.clamp.name
    node: Any = config
    for part in axis.key.split("."):
        node = getattr(node, part)
    return node
