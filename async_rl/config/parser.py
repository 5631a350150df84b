"""One argparse parser for every entry point, built from the typed sections.

Precedence: built-in defaults < `--config a.yaml b.yaml ...` (in order, later files win) < flags on the command
line. Unknown flags, unknown
YAML keys and contradictory settings stop the run with one line naming the culprit (exit code 2).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf

from async_rl.backends import ROLLOUT_BACKENDS, rollout_backend, train_backend
from async_rl.config.sections import (
    SECTIONS,
    BackendConfig,
    CheckpointConfig,
    ClusterConfig,
    DataConfig,
    DebugConfig,
    EvalConfig,
    LoggingConfig,
    MegatronConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    TrainConfig,
)
from async_rl.errors import UserInputError


class ConfigError(UserInputError):
    """A bad flag or contradictory combination; the message names the flag."""


@dataclass
class Config:
    cluster: ClusterConfig
    backend: BackendConfig
    megatron: MegatronConfig
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig
    train: TrainConfig
    reward: RewardConfig
    eval: EvalConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    debug: DebugConfig
    sglang: dict[str, Any] = field(default_factory=dict)  # SGLang ServerArgs from --sglang-* flags
    async_mode: bool = False  # the loop: recorded so that a saved config.yaml replays the run as it ran

    @property
    def global_batch_size(self) -> int:
        """--global-batch-size, or the rollout's samples over --num-steps-per-rollout (one step by default)."""
        samples = self.rollout.rollout_batch_size * self.rollout.n_samples_per_prompt
        return self.train.global_batch_size or samples // (self.train.num_steps_per_rollout or 1)

    @property
    def total_optimizer_steps(self) -> int:
        """Optimizer steps of the whole run when every rollout fills its batch (the default end of the LR decay)."""
        samples = self.rollout.rollout_batch_size * self.rollout.n_samples_per_prompt
        return self.rollout.num_rollout * max(1, samples // self.global_batch_size)

    @property
    def trainer_world_size(self) -> int:
        """Trainer processes: one per GPU; on a CPU, one megatron rank per tensor-parallel shard (else one)."""
        c = self.cluster
        if c.actor_num_gpus_per_node:
            return c.actor_num_nodes * c.actor_num_gpus_per_node
        return train_backend(self).cpu_world_size(self)

    @property
    def num_rollout_engines(self) -> int:
        """Engines to start: --rollout-num-engines on a CPU; on GPUs, their GPUs over --rollout-num-gpus-per-engine."""
        c = self.cluster
        if not c.actor_num_gpus_per_node:
            return c.rollout_num_engines
        gpus = self.trainer_world_size if c.colocate else (c.rollout_num_gpus or 0)
        return gpus // c.rollout_num_gpus_per_engine

    @property
    def weight_update_mode(self) -> str:
        """`--update-weight-mode`, or its default: a broadcast group where engines have GPUs of their own and
        load plain or block-FP8 buckets; CUDA IPC when colocated or channel FP8 (whose loader only IPC reaches)."""
        r = self.rollout
        if r.update_weight_mode:
            return r.update_weight_mode
        broadcast = ("distributed" in rollout_backend(self).weight_update_modes and not self.cluster.colocate
                     and r.fp8_layout != "channel")
        return "distributed" if broadcast else "tensor"

    def to_flat_dict(self) -> dict[str, Any]:
        """Flag-name keys (underscored), the form `--config` reads back."""
        flat = {f.name: getattr(getattr(self, s), f.name) for s, cls in SECTIONS.items() for f in fields(cls)}
        return flat | {ASYNC_KEY: self.async_mode} | {SGLANG_PREFIX + k: v for k, v in sorted(self.sglang.items())}

    def plugin_args(self) -> argparse.Namespace:
        """What slime-style reward and filter plugins receive as `args`: every flag, flat."""
        return argparse.Namespace(**self.to_flat_dict())

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.to_flat_dict()))

    def print_resolved(self) -> None:
        """Print the configuration `--dry-run` resolved, under the header tools look for."""
        print("resolved configuration:\n" + self.to_yaml(), flush=True)


SGLANG_PREFIX = "sglang_"
ASYNC_KEY = "async_mode"  # --async, as a --config key


def split_sglang_args(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Take SGLang's own server flags out of argv: `--sglang-mem-fraction-static 0.5` -> {"mem_fraction_static": 0.5}.

    They pass through to `sglang.Engine` under SGLang's names (checked against its ServerArgs when the
    engine starts, since SGLang need not be installed where the flags are parsed). A flag without a
    value is true; values are read as YAML scalars, as they would be from a `--config` file.
    """
    rest, server_args = [], {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--sglang-"):
            rest.append(token)
            i += 1
            continue
        name, has_value, value = token[len("--sglang-"):].partition("=")
        if not has_value:
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            value = argv[i + 1] if has_value else "true"
            i += 1 + has_value
        else:
            i += 1
        server_args[name.replace("-", "_")] = yaml.safe_load(value) if value else value
    return rest, server_args


class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _scalar_type(annotation: Any) -> tuple[type, bool]:
    """(element type, is_list) of a field annotation such as `int | None` or `list[str] | None`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _field_specs() -> dict[str, tuple[str, Any, dict]]:
    """dest -> (section, annotation, metadata), checking that no two sections share a flag."""
    specs: dict[str, tuple[str, Any, dict]] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            assert f.name not in specs, f"flag {f.name} defined twice"
            specs[f.name] = (section, hints[f.name], dict(f.metadata))
    return specs


def build_parser(prog: str = "async_rl", *, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog=prog,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--config", nargs="+", action="extend",
                     help="omegaconf YAML files whose keys are flag names with underscores (async_mode for --async); "
                          "several files, or several --config, layer in order: later files win, the command line "
                          "over all.")
    run.add_argument("--async", dest="async_mode", action="store_true", help="Run the asynchronous loop.")
    run.add_argument("--dry-run", action="store_true",
                     help="Print the resolved configuration and the placement plan, then exit without starting anything.")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(section)
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            meta = dict(f.metadata)
            names = [_flag_name(f.name), *meta.pop("aliases", [])]
            elem_type, is_list = _scalar_type(hints[f.name])
            kwargs: dict[str, Any] = {"dest": f.name, **meta}
            if not suppress_defaults:
                kwargs["default"] = f.default_factory() if callable(f.default_factory) else f.default
            if elem_type is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = elem_type
                if is_list:
                    kwargs.setdefault("nargs", "+")
            group.add_argument(*names, **kwargs)
    return parser


def _coerce_yaml_value(key: str, value: Any, annotation: Any, path: str) -> Any:
    if value is None:
        return None
    elem_type, is_list = _scalar_type(annotation)
    values = value if is_list and isinstance(value, list) else [value]
    out = []
    for v in values:
        if elem_type is bool and not isinstance(v, bool):
            raise ConfigError(f"{path}: key '{key}' must be true or false, got {v!r}")
        try:
            out.append(elem_type(v))
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: key '{key}' must be {elem_type.__name__}, got {v!r}") from None
    return out if is_list else out[0]


def load_yaml_defaults(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flag defaults from a YAML file, and its `sglang_*` server arguments; an unknown key is an error naming it."""
    if not Path(path).is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"--config {path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of flag names to values")
    specs = _field_specs()
    defaults, server_args = {}, {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest.startswith(SGLANG_PREFIX):
            server_args[dest[len(SGLANG_PREFIX):]] = value
            continue
        if dest == ASYNC_KEY:
            defaults[dest] = _coerce_yaml_value(str(key), value, bool, path)
            continue
        if dest not in specs:
            raise ConfigError(f"{path}: unknown key '{key}' (no flag {_flag_name(dest)})")
        defaults[dest] = _coerce_yaml_value(str(key), value, specs[dest][1], path)
    return defaults, server_args


ICEPOP_BOUNDS = {"tis_clip": 5.0, "tis_clip_low": 0.5}  # IcePop's token mask: ratios outside [0.5, 5] are dropped


def _apply_presets(args: dict[str, Any], explicit: set[str]) -> None:
    """`--tis-mode icepop` is `mask` with IcePop's bounds, where the user set none; the resolved bounds are what
    config.yaml records."""
    if args["tis_mode"] == "icepop":
        args |= {k: v for k, v in ICEPOP_BOUNDS.items() if k not in explicit}


def _validate(cfg: Config, explicit: set[str], async_mode: bool, evaluate_only: bool) -> None:
    """Reject combinations that cannot mean what the user wants. No flag silently changes another."""
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
            raise ConfigError(f"{_flag_name(dest)} must be >= 1, got {value}")
    if r.rollout_temperature <= 0:
        raise ConfigError(f"--rollout-temperature must be > 0, got {r.rollout_temperature}")
    if not 0 < r.rollout_top_p <= 1:
        raise ConfigError(f"--rollout-top-p must be in (0, 1], got {r.rollout_top_p}")
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
    if cfg.global_batch_size % t.micro_batch_size:
        raise ConfigError(f"--micro-batch-size {t.micro_batch_size} must divide the global batch size {cfg.global_batch_size}")
    if t.eps_clip_high is not None and t.eps_clip_high < t.eps_clip:
        raise ConfigError(f"--eps-clip-high {t.eps_clip_high} is below --eps-clip {t.eps_clip}")
    if t.eps_clip_c is not None and t.advantage_estimator in ("gspo", "cispo"):
        raise ConfigError(f"--eps-clip-c is PPO's dual clip; --advantage-estimator {t.advantage_estimator} has its own loss")
    if t.advantage_estimator in ("grpo", "dr_grpo", "rloo", "gspo", "cispo") and r.n_samples_per_prompt < 2:
        raise ConfigError(
            f"--advantage-estimator {t.advantage_estimator} needs --n-samples-per-prompt >= 2 (a group of one has no baseline)"
        )
    for dest in ("tis_clip", "tis_clip_low", "tis_level", "tis_mode"):
        if dest in explicit and not t.use_tis:
            raise ConfigError(f"{_flag_name(dest)} is set but --use-tis is not; add --use-tis or drop {_flag_name(dest)}")
    if t.tis_clip_low is not None and t.tis_mode == "truncate":
        raise ConfigError("--tis-clip-low only applies to --tis-mode mask or icepop")
    if t.tis_clip_low is not None and not 0 <= t.tis_clip_low < t.tis_clip:
        raise ConfigError(f"--tis-clip-low {t.tis_clip_low} must be in [0, --tis-clip {t.tis_clip})")
    if t.eps_clip_c is not None and t.eps_clip_c <= 1:
        raise ConfigError(f"--eps-clip-c must be > 1, got {t.eps_clip_c}")
    if t.kl_loss_coef and not t.use_kl_loss:
        raise ConfigError("--kl-loss-coef weighs the KL loss: add --use-kl-loss")
    if t.lr_warmup_iters < 0 or (t.lr_decay_iters is not None and t.lr_decay_iters < 1):
        raise ConfigError("--lr-warmup-iters must be >= 0 and --lr-decay-iters >= 1")
    if t.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {t.lr}")
    if not 0 <= t.min_lr <= t.lr:
        raise ConfigError(f"--min-lr {t.min_lr} must be in [0, --lr {t.lr}]")
    if r.rollout_max_context_len is not None and r.rollout_max_context_len < 2:
        raise ConfigError(f"--rollout-max-context-len must be >= 2, got {r.rollout_max_context_len}")
    if t.advantage_estimator == "dr_grpo" and t.loss_aggregation != "seq_mean_token_sum":
        raise ConfigError("--advantage-estimator dr_grpo drops length normalisation: set --loss-aggregation seq_mean_token_sum")
    rw = cfg.reward
    if rw.overlong_buffer_len is not None and not 0 < rw.overlong_buffer_len < r.rollout_max_response_len:
        raise ConfigError(
            f"--overlong-buffer-len {rw.overlong_buffer_len} must be in (0, --rollout-max-response-len {r.rollout_max_response_len})"
        )
    if "overlong_penalty_factor" in explicit and rw.overlong_buffer_len is None:
        raise ConfigError("--overlong-penalty-factor is set but --overlong-buffer-len is not")
    if r.over_sampling_batch_size is not None:
        if not r.dynamic_sampling_filter_path:
            raise ConfigError("--over-sampling-batch-size has no effect without --dynamic-sampling-filter-path")
        if r.over_sampling_batch_size < r.rollout_batch_size:
            raise ConfigError(
                f"--over-sampling-batch-size {r.over_sampling_batch_size} is below --rollout-batch-size {r.rollout_batch_size}"
            )
    if r.max_sampling_rounds < 1:
        raise ConfigError(f"--max-sampling-rounds must be >= 1, got {r.max_sampling_rounds}")
    if t.mismatch_alert_steps < 1:
        raise ConfigError(f"--mismatch-alert-steps must be >= 1, got {t.mismatch_alert_steps}")
    if t.use_tis and t.tis_clip <= 0:
        raise ConfigError(f"--tis-clip must be > 0, got {t.tis_clip}")
    if c.offload_train and not (c.colocate and c.actor_num_gpus_per_node and not async_mode):
        raise ConfigError("--offload-train frees the trainer's GPU memory for colocated engines in the sync loop: it "
                          "needs --colocate and --actor-num-gpus-per-node, without --async")
    if c.offload_train and cfg.megatron.fp8_param_gather:
        raise ConfigError("--offload-train does not move FP8 parameters (--fp8-param-gather): drop one of them")
    if c.colocate and c.rollout_num_gpus is not None:
        raise ConfigError("--colocate puts rollout on the trainer's GPUs; drop --rollout-num-gpus")
    if c.rollout_num_gpus is not None and c.rollout_num_gpus % c.rollout_num_gpus_per_engine:
        raise ConfigError(
            f"--rollout-num-gpus {c.rollout_num_gpus} is not a multiple of --rollout-num-gpus-per-engine "
            f"{c.rollout_num_gpus_per_engine}"
        )
    if cfg.reward.group_rm and not cfg.reward.custom_rm_path:
        raise ConfigError("--group-rm applies to a --custom-rm-path function; set --custom-rm-path")
    if cfg.reward.rm_max_concurrency < 1 or cfg.reward.rm_max_retries < 0:
        raise ConfigError("--rm-max-concurrency must be >= 1 and --rm-max-retries >= 0")
    if cfg.reward.reward_timeout <= 0 or cfg.reward.reward_num_workers < 1:
        raise ConfigError("--reward-timeout must be > 0 and --reward-num-workers >= 1")
    if cfg.checkpoint.save_interval is not None and not cfg.checkpoint.save:
        raise ConfigError("--save-interval is set but --save is not")
    if cfg.eval.eval_interval is not None and cfg.eval.eval_prompt_data is None:  # [] is evaluation turned off
        raise ConfigError("--eval-interval is set but --eval-prompt-data is not")
    if cfg.eval.eval_prompt_data and len(cfg.eval.eval_prompt_data) > 1 and len(cfg.eval.eval_prompt_data) % 2:
        raise ConfigError("--eval-prompt-data takes one PATH or NAME PATH pairs")
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
    _validate_megatron(cfg, explicit)
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
    if cfg.sglang and cfg.backend.rollout_backend != "sglang":
        raise ConfigError(f"--sglang-{next(iter(cfg.sglang)).replace('_', '-')} applies to --rollout-backend sglang")
    for reserved, ours in (("model_path", "--hf-checkpoint"), ("random_seed", "--seed"), ("tp_size", "--rollout-num-gpus-per-engine")):
        if reserved in cfg.sglang:
            raise ConfigError(f"--sglang-{reserved.replace('_', '-')} is set from {ours}; use that flag")
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


def _validate_megatron(cfg: Config, explicit: set[str]) -> None:
    m = cfg.megatron
    if cfg.backend.train_backend != "megatron":
        for f in fields(MegatronConfig):
            if f.name in explicit and getattr(m, f.name) != f.default:
                raise ConfigError(f"{_flag_name(f.name)} applies to --train-backend megatron")
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
    if m.sequence_parallel and m.tensor_model_parallel_size == 1:
        raise ConfigError("--sequence-parallel needs --tensor-model-parallel-size > 1")
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


@dataclass(frozen=True)
class Launch:
    """How to run the parsed configuration; the loop mode is also recorded in the configuration itself."""

    async_mode: bool = False
    dry_run: bool = False


def parse_config(argv: Sequence[str] | None = None, *, prog: str = "async_rl", async_mode: bool = False,
                 evaluate_only: bool = False) -> tuple[Config, Launch]:
    """Parse flags (and `--config`) into typed sections; returns (config, launch mode).

    Errors exit with status 2 and one line naming the flag, file or key.
    """
    argv, server_args = split_sglang_args(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(prog)
    try:
        given = vars(build_parser(prog, suppress_defaults=True).parse_args(argv))
        explicit = set(given)
        yaml_server_args: dict[str, Any] = {}
        for config_path in given.get("config") or []:  # later files win
            yaml_defaults, file_server_args = load_yaml_defaults(config_path)
            yaml_server_args |= file_server_args
            # A file that restates a built-in default (as a saved config.yaml does) asks for nothing.
            explicit |= {k for k, v in yaml_defaults.items() if v != parser.get_default(k)}
            parser.set_defaults(**yaml_defaults)
        server_args = yaml_server_args | server_args
        args = vars(parser.parse_args(argv))
        launch = Launch(async_mode=async_mode or args.pop("async_mode"), dry_run=args.pop("dry_run"))
        args.pop("config")
        _apply_presets(args, explicit)
        cfg = Config(**{s: cls(**{f.name: args[f.name] for f in fields(cls)}) for s, cls in SECTIONS.items()},
                     sglang=server_args, async_mode=launch.async_mode)
        _validate(cfg, explicit, launch.async_mode, evaluate_only)
    except ConfigError as e:
        parser.error(str(e))
    return cfg, launch
