#!/usr/bin/env bash
# DAPO on GSM8K for Qwen2.5-0.5B on one 8-GPU node, async: trainer on GPUs 0-3, four 1-GPU SGLang engines
# on GPUs 4-7, with TIS (cap 2.0) correcting the rollout/trainer mismatch.
#   ROLLOUT_PRECISION=fp8 bash scripts/run_qwen2.5_0.5b_gsm8k_dapo_tis.sh    (default; blockwise FP8 rollouts)
#   ROLLOUT_PRECISION=bf16 bash scripts/run_qwen2.5_0.5b_gsm8k_dapo_tis.sh   (the BF16 baseline)
# Add --dry-run to print the configuration and placement. YAML twin: configs/qwen2.5_0.5b_gsm8k_dapo_tis.yaml (FP8).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/launch.sh

ROLLOUT_PRECISION=${ROLLOUT_PRECISION:-fp8}
HF_CHECKPOINT=${HF_CHECKPOINT:-/root/models/Qwen2.5-0.5B-Instruct}
DATA_DIR=${DATA_DIR:-/root/data}
RUNTIME_ENV_VARS=()
case "$ROLLOUT_PRECISION" in
  fp8) QUANT=fp8 ;;
  bf16) QUANT=none ;;
  *) echo "ROLLOUT_PRECISION must be fp8 or bf16, got $ROLLOUT_PRECISION" >&2; exit 2 ;;
esac

MODEL_ARGS=(--hf-checkpoint "$HF_CHECKPOINT")
CLUSTER_ARGS=(--actor-num-nodes 1 --actor-num-gpus-per-node 4 --num-gpus-per-node 8
              --rollout-num-gpus 4 --rollout-num-gpus-per-engine 1)
BACKEND_ARGS=(--rollout-backend sglang --train-backend megatron --bf16)
ROLLOUT_ARGS=(
  --prompt-data "$DATA_DIR/gsm8k/train.jsonl" --input-key question --label-key answer --apply-chat-template
  --rollout-shuffle --num-rollout 200 --rollout-batch-size 64 --n-samples-per-prompt 8
  --rollout-max-response-len 1024 --rollout-temperature 1.0 --rollout-quantization "$QUANT" --max-staleness 1
  --dynamic-sampling-filter-path async_rl.rollout.filters.check_reward_nonzero_std --over-sampling-batch-size 96
)
ALGO_ARGS=(--advantage-estimator grpo --eps-clip 0.2 --eps-clip-high 0.28 --use-tis --tis-clip 2.0 --rm-type gsm8k)
OPTIMIZER_ARGS=(--lr 1e-6 --adam-beta1 0.9 --adam-beta2 0.98 --weight-decay 0.1)
EVAL_ARGS=(--eval-prompt-data gsm8k "$DATA_DIR/gsm8k/test.jsonl" --n-samples-per-eval-prompt 4 --eval-interval 10
           --eval-max-response-len 1024)
OUTPUT_ARGS=(--output-dir "outputs/qwen2.5-0.5b-gsm8k-dapo-$ROLLOUT_PRECISION")

launch async_rl.train --async "${MODEL_ARGS[@]}" "${CLUSTER_ARGS[@]}" "${BACKEND_ARGS[@]}" "${ROLLOUT_ARGS[@]}" \
  "${ALGO_ARGS[@]}" "${OPTIMIZER_ARGS[@]}" "${EVAL_ARGS[@]}" "${OUTPUT_ARGS[@]}" "$@"
