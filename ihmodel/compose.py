"""Trial configs from Hydra overrides (`seed=6 clamp=perfect_match data.n_labels=10`).

The schema is the TrialConfig dataclass in Hydra's ConfigStore; named clamp sets are YAML files in the `clamp`
group (ihmodel/conf/clamp). Other config groups may add search paths (the sweeps do).
"""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ihmodel.config import TrialConfig

CONF_DIR = Path(__file__).parent / "conf"

ConfigStore.instance().store(name="trial_schema", node=TrialConfig)


def clamp_set_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "clamp").glob("*.yaml"))


def compose_config(config_name: str, overrides: list[str], config_dir: Path = CONF_DIR,
                   what: str = "override", keys_hint: str = "keys: see `icsweep train --help`") -> DictConfig:
    """Compose `config_name` from `config_dir` with overrides; a bad override is one line naming the fix
    ("bad {what}: ... ({keys_hint})")."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        try:
            return compose(config_name=config_name, overrides=list(overrides))
        except MissingConfigException as error:
            raise ValueError(f"{_first_line(error)}; clamp sets: {', '.join(clamp_set_names())}") from None
        except (ConfigCompositionException, OverrideParseException, OmegaConfBaseException) as error:
            cause = error.__cause__ or error
            raise ValueError(f"bad {what}: {_first_line(cause)} ({keys_hint})") from None
        finally:
            GlobalHydra.instance().clear()


def to_trial_config(cfg: DictConfig) -> TrialConfig:
    """The typed trial config, every interpolation resolved and every value checked."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise ValueError(f"bad trial config: {_first_line(error)}") from None


def compose_trial(overrides: list[str]) -> TrialConfig:
    return to_trial_config(compose_config("trial", overrides))


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0]
