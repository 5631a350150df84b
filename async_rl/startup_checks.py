"""Everything a start can find wrong before anything is launched, run by a real start and by `--dry-run` alike.

Each check names the flag at fault in one line. A real start stops at the first problems; `--dry-run` prints
the plan, then every problem, and exits 2 if there is one, so a recipe that passes its dry run also starts.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from async_rl.backends import rollout_backend, train_backend
from async_rl.checkpoint import LATEST, checkpoint_to_resume, resumes
from async_rl.config import Config
from async_rl.data.prompt_dataset import check_prompt_file
from async_rl.errors import UserInputError
from async_rl.evaluation import eval_sets_from_flag
from async_rl.placement_plan import plan_placement
from async_rl.rollout.custom_generate import load_generate_function
from async_rl.rollout.debug_data import debug_data_file
from async_rl.rollout.filters import load_group_filter
from async_rl.weights.hf_layout import num_experts, read_hf_config
from rewards.registry import load_function, resolve_reward

# Directories a launcher builds before the start (the embedded script's tiny model): their files may be missing
BUILT_BEFORE_START = "ASYNC_RL_BUILT_BEFORE_START"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class StartupCheckFailed(UserInputError):
    """One or more problems, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _built_before_start(path: str) -> bool:
    pending = [Path(p).resolve() for p in os.environ.get(BUILT_BEFORE_START, "").split(os.pathsep) if p]
    target = Path(path).resolve()
    return any(target == p or p in target.parents for p in pending)


def check_model(cfg: Config) -> None:
    path = cfg.model.hf_checkpoint
    if path is None or _built_before_start(path):
        return
    p = Path(path)
    if not p.is_dir():
        raise UserInputError(f"--hf-checkpoint {path}: no such directory")
    if not (p / "config.json").is_file():
        raise UserInputError(f"--hf-checkpoint {path}: no config.json (not a Hugging Face checkpoint directory)")
    if not any((p / name).is_file() for name in _TOKENIZER_FILES):
        raise UserInputError(f"--hf-checkpoint {path}: no tokenizer ({' or '.join(_TOKENIZER_FILES)})")


def check_data(cfg: Config) -> None:
    """Every prompt file exists and holds rows a start would load (the fields --input-key and --label-key name,
    valid JSON lines); each file's first problem is reported, all files at once."""
    d = cfg.data
    files = {"--prompt-data": [d.prompt_data] if d.prompt_data else []}
    files["--eval-prompt-data"] = list(eval_sets_from_flag(cfg.eval.eval_prompt_data).values())
    problems = []
    for flag, paths in files.items():
        for path in paths:
            if _built_before_start(path):
                continue
            try:
                check_prompt_file(path, input_key=d.input_key, label_key=d.label_key,
                                  apply_chat_template=d.apply_chat_template, skip_bad_rows=d.skip_bad_rows)
            except UserInputError as e:
                problems.append(f"{flag} {e}")
    if problems:
        raise StartupCheckFailed(problems)


def check_logging(cfg: Config) -> None:
    if cfg.logging.use_wandb and importlib.util.find_spec("wandb") is None:
        raise UserInputError("--use-wandb needs the wandb package: pip install wandb")


def _check_writable(flag: str, path: str) -> None:
    existing = Path(path).resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {path}: cannot write there ({existing} is not a writable directory)")


def check_outputs(cfg: Config) -> None:
    lg = cfg.logging
    for flag, path in (("--output-dir", lg.output_dir), ("--tensorboard-dir", lg.tensorboard_dir),
                       ("--save", cfg.checkpoint.save)):
        if path:
            _check_writable(flag, path)


def check_earlier_run(cfg: Config) -> None:
    """A training run does not write over the metrics of an earlier one."""
    lg, ck = cfg.logging, cfg.checkpoint
    if (Path(lg.output_dir) / "metrics.jsonl").is_file() and not lg.overwrite_output_dir and not resumes(ck.load, ck.save):
        checkpoint = _earlier_runs_checkpoint(Path(lg.output_dir))
        resume = f"resume it with --load {checkpoint}, " if checkpoint else "it saved no checkpoint to resume: "
        raise UserInputError(f"--output-dir {lg.output_dir} holds an earlier run: {resume}choose another --output-dir, "
                             f"or pass --overwrite-output-dir to start afresh there")


def _earlier_runs_checkpoint(output_dir: Path) -> str | None:
    """The --save root of the run recorded in `output_dir/config.yaml`, where it holds a checkpoint."""
    try:
        save = OmegaConf.load(output_dir / "config.yaml").get("save")
    except Exception:  # an unreadable or absent config.yaml: nothing to point at
        return None
    return save if save and (Path(save) / LATEST).is_file() else None


def check_reward(cfg: Config) -> None:
    rw = cfg.reward
    resolve_reward(rw.rm_type, rw.custom_rm_path, rw.group_rm, rw.rm_url)


def check_generate_function(cfg: Config) -> None:
    if cfg.rollout.custom_generate_function_path:
        load_generate_function(cfg.rollout.custom_generate_function_path)


def check_tis_function(cfg: Config) -> None:
    if cfg.train.custom_tis_function_path:
        load_function(cfg.train.custom_tis_function_path, "--custom-tis-function-path")


def check_filter(cfg: Config) -> None:
    if cfg.rollout.dynamic_sampling_filter_path:
        load_group_filter(cfg.rollout.dynamic_sampling_filter_path, cfg.plugin_args())


def _model_config_readable(cfg: Config) -> bool:
    """The backend checks read the model's config.json; without one, check_model has said so already."""
    path = cfg.model.hf_checkpoint
    return bool(path) and not _built_before_start(path) and (Path(path) / "config.json").is_file()


def check_model_flags(cfg: Config) -> None:
    """Megatron's model-shape flags of a slime script agree with the model's config.json."""
    if _model_config_readable(cfg):
        path = cfg.model.hf_checkpoint
        problems = cfg.slime.model_mismatches(read_hf_config(path), path)
        if problems:
            raise StartupCheckFailed(problems)


def check_rollout_backend(cfg: Config) -> None:
    if cfg.cluster.colocate and cfg.cluster.rollout_num_gpus_per_engine > 1:  # an engine shares one trainer bundle
        raise UserInputError("--colocate with --rollout-num-gpus-per-engine > 1 is not supported yet")
    rollout_backend(cfg).check(cfg)


def check_rollout_model(cfg: Config) -> None:
    if _model_config_readable(cfg):
        rollout_backend(cfg).check_model(cfg)


def check_routing_replay(cfg: Config) -> None:
    """Routing replay needs a MoE model."""
    if cfg.train.use_routing_replay and _model_config_readable(cfg):
        if not num_experts(read_hf_config(cfg.model.hf_checkpoint)):
            raise UserInputError(f"--use-routing-replay applies to MoE models; {cfg.model.hf_checkpoint} has no experts")


def check_trainer_backend(cfg: Config) -> None:
    train_backend(cfg).check(cfg)


def check_trainer_model(cfg: Config) -> None:
    if _model_config_readable(cfg):
        train_backend(cfg).check_model(cfg)


def check_load(cfg: Config) -> None:
    checkpoint = checkpoint_to_resume(cfg.checkpoint.load, cfg.checkpoint.save)
    if checkpoint is not None:
        train_backend(cfg).check_resume(cfg, checkpoint)


def check_debug_data(cfg: Config) -> None:
    """The first batch --load-debug-rollout-data replays exists; --save-debug-rollout-data can be written."""
    d = cfg.debug
    if d.load_debug_rollout_data:
        first = debug_data_file(d.load_debug_rollout_data, 0)
        if not first.is_file():
            raise UserInputError(f"--load-debug-rollout-data {d.load_debug_rollout_data}: no rollout data for step 0 "
                                 f"({first})")
    if d.save_debug_rollout_data:
        _check_writable("--save-debug-rollout-data", str(debug_data_file(d.save_debug_rollout_data, 0).parent))


CHECKS: list[Callable[[Config], None]] = [
    check_model, check_model_flags, check_data, check_outputs, check_earlier_run, check_logging, check_reward, check_filter,
    check_generate_function, check_tis_function, check_rollout_backend, check_rollout_model,
    check_routing_replay, check_trainer_backend, check_trainer_model, plan_placement, check_load, check_debug_data,
]


# `async_rl.evaluate`: a model and eval sets through the rollout backend; no trainer, no training data
EVALUATE_CHECKS: list[Callable[[Config], None]] = [
    check_model, check_data, check_outputs, check_logging, check_reward, check_generate_function,
    check_rollout_backend, check_rollout_model,
]


def startup_problems(cfg: Config, checks: list[Callable[[Config], None]] = CHECKS) -> list[str]:
    """One line per problem, in the order a start meets them."""
    problems = []
    for check in checks:
        try:
            check(cfg)
        except StartupCheckFailed as e:
            problems.extend(e.problems)
        except UserInputError as e:
            problems.append(str(e))
    return problems


def check_startup(cfg: Config, checks: list[Callable[[Config], None]] = CHECKS) -> None:
    problems = startup_problems(cfg, checks)
    if problems:
        raise StartupCheckFailed(problems)


def prepare_output_dir(cfg: Config) -> None:
    """With --overwrite-output-dir, the earlier run's metrics and TensorBoard scalars go (its checkpoints stay)."""
    lg = cfg.logging
    out = Path(lg.output_dir)
    if not lg.overwrite_output_dir or not (out / "metrics.jsonl").is_file() or resumes(cfg.checkpoint.load, cfg.checkpoint.save):
        return
    (out / "metrics.jsonl").unlink()
    shutil.rmtree(lg.tensorboard_dir or out / "tensorboard", ignore_errors=True)


def dry_run(cfg: Config, checks: list[Callable[[Config], None]] = CHECKS) -> None:
    """`--dry-run`: the configuration, where each part would run, then every start-up check of `checks`."""
    cfg.print_resolved()
    if plan_placement in checks:
        try:
            print(plan_placement(cfg).render(), flush=True)
        except UserInputError:
            pass  # reported with the other problems below
    if cfg.notes:
        print("what some flags mean here:\n" + "\n".join(f"  {note}" for note in cfg.notes), flush=True)
    pending = os.environ.get(BUILT_BEFORE_START)
    if pending:
        print(f"built before the start: {pending} (checks of files in it are skipped)", flush=True)
    check_startup(cfg, checks)
    print("start-up checks passed", flush=True)
