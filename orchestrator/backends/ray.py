"""`ray`: Ray Tune over the packs of pending trials, one Tune trial per pack: resources per pack (fractional GPUs
allowed), max concurrent packs, retries of a failed pack (which train only its incomplete trials). A plain local
`ray.init()` on a laptop; an explicit `ray.address` inside a cluster (see slurm/ray-cluster.sh). Tune's experiment
state goes to logs/ray/ but never decides what is done (no Tuner.restore): each run hands Tune only packs of
trials whose stores are not complete.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from orchestrator.backends.base import Backend
from orchestrator.packs import Pack
from orchestrator.trial import THREAD_ENV, execute_pack


class RayBackend(Backend):
    name = "ray"

    @property
    def address(self) -> str | None:
        return self.sweep.ray.address or os.environ.get("RAY_ADDRESS") or None

    def check(self):
        try:
            import ray  # noqa: F401
            from ray import tune  # noqa: F401
        except ImportError as error:
            raise ValueError(f"backend=ray needs ray[tune] ({error}); pip install 'ray[tune]' or use backend=local")
        address = self.address
        if address and address != "auto":
            host, _, port = address.removeprefix("ray://").rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=5):
                    pass
            except (OSError, ValueError) as error:
                raise ValueError(f"ray: no Ray cluster answers at {address} ({error}); start one (ray start --head, "
                                 f"or sbatch slurm/sweep.sh ... backend=ray) or drop ray.address for a local Ray") from None

    def run(self, packs: list[Pack]):
        import ray
        from ray import tune

        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables (we show our own progress)
        env = {name: str(self.threads) for name in THREAD_ENV}
        started = self._init(ray, env)
        try:
            trainable = tune.with_parameters(
                _trainable, sweep_dir=str(self.sweep_dir),
                packs={p.id: (p.trial_ids, p.config_yamls) for p in packs}, threads=self.threads, device=self.device)
            resources = {"cpu": self.threads, "gpu": self.resources.gpus_per_trial}
            tuner = tune.Tuner(
                tune.with_resources(trainable, resources),
                param_space={"pack": tune.grid_search([p.id for p in packs])},
                tune_config=tune.TuneConfig(max_concurrent_trials=self.resources.max_concurrent, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=time.strftime("run-%Y%m%d-%H%M%S"), storage_path=str(self.sweep_dir / "logs" / "ray"),
                    failure_config=tune.FailureConfig(max_failures=self.resources.max_failures), verbose=0),
            )
            tuner.fit()
        finally:
            if started:
                ray.shutdown()

    def _init(self, ray, env: dict[str, str]) -> bool:
        """Connect (explicit address) or start a local Ray; False if one was already initialised."""
        if ray.is_initialized():
            return False
        kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                      runtime_env={"env_vars": env})
        address = self.address
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=self.sweep.ray.num_cpus or os.cpu_count(), **kwargs)
        except (ConnectionError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"ray: could not start or reach Ray at {address or 'a local cluster'} ({first}); "
                             f"inside a cluster pass ray.address=HOST:PORT and the head's RAY_AUTH_TOKEN") from None
        return True


def _trainable(config: dict, sweep_dir: str, packs: dict[str, tuple[list[str], list[str]]], threads: int,
               device: str | None):
    pack = config["pack"]
    trial_ids, config_yamls = packs[pack]
    results = execute_pack(Path(sweep_dir), trial_ids, config_yamls, threads=threads, device=device, backend="ray",
                           pack=pack)
    from ray import tune

    tune.report({"pack_seconds": max(float(r["seconds"]) for r in results),
                 "trials_complete": sum(r["outcome"] == "complete" for r in results)})
