#!/usr/bin/env bash
# The embedded CPU demo: builds the tiny model if missing, then trains it with the local rollout engine
# and the torch trainer. Extra arguments go to the trainer (e.g. --num-rollout 4, --async, --save DIR);
# --dry-run prints the resolved configuration and placement plan, runs the start-up checks and starts nothing
# (nor builds the model: it says that a real run builds it first).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_DIR=${MODEL_DIR:-outputs/tiny_model}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/embedded_cpu}

if [ ! -f "$MODEL_DIR/config.json" ]; then
  if [[ " $* " == *" --dry-run "* ]]; then
    export ASYNC_RL_BUILT_BEFORE_START=$MODEL_DIR  # a real run builds it here first (tools/make_tiny_model.py)
  else
    python tools/make_tiny_model.py --output-dir "$MODEL_DIR"
  fi
fi

ARGS=(
  --config configs/embedded_cpu.yaml
  --hf-checkpoint "$MODEL_DIR"
  --prompt-data "$MODEL_DIR/data/train.jsonl"
  --eval-prompt-data arithmetic "$MODEL_DIR/data/eval.jsonl"
  --output-dir "$OUTPUT_DIR"
)

exec python -m async_rl.train "${ARGS[@]}" "$@"
