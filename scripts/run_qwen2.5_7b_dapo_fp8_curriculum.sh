#!/usr/bin/env bash
# Two-stage DAPO curriculum on Qwen2.5-7B with FP8 (blockwise E4M3) rollouts, async, on 4 nodes x 8 GPUs:
# trainer on nodes 0-1 (Megatron, BF16), four 4-GPU SGLang engines on nodes 2-3.
#   STAGE=1 bash scripts/run_qwen2.5_7b_dapo_fp8_curriculum.sh     8k responses, temperature 1.0
#   STAGE=2 bash scripts/run_qwen2.5_7b_dapo_fp8_curriculum.sh     16k responses, temperature 1.1, from stage 1
# Multi-node: start Ray on every node, then RAY_ADDRESS=http://HEAD:8265 bash scripts/...; add --dry-run to
# see the resolved configuration and which GPU does what. YAML twins: configs/qwen2.5_7b_dapo_fp8_stage{1,2}.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/launch.sh

STAGE=${STAGE:-1}
HF_CHECKPOINT=${HF_CHECKPOINT:-/root/models/Qwen2.5-7B}
DATA_DIR=${DATA_DIR:-/root/data}
CKPT_DIR=${CKPT_DIR:-/root/checkpoints/qwen2.5-7b-dapo-fp8}
RUNTIME_ENV_VARS=()

MODEL_ARGS=(--hf-checkpoint "$HF_CHECKPOINT")
CLUSTER_ARGS=(
  --actor-num-nodes 2 --actor-num-gpus-per-node 8 --num-gpus-per-node 8
  --rollout-num-gpus 16 --rollout-num-gpus-per-engine 4
)
BACKEND_ARGS=(--rollout-backend sglang --train-backend megatron)
MEGATRON_ARGS=(
  --tensor-model-parallel-size 2 --use-distributed-optimizer --bf16
  --recompute-granularity full --recompute-method uniform --recompute-num-layers 1 --max-tokens-per-gpu 9216
)
ROLLOUT_ARGS=(
  --prompt-data "$DATA_DIR/dapo-math-17k.jsonl" --input-key prompt --label-key label
  --apply-chat-template --rollout-shuffle
  --rollout-batch-size 128 --n-samples-per-prompt 16 --global-batch-size 2048
  --rollout-quantization fp8 --max-staleness 1
  --dynamic-sampling-filter-path async_rl.rollout.filters.check_reward_nonzero_std --over-sampling-batch-size 192
)
ALGO_ARGS=(
  --advantage-estimator grpo --kl-coef 0 --eps-clip 0.2 --eps-clip-high 0.28
  --use-tis --tis-clip 2.0 --rm-type deepscaler
)
OPTIMIZER_ARGS=(--lr 1e-6 --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.98 --clip-grad 1.0)
EVAL_ARGS=(
  --eval-prompt-data aime "$DATA_DIR/aime-2024.jsonl" --n-samples-per-eval-prompt 16
  --eval-interval 20 --eval-temperature 1.0
)

if [ "$STAGE" = 1 ]; then
  STAGE_ARGS=(
    --num-rollout 400 --rollout-max-response-len 8192 --rollout-temperature 1.0 --overlong-buffer-len 1024
    --eval-max-response-len 8192 --save "$CKPT_DIR/stage1" --save-interval 20 --output-dir outputs/qwen2.5-7b-dapo-fp8-stage1
  )
elif [ "$STAGE" = 2 ]; then
  STAGE_ARGS=(
    --num-rollout 800 --rollout-max-response-len 16384 --rollout-temperature 1.1 --overlong-buffer-len 2048
    --eval-max-response-len 16384 --load "$CKPT_DIR/stage1" --save "$CKPT_DIR/stage2" --save-interval 20
    --output-dir outputs/qwen2.5-7b-dapo-fp8-stage2
  )
else
  echo "STAGE must be 1 or 2, got $STAGE" >&2
  exit 2
fi

launch async_rl.train --async "${MODEL_ARGS[@]}" "${CLUSTER_ARGS[@]}" "${BACKEND_ARGS[@]}" "${MEGATRON_ARGS[@]}" \
  "${ROLLOUT_ARGS[@]}" "${ALGO_ARGS[@]}" "${OPTIMIZER_ARGS[@]}" "${EVAL_ARGS[@]}" "${STAGE_ARGS[@]}" "$@"
