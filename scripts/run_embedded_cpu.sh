#!/usr/bin/env bash
# The embedded CPU demo: builds the tiny model if missing, then trains it with the local rollout engine
# and the torch trainer. Extra arguments go to the trainer (e.g. --num-rollout 4, --async, --save DIR);
# --dry-run prints the resolved configuration and placement plan, runs the start-up checks and starts nothing
# (nor builds the model: it says that a real run builds it first).
# Relative paths in the arguments, and reward or filter plugins by module path, are taken from the directory
# the script is run from; each run writes to a fresh outputs/embedded_cpu/<date>_<time> (OUTPUT_DIR or
# --output-dir to choose), so that one run never refuses the next.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

MODEL_DIR=${MODEL_DIR:-$ROOT/outputs/tiny_model}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/embedded_cpu/$(date +%Y%m%d_%H%M%S)}

if [ ! -f "$MODEL_DIR/config.json" ]; then
  if [[ " $* " == *" --dry-run "* ]]; then
    export ASYNC_RL_BUILT_BEFORE_START=$MODEL_DIR  # a real run builds it here first (tools/make_tiny_model.py)
  else
    python "$ROOT/tools/make_tiny_model.py" --output-dir "$MODEL_DIR"
  fi
fi

ARGS=(
  --config "$ROOT/configs/embedded_cpu.yaml"
  --hf-checkpoint "$MODEL_DIR"
  --prompt-data "$MODEL_DIR/data/train.jsonl"
  --eval-prompt-data arithmetic "$MODEL_DIR/data/eval.jsonl"
  --output-dir "$OUTPUT_DIR"
)

export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # the project without `pip install -e`; `python -m` adds this directory first
exec python -m async_rl.train "${ARGS[@]}" "$@"
