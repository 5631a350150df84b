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

from async_rl.backends import rollout_backend, train_backend
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
    flag_name,
)
from async_rl.config.slime_flags import SlimeArgs, split_slime_args
from async_rl.config.validation import validate
from async_rl.errors import ConfigError
from async_rl.rollout.engine import SamplingParams
from async_rl.weights.fp8 import checkpoint_granularity
from async_rl.weights.hf_layout import read_hf_config


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
    slime: SlimeArgs = field(default_factory=lambda: SlimeArgs({}))  # Megatron and slime flags of a slime script
    notes: list[str] = field(default_factory=list)  # what flags taken from slime or Megatron mean here (--dry-run)
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

    def sampling_params(self, evaluation: bool = False) -> SamplingParams:
        """How the engines sample for training rollouts, or for evaluation (whose --eval-* flags fall back to the
        rollout's)."""
        r, e = self.rollout, self.eval
        stop = tuple(r.rollout_stop_token_ids or ())
        if not evaluation:
            return SamplingParams(r.rollout_temperature, r.rollout_top_p, r.rollout_max_response_len,
                                  r.rollout_max_context_len, stop, r.rollout_top_k)
        top_p = r.rollout_top_p if e.eval_top_p is None else e.eval_top_p
        top_k = r.rollout_top_k if e.eval_top_k is None else e.eval_top_k
        return SamplingParams(e.eval_temperature, top_p, e.eval_max_response_len, r.rollout_max_context_len, stop,
                              top_k)

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
    value is true; values are read as YAML scalars, as they would be from a `--config` file; several values
    (`--sglang-cuda-graph-bs 1 2 4 8`) make a list.
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
        i += 1
        if has_value:
            parsed = yaml.safe_load(value) if value else value
        else:
            values = []
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(yaml.safe_load(argv[i]) if argv[i] else argv[i])
                i += 1
            parsed = values[0] if len(values) == 1 else values or True
        server_args[name.replace("-", "_")] = parsed
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
            names = [flag_name(f.name), *meta.pop("aliases", [])]
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
            raise ConfigError(f"{path}: unknown key '{key}' (no flag {flag_name(dest)})")
        defaults[dest] = _coerce_yaml_value(str(key), value, specs[dest][1], path)
    return defaults, server_args


ICEPOP_BOUNDS = {"tis_clip": 5.0, "tis_clip_low": 0.5}  # IcePop's token mask: ratios outside [0.5, 5] are dropped


def _apply_presets(args: dict[str, Any], explicit: set[str]) -> list[str]:
    """`--tis-mode icepop` is `mask` with IcePop's bounds, where the user set none; the resolved bounds are what
    config.yaml records. `--sequence-parallel` at tensor-parallel size 1 is off, as Megatron-LM turns it off, and
    --rollout-num-gpus means nothing with --colocate. Returns a note for each change a user may not expect."""
    notes = _apply_gpu_defaults(args, explicit) + _infer_fp8_rollout(args, explicit)
    if args["tis_mode"] == "icepop":
        args |= {k: v for k, v in ICEPOP_BOUNDS.items() if k not in explicit}
    if args["colocate"] and args["rollout_num_gpus"] is not None:
        args["rollout_num_gpus"] = None
        notes.append("--rollout-num-gpus: not used with --colocate (the engines take the trainer's GPUs)")
    if args["sequence_parallel"] and args["tensor_model_parallel_size"] == 1:
        args["sequence_parallel"] = False
        notes.append("--sequence-parallel: off at --tensor-model-parallel-size 1 (as Megatron-LM turns it off)")
    return notes


def _apply_gpu_defaults(args: dict[str, Any], explicit: set[str]) -> list[str]:
    """What a slime script leaves unsaid when it describes GPUs: the production backends, BF16 and the distributed
    optimizer for the megatron trainer, and a colocated sync trainer that moves to the host while the engines
    generate. On a CPU the embedded defaults stay. A flag given explicitly is never changed."""
    gpus = bool(args["actor_num_gpus_per_node"])
    args["rollout_backend"] = args["rollout_backend"] or ("sglang" if gpus else "local")
    args["train_backend"] = args["train_backend"] or ("megatron" if gpus else "torch")
    if not gpus:
        return []
    defaults = {}
    if args["train_backend"] == "megatron":
        defaults |= {"bf16": True, "use_distributed_optimizer": True}
    if args["colocate"] and not args["async_mode"] and not args["fp8_param_gather"]:
        defaults["offload_train"] = True
    notes = []
    for key, value in defaults.items():
        if key not in explicit and args[key] != value:
            args[key] = value
            notes.append(f"{flag_name(key)}: on (the default on GPUs, as in slime; --no-{flag_name(key)[2:]} turns it off)")
    return notes


def _infer_fp8_rollout(args: dict[str, Any], explicit: set[str]) -> list[str]:
    """An FP8 --hf-checkpoint rolls out in FP8, in the layout it holds (as slime infers it), where the flags leave
    that unsaid; a flag that contradicts the checkpoint is left to the start-up checks to refuse, as is a
    checkpoint that cannot be read yet."""
    if not args["hf_checkpoint"] or {"rollout_quantization", "rollout_fp8_granularity"} <= explicit:
        return []
    try:
        stored = checkpoint_granularity(read_hf_config(args["hf_checkpoint"]))
    except (OSError, ValueError):
        return []
    inferred = {"rollout_quantization": "fp8", "rollout_fp8_granularity": stored}
    if stored is None or args["rollout_quantization"] != "fp8" and "rollout_quantization" in explicit:
        return []
    args |= {k: v for k, v in inferred.items() if k not in explicit}
    return [f"--rollout-quantization fp8 --rollout-fp8-granularity {args['rollout_fp8_granularity']}: from "
            f"--hf-checkpoint's FP8 weights"]


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
        argv, slime = split_slime_args(argv)
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
        args["async_mode"] = async_mode or args["async_mode"]
        notes = _apply_presets(args, explicit) + slime.notes()
        launch = Launch(async_mode=args.pop("async_mode"), dry_run=args.pop("dry_run"))
        args.pop("config")
        cfg = Config(**{s: cls(**{f.name: args[f.name] for f in fields(cls)}) for s, cls in SECTIONS.items()},
                     sglang=server_args, slime=slime, notes=notes, async_mode=launch.async_mode)
        validate(cfg, explicit, launch.async_mode, evaluate_only)
    except ConfigError as e:
        parser.error(str(e))
    return cfg, launch
