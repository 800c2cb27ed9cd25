# Sourced by script/predict and script/serve (with $repo set): when no real weights are configured (no
# WEIGHTS_DIR, no $repo/model-cache/FLUX.1-dev and no HF_TOKEN to download them), build and use the tiny
# random stand-ins, so a fresh clone runs the real code path in seconds. The images are noise.
if [ -z "${WEIGHTS_DIR:-}" ] && [ ! -f "$repo/model-cache/FLUX.1-dev/model_index.json" ] && [ -z "${HF_TOKEN:-}" ]; then
  export WEIGHTS_DIR="$repo/.tiny-weights"
  if [ ! -f "$WEIGHTS_DIR/FLUX.1-dev/model_index.json" ]; then
    (cd "$repo" && .venv/bin/python -m weights.tiny "$WEIGHTS_DIR" >&2)
  fi
  echo "No real weights configured: using the tiny random stand-ins in $WEIGHTS_DIR (outputs are noise)." >&2
fi
