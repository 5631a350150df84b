"""Whether a parsed configuration means something: one check per concern, each naming the flag at fault.

`parse_config` runs them in order and stops at the first problem (argparse's one line, exit status 2). What needs
the machine or the files (GPUs, SGLang, the model's config.json, the prompt files) is checked at start-up
(`async_rl.startup_checks`), which a training start, `--dry-run` and `async_rl.evaluate` run alike.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Callable

from async_rl.backends import ROLLOUT_BACKENDS, rollout_backend
from async_rl.config.sections import MegatronConfig, flag_name
from async_rl.errors import ConfigError

if TYPE_CHECKING:
    from async_rl.config.parser import Config


def check_ranges(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """Counts, sizes and probabilities within their ranges."""
    r, t, c = cfg.rollout, cfg.train, cfg.cluster
    positive = {
        "num_rollout": r.num_rollout, "rollout_batch_size": r.rollout_batch_size,
        "n_samples_per_prompt": r.n_samples_per_prompt, "rollout_max_response_len": r.rollout_max_response_len,
        "micro_batch_size": t.micro_batch_size, "rollout_num_gpus_per_engine": c.rollout_num_gpus_per_engine,
        "rollout_num_engines": c.rollout_num_engines, "actor_num_nodes": c.actor_num_nodes,
        "n_samples_per_eval_prompt": cfg.eval.n_samples_per_eval_prompt,
        "rollout_max_concurrency": r.rollout_max_concurrency,
    }
    optional_positive = {"eval_interval": cfg.eval.eval_interval, "save_interval": cfg.checkpoint.save_interval}
    positive |= {dest: value for dest, value in optional_positive.items() if value is not None}
    for dest, value in positive.items():
        if value < 1:
            raise ConfigError(f"{flag_name(dest)} must be >= 1, got {value}")
    if r.rollout_temperature <= 0:
        raise ConfigError(f"--rollout-temperature must be > 0, got {r.rollout_temperature}")
    e = cfg.eval
    for name, top_p in (("--rollout-top-p", r.rollout_top_p), ("--eval-top-p", e.eval_top_p)):
        if top_p is not None and not 0 < top_p <= 1:
            raise ConfigError(f"{name} must be in (0, 1], got {top_p}")
    for name, top_k in (("--rollout-top-k", r.rollout_top_k), ("--eval-top-k", e.eval_top_k)):
        if top_k is not None and top_k != -1 and top_k < 1:
            raise ConfigError(f"{name} must be -1 (off) or >= 1, got {top_k}")
    if r.rollout_max_context_len is not None and r.rollout_max_context_len < 2:
        raise ConfigError(f"--rollout-max-context-len must be >= 2, got {r.rollout_max_context_len}")


def check_batch_sizes(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """The rollout's samples split into global batches, and those into micro-batches."""
    r, t = cfg.rollout, cfg.train
    samples = r.rollout_batch_size * r.n_samples_per_prompt
    steps = t.num_steps_per_rollout
    if steps is not None and (steps < 1 or samples % steps):
        raise ConfigError(f"--num-steps-per-rollout {steps} must divide --rollout-batch-size x --n-samples-per-prompt "
                          f"= {samples}")
    if steps is not None and t.global_batch_size is not None and t.global_batch_size * steps != samples:
        raise ConfigError(f"--num-steps-per-rollout {steps} and --global-batch-size {t.global_batch_size} disagree "
                          f"({samples} samples per rollout): set one of them")
    if samples % cfg.global_batch_size:
        raise ConfigError(
            f"--global-batch-size {cfg.global_batch_size} must divide --rollout-batch-size x "
            f"--n-samples-per-prompt = {samples}"
        )
    packed_by_tokens = cfg.backend.train_backend == "megatron" and cfg.megatron.max_tokens_per_gpu
    if cfg.global_batch_size % t.micro_batch_size and not packed_by_tokens:
        raise ConfigError(f"--micro-batch-size {t.micro_batch_size} must divide the global batch size {cfg.global_batch_size}")


def check_policy_loss(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """The loss, its clipping and importance sampling; the mismatch alert."""
    r, t = cfg.rollout, cfg.train
    if t.eps_clip_high is not None and t.eps_clip_high < t.eps_clip:
        raise ConfigError(f"--eps-clip-high {t.eps_clip_high} is below --eps-clip {t.eps_clip}")
    if t.eps_clip_c is not None and t.advantage_estimator in ("gspo", "cispo"):
        raise ConfigError(f"--eps-clip-c is PPO's dual clip; --advantage-estimator {t.advantage_estimator} has its own loss")
    if t.advantage_estimator in ("grpo", "dr_grpo", "rloo", "gspo", "cispo") and r.n_samples_per_prompt < 2:
        raise ConfigError(
            f"--advantage-estimator {t.advantage_estimator} needs --n-samples-per-prompt >= 2 (a group of one has no baseline)"
        )
    for dest in ("tis_clip", "tis_clip_low", "tis_level", "tis_mode", "custom_tis_function_path"):
        if dest in explicit and not t.use_tis:
            raise ConfigError(f"{flag_name(dest)} is set but --use-tis is not; add --use-tis or drop {flag_name(dest)}")
    if t.tis_clip_low is not None and t.tis_mode == "truncate":
        raise ConfigError("--tis-clip-low only applies to --tis-mode mask or icepop")
    if t.tis_clip_low is not None and not 0 <= t.tis_clip_low < t.tis_clip:
        raise ConfigError(f"--tis-clip-low {t.tis_clip_low} must be in [0, --tis-clip {t.tis_clip})")
    if t.eps_clip_c is not None and t.eps_clip_c <= 1:
        raise ConfigError(f"--eps-clip-c must be > 1, got {t.eps_clip_c}")
    if t.kl_loss_coef and not t.use_kl_loss:
        raise ConfigError("--kl-loss-coef weighs the KL loss: add --use-kl-loss")
    if t.advantage_estimator == "dr_grpo" and t.loss_aggregation != "seq_mean_token_sum":
        raise ConfigError("--advantage-estimator dr_grpo drops length normalisation: set --loss-aggregation seq_mean_token_sum")
    if t.use_tis and t.tis_clip <= 0:
        raise ConfigError(f"--tis-clip must be > 0, got {t.tis_clip}")
    if t.mismatch_alert_steps < 1:
        raise ConfigError(f"--mismatch-alert-steps must be >= 1, got {t.mismatch_alert_steps}")


def check_lr_schedule(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """The learning rate and its schedule."""
    t = cfg.train
    if t.lr_warmup_iters < 0 or (t.lr_decay_iters is not None and t.lr_decay_iters < 1):
        raise ConfigError("--lr-warmup-iters must be >= 0 and --lr-decay-iters >= 1")
    if t.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {t.lr}")
    if not 0 <= t.min_lr <= t.lr:
        raise ConfigError(f"--min-lr {t.min_lr} must be in [0, --lr {t.lr}]")


def check_rewards(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """Reward grading and DAPO's overlong shaping."""
    r = cfg.rollout
    rw = cfg.reward
    if rw.overlong_buffer_len is not None and not 0 < rw.overlong_buffer_len < r.rollout_max_response_len:
        raise ConfigError(
            f"--overlong-buffer-len {rw.overlong_buffer_len} must be in (0, --rollout-max-response-len {r.rollout_max_response_len})"
        )
    if "overlong_penalty_factor" in explicit and rw.overlong_buffer_len is None:
        raise ConfigError("--overlong-penalty-factor is set but --overlong-buffer-len is not")
    if cfg.reward.group_rm and not cfg.reward.custom_rm_path:
        raise ConfigError("--group-rm applies to a --custom-rm-path function; set --custom-rm-path")
    if cfg.reward.rm_max_concurrency < 1 or cfg.reward.rm_max_retries < 0:
        raise ConfigError("--rm-max-concurrency must be >= 1 and --rm-max-retries >= 0")
    if cfg.reward.reward_timeout <= 0 or cfg.reward.reward_num_workers < 1:
        raise ConfigError("--reward-timeout must be > 0 and --reward-num-workers >= 1")


def check_dynamic_sampling(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """Over-sampling rounds of DAPO's dynamic sampling."""
    r = cfg.rollout
    if r.over_sampling_batch_size is not None:
        if not r.dynamic_sampling_filter_path:
            raise ConfigError("--over-sampling-batch-size has no effect without --dynamic-sampling-filter-path")
        if r.over_sampling_batch_size < r.rollout_batch_size:
            raise ConfigError(
                f"--over-sampling-batch-size {r.over_sampling_batch_size} is below --rollout-batch-size {r.rollout_batch_size}"
            )
    if r.max_sampling_rounds < 1:
        raise ConfigError(f"--max-sampling-rounds must be >= 1, got {r.max_sampling_rounds}")


def check_placement(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """Where trainer and engines go, and the trainer's offloading."""
    c = cfg.cluster
    if c.offload_train and not (c.colocate and c.actor_num_gpus_per_node and not async_mode):
        raise ConfigError("--offload-train frees the trainer's GPU memory for colocated engines in the sync loop: it "
                          "needs --colocate and --actor-num-gpus-per-node, without --async")
    if c.offload_train and cfg.megatron.fp8_param_gather:
        raise ConfigError("--offload-train does not move FP8 parameters (--fp8-param-gather): drop one of them")
    if c.rollout_num_gpus is not None and c.rollout_num_gpus % c.rollout_num_gpus_per_engine:
        raise ConfigError(
            f"--rollout-num-gpus {c.rollout_num_gpus} is not a multiple of --rollout-num-gpus-per-engine "
            f"{c.rollout_num_gpus_per_engine}"
        )


def check_eval_and_checkpoints(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """Evaluation sets and checkpoint intervals."""
    if cfg.checkpoint.save_interval is not None and not cfg.checkpoint.save:
        raise ConfigError("--save-interval is set but --save is not")
    if cfg.eval.eval_interval is not None and cfg.eval.eval_prompt_data is None:  # [] is evaluation turned off
        raise ConfigError("--eval-interval is set but --eval-prompt-data is not")
    if cfg.eval.eval_prompt_data and len(cfg.eval.eval_prompt_data) > 1 and len(cfg.eval.eval_prompt_data) % 2:
        raise ConfigError("--eval-prompt-data takes one PATH or NAME PATH pairs")


def check_loop(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """What belongs to the sync or to the async loop."""
    r = cfg.rollout
    if r.max_staleness < 0:
        raise ConfigError(f"--max-staleness must be >= 0, got {r.max_staleness}")
    if cfg.debug.load_debug_rollout_data and async_mode:
        raise ConfigError("--load-debug-rollout-data replays saved batches in the sync loop: drop --async")
    if r.adaptive_over_sampling and async_mode:
        raise ConfigError("--adaptive-over-sampling sizes the sync loop's sampling rounds; the async loop already admits "
                          "groups at the filter's keep rate: drop it")
    if r.adaptive_over_sampling and not r.dynamic_sampling_filter_path:
        raise ConfigError("--adaptive-over-sampling sizes rounds by a filter's keep rate; set --dynamic-sampling-filter-path")
    if r.partial_rollout and not async_mode:
        raise ConfigError("--partial-rollout applies to the async loop; add --async")
    if r.partial_rollout and r.custom_generate_function_path:
        raise ConfigError("--partial-rollout cannot continue an interrupted --custom-generate-function-path rollout "
                          "(its function's state is gone): drop one of them")


def check_megatron(cfg: Config, explicit: set[str], async_mode: bool = False) -> None:
    """Megatron's flags go with --train-backend megatron, and its parallel sizes fit the trainer's ranks."""
    m = cfg.megatron
    if cfg.backend.train_backend != "megatron":
        for f in fields(MegatronConfig):
            if f.name in explicit and getattr(m, f.name) != f.default:
                raise ConfigError(f"{flag_name(f.name)} applies to --train-backend megatron")
        return
    world = cfg.trainer_world_size
    model_parallel = m.tensor_model_parallel_size * m.pipeline_model_parallel_size * m.context_parallel_size
    if world % model_parallel:
        raise ConfigError(
            f"--tensor-model-parallel-size x --pipeline-model-parallel-size x --context-parallel-size = {model_parallel} "
            f"must divide the {world} trainer ranks (--actor-num-nodes x --actor-num-gpus-per-node)"
        )
    if (world // m.pipeline_model_parallel_size) % m.expert_model_parallel_size:
        raise ConfigError(f"--expert-model-parallel-size {m.expert_model_parallel_size} must divide the "
                          f"{world // m.pipeline_model_parallel_size} GPUs of one pipeline stage")
    if m.fp8_recipe and not m.fp8_format:
        raise ConfigError("--fp8-recipe is set but --fp8-format is not")
    if m.fp8_format and m.bf16 is False:
        raise ConfigError("--fp8-format trains in FP8 on top of BF16: add --bf16")
    if m.fp8_param_gather and not m.fp8_format:
        raise ConfigError("--fp8-param-gather keeps FP8 weights of an FP8 run: add --fp8-format")
    if m.transformer_impl == "local":
        for name, used in (("--fp8-format", m.fp8_format), ("--moe-grouped-gemm", m.moe_grouped_gemm)):
            if used:
                raise ConfigError(f"{name} needs Transformer Engine's layers: drop --transformer-impl local")


def check_weight_sync(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """How weights reach the engines."""
    r, c = cfg.rollout, cfg.cluster
    if r.update_weight_mode and r.update_weight_mode not in rollout_backend(cfg).weight_update_modes:
        takers = [name for name, b in ROLLOUT_BACKENDS.items() if r.update_weight_mode in b.weight_update_modes]
        raise ConfigError(f"--update-weight-mode {r.update_weight_mode} applies to --rollout-backend {' or '.join(takers)}")
    if r.update_weight_mode == "distributed":
        if r.fp8_layout == "channel":
            raise ConfigError("--update-weight-mode distributed cannot fill channel-FP8 engines (SGLang's broadcast "
                              "path has no custom loader): use --update-weight-mode tensor or --rollout-fp8-granularity block")
        if c.colocate and r.update_weight_group_backend == "nccl":
            raise ConfigError("--update-weight-mode distributed with --colocate puts two NCCL ranks on one GPU, which "
                              "NCCL refuses: use --update-weight-group-backend gloo, or leave --update-weight-mode unset")
    if "update_weight_group_backend" in explicit and cfg.weight_update_mode != "distributed":
        raise ConfigError("--update-weight-group-backend applies to --update-weight-mode distributed")
    if r.check_weight_update_equal and not rollout_backend(cfg).checks_weights:
        raise ConfigError(f"--check-weight-update-equal is not supported by --rollout-backend "
                          f"{cfg.backend.rollout_backend} yet")


def check_sglang_flags(cfg: Config, explicit: set[str], async_mode: bool) -> None:
    """--sglang-* flags go with --rollout-backend sglang, and none stands in for one of ours."""
    if cfg.sglang and cfg.backend.rollout_backend != "sglang":
        raise ConfigError(f"--sglang-{next(iter(cfg.sglang)).replace('_', '-')} applies to --rollout-backend sglang")
    for reserved, ours in (("model_path", "--hf-checkpoint"), ("random_seed", "--seed"), ("tp_size", "--rollout-num-gpus-per-engine")):
        if reserved in cfg.sglang:
            raise ConfigError(f"--sglang-{reserved.replace('_', '-')} is set from {ours}; use that flag")


def check_required(cfg: Config, evaluate_only: bool) -> None:
    """The flags a run cannot start without: a model and prompts (evaluation: a model or checkpoint, and eval sets)."""
    if evaluate_only:  # a model (or checkpoint) and eval sets; no training data
        if not (cfg.model.hf_checkpoint or cfg.checkpoint.load):
            raise ConfigError("--hf-checkpoint or --load is required")
        if not cfg.eval.eval_prompt_data:
            raise ConfigError("--eval-prompt-data is required")
        return
    if not cfg.model.hf_checkpoint:
        raise ConfigError("--hf-checkpoint is required")
    if not cfg.data.prompt_data:
        raise ConfigError("--prompt-data is required")


SECTION_CHECKS: list[Callable[[Config, set[str], bool], None]] = [
    check_ranges, check_batch_sizes, check_policy_loss, check_lr_schedule, check_rewards, check_dynamic_sampling,
    check_placement, check_eval_and_checkpoints, check_loop, check_megatron, check_weight_sync, check_sglang_flags,
]


def validate(cfg: Config, explicit: set[str], async_mode: bool, evaluate_only: bool) -> None:
    """Reject combinations that cannot mean what the user wants; no flag silently changes another. `explicit`:
    the flags the command line or a --config file set."""
    for check in SECTION_CHECKS:
        check(cfg, explicit, async_mode)
    check_required(cfg, evaluate_only)
