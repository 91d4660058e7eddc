"""Packed training: K trials of identical tensor shapes trained in one process as one batched computation.

A tiny trial leaves a GPU (or a CPU core's vector units) idle between kernel launches; K trials stacked along a
leading axis pay that overhead once. The trials of a pack may differ in seeds, clamp sets, optimizer settings and
the data properties that keep shapes (`PER_TRIAL_KEYS`); each keeps its own data stream, optimizer state, clamps,
statistics, checkpoint and store, written exactly as if it had trained alone (`run_trial`): a trial's store and
checkpoint do not say whether it was packed, and either way of running resumes the other's checkpoint.

How: the parameters of all trials are one tensor (ihmodel.stacked); the model's own forward, with its hook points,
clamps and statistics, runs under `torch.func.vmap` over `functional_call`, once per clamp set in the pack (trials
are ordered so each clamp set's trials are one slice); one backward of the summed losses gives every trial its own
gradient; Adam is elementwise with per-trial settings. Compiled like a single trial (train.compiled). A member with
no pack mates at its step (the last one training after the others stopped early, a lone resumed trial) trains as
a trial (`train_alone`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ihmodel.append_pool import AppendPool, PooledWriter
from ihmodel.checkpoint import model_shape
from ihmodel.clamp import ClampSet
from ihmodel.config import DataConfig, TrialConfig, result_defining, to_dict, trial_id
from ihmodel.data import Batch, Distribution, Sequences, Task, TrainingStream, on_distinct_rows
from ihmodel.features import load_features
from ihmodel.model import Transformer
from ihmodel.stacked import StackedAdam, StackedParameters
from ihmodel.stats import Evaluation, StepStats
from ihmodel.store import is_complete, resumable
from ihmodel.train import (Trial, TrialStore, announce_set_aside, compiled, crossed, records_eval,
                           resolve_device, train_loop)

# Result-defining keys that may differ between the trials of one pack (they change no tensor shape).
PER_TRIAL_KEYS = ("seed", "seed_data", "seed_eval", "clamp", "train.lr", "train.beta1", "train.beta2",
                  "train.adam_eps", "data.n_train_classes", "data.n_test_classes", "data.n_train_exemplars",
                  "data.zipf_exponent", "data.noise", "data.seed_split", "data.val_pair_fraction")


def pack_key(config: TrialConfig) -> str:
    """Trials with equal keys may train in one pack: same shapes, schedule, statistics, device and threads."""
    values = result_defining(config)
    for key in PER_TRIAL_KEYS:
        section, _, name = key.rpartition(".")
        (values[section] if section else values).pop(name, None)
    values["device"], values["threads"] = config.device, config.threads
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Member:
    """One trial of a pack: its data stream, evaluation sets, clamp set, initial state and store."""

    def __init__(self, index: int, config: TrialConfig, features: Tensor, template: Transformer, device,
                 shared: Shared):
        """`shared`: what the members of a pack build once, for all of them."""
        self.index, self.config = index, config
        self.task = shared.task(config.data, device, features)
        self.clamp_key = json.dumps(to_dict(config)["clamp"], sort_keys=True)
        self.clamps = shared.clamp_set(self.clamp_key, config, template)  # checked here, before any training
        self.evaluators = self.task.evaluators(config.eval, config.eval_seed)
        if config.eval.induction_set == "all_train":
            self.evaluators = self.evaluators | {"all_train": self.task.all_train_sequences()}
        self.evaluators = on_distinct_rows(self.evaluators)
        self.initial = shared.initial_state(template, config.seed)
        self.store: TrialStore | None = None
        self.state: dict | None = None  # the checkpoint resumed from, until its pack has loaded it
        self.step = 0  # the step it resumes at
        self.error: BaseException | None = None

    def open(self, store_path: Path, device, created: bool = False, pool: AppendPool | None = None):
        """Open (or create) its store and read its checkpoint; `pool`: worker processes that write the store."""
        store_path.parent.mkdir(parents=True, exist_ok=True)
        self.store = TrialStore(self.config, store_path)
        self.state = self.store.resume(device, created)
        self.step = self.state["step"] if self.state else 0
        if pool:
            self.store.writer = pool.writer(self.store.writer)

    @property
    def training(self) -> bool:
        """Neither failed nor complete: it belongs in the next pack."""
        return self.error is None and not self.store.completed

    @property
    def live(self) -> bool:
        return self.error is None


class Shared:
    """What the members of a pack build once rather than once a trial: a ClampSet per clamp config (a graft's
    checkpoint is loaded once), a Task per data config, and the model whose parameters each trial's initial state
    is drawn into (building a Transformer to draw them was half of a member's setup)."""

    def __init__(self):
        self.clamp_sets: dict[str, ClampSet] = {}
        self.tasks: dict[str, Task] = {}
        self.model: Transformer | None = None

    def clamp_set(self, key: str, config: TrialConfig, template: Transformer) -> ClampSet:
        if key not in self.clamp_sets:
            self.clamp_sets[key] = ClampSet(config.clamp, template)
        return self.clamp_sets[key]

    def task(self, config: DataConfig, device, features: Tensor) -> Task:
        key = json.dumps(dataclasses.asdict(config), sort_keys=True)
        if key not in self.tasks:
            self.tasks[key] = Task(config, device, features)
        return self.tasks[key]

    def initial_state(self, template: Transformer, seed: int) -> dict[str, Tensor]:
        """The state_dict Transformer(..., seed=seed) of the template's shape starts with (drawn on the CPU, as
        there: Transformer.reset_parameters overwrites every parameter it draws, the rest is fixed)."""
        if self.model is None:
            self.model = copy.deepcopy(template).cpu()
        self.model.reset_parameters(torch.Generator().manual_seed(seed))
        return {name: value.clone() for name, value in self.model.state_dict().items()}


class _Functional(nn.Module):
    """Runs any function with the template model's parameters swapped for one trial's (functional_call)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)

    def per_trial(self, fn):
        """fn(*tensors) -> vmapped (stacked params, *stacked tensors): fn runs once per trial, on its own."""
        def one(params, *tensors):
            return functional_call(self, params, (fn, *tensors))

        return vmap(one)


class Pack:
    """The runner `schedule` drives for K members at the same step (see run_pack)."""

    def __init__(self, members: list[Member], template: Transformer, device, pool: AppendPool | None = None):
        """`pool`: worker processes that write the members' stores (run_pack makes one on CUDA)."""
        config = members[0].config
        self.train = config.train
        groups: dict[str, list[Member]] = {}
        for member in members:
            groups.setdefault(member.clamp_key, []).append(member)
        self.members = [m for group in groups.values() for m in group]  # each clamp set's trials one slice
        self.groups, start = [], 0
        for group in groups.values():
            self.groups.append((slice(start, start + len(group)), group[0].clamps))
            start += len(group)
        self.device = device
        self.template = template
        self.functional = _Functional(template)
        self.params = StackedParameters(template, [m.initial for m in self.members], device)
        self.adam = StackedAdam(self.params, [m.config.train for m in self.members], fused=device.type == "cuda")
        for k, member in enumerate(self.members):
            if member.state is not None:
                self.params.load(k, member.state["model"])
                self.adam.load_state_dict(k, member.state["optimizer"], member.step)
                member.state = None  # a thousand trials' checkpoints are not kept twice
        self.step = self.members[0].step
        self.stream = TrainingStream(Distribution.stack([m.task.train_distribution for m in self.members]),
                                     [m.config.data_seed for m in self.members], self.train.batch_size,
                                     config.data.burstiness, self.members[0].task.features)
        self.stats = StepStats(template, config.stats, self.train.flush_every)
        # each trial's distinct evaluation rows (all its sets share them), padded to the widest with row 0 (no item
        # indexes the padding): [K, rows], gathered once per evaluation rather than once per trial and set
        rows = [next(iter(m.evaluators.values())).rows for m in self.members]
        self.eval_rows = torch.stack([F.pad(r, (0, max(map(len, rows)) - len(r))) for r in rows])
        self.evaluations = [PackEvaluation(clamps, self.functional, config) for _, clamps in self.groups]
        self.pool = pool
        self.forward = self.forward_step
        if self.train.compiled:
            self.forward = compiled(self.forward_step, device)
            self.adam.update = compiled(self.adam.update, device)
            for evaluation in self.evaluations:
                evaluation.chunk = compiled(evaluation.vmapped_chunk, device)

    # ---- the runner interface (ihmodel.train.schedule) -----------------------------------------------------------
    @property
    def live(self) -> bool:
        return any(m.live for m in self.members)

    @property
    def stopping(self) -> bool:
        """Some member's phase change is over (train.stop_early): the pack ends its schedule there, completes that
        member, and run_pack trains the rest on as a smaller pack, so a stopped trial costs no more compute."""
        return any(m.live and m.store.stopping for m in self.members)

    @property
    def last_eval_step(self) -> int | None:
        return self.members[0].store.last_eval_step

    def train_step(self):
        # every member's batch of this step from its own stream, drawn at once: [K, batch, ...]
        loss, rows = self.forward(self.params.by_name(prefix="model."), *self.stream.at(self.step))
        for tensor in self.params.tensors.values():
            tensor.grad = None
        loss.sum().backward()  # trial k's loss depends on trial k's parameters only: each gets its own gradient
        grad_norm = self.adam.step()
        self.stats.record(rows, grad_norm=lambda: grad_norm)
        self.step += 1

    def evaluate(self):
        rows = self.evaluate_all() if records_eval(self.members[0].config) else [None] * len(self.members)
        for member, row in zip(self.members, rows):
            if member.live:
                member.store.add_eval(self.step, row)

    def flush(self) -> dict:
        rows = self.stats.drain() if self.stats.rows else {}
        for k, member in enumerate(self.members):
            self._guarded(member, lambda: member.store.write(self.step, {n: a[:, k] for n, a in rows.items()}))
        if self.pool:
            failed = self.pool.run()
            for member in self.members:
                if member.live and member.store.writer.path in failed:
                    member.error = failed[member.store.writer.path]
        return rows

    def checkpoint(self) -> dict:
        """Flush, then save the checkpoints due: every member's at a checkpoint interval and at the end of the
        budget; only the stopping members' when the pack ends at a stop (the others go on from memory,
        `hand_over`, so a pack of a thousand does not write a thousand checkpoints at every stop)."""
        rows = self.flush()
        due = self.step >= self.train.steps or crossed(self.step, self.train.batch_size, self.train.checkpoint_every)
        for k, member in enumerate(self.members):
            if due or member.store.stopping:
                self._guarded(member, lambda: member.store.save(
                    self.step, self.params.state_dict(k), self.adam.state_dict(k), model_shape(self.template)))
        return rows

    def finish(self):
        """Mark complete the members that are done: all at the end of the budget, else those that stopped."""
        for member in self.members:
            if self.step >= self.train.steps or member.store.stopping:
                self._guarded(member, lambda: member.store.complete(self.step))

    def hand_over(self):
        """Leave each member still training its state, for the next pack to load as if from its checkpoint."""
        for k, member in enumerate(self.members):
            if member.training:
                member.state = {"model": self.params.state_dict(k), "optimizer": self.adam.state_dict(k)}
                member.step = self.step

    @staticmethod
    def _guarded(member: Member, write):
        """A member's write; its failure (a diverged loss, a full disk) fails that member only."""
        if member.live:
            try:
                write()
            except Exception as error:
                member.error = error

    # ---- the batched computation -----------------------------------------------------------------------------
    def forward_step(self, params: dict[str, Tensor], seeds: Tensor, counter: Tensor):
        """`forward_all` on the step's batches, drawn (TrainingStream.at) in the same compiled graph."""
        return self.forward_all(params, *self.stream.draw(seeds, counter))

    def forward_all(self, params: dict[str, Tensor], x: Tensor, context_labels: Tensor, query_label: Tensor,
                    match: Tensor):
        """Losses [K] and statistics rows [K, width] of every trial's training forward (its clamps on), from the
        stacked parameters `params` (functional_call names)."""
        losses, rows = [], []
        for part, clamps in self.groups:
            forward = self.functional.per_trial(partial(self.trial_forward, clamps))
            loss, row = forward({n: v[part] for n, v in params.items()}, x[part], context_labels[part],
                                query_label[part], match[part])
            losses.append(loss)
            rows.append(row)
        return torch.cat(losses), torch.cat(rows)

    def trial_forward(self, clamps: ClampSet, x, context_labels, query_label, match):
        batch = Batch(x, context_labels, query_label, match)
        logits = clamps.forward(batch, self.stats.observers)
        loss = F.cross_entropy(logits, query_label)
        return loss, self.stats.row(batch, logits, loss)

    @torch.no_grad()
    def evaluate_all(self) -> list[dict[str, Tensor]]:
        """Every member's evaluation row, a group's trials vmapped together in chunks that bound memory."""
        params = {name: tensor.detach() for name, tensor in self.params.by_name(prefix="model.").items()}
        rows: list[dict[str, Tensor]] = []
        for (part, _), evaluation in zip(self.groups, self.evaluations):
            for start in range(part.start, part.stop, evaluation.trials_per_chunk):
                chunk = slice(start, min(start + evaluation.trials_per_chunk, part.stop))
                result = evaluation.run({n: v[chunk] for n, v in params.items()}, self.members[chunk],
                                        self.eval_rows[chunk])
                rows += [{name: value[i] for name, value in result.items()} for i in range(chunk.stop - chunk.start)]
        return rows


class PackEvaluation(Evaluation):
    """Evaluation (same metrics, same chunks per trial) for several trials of one clamp set at once."""

    def __init__(self, clamps: ClampSet, functional: _Functional, config: TrialConfig):
        super().__init__(clamps, {}, config.eval.induction_set, None, config.eval.batch_size)
        # eval.batch_size bounds the sequences of one forward: a pack splits it between trials
        self.trials_per_chunk = max(1, config.eval.batch_size // min(config.eval.size, config.eval.batch_size))
        self.vmapped_chunk = functional.per_trial(self.chunk_sums)
        # (params, table, items, ...) -> (metrics [trial, 5], induction [trial, layer, head])
        self.chunk = self.vmapped_chunk
        self.params: dict[str, Tensor] = {}
        self.rows: Tensor | None = None

    def run(self, params: dict[str, Tensor], members: list[Member], rows: Tensor) -> dict[str, Tensor]:
        """`rows` [trial, rows]: each trial's distinct evaluation rows (Pack.eval_rows)."""
        self.params, self.rows = params, rows
        self.evaluators = {name: [m.evaluators[name] for m in members] for name in members[0].evaluators
                           if name != "all_train"}
        self.all_train = [m.evaluators["all_train"] for m in members] if self.induction_set == "all_train" else None
        try:
            return self()
        finally:
            self.params, self.evaluators, self.all_train, self.rows = {}, {}, None, None

    def distinct_rows(self) -> Tensor:
        """[trial, rows, d_in]: each trial's distinct rows, padded alike, in one gather."""
        return next(iter(self.evaluators.values()))[0].table[self.rows]

    def set_size(self, data: list[Sequences]) -> int:
        return len(data[0])

    def chunk_inputs(self, data: list[Sequences], tables: Tensor, start: int, stop: int) -> list[Tensor]:
        """Every trial's chunk stacked along a leading trial axis, after the trials' parameters."""
        chunks = [d.slice(start, stop) for d in data]
        tensors = [torch.stack([getattr(c, field) for c in chunks])
                   for field in ("items", "context_labels", "query_label", "match")]
        noisy = any(c.noise is not None for c in chunks)  # a noiseless trial beside noisy ones adds zeros
        noise = [torch.stack([tables.new_zeros(*c.items.shape, tables.shape[-1]) if c.noise is None else c.noise
                              for c in chunks])] if noisy else []
        return [self.params, tables, *tensors, *noise]


def run_pack(configs: list[TrialConfig], store_paths: list[str | Path],
             progress: bool | None = None) -> list[BaseException | None]:
    """Train every trial into its store as one pack; per trial, None (complete) or the exception that failed
    it. Idempotent per trial like run_trial: complete stores are skipped, checkpoints resumed (trials resumed at
    different steps train as successive packs). Uses exactly the first config's `threads` CPU threads."""
    if len(configs) != len(store_paths):
        raise ValueError(f"run_pack: {len(configs)} configs but {len(store_paths)} store paths")
    if len({pack_key(c) for c in configs}) > 1:
        raise ValueError("run_pack: these trials cannot share a pack (shapes, schedule, device or threads differ); "
                         "group them by ihmodel.pack.pack_key")
    errors: list[BaseException | None] = [None] * len(configs)
    for path in store_paths:
        announce_set_aside(Path(path))
    pending = [i for i, path in enumerate(store_paths) if not is_complete(path)]
    if not pending:
        return errors
    first = configs[pending[0]]
    torch.set_num_threads(first.threads)
    device = resolve_device(first.device)
    try:
        features = torch.from_numpy(load_features(first.data)).to(device)  # one table for the whole pack
    except Exception as error:
        return [error if i in pending else None for i in range(len(configs))]
    template = Transformer(first.model, features.shape[-1], first.data.n_labels, first.data.n_ctx, seed=0).to(device)
    with store_pool(device, len(pending)) as pool:
        members = open_members(configs, store_paths, pending, features, template, device, pool, errors)
        # the members at the earliest step train together (resumed ones may be further on) until they end or some
        # of them stop early; those still training go on as the next pack, and one left alone as a trial
        while training := [m for m in members if m.training]:
            step = min(m.step for m in training)
            group = [m for m in training if m.step == step]
            if len(group) == 1:
                train_alone(group[0], progress)
                continue
            pack = Pack(group, template, device, pool)
            train_loop(pack, first.train, trials=len(pack.members), desc=f"pack of {len(pack.members)}",
                       progress=progress)
            pack.hand_over()
    for member in members:
        errors[member.index] = member.error
    return errors


def train_alone(member: Member, progress: bool | None):
    """Train a member with no pack mates at its step as a trial (ihmodel.train.Trial), from its state and with its
    open store: a trial's step is about a fifth faster than a pack of one's, and its compiled code is a trial's,
    which other trials of its config share, where a pack of one compiles a graph of its own (a pack that shrinks
    as its members stop early compiled it for its last member; what this saves: docs/performance.md)."""
    try:
        if isinstance(member.store.writer, PooledWriter):  # the pool has written everything queued (a flush ran it)
            member.store.writer = member.store.writer.local
        trial = Trial(member.config, member.store.store_path, task=member.task, store=member.store)
        if member.state is not None:
            trial.load(member.state, member.step)
        train_loop(trial, member.config.train, trials=1, desc=trial_id(member.config)[:8], progress=progress)
    except Exception as error:  # it fails alone, as in a pack
        member.error = error


def open_members(configs: list[TrialConfig], store_paths: list[str | Path], pending: list[int], features: Tensor,
                 template: Transformer, device, pool: AppendPool | None, errors: list) -> list[Member]:
    """The pending trials as members with open stores (fresh ones created by the pool's workers at once, when there
    is a pool); a trial that fails here (a bad clamp, an unwritable path) gets its error and trains no further."""
    members, shared = [], Shared()
    for i in pending:
        try:
            members.append(Member(i, configs[i], features, template, device, shared))
        except Exception as error:  # a bad trial fails alone, before any training
            errors[i] = error
    fresh = [m for m in members if not resumable(store_paths[m.index])] if pool else []
    failed = pool.create({str(store_paths[m.index]): m.config for m in fresh}) if pool else {}
    opened = []
    for member in members:
        path = str(store_paths[member.index])
        try:
            if path in failed:
                raise failed[path]
            member.open(Path(path), device, created=member in fresh, pool=pool)
            opened.append(member)
        except Exception as error:
            errors[member.index] = error
    return opened


@contextmanager
def store_pool(device: torch.device, trials: int) -> Iterator[AppendPool | None]:
    """The worker processes that create and write a pack's stores (None: the pack writes them itself)."""
    workers = store_workers(device, trials)
    pool = AppendPool(workers) if workers else None
    try:
        yield pool
    finally:
        if pool:
            pool.close()


def store_workers(device: torch.device, trials: int) -> int:
    """Processes that create and write a CUDA pack's stores (ihmodel.append_pool): every allocated core but one, at
    most one per 64 stores; 0 (write in the pack's own process) when fewer than two would run. On a GPU the writes
    cost several times the training between flushes, and a flush waits for its writers, so they never compete with
    the pack's own (then idle) threads. On CPU the writes cost about 2 % of the training (1,024 steps of a
    1,024-trial pack take half an hour there): the pack writes in process and its cores stay its own."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cores - 1, trials // 64)
    return workers if workers >= 2 else 0


def auto_pack_size(config: TrialConfig, limit: int = 1024) -> int:
    """K for this config's device: doubled while the measured aggregate throughput still grows by 10 % and the
    device keeps a quarter of its memory free (CUDA); a few training steps per candidate, no store written. A
    compiled config compiles once per candidate (tens of seconds each on CPU)."""
    device = resolve_device(config.device)
    torch.set_num_threads(config.threads)
    features = torch.from_numpy(load_features(config.data)).to(device)
    template = Transformer(config.model, features.shape[-1], config.data.n_labels, config.data.n_ctx, seed=0)
    template = template.to(device)
    best_k, best_rate, k, shared = 1, 0.0, 1, Shared()
    while k <= limit:
        members = [Member(i, config, features, template, device, shared) for i in range(k)]
        pack = Pack(members, template, device)
        rate = measure_steps(pack)
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            if free < total / 4:
                break
        if rate < best_rate * 1.1:
            break
        best_k, best_rate, k = k, rate, 2 * k
    return best_k


def measure_steps(pack: Pack, steps: int = 5) -> float:
    """Training sequences per second of a pack (after warm-up steps)."""
    for _ in range(2):
        pack.train_step()
    sync(pack.device)
    start = time.perf_counter()
    for _ in range(steps):
        pack.train_step()
        pack.stats.discard()
    sync(pack.device)
    return steps * pack.train.batch_size * len(pack.members) / (time.perf_counter() - start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
