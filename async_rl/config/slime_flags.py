"""Megatron-LM and slime flags that slime launch scripts carry, taken with their own meaning.

A slime script describes the model to Megatron on the command line (`--num-layers 36 --hidden-size 2560 ...`),
sets Megatron's training switches and names slime features. Here the model is read from config.json, so each
such flag is one of four kinds, and `--dry-run` prints what each one given does:

- model: describes the model. Where config.json holds the same number the two must agree (a mismatch stops
  the start naming the flag and both values); otherwise it is read from config.json.
- same: what it asks for is how this project already runs (for some flags only at the value slime scripts use;
  another value is a feature not built yet).
- ignored: changes nothing here; the note says why or what does the job.
- unbuilt: a feature not built yet: the start stops with one line naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from async_rl.errors import ConfigError

MODEL, SAME, IGNORED, UNBUILT = "model", "same", "ignored", "unbuilt"


@dataclass(frozen=True)
class SlimeFlag:
    kind: str
    note: str = ""
    nargs: int | str = 1  # 0: a switch; "+": values up to the next flag
    hf_keys: tuple[str, ...] = ()  # config.json keys the value must equal (the first one present)
    same_if: Callable[[Any], bool] | None = None  # SAME only for these values; others are UNBUILT


def _equals(expected: float) -> Callable[[Any], bool]:
    return lambda value: float(value) == expected


def _model(*hf_keys: str, nargs: int | str = 1) -> SlimeFlag:
    return SlimeFlag(MODEL, nargs=nargs, hf_keys=hf_keys)


_FROM_CONFIG = "read from config.json"
_PERF = "a Megatron performance setting; megatron-core's default is used"
_SFT = "supervised fine-tuning (slime's sft_rollout and sft_loss)"

FLAGS: dict[str, SlimeFlag] = {
    # model shape (slime's scripts/models/*.sh)
    "--num-layers": _model("num_hidden_layers"),
    "--hidden-size": _model("hidden_size"),
    "--ffn-hidden-size": _model("intermediate_size"),
    "--num-attention-heads": _model("num_attention_heads"),
    "--num-query-groups": _model("num_key_value_heads"),
    "--kv-channels": _model("head_dim"),
    "--norm-epsilon": _model("rms_norm_eps", "layer_norm_eps"),
    "--rotary-base": _model("rope_theta", "rope_parameters.rope_theta"),
    "--rotary-percent": _model("partial_rotary_factor"),
    "--rotary-scaling-factor": _model("rope_scaling.factor", "rope_parameters.factor"),
    "--mscale": _model("rope_scaling.mscale", "rope_parameters.mscale"),
    "--mscale-all-dim": _model("rope_scaling.mscale_all_dim", "rope_parameters.mscale_all_dim"),
    "--vocab-size": _model("vocab_size"),
    "--max-position-embeddings": _model("max_position_embeddings"),
    "--num-experts": _model("num_experts", "n_routed_experts", "num_local_experts"),
    "--moe-ffn-hidden-size": _model("moe_intermediate_size"),
    "--moe-router-topk": _model("num_experts_per_tok"),
    "--moe-shared-expert-intermediate-size": _model("shared_expert_intermediate_size"),
    "--moe-router-topk-scaling-factor": _model("routed_scaling_factor"),
    "--moe-router-num-groups": _model("n_group"),
    "--moe-router-group-topk": _model("topk_group"),
    "--kv-lora-rank": _model("kv_lora_rank"),
    "--q-lora-rank": _model("q_lora_rank"),
    "--qk-head-dim": _model("qk_nope_head_dim"),
    "--qk-pos-emb-head-dim": _model("qk_rope_head_dim"),
    "--v-head-dim": _model("v_head_dim"),
    "--mtp-num-layers": _model("num_nextn_predict_layers", "mtp_num_hidden_layers"),
    **{name: _model(nargs=0) for name in (
        "--swiglu", "--group-query-attention", "--qk-layernorm", "--disable-bias-linear",
        "--untie-embeddings-and-output-weights", "--add-qkv-bias", "--use-rotary-position-embeddings",
        "--no-position-embedding", "--multi-latent-attention", "--moe-router-pre-softmax",
        "--moe-router-enable-expert-bias", "--apply-layernorm-1p", "--post-mlp-layernorm", "--post-self-attn-layernorm",
        "--rotary-interleaved", "--use-gated-attention", "--attention-output-gate", "--moe-shared-expert-gate",
    )},
    **{name: _model() for name in (
        "--normalization", "--position-embedding-type", "--moe-router-score-function", "--moe-layer-freq",
        "--make-vocab-size-divisible-by", "--model-name",
    )},
    "--spec": SlimeFlag(IGNORED, "the megatron trainer builds its layers from config.json's model_type", nargs="+"),
    # Megatron training switches
    "--attention-dropout": SlimeFlag(SAME, "no dropout", same_if=_equals(0.0)),
    "--hidden-dropout": SlimeFlag(SAME, "no dropout", same_if=_equals(0.0)),
    "--accumulate-allreduce-grads-in-fp32": SlimeFlag(SAME, "gradients are reduced in FP32", nargs=0),
    "--attention-softmax-in-fp32": SlimeFlag(IGNORED, "Transformer Engine's fused attention keeps its softmax in FP32",
                                             nargs=0),
    "--attention-backend": SlimeFlag(IGNORED, "Transformer Engine picks its attention kernel"),
    "--no-rope-fusion": SlimeFlag(IGNORED, _PERF, nargs=0),
    "--no-masked-softmax-fusion": SlimeFlag(IGNORED, _PERF, nargs=0),
    "--no-check-for-nan-in-loss-and-grad": SlimeFlag(IGNORED, "steps with a non-finite loss or gradient are skipped "
                                                     "and counted (--max-skipped-steps)", nargs=0),
    "--use-dynamic-batch-size": SlimeFlag(SAME, "micro-batches are packed up to --max-tokens-per-gpu", nargs=0),
    "--expert-tensor-parallel-size": SlimeFlag(SAME, "experts are not split by tensor parallelism", same_if=_equals(1)),
    "--moe-aux-loss-coeff": SlimeFlag(SAME, "no load-balancing loss: the RL loss is the policy's alone",
                                      same_if=_equals(0.0)),
    "--moe-router-load-balancing-type": SlimeFlag(IGNORED, "no load-balancing loss is added (--moe-aux-loss-coeff 0)"),
    "--moe-router-bias-update-rate": SlimeFlag(SAME, "expert biases are not updated during RL", same_if=_equals(0.0)),
    "--moe-router-dtype": SlimeFlag(SAME, "the router runs in FP32", same_if=lambda v: v == "fp32"),
    "--moe-token-dispatcher-type": SlimeFlag(IGNORED, _PERF),
    "--moe-permute-fusion": SlimeFlag(IGNORED, _PERF, nargs=0),
    "--moe-enable-deepep": SlimeFlag(IGNORED, _PERF, nargs=0),
    "--moe-token-drop-policy": SlimeFlag(IGNORED, "tokens are never dropped (no expert capacity limit)"),
    "--optimizer-cpu-offload": SlimeFlag(IGNORED, "Adam's state stays with the trainer; --offload-train moves it to "
                                         "the host while the engines generate", nargs=0),
    "--overlap-cpu-optimizer-d2h-h2d": SlimeFlag(IGNORED, "goes with --optimizer-cpu-offload", nargs=0),
    "--use-precision-aware-optimizer": SlimeFlag(IGNORED, "Adam's state is kept in FP32", nargs=0),
    "--decoder-last-pipeline-num-layers": SlimeFlag(UNBUILT, "pipeline stages of unequal layer counts"),
    "--allgather-cp": SlimeFlag(IGNORED, _PERF, nargs=0),
    "--data-pad-size-multiplier": SlimeFlag(IGNORED, "packed micro-batches are padded to what the kernels need"),
    "--log-probs-chunk-size": SlimeFlag(IGNORED, "log-probs are taken per micro-batch off the BF16 logits"),
    # slime's own
    "--ref-load": SlimeFlag(SAME, "the reference model is --hf-checkpoint's weights as loaded at the start (slime's "
                            "--ref-load is a torch_dist copy of the same model)"),
    "--calculate-per-token-loss": SlimeFlag(SAME, "--loss-aggregation token_mean averages over the tokens of the "
                                            "whole global batch", nargs=0),
    "--use-tensorboard": SlimeFlag(SAME, "TensorBoard scalars are always written", nargs=0),
    "--wandb-key": SlimeFlag(IGNORED, "set WANDB_API_KEY instead: a key on the command line would be saved in "
                             "config.yaml"),
    "--wandb-host": SlimeFlag(IGNORED, "set WANDB_BASE_URL instead"),
    "--enable-experimental": SlimeFlag(IGNORED, "nothing here is behind it", nargs=0),
    "--rollout-function-path": SlimeFlag(
        SAME, "this project's rollout, slime's default or its fully asynchronous one (what --async runs); another "
        "rollout function is not built (--custom-generate-function-path replaces generation per sample)",
        same_if=lambda v: v in ("slime.rollout.sglang_rollout.generate_rollout",
                                "slime.rollout.fully_async_rollout.generate_rollout_fully_async")),
    "--loss-type": SlimeFlag(SAME, "the policy-gradient loss", same_if=lambda v: v == "policy_loss"),
    "--num-epoch": SlimeFlag(UNBUILT, "a run length in epochs (give --num-rollout)"),
    "--lr-warmup-fraction": SlimeFlag(UNBUILT, "a warm-up given as a fraction (give --lr-warmup-iters)"),
    "--debug-train-only": SlimeFlag(UNBUILT, _SFT, nargs=0),
    "--disable-compute-advantages-and-returns": SlimeFlag(UNBUILT, _SFT, nargs=0),
    "--enable-mtp-training": SlimeFlag(UNBUILT, "training multi-token-prediction layers", nargs=0),
    "--mtp-loss-scaling-factor": SlimeFlag(UNBUILT, "training multi-token-prediction layers"),
    "--custom-config-path": SlimeFlag(UNBUILT, "slime's YAML of extra arguments (--config takes YAML of this "
                                      "project's flags)"),
    "--eval-config": SlimeFlag(UNBUILT, "eval sets from a YAML file (--eval-prompt-data NAME FILE ... names them)"),
    "--reward-key": SlimeFlag(SAME, "a reward function's dict gives its reward under `score`",
                              same_if=lambda v: v == "score"),
    "--metadata-key": SlimeFlag(SAME, "a row's other fields are the sample's metadata",
                                same_if=lambda v: v == "metadata"),
    "--multimodal-keys": SlimeFlag(UNBUILT, "multimodal prompts"),
    "--use-rollout-logprobs": SlimeFlag(UNBUILT, "training against the engines' log-probs instead of the trainer's "
                                        "(TIS corrects the mismatch instead)", nargs=0),
    "--prefill-num-servers": SlimeFlag(UNBUILT, "prefill/decode disaggregated engines"),
    "--update-weight-transport": SlimeFlag(UNBUILT, "weight updates through files on disk"),
    "--update-weight-disk-dir": SlimeFlag(UNBUILT, "weight updates through files on disk"),
    "--update-weight-local-checkpoint-dir": SlimeFlag(UNBUILT, "weight updates through files on disk"),
    "--update-weight-delta-encoding": SlimeFlag(UNBUILT, "delta weight updates"),
    "--update-weight-delta-checksum": SlimeFlag(UNBUILT, "delta weight updates", nargs=0),
    "--use-opd": SlimeFlag(UNBUILT, "on-policy distillation", nargs=0),
    "--opd-type": SlimeFlag(UNBUILT, "on-policy distillation"),
    "--opd-kl-coef": SlimeFlag(UNBUILT, "on-policy distillation"),
    "--opd-teacher-load": SlimeFlag(UNBUILT, "on-policy distillation"),
}


@dataclass(frozen=True)
class SlimeArgs:
    """The slime and Megatron flags of one command line, in order: flag -> value (True for a switch, a list for
    several values)."""

    values: dict[str, Any]

    def notes(self) -> list[str]:
        """One line per flag: what it does here (for --dry-run)."""
        lines = []
        for name, value in self.values.items():
            spec = FLAGS[name]
            shown = name if value is True else f"{name} {' '.join(value) if isinstance(value, list) else value}"
            if spec.kind == MODEL:
                what = "checked against config.json" if spec.hf_keys else _FROM_CONFIG
            elif spec.kind == SAME:
                what = f"already so here: {spec.note}"
            else:
                what = f"changes nothing here: {spec.note}"
            lines.append(f"{shown}: {what}")
        return lines

    def model_mismatches(self, hf_config: dict[str, Any], path: str) -> list[str]:
        """One line per model-shape flag whose value config.json contradicts."""
        problems = []
        for name, value in self.values.items():
            for key in FLAGS[name].hf_keys:
                expected = _lookup(hf_config, key)
                if expected is None:
                    continue
                if not _same_number(value, expected):
                    problems.append(f"{name} {value} does not match {path}/config.json's {key} {expected}")
                break
        return problems


def _lookup(hf_config: dict[str, Any], dotted: str) -> Any:
    value: Any = hf_config
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _same_number(given: Any, expected: Any) -> bool:
    try:
        return math.isclose(float(given), float(expected), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(given) == str(expected)


def split_slime_args(argv: list[str]) -> tuple[list[str], SlimeArgs]:
    """Take the flags of FLAGS out of argv; a feature not built yet stops here, naming its flag."""
    rest, values = [], {}
    i = 0
    while i < len(argv):
        name, has_value, inline = argv[i].partition("=")
        spec = FLAGS.get(name)
        if spec is None:
            rest.append(argv[i])
            i += 1
            continue
        i += 1
        if has_value:
            value: Any = inline
        elif spec.nargs == 0:
            value = True
        else:
            taken = []
            while i < len(argv) and not argv[i].startswith("--") and (spec.nargs == "+" or not taken):
                taken.append(argv[i])
                i += 1
            if not taken:
                raise ConfigError(f"argument {name}: expected a value")
            value = taken if spec.nargs == "+" else taken[0]
        _check_built(name, spec, value)
        values[name] = value
    return rest, SlimeArgs(values)


def _check_built(name: str, spec: SlimeFlag, value: Any) -> None:
    if spec.kind == UNBUILT:
        raise ConfigError(f"{name}: {spec.note} is not built yet")
    if spec.same_if is not None:
        try:
            same = spec.same_if(value)
        except (TypeError, ValueError):
            same = False
        if not same:
            raise ConfigError(f"{name} {value}: not built yet (here: {spec.note})")
