#!/usr/bin/env bash
# FP8 end to end on Qwen3-30B-A3B, 3 nodes x 8 GPUs: Megatron trains in FP8 through Transformer Engine
# (E4M3, tensorwise scaling, the faster recipe on Hopper: docs/megatron.md) on nodes 0-1, experts split over
# 8 GPUs and run as grouped GEMMs; two 4-GPU SGLang engines roll out with blockwise FP8 weights on node 2.
#   bash scripts/run_qwen3_30b_a3b_fp8_e2e.sh [--dry-run] [extra flags]
# Multi-node: RAY_ADDRESS=http://HEAD:8265 bash scripts/... YAML twin: configs/qwen3_30b_a3b_fp8_e2e.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/launch.sh

HF_CHECKPOINT=${HF_CHECKPOINT:-/root/models/Qwen3-30B-A3B}
DATA_DIR=${DATA_DIR:-/root/data}
CKPT_DIR=${CKPT_DIR:-/root/checkpoints/qwen3-30b-a3b-fp8-e2e}
RUNTIME_ENV_VARS=()

MODEL_ARGS=(--hf-checkpoint "$HF_CHECKPOINT")
CLUSTER_ARGS=(--actor-num-nodes 2 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --rollout-num-gpus 8 --rollout-num-gpus-per-engine 4)
BACKEND_ARGS=(--rollout-backend sglang --train-backend megatron)
MEGATRON_ARGS=(
  --expert-model-parallel-size 8 --moe-grouped-gemm --use-distributed-optimizer
  --bf16 --fp8-format e4m3 --fp8-recipe tensorwise
  --recompute-granularity full --recompute-method uniform --recompute-num-layers 1 --max-tokens-per-gpu 16384
)
ROLLOUT_ARGS=(
  --prompt-data "$DATA_DIR/dapo-math-17k.jsonl" --input-key prompt --label-key label
  --apply-chat-template --rollout-shuffle --num-rollout 300
  --rollout-batch-size 64 --n-samples-per-prompt 16 --global-batch-size 1024
  --rollout-max-response-len 8192 --rollout-temperature 1.0 --rollout-quantization fp8
  --dynamic-sampling-filter-path async_rl.rollout.filters.check_reward_nonzero_std --over-sampling-batch-size 96
)
ALGO_ARGS=(--advantage-estimator grpo --eps-clip 0.2 --eps-clip-high 0.28 --use-tis --tis-clip 2.0 --rm-type deepscaler)
OPTIMIZER_ARGS=(--lr 1e-6 --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.98 --clip-grad 1.0)
EVAL_ARGS=(--eval-prompt-data aime "$DATA_DIR/aime-2024.jsonl" --n-samples-per-eval-prompt 16 --eval-interval 20
           --eval-max-response-len 8192)
SAVE_ARGS=(--save "$CKPT_DIR" --save-interval 20 --output-dir outputs/qwen3-30b-a3b-fp8-e2e)

launch async_rl.train "${MODEL_ARGS[@]}" "${CLUSTER_ARGS[@]}" "${BACKEND_ARGS[@]}" "${MEGATRON_ARGS[@]}" \
  "${ROLLOUT_ARGS[@]}" "${ALGO_ARGS[@]}" "${OPTIMIZER_ARGS[@]}" "${EVAL_ARGS[@]}" "${SAVE_ARGS[@]}" "$@"
