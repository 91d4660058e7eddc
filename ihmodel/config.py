"""The trial config: one typed, fully resolved tree that serializes to YAML.

Everything a trial does follows from it (same config, same numbers on the same hardware and library versions).
Defaults are the paper's main run (PAPER.md). Fields that cannot change the result (paths, device, threads) are
listed in `RESOURCE_FIELDS` and left out of the trial id.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf


@dataclass
class DataConfig:
    features: str | None = None  # features file (.h5/.hdf5, .npy, .npz); None = seeded synthetic features
    features_key: str = "resnet18/224/feat"  # dataset inside an HDF5 file
    n_train_classes: int = 50  # classes used for training (the first ones of the shuffled class order)
    n_test_classes: int = 100  # held-out classes (the last ones), for the fsl_test_class evaluator
    n_train_exemplars: int = 1  # exemplars per class seen in training; the rest are held out
    n_labels: int = 5  # L: label vocabulary; C(L,2) unordered pairs split 80/20 into train/val
    val_pair_fraction: float = 0.2  # fraction of label pairs held out for fsl_val_rl
    context_len: int = 2  # context items before the query (= 2 * burstiness)
    burstiness: int = 1  # context items of the query's class (and as many of one distractor class)
    zipf_exponent: float = 0.0  # class distribution p(c) ~ (rank+1)^-a; 0 = uniform
    noise: float = 0.0  # std of Gaussian noise added to every exemplar vector (within-class noise)
    seed_split: int = 20  # permutes the label pairs before the train/val split (the reference code's 20)
    # Synthetic features only: shape like the paper's Omniglot/ResNet18 file.
    synthetic_classes: int = 1623
    synthetic_exemplars: int = 5
    synthetic_dim: int = 512
    synthetic_seed: int = 0
    synthetic_within_class_std: float = 0.5  # exemplar spread around its class prototype (prototype std 1)

    def __post_init__(self):
        if self.n_labels < 2:
            raise ValueError(f"data.n_labels={self.n_labels}; needs at least 2 labels to form a pair")
        if self.burstiness < 1 or self.context_len != 2 * self.burstiness:
            raise ValueError(
                f"data.context_len={self.context_len}, data.burstiness={self.burstiness}; the context holds "
                f"`burstiness` items of the query's class and as many of one distractor: set context_len = 2*burstiness"
            )
        if not 0 < self.val_pair_fraction < 1:
            raise ValueError(f"data.val_pair_fraction={self.val_pair_fraction}; must lie in (0, 1)")
        if self.features is None and self.n_train_classes + self.n_test_classes > self.synthetic_classes:
            raise ValueError(f"data.n_train_classes + data.n_test_classes exceed "
                             f"data.synthetic_classes={self.synthetic_classes}")
        if self.n_train_classes < 2:
            raise ValueError(f"data.n_train_classes={self.n_train_classes}; needs at least 2 (query + distractor)")


    @property
    def n_ctx(self) -> int:
        """Tokens per sequence: an exemplar and a label per context item, then the query."""
        return 2 * self.context_len + 1


@dataclass
class ModelConfig:
    n_layers: int = 2
    n_heads: int = 8
    d_model: int = 64
    d_head: int = 8
    d_mlp: int | None = None  # None = attention-only (the paper); an int adds a GELU MLP per block
    positional: str = "rope"  # rope (interleaved pairs, the paper) | learned | none
    rope_base: float = 10000.0
    ln_eps: float = 1e-5
    use_hook_result: bool = False  # per-head outputs [batch, pos, head, d_model] at attn.hook_result (costs time)

    def __post_init__(self):
        if self.positional not in ("rope", "learned", "none"):
            raise ValueError(f"model.positional={self.positional!r}; choose one of rope, learned, none")
        if self.positional == "rope" and self.d_head % 2:
            raise ValueError(f"model.d_head={self.d_head}; rotary embedding needs an even head dimension")


COMPILE_MIN_STEPS = 10_000


@dataclass
class TrainConfig:
    sequences: int = 1_000_000  # budget in training sequences (the paper counts sequences, not steps)
    batch_size: int = 32
    lr: float = 1e-5
    beta1: float = 0.9  # Adam
    beta2: float = 0.999
    adam_eps: float = 1e-8
    eval_every: int = 10_000  # sequences between evaluations (also at 0 and at the end)
    checkpoint_every: int = 100_000  # sequences between checkpoints (and at the end)
    # optimizer steps of statistics kept on the device before a write to the store, which every checkpoint also
    # writes: at the defaults that is every 3,125 steps (each write costs about 15 ms of zarr-python per 10 arrays)
    flush_every: int = 4096
    compile: bool | None = None  # torch.compile the training forward (clamps, statistics); None = when long enough
    # Stop at an evaluation once the phase change is over (ihmodel.stopping): the fsl_train loss crossed 0.4 ln 2
    # and has since converged. Off: every trial runs its whole budget.
    stop_early: bool = False
    # the window over which convergence is judged: 5 evaluations at the paper's interval, so that the noise of
    # one 1,000-sequence evaluation cannot fake a flat stretch
    stop_patience: int = 50_000
    # converged when the loss fell by less than this fraction of itself over the window: at 10 % per 5e4
    # sequences what is left of the drop is a tail, not the phase change
    stop_tolerance: float = 0.1
    # or when the loss is this low (nats): the right label gets about 95 % probability, over 90 % of the drop from
    # the ln 2 plateau is done, and what is left is a slow tail (about 10 % per 1e4 sequences in the clamped runs)
    stop_floor: float = 0.05

    def __post_init__(self):
        for name in ("sequences", "batch_size", "eval_every", "checkpoint_every", "flush_every", "stop_patience"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name}={getattr(self, name)}; must be positive")
        if not 0 <= self.stop_tolerance < 1:
            raise ValueError(f"train.stop_tolerance={self.stop_tolerance}; must lie in [0, 1)")
        if self.stop_floor < 0:
            raise ValueError(f"train.stop_floor={self.stop_floor}; must be at least 0")

    @property
    def steps(self) -> int:
        return -(-self.sequences // self.batch_size)

    @property
    def steps_per_write(self) -> int:
        """Steps between writes to the store: flush_every, or a checkpoint's interval when that is shorter (every
        checkpoint writes). The step chunk of a store, so that a write fills a chunk rather than rewriting one."""
        return min(self.flush_every, -(-self.checkpoint_every // self.batch_size))

    @property
    def compiled(self) -> bool:
        """Compiling costs seconds (minutes on a cold cache) and saves about half of each step's time, so by
        default only trials of at least COMPILE_MIN_STEPS steps compile."""
        return self.compile if self.compile is not None else self.steps >= COMPILE_MIN_STEPS


EVALUATORS = ("fsl_train", "fsl_val_rl", "fsl_train_valex", "fsl_test_class")


@dataclass
class EvalConfig:
    size: int = 1000  # sequences per evaluator, made once from the eval seed
    induction_set: str = "fsl_train"  # sequences for eval_induction_score: an evaluator name or all_train
    batch_size: int = 4096  # evaluation forward-pass chunk: bounds memory; results equal up to float rounding

    def __post_init__(self):
        if self.size <= 0:
            raise ValueError(f"eval.size={self.size}; must be positive")
        choices = EVALUATORS + ("all_train",)
        if self.induction_set not in choices:
            raise ValueError(f"eval.induction_set={self.induction_set!r}; choose one of {', '.join(choices)}")


@dataclass
class InterventionConfig:
    """One overwrite of an activation, held in every forward pass (see ihmodel.clamp for each kind)."""

    kind: str = "zero"  # see ihmodel.clamp.KINDS
    hook: str | None = None  # hook point name, for the generic kinds (zero, constant, mean, checkpoint)
    layer: int | None = None  # layer of the heads, for head kinds
    heads: list[int] | None = None  # heads it acts on; None = every head of the layer (or of the hook)
    keep_heads: list[int] | None = None  # the complement: every head but these (the paper's "one head active")
    positions: list[int] | None = None  # positions (query positions for patterns); None = all
    value: float | None = None  # for kind=constant
    strength: float = 1.0  # s for induction_pattern: weight on the correct label token
    checkpoint: str | None = None  # another trial's checkpoint, for checkpoint/graft


@dataclass
class ClampConfig:
    name: str = "none"  # the clamp set's name (a store coordinate, a sweep axis value)
    active_head: list[int] = field(default_factory=lambda: [1, 3])  # [layer, head] of the one head left active
    prev_token_head: list[int] = field(default_factory=lambda: [0, 2])  # [layer, head] given a previous-token pattern
    interventions: list[InterventionConfig] = field(default_factory=list)


STAT_NAMES = (
    "loss", "acc", "grad_norm",
    "prev_token_score", "induction_score", "pattern_entropy", "head_out_norm",
    "eval", "eval_induction_score",
)


@dataclass
class TrialConfig:
    seed: int = 5  # init seed (the paper's 5)
    seed_data: int | None = None  # training data stream; None = derived from seed
    seed_eval: int | None = None  # evaluation sets; None = derived from seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 1  # torch CPU threads this trial owns (never more than its share of cores)
    store: str | None = None  # Zarr store path of this trial
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    clamp: ClampConfig = field(default_factory=ClampConfig)
    stats: list[str] = field(default_factory=lambda: list(STAT_NAMES))  # which statistics are recorded

    def __post_init__(self):
        unknown = sorted(set(self.stats) - set(STAT_NAMES))
        if unknown:
            raise ValueError(f"stats: unknown {unknown}; choose from {', '.join(STAT_NAMES)}")
        if self.threads < 1:
            raise ValueError(f"threads={self.threads}; must be at least 1")
        if self.train.stop_early and "eval" not in self.stats:
            raise ValueError("train.stop_early=true reads the fsl_train evaluation loss: add eval to stats")

    @property
    def data_seed(self) -> int:
        return self.seed_data if self.seed_data is not None else derive_seed(self.seed, "data")

    @property
    def eval_seed(self) -> int:
        return self.seed_eval if self.seed_eval is not None else derive_seed(self.seed, "eval")


# Keys that say where and how a trial runs, not what it computes.
RESOURCE_FIELDS = ("device", "threads", "store")
# The early-stop rule's knobs: they change the result only when train.stop_early is on.
STOP_RULE_FIELDS = ("stop_patience", "stop_tolerance", "stop_floor")


def derive_seed(seed: int, purpose: str) -> int:
    """A seed for `purpose` that differs between purposes and init seeds, stable across runs and platforms."""
    digest = hashlib.sha256(f"{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def to_dict(config: TrialConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_yaml(config: TrialConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def from_dict(values: dict[str, Any]) -> TrialConfig:
    """A TrialConfig from a (possibly partial) nested dict, checked against the schema."""
    merged = OmegaConf.merge(OmegaConf.structured(TrialConfig), values)
    return OmegaConf.to_object(merged)


def from_yaml(text: str) -> TrialConfig:
    return from_dict(OmegaConf.to_container(OmegaConf.create(text)))


def result_defining(config: TrialConfig) -> dict[str, Any]:
    """The part of the config that can change the result, with derived seeds made explicit."""
    values = to_dict(config)
    for name in RESOURCE_FIELDS:
        values.pop(name)
    if not config.train.stop_early:  # so that a trial's id is the same as before these keys existed
        for name in ("stop_early",) + STOP_RULE_FIELDS:
            values["train"].pop(name)
    values["seed_data"], values["seed_eval"] = config.data_seed, config.eval_seed
    return values


def trial_id(config: TrialConfig) -> str:
    """Stable id: a hash of everything that can change the result (not paths, device or threads)."""
    canonical = json.dumps(result_defining(config), sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
