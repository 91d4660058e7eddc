"""Named sweep configs (Hydra): `icsweep run sweep=<name>` composes sweeps/<name>.yaml (orchestrator.sweep_config)."""
