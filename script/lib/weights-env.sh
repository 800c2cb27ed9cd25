# Sourced by script/predict and script/serve (with $repo set). The code's defaults (./model-cache,
# ./weights-cache) are relative to the current folder; these scripts pin them to the repo instead, so a
# prediction run from any folder finds the same weights and LoRA cache. When no real weights are
# configured (no WEIGHTS_DIR, no $repo/model-cache/FLUX.1-dev and no HF_TOKEN to download them), build and
# use the tiny random stand-ins, so a fresh clone runs the real code path in seconds. The images are noise.
export LORA_CACHE_DIR=${LORA_CACHE_DIR:-$repo/weights-cache}
# Compiled code goes where the server keeps it (FLUX_COMPILE_CACHE_DIR, pinned to the repo like the other caches).
# torch would otherwise use $TMPDIR/torchinductor_<user>/ (made as soon as torchao is imported) before setup
# points it there, so a run would leave files in $TMPDIR: the same folder is set for it from the start.
export FLUX_COMPILE_CACHE_DIR=${FLUX_COMPILE_CACHE_DIR:-$repo/compile-cache}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$FLUX_COMPILE_CACHE_DIR/inductor}
if [ -z "${WEIGHTS_DIR:-}" ]; then
  if [ -f "$repo/model-cache/FLUX.1-dev/model_index.json" ] || [ -n "${HF_TOKEN:-}" ]; then
    export WEIGHTS_DIR="$repo/model-cache"
  else
    export WEIGHTS_DIR="$repo/.tiny-weights"
    if [ ! -f "$WEIGHTS_DIR/FLUX.1-dev/model_index.json" ]; then
      (cd "$repo" && .venv/bin/python -m weights.tiny "$WEIGHTS_DIR" >&2)
    fi
    echo "No real weights configured: using the tiny random stand-ins in $WEIGHTS_DIR (outputs are noise)." >&2
  fi
fi
