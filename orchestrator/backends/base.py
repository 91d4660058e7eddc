"""The backend contract: run the packs of pending trials of a sweep directory, each pack through
orchestrator.trial.execute_pack in one process.

A backend knows nothing of training and decides nothing about what is done: it is handed packs of trials whose
stores are not complete (orchestrator.packs; one trial each by default), gives each pack a process with a number
of CPU threads (and a device), and retries failed packs. A new backend is a small module with a subclass of
`Backend`, named in the registry orchestrator.backends (make_backend); this module names no backend.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from orchestrator.grid import Trial
from orchestrator.packs import Pack, make_packs
from orchestrator.sweep_config import Sweep


class Backend(ABC):
    name: str = "?"

    def __init__(self, sweep: Sweep, sweep_dir: Path):
        self.sweep = sweep
        self.sweep_dir = Path(sweep_dir).resolve()
        self.resources = sweep.resources

    @property
    def threads(self) -> int:
        """CPU threads of one pack's process."""
        return self.resources.cpus_per_trial

    @property
    def device(self) -> str | None:
        """cpu for CPU trials (so device=auto never wanders onto a GPU it was not given); else the config's."""
        return "cpu" if self.resources.gpus_per_trial == 0 else None

    @property
    def detached(self) -> bool:
        """True when run() returns after submitting (trials keep running without this process)."""
        return False

    def check(self):
        """Raise ValueError (one line: the problem and the fix) if the backend cannot run here; writes nothing."""

    def packs(self, trials: list[Trial]) -> list[Pack]:
        """The trials grouped into packs of at most resources.pack_size (see orchestrator.packs)."""
        return make_packs(trials, self.resources.pack_size, self.threads, self.device, self.sweep_dir)

    @abstractmethod
    def run(self, packs: list[Pack]):
        """Run every pack (blocking, unless detached); failures are recorded in logs/, not raised."""

