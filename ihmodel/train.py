"""One trial, end to end: `run_trial(config, store_path)`, and its command line `icsweep train key=value ...`.

The contract every backend relies on: idempotent and resumable. A complete store returns at once; a checkpoint
continues exactly where it stopped (its statistics equal an uninterrupted run's); otherwise the trial starts. A
damaged store or checkpoint is first set aside (ihmodel.set_aside).
Statistics are written as training goes and the store is marked complete last.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from tqdm import tqdm

from ihmodel.checkpoint import DATA_STREAM, checkpoint_state, load_checkpoint, model_shape, write_checkpoint
from ihmodel.clamp import ClampSet
from ihmodel.config import EVALUATORS, TrainConfig, TrialConfig, trial_id
from ihmodel.data import Batch, Task
from ihmodel.errors import DivergedError, disk_error
from ihmodel.flat_adam import FlatAdam
from ihmodel.model import Transformer
from ihmodel.set_aside import set_aside_damaged
from ihmodel.stats import Evaluation, StepStats
from ihmodel.stopping import STOP_EVALUATOR, stop_index
from ihmodel.store import StoreWriter, checkpoint_path, is_complete, resumable


def resolve_device(name: str, option: str = "device=") -> torch.device:
    """`name` (auto, cpu, cuda, cuda:N) as a torch device; `option` is how the user gave it, for the errors
    (`device=` in a config, `--device ` on a command line)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{option}{name}; choose auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}{name} but CUDA is not available here; use {option}auto or {option}cpu")
    return device


def crossed(step: int, batch_size: int, every: int) -> bool:
    """True when the sequences seen after `step` updates reach a new multiple of `every`."""
    return step > 0 and (step * batch_size) // every > ((step - 1) * batch_size) // every


class TrialStore:
    """What one trial writes, alone or in a pack: its store (step rows, eval rows, completion marker) and its
    checkpoint. Rows are checked as they are written: a diverged trial fails with its store intact to that point."""

    def __init__(self, config: TrialConfig, store_path: Path):
        self.config, self.store_path = config, store_path
        self.writer: StoreWriter | None = None
        self.eval_rows: list[tuple[int, dict]] = []
        self.n_evals = 0
        self.last_eval_step: int | None = None
        # the fsl_train loss of every evaluation so far and its sequences: what train.stop_early decides on
        self.stop_history: tuple[list[int], list[float]] = ([], [])
        self.stop_step: int | None = None  # the evaluation's step at which the trial stops early
        self.completed = False

    def resume(self, device, created: bool = False) -> dict | None:
        """The checkpoint's state (the store truncated to match it), or None after creating a fresh store (`created`:
        someone else just did, ihmodel.append_pool)."""
        if not resumable(self.store_path):
            self.writer = StoreWriter(self.store_path) if created else StoreWriter.create(self.store_path, self.config)
            return None
        ckpt = checkpoint_path(self.store_path)
        state = load_checkpoint(ckpt, map_location=device)
        if state["trial_id"] != trial_id(self.config):
            raise ValueError(f"checkpoint {ckpt} belongs to trial {state['trial_id']}, not "
                             f"{trial_id(self.config)}; use another store path or delete both to restart")
        if state.get("data_stream") != DATA_STREAM:
            raise ValueError(f"checkpoint {ckpt} was written by an icsweep that drew its data differently (a "
                             f"torch.Generator per trial): resuming would change the trial's batches; delete it and "
                             f"{self.store_path} to restart the trial")
        self.n_evals = state["n_evals"]
        self.writer = StoreWriter(self.store_path)
        self.writer.truncate(state["step"], self.n_evals)
        if self.n_evals:
            eval_steps = self.writer.arrays["eval_step"][:self.n_evals]
            self.last_eval_step = int(eval_steps[-1])
            if self.config.train.stop_early:  # replayed, so that it stops where an uninterrupted run would
                loss = self.writer.arrays["eval_loss"][:self.n_evals, EVALUATORS.index(STOP_EVALUATOR)]
                for step, value in zip(eval_steps, loss):
                    self.decide_stop(int(step), value)
        return state

    def decide_stop(self, step: int, fsl_train_loss):
        """Add an evaluation to the early-stop history; stop here if the rule (ihmodel.stopping) says so."""
        sequences, losses = self.stop_history
        sequences.append(step * self.config.train.batch_size)
        losses.append(float(np.float32(fsl_train_loss)))  # as stored: a replay decides on the same numbers
        if self.stop_step is None and stop_index(sequences, losses, self.config.train) == len(losses) - 1:
            self.stop_step = step

    def add_eval(self, step: int, row: dict | None):
        """Record an evaluation at `step` (None when no evaluation statistic is recorded)."""
        if row is not None:
            self.eval_rows.append((step, row))
            self.n_evals += 1
            if self.config.train.stop_early:  # one host read per evaluation, not per step
                self.decide_stop(step, row["eval_loss"][EVALUATORS.index(STOP_EVALUATOR)].item())
        self.last_eval_step = step

    @property
    def stopping(self) -> bool:
        """Stopped early and not yet marked complete."""
        return self.stop_step is not None and not self.completed

    def write(self, step: int, rows: dict):
        """Append the step rows that end at `step` and the evaluations so far."""
        batch_size = self.config.train.batch_size
        try:
            if rows:
                n = len(next(iter(rows.values())))
                steps = np.arange(step - n, step)
                self.writer.append("step", steps, steps * batch_size, rows)
            if self.eval_rows:
                steps = np.array([s for s, _ in self.eval_rows])
                names = [n for n in self.eval_rows[0][1] if n in self.writer.arrays]
                eval_rows = {n: torch.stack([r[n] for _, r in self.eval_rows]).cpu().numpy() for n in names}
                self.writer.append("eval_step", steps, steps * batch_size, eval_rows)
                self.eval_rows = []
        except OSError as error:  # the store keeps its rows to the last checkpoint; a rerun resumes from there
            raise disk_error(error, self.store_path.parent) from None
        if "loss" in rows and not np.isfinite(rows["loss"]).all():
            bad = step - len(rows["loss"]) + int(np.flatnonzero(~np.isfinite(rows["loss"]))[0])
            raise DivergedError(f"trial {trial_id(self.config)}: the training loss is not finite from step {bad}; "
                                     f"it diverged: lower train.lr (now {self.config.train.lr:g})")

    def save(self, step: int, model_state: dict, optimizer_state: dict, shape: dict):
        write_checkpoint(checkpoint_path(self.store_path),
                         checkpoint_state(self.config, model_state, optimizer_state, step, self.n_evals, shape))

    def complete(self, step: int):
        """Mark the store complete at `step`, saying how far the trial trained against its budget and why."""
        self.writer.mark_complete(stopped_early=self.stop_step is not None,
                                  stop_sequences=step * self.config.train.batch_size,
                                  budget_sequences=self.config.train.sequences)
        self.completed = True


def records_eval(config: TrialConfig) -> bool:
    return bool({"eval", "eval_induction_score"} & set(config.stats))


class Trial:
    """Everything one trial holds while it trains (the runner `schedule` drives)."""

    live = True  # a failing trial raises instead

    def __init__(self, config: TrialConfig, store_path: Path, task: Task | None = None,
                 store: TrialStore | None = None):
        """`task` and `store`: the trial's Task and open TrialStore, when a pack already holds them (run_pack
        trains a member left alone as a Trial)."""
        self.config = config
        self.device = resolve_device(config.device)
        self.task = task or Task(config.data, self.device)
        self.model = Transformer(config.model, self.task.d_in, config.data.n_labels, self.task.n_ctx,
                                 seed=config.seed).to(self.device)
        self.clamps = ClampSet(config.clamp, self.model)  # every clamp is checked here, before any training
        train = config.train
        self.optimizer = FlatAdam(self.model, train)
        induction_set = config.eval.induction_set
        self.evaluation = Evaluation(self.clamps, self.task.evaluators(config.eval, config.eval_seed), induction_set,
                                     self.task.all_train_sequences() if induction_set == "all_train" else None,
                                     config.eval.batch_size)
        self.stats = StepStats(self.model, config.stats, train.flush_every)
        self.stream = self.task.training_stream(config.data_seed, train.batch_size)
        self.forward = self.forward_step
        if train.compiled:
            self.forward = compiled(self.forward_step, self.device)
            self.evaluation.chunk = compiled(self.evaluation.chunk_sums, self.device)
        self.store = store or TrialStore(config, store_path)
        self.step = 0

    @property
    def last_eval_step(self) -> int | None:
        return self.store.last_eval_step

    def start_or_resume(self):
        state = self.store.resume(self.device)
        if state is not None:
            self.load(state, state["step"])

    def load(self, state: dict, step: int):
        """Go on from `state` (model and optimizer state_dicts, torch.optim.Adam's format) at `step`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = step

    def train_step(self):
        loss, row = self.forward(*self.stream.at(self.step))
        self.stats.settle_grad_norm()  # the last step's, before its gradient is cleared
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.stats.record(row, grad_norm=self.optimizer.grad_norm)
        self.step += 1

    def forward_step(self, seeds, counter):
        """The step's batch drawn (TrainingStream.at), the training forward on it (clamps on), its loss and its
        statistics row: one graph when compiled (a call into compiled code costs tens of µs: two calls, the draw's
        and the forward's, made a step 6 % slower on CPU)."""
        x, context_labels, query_label, match = (field[0] for field in self.stream.draw(seeds, counter))
        batch = Batch(x, context_labels, query_label, match)
        logits = self.clamps.forward(batch, self.stats.observers)
        loss = F.cross_entropy(logits, query_label)
        return loss, self.stats.row(batch, logits, loss)

    def evaluate(self):
        self.store.add_eval(self.step, self.evaluation() if records_eval(self.config) else None)

    def flush(self) -> dict:
        """Write the buffered step rows and eval rows to the store (one device-to-host copy per block); returns
        the step rows written."""
        rows = self.stats.drain() if self.stats.rows else {}
        self.store.write(self.step, rows)
        return rows

    def checkpoint(self) -> dict:
        """Flush, then save the checkpoint; returns the step rows written."""
        rows = self.flush()
        self.store.save(self.step, self.model.state_dict(), self.optimizer.state_dict(), model_shape(self.model))
        return rows

    @property
    def stopping(self) -> bool:
        return self.store.stopping

    def finish(self):
        self.store.complete(self.step)


# Trial configs one process can train in turn at compiled speed. A process often trains many trials (a Ray actor
# is reused from pack to pack): each distinct config (clamp set, data properties, ...) adds one compiled entry to
# each compiled function, while seeds of one config share it. Past torch's default of 8 entries a function runs
# eagerly for the rest of the process, silently: about 3x slower steps.
COMPILED_CONFIGS = 256


def compiled(fn, device: torch.device):
    """torch.compile; on CPU with inductor's C++ wrapper: the generated code that allocates buffers and calls the
    kernels runs as C++ rather than Python (at these sizes, about 5 % of a training step). Not yet measured on
    CUDA, where CUDA graphs are the usual answer to launch overhead, so CUDA keeps the default."""
    # (per function, and per function over its life: the names every torch this package accepts knows; newer
    # ones call them recompile_limit and accumulated_recompile_limit)
    config = torch._dynamo.config
    config.cache_size_limit = max(config.cache_size_limit, COMPILED_CONFIGS)
    config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, COMPILED_CONFIGS)
    return torch.compile(fn, options={"cpp_wrapper": device.type == "cpu"})


def run_trial(config: TrialConfig, store_path: str | Path | None = None, progress: bool | None = None) -> Path:
    """Train one trial into its Zarr store. Idempotent: a complete store returns at once; resumable from its
    checkpoint. Uses exactly `config.threads` CPU threads."""
    store_path = Path(store_path if store_path is not None else config.store or "")
    if not str(store_path) or str(store_path) == ".":
        raise ValueError("no store path: give store=PATH.zarr (or run_trial(config, store_path))")
    announce_set_aside(store_path)
    if is_complete(store_path):
        return store_path
    torch.set_num_threads(config.threads)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    trial = Trial(config, store_path)
    trial.start_or_resume()
    train_loop(trial, config.train, trials=1, desc=trial_id(config)[:8], progress=progress)
    return store_path


def announce_set_aside(store_path: Path):
    """Set aside a damaged store or checkpoint (ihmodel.set_aside), one line on stderr for each."""
    for line in set_aside_damaged(store_path):
        print(f"icsweep: {line}", file=sys.stderr, flush=True)


def schedule(runner, train: TrainConfig) -> Iterator[dict]:
    """The schedule every runner follows (one trial, or a pack as one): evaluate at 0, every `eval_every` sequences
    and at the end; checkpoint every `checkpoint_every` and at the end; flush statistics when `flush_every` steps
    are waiting; mark complete last. Yields after each optimizer step the step rows written by it ({} but at a
    flush). A runner ends when `runner.live` turns false (it failed), or after the evaluation at which
    `runner.stopping` turns true (train.stop_early: its phase change is over)."""
    total = train.steps
    if runner.last_eval_step is None:
        runner.evaluate()
    while runner.step < total and runner.live and not runner.stopping:
        runner.train_step()
        if crossed(runner.step, train.batch_size, train.eval_every):
            runner.evaluate()
        if crossed(runner.step, train.batch_size, train.checkpoint_every):
            yield runner.checkpoint()
        elif runner.stats.full:
            yield runner.flush()
        else:
            yield {}
    if runner.live and not runner.stopping and runner.last_eval_step != total:
        runner.evaluate()
    runner.checkpoint()
    runner.finish()


def train_loop(runner, train: TrainConfig, trials: int, desc: str, progress: bool | None):
    """Run the whole schedule, with a progress bar of sequences/s (`trials` runners' sequences a step)."""
    # progress None: a bar only when stderr is a terminal (tqdm's own rule); the loss shown is the last written.
    bar = tqdm(total=train.steps * train.batch_size * trials, initial=runner.step * train.batch_size * trials,
               unit="seq", unit_scale=True, disable=None if progress is None else not progress, desc=desc,
               file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    for rows in schedule(runner, train):
        if "loss" in rows:
            bar.set_postfix(loss=f"{np.nanmean(rows['loss'][-64:]):.3f}", refresh=False)
        bar.update(train.batch_size * trials)
    bar.close()


USAGE = """usage: icsweep train store=PATH.zarr [key=value ...]   (also: python -m ihmodel.train ...)

Runs one trial into a Zarr store (resumes it if a checkpoint is there; returns at once if it is complete).
Keys (Hydra overrides; defaults are the paper's main run):
  seed=5 seed_data= seed_eval=  device=auto  threads=1  clamp=<set>  stats=[loss,acc,...]
  data.features=PATH data.n_labels=5 data.n_train_classes=50 data.burstiness=1 data.zipf_exponent=0 data.noise=0
  train.sequences=1000000 train.batch_size=32 train.lr=1e-5 train.eval_every=10000 train.checkpoint_every=100000
  model.n_layers=2 model.n_heads=8 model.d_model=64 model.d_head=8 model.positional=rope  eval.size=1000
Clamp sets: {clamps}
"""


def main(argv: list[str] | None = None) -> int:
    """`icsweep train`: 0 when the trial is complete; 2 and one line on stderr for an expected failure."""
    from ihmodel.errors import report_errors

    return report_errors("icsweep train", lambda: train_command(list(sys.argv[1:] if argv is None else argv)))


def train_command(argv: list[str]) -> int:
    from ihmodel.compose import clamp_set_names, compose_trial

    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(clamps=", ".join(clamp_set_names())))
        return 0
    config = compose_trial(argv)
    if config.store is None:
        raise ValueError("no store path: give store=PATH.zarr")
    started = time.perf_counter()
    path = run_trial(config)
    elapsed = time.perf_counter() - started
    ended = zarr.open_group(str(path), mode="r").attrs
    how = (f"; stopped early after its phase change, at {ended['stop_sequences']:,} of {ended['budget_sequences']:,} "
           f"sequences" if ended.get("stopped_early") else "")
    print(f"trial {trial_id(config)} complete in {elapsed:.1f} s: {path}{how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
