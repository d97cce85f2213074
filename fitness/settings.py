"""Typed, validated settings of the fitness harness.

The engine composes these pydantic models into its TOML config (`[fitness]`,
`[fitness.sandbox]`, `[fitness.checks]`, `[fitness.stage1]`, `[fitness.stage2]`).
Unknown keys are errors (`extra="forbid"`) and every field is bounded, so a typo or
an absurd value fails at `evo validate` time, not an hour into a run.

Defaults target the CPU quickstart (2 cores, one torch thread per evaluation). Measured
here (bench/README.md, "MQAR calibration"): at T=64, kv=4, d=64 the seed softmax attention
reaches 0.958-0.965 held-out accuracy at 350 steps (0.93 at 250), in ~30 s of training on
an idle core; with the fork server the harness adds ~1 s per evaluation.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SandboxSettings(BaseModel):
    """Limits of the child process that evaluates one genome."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(
        180.0, gt=0, le=86_400,
        description="Wall-clock deadline per evaluation (spawn + checks + training), seconds. "
        "On expiry the whole process group is killed with SIGKILL. A stage may override it.",
    )
    memory_mb: int = Field(
        6144, ge=256, le=1_048_576,
        description="Host memory of one evaluation, MiB: the cgroup's memory limit (holds on CUDA too) and, on CPU, "
        "the address-space limit (RLIMIT_AS; importing torch alone maps ~1.5 GiB of virtual memory).",
    )
    gpu_memory_mb: int | None = Field(
        None, ge=64, le=10_000_000,
        description="On CUDA: the most GPU memory one evaluation's torch allocator may take, MiB (torch's per-process "
        "memory fraction, set before the genome loads; an in-process cap, as no OS layer caps GPU memory). "
        "None: no cap.",
    )
    cpu_s: int = Field(
        900, ge=1, le=864_000,
        description="CPU-time limit (RLIMIT_CPU) of the worker, seconds, all threads together; SIGKILL 5 s later.",
    )
    file_size_mb: int = Field(
        64, ge=1, le=1_048_576,
        description="Largest file the worker may write (RLIMIT_FSIZE), MiB; also caps its log.",
    )
    scratch_mb: int = Field(
        256, ge=1, le=1_048_576,
        description="Size of the worker's scratch dir (a tmpfs of its own, in memory), MiB.",
    )
    scratch_inodes: int = Field(4096, ge=16, le=100_000_000, description="Files and folders the scratch dir may hold.")
    max_tasks: int = Field(
        64, ge=8, le=100_000,
        description="Processes and threads of one evaluation together (the cgroup's pids limit): torch's thread "
        "pools and the CUDA driver's threads fit well under it.",
    )
    cgroup_root: str = Field(
        "/sys/fs/cgroup", min_length=1,
        description="Where evaluation cgroups are made: the cgroup hierarchy's mount (as root), or with cgroup v2 "
        "a group delegated to this user (e.g. by systemd: .../user@UID.service/app.slice).",
    )
    allow_missing: list[Literal["rlimits", "cgroup", "namespaces", "filesystem", "user", "landlock", "seccomp"]] = Field(
        default_factory=list,
        description="Containment layers a run may go without. Every layer is required by default: one that cannot "
        "be applied stops the run with a message naming it (see README, \"The sandbox\").",
    )
    fork_server: bool = Field(
        True,
        description="Executors fork each evaluation's process from a per-slot fork server that has imported "
        "torch and the harness once (~0.1 s per genome instead of ~7 s of imports). Each genome still gets "
        "its own fresh process and every containment layer. false: spawn a new interpreter per evaluation.",
    )
    log_tail_chars: int = Field(
        2000, ge=0, le=100_000,
        description="How much of the end of the worker's log (its stderr and prints) to keep with a failure.",
    )


class CheckSettings(BaseModel):
    """Structural checks run on a freshly built Mixer before any training."""

    model_config = ConfigDict(extra="forbid")

    causality: bool = Field(True, description="Reject mixers whose output at t depends on inputs after t.")
    causality_positions: int = Field(
        6, ge=1, le=64,
        description="How many positions t to probe (first, middle, last-but-one, plus random ones).",
    )
    tolerance: float = Field(
        1e-5, gt=0, le=1e-1,
        description="Largest allowed change of outputs at positions <= t, relative to (1 + max |output|).",
    )
    max_params: int = Field(
        2_000_000, ge=1,
        description="Absolute parameter budget of one Mixer.",
    )
    max_params_per_d2: float = Field(
        16.0, gt=0, le=1024,
        description="Relative parameter budget: a Mixer may have at most this many times d_model**2 "
        "parameters (softmax attention has 4). The budget is the smaller of the two.",
    )
    trained_tolerance: float = Field(
        5e-3, gt=0, le=1.0,
        description="Largest allowed difference of the trained model's log-probabilities between a scored test "
        "sequence and its exact copy, or its twin with other tokens after a secret position t (at positions <= t), "
        "answered by a second worker from the trained parameters; the engine compares them.",
    )
    complexity_probe: bool = Field(
        True, description="After scoring, time forward passes of the trained Mixer at the stage's sequence length "
        "and complexity_lengths (CPU time of its worker, counted by the kernel and read by the engine) and report "
        "how the cost grows.",
    )
    complexity_lengths: list[int] = Field(
        default_factory=lambda: [256, 512, 1024], min_length=1, max_length=16,
        description="Sequence lengths of the complexity probe besides the stage's own (8 rows, d_model of the "
        "stage); long enough that quadratic attention shows over the projections.",
    )
    complexity_repeats: int = Field(
        5, ge=1, le=100, description="Timed forward passes per length (after one warm-up); the lower quartile counts.",
    )
    max_complexity_exponent: float | None = Field(
        None, gt=0, le=10,
        description="Reject a mixer whose cost exponent exceeds this, e.g. 1.5 to demand sub-quadratic mixers. "
        "The exponent is the steepest growth of the probe's CPU time between consecutive lengths, less "
        "complexity_time_margin. None: report only.",
    )
    complexity_time_margin: float = Field(
        0.4, ge=0, le=10,
        description="Slack on the (noisy) time exponent before it counts against max_complexity_exponent.",
    )

    @model_validator(mode="after")
    def _lengths(self) -> "CheckSettings":
        if any(t < 2 for t in self.complexity_lengths) or len(set(self.complexity_lengths)) < len(self.complexity_lengths):
            raise ValueError(f"complexity_lengths needs distinct lengths >= 2, got {self.complexity_lengths}")
        return self


TaskName = Literal["mqar", "shakespeare"]


class StageSettings(BaseModel):
    """One fidelity level: the task, the backbone around the Mixer and the training budget."""

    model_config = ConfigDict(extra="forbid")

    task: TaskName = Field(
        "mqar", description="Task plugin (see fitness.tasks): mqar (synthetic recall, score = accuracy) or "
        "shakespeare (byte-level LM, score = 1 - bits_per_byte/8, vocab 256; vocab_size/num_kv_pairs unused).",
    )
    tasks: dict[TaskName, float] | None = Field(
        None, description="Optional weighted mix, e.g. {mqar = 1.0, shakespeare = 0.5}: the model is trained "
        "separately on each task with this stage's other settings (wall time adds up) and the score is the "
        "weighted mean of the task scores. Overrides `task` when set.",
    )
    d_model: int = Field(64, ge=8, le=8192, description="Width of the backbone and of the Mixer.")
    n_layers: int = Field(2, ge=1, le=64, description="Number of [conv -> Mixer -> MLP] blocks.")
    n_heads: int = Field(1, ge=1, le=256, description="Passed to Mixer(d_model, n_heads); must divide d_model.")
    seq_len: int = Field(64, ge=8, le=65_536, description="Sequence length T of every example.")
    num_kv_pairs: int = Field(4, ge=1, le=16_384, description="MQAR key-value pairs per example (4*kv <= T).")
    mqar_slices: list[tuple[int, int]] | None = Field(
        None, min_length=2, max_length=8,
        description="Optional, MQAR only: several (seq_len, num_kv_pairs) slices as in Zoology, e.g. [[64, 4], "
        "[128, 8], [256, 16]]: each training batch is one slice drawn at random, the test set holds every slice "
        "(about as many queries each) and the score is the accuracy over all of them. Distinct lengths; seq_len "
        "must be the longest (the checks and the complexity probe use it).")
    vocab_size: int = Field(8192, ge=16, le=1_000_000, description="Vocabulary size (keys from the lower half, values from the upper).")
    batch_size: int = Field(64, ge=1, le=65_536, description="Training batch size.")
    steps: int = Field(350, ge=1, le=10_000_000, description="Optimizer steps.")
    lr: float = Field(1e-2, gt=0, le=1.0, description="Peak AdamW learning rate (linear warm-up, cosine decay).")
    lr_sweep: list[float] | None = Field(
        None, min_length=2, max_length=8,
        description="Optional: train once per peak rate listed (instead of `lr`) and keep the model with the "
        "lowest loss on validation batches drawn apart from the training batches (never the test set); each "
        "rate counts as one evaluation in the run's budget.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay.")
    warmup_frac: float = Field(0.1, ge=0, lt=1.0, description="Fraction of steps of linear learning-rate warm-up.")
    eval_batches: int = Field(
        8, ge=1, le=100_000,
        description="Held-out test batches (of batch_size rows) for the score, drawn by the engine from its secret. "
        "MQAR scores num_kv_pairs queries per row; shakespeare one byte per row (the one after its end).",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, max_length=64,
        description="Training seeds (model init and data order). Stage 2 should use two or more.",
    )
    conv_kernel: int = Field(
        3, ge=0, le=64,
        description="Kernel of the short causal depthwise convolution before each Mixer (0 disables it; "
        "without it softmax attention does not learn MQAR on CPU budgets).",
    )
    mlp: bool = Field(False, description="Add a norm -> MLP(4x, GELU) -> residual after each Mixer (off: 2x faster on CPU, no better on MQAR at 250 steps).")
    timeout_s: float | None = Field(
        None, gt=0, le=86_400, description="Wall deadline for this stage; None uses sandbox.timeout_s.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "StageSettings":
        if self.lr_sweep is not None and (len(set(self.lr_sweep)) != len(self.lr_sweep)
                                          or any(not (0 < r <= 1.0) for r in self.lr_sweep)):
            raise ValueError(f"lr_sweep needs distinct rates in (0, 1], got {self.lr_sweep}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if self.tasks is not None:
            if not self.tasks or any(not (0 < w <= 1e6) for w in self.tasks.values()):
                raise ValueError(f"tasks needs at least one task and weights in (0, 1e6], got {self.tasks}")
        if self.mqar_slices is not None:
            lengths = [t for t, _ in self.mqar_slices]
            if len(set(lengths)) != len(lengths) or max(lengths) != self.seq_len:
                raise ValueError(f"mqar_slices need distinct lengths and seq_len = the longest, got {self.mqar_slices} "
                                 f"with seq_len={self.seq_len}")
        if "mqar" in (self.tasks or {self.task: 1.0}):
            for t, kv in self.mqar_slices or [(self.seq_len, self.num_kv_pairs)]:
                if 4 * kv > t or kv < 1:
                    raise ValueError(f"mqar needs 1 <= kv and 4*kv <= T, got kv={kv}, T={t}")
                if t % 2:
                    raise ValueError(f"mqar needs an even seq_len, got {t}")
                if self.vocab_size // 2 <= kv + 1 or self.vocab_size <= t:
                    raise ValueError(f"mqar needs vocab_size > T and vocab_size/2 > kv+1, got {self.vocab_size} "
                                     f"for T={t}, kv={kv}")
        return self


# Stage settings by preset; keys given in [fitness.stage1] / [fitness.stage2] override them.
PRESETS: dict[str, dict[str, dict]] = {
    "default": {  # CPU, one core per evaluation: stage 1 ~40-70 s per training seed, stage 2 ~3 min
        "stage1": {"task": "mqar", "seq_len": 128, "num_kv_pairs": 8, "d_model": 64, "n_layers": 2, "n_heads": 1,
                   "steps": 350, "eval_batches": 8},
        "stage2": {"task": "mqar", "seq_len": 256, "num_kv_pairs": 16, "d_model": 64, "n_layers": 2, "n_heads": 2,
                   "steps": 400, "eval_batches": 8, "seeds": [0, 1], "timeout_s": 900},
    },
    "gpu": {
        "stage1": {"task": "mqar", "seq_len": 256, "num_kv_pairs": 16, "d_model": 128, "n_layers": 2, "n_heads": 2,
                   "steps": 1000, "batch_size": 128, "eval_batches": 16, "timeout_s": 600},
        "stage2": {"tasks": {"mqar": 1.0, "shakespeare": 0.5}, "seq_len": 512, "num_kv_pairs": 32,
                   "mqar_slices": [[128, 8], [256, 16], [512, 32]], "d_model": 256,
                   "n_layers": 4, "n_heads": 4, "steps": 3000, "batch_size": 128, "lr": 3e-3, "mlp": True,
                   "eval_batches": 16, "seeds": [0, 1, 2], "timeout_s": 3600},
    },
}


class PromotionSettings(BaseModel):
    """Promotion to stage 2, per step. Step 0 (the seed genomes) always promotes its top_k."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["top_k", "quantile", "margin"] = Field(
        "top_k", description="Among the genomes of a step with racing.min_seeds training seeds: top_k: the best "
        "top_k by mean stage-1 score; quantile: those at or above the given quantile of every stage-1 mean so far; "
        "margin: those whose gain over the seed baseline, less `margin`, exceeds racing.z standard errors. "
        "quantile and margin promote at most top_k.")
    top_k: int = Field(2, ge=0, le=100_000, description="Most genomes promoted per step.")
    quantile: float = Field(0.9, ge=0.0, le=1.0, description="For policy = quantile.")
    margin: float = Field(0.0, ge=-1.0, le=1.0, description="For policy = margin (score units, e.g. accuracy).")


class RacingSettings(BaseModel):
    """More training seeds for the genomes whose rank matters (the engine races them)."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[int] = Field(
        default_factory=lambda: [101, 102, 103, 104], max_length=64,
        description="Training seeds a genome may get beyond stage1.seeds, in this order: the seed genomes "
        "(baseline_seeds of them in all) and the contenders for the best place and for promotion.")
    baseline_seeds: int = Field(
        3, ge=1, le=64, description="Training seeds of every seed genome at step 0; the seed baseline is the "
        "best seed genome's mean over them.")
    min_seeds: int = Field(
        3, ge=1, le=64, description="Seeds a genome needs before it can take the best place or go to stage 2.")
    z: float = Field(
        2.0, gt=0, le=10, description="Interval half-width in standard errors: a contender gets more seeds while "
        "its interval overlaps the best genome's; policy margin promotes on a gain of z standard errors.")


class FitnessSettings(BaseModel):
    """Everything the fitness package needs: device, parallelism, sandbox, checks, two stages."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when torch sees a GPU, else CPU.",
    )
    workers: int = Field(1, ge=1, le=1024, description="Evaluations run in parallel (one GPU or CPU slot each).")
    threads_per_worker: int = Field(
        1, ge=1, le=256,
        description="torch CPU threads per evaluation (one is fastest when anything else runs on the cores).",
    )
    executor: Literal["local", "ray"] = Field(
        "local",
        description="Who runs the sandboxed evaluations: local = up to `workers` subprocesses on this "
        "machine; ray = Ray tasks on a Ray cluster (install the `ray` extra).",
    )
    ray_address: str | None = Field(
        None, min_length=1,
        description="executor=ray: address of an existing Ray cluster (\"auto\", \"HOST:6379\", \"ray://HOST:10001\"). "
        "None: the RAY_ADDRESS environment variable if set, else a private local cluster with "
        "workers * threads_per_worker CPUs, shut down with the executor.",
    )
    gpus_per_eval: float | None = Field(
        None, ge=0, le=64,
        description="executor=ray: GPUs Ray reserves for each evaluation (a fraction shares a GPU). "
        "None: 1 when device is not cpu and the cluster has GPUs, else 0.",
    )
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings, description="Child-process limits.")
    checks: CheckSettings = Field(default_factory=CheckSettings, description="Structural checks before training.")
    preset: Literal["default", "gpu"] = Field(
        "default", description="Stage settings to start from: default (CPU, minutes per evaluation) or gpu (larger "
        "and longer: see fitness.settings.PRESETS); keys given in [fitness.stage1] and [fitness.stage2] override them.")
    stage1: StageSettings = Field(description="Exploration: every valid genome.")
    stage2: StageSettings = Field(description="Verification: promoted genomes, several seeds.")
    promotion: PromotionSettings = Field(default_factory=lambda: PromotionSettings(),
                                         description="Which genomes of a generation go on to stage 2.")
    racing: RacingSettings = Field(default_factory=RacingSettings,
                                   description="Extra training seeds for the seeds' baseline and the contenders.")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, raw: object) -> object:
        """Each stage is its preset's settings with the keys the config gives laid over them; a stage
        that names its `task` or `tasks` takes neither from the preset."""
        if not isinstance(raw, dict) or raw.get("preset", "default") not in PRESETS:
            return raw
        out = dict(raw)
        for stage, base in PRESETS[raw.get("preset", "default")].items():
            given = raw.get(stage)
            if isinstance(given, StageSettings):
                given = given.model_dump(exclude_unset=True)
            if given is None or isinstance(given, dict):
                given = given or {}
                if "task" in given or "tasks" in given:
                    base = {k: v for k, v in base.items() if k not in ("task", "tasks")}
                out[stage] = {**base, **given}
        return out

    @model_validator(mode="after")
    def _enough_seeds(self) -> "FitnessSettings":
        pool = len(self.stage1.seeds) + len(self.racing.seeds)
        r = self.racing
        if max(r.baseline_seeds, r.min_seeds) > pool:
            raise ValueError(f"racing needs {max(r.baseline_seeds, r.min_seeds)} training seeds but stage1.seeds and "
                             f"racing.seeds give {pool}")
        if len(set(self.stage1.seeds + r.seeds)) < pool:
            raise ValueError("stage1.seeds and racing.seeds must all differ")
        if r.min_seeds > r.baseline_seeds:
            raise ValueError(f"racing.min_seeds ({r.min_seeds}) must not exceed baseline_seeds ({r.baseline_seeds}): "
                             "the seed genomes hold the best place first")
        return self

    def stage1_seeds(self) -> list[int]:
        """Every training seed a stage-1 genome may get, in order: stage1.seeds, then racing.seeds."""
        return list(self.stage1.seeds) + list(self.racing.seeds)

    def stage(self, stage: int) -> StageSettings:
        """Return the settings of stage 1 or 2."""
        if stage == 1:
            return self.stage1
        if stage == 2:
            return self.stage2
        raise ValueError(f"stage must be 1 or 2, got {stage}")
