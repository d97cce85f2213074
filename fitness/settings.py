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
    vocab_size: int = Field(8192, ge=16, le=1_000_000, description="Vocabulary size (keys from the lower half, values from the upper).")
    batch_size: int = Field(64, ge=1, le=65_536, description="Training batch size.")
    steps: int = Field(350, ge=1, le=10_000_000, description="Optimizer steps.")
    lr: float = Field(1e-2, gt=0, le=1.0, description="Peak AdamW learning rate (linear warm-up, cosine decay).")
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
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if self.tasks is not None:
            if not self.tasks or any(not (0 < w <= 1e6) for w in self.tasks.values()):
                raise ValueError(f"tasks needs at least one task and weights in (0, 1e6], got {self.tasks}")
        if self.task == "mqar" or "mqar" in (self.tasks or {}):
            if 4 * self.num_kv_pairs > self.seq_len:
                raise ValueError(f"mqar needs 4*num_kv_pairs <= seq_len, got kv={self.num_kv_pairs}, T={self.seq_len}")
            if self.seq_len % 2:
                raise ValueError(f"mqar needs an even seq_len, got {self.seq_len}")
            if self.vocab_size // 2 <= self.num_kv_pairs + 1 or self.vocab_size <= self.seq_len:
                raise ValueError(f"mqar needs vocab_size > seq_len and vocab_size/2 > kv+1, got {self.vocab_size}")
        return self


def _stage2_default() -> StageSettings:
    return StageSettings(
        d_model=64, n_layers=2, n_heads=2, seq_len=128, num_kv_pairs=8, batch_size=64,
        steps=300, eval_batches=8, seeds=[0, 1],
    )


class PromotionSettings(BaseModel):
    """Promotion to stage 2, per generation. The seed generation always promotes its top_k."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["top_k", "quantile", "margin"] = Field(
        "top_k", description="top_k: the best top_k of the generation by stage-1 score; quantile: those at or "
        "above the given quantile of every stage-1 score so far; margin: those beating the best seed's "
        "stage-1 score by at least `margin`. quantile and margin promote at most top_k.")
    top_k: int = Field(2, ge=0, le=100_000, description="Most genomes promoted per generation.")
    quantile: float = Field(0.9, ge=0.0, le=1.0, description="For policy = quantile.")
    margin: float = Field(0.0, ge=-1.0, le=1.0, description="For policy = margin (score units, e.g. accuracy).")


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
    stage1: StageSettings = Field(default_factory=StageSettings, description="Exploration: every valid genome.")
    stage2: StageSettings = Field(default_factory=_stage2_default, description="Verification: promoted genomes, several seeds.")
    promotion: PromotionSettings = Field(default_factory=lambda: PromotionSettings(),
                                         description="Which genomes of a generation go on to stage 2.")

    def stage(self, stage: int) -> StageSettings:
        """Return the settings of stage 1 or 2."""
        if stage == 1:
            return self.stage1
        if stage == 2:
            return self.stage2
        raise ValueError(f"stage must be 1 or 2, got {stage}")
