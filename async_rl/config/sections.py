"""Typed configuration sections, one per flag group.

Each dataclass field is one command-line flag: `rollout_batch_size` is `--rollout-batch-size` and the
YAML key `rollout_batch_size`. Field metadata carries the help text and argparse extras, so the parser,
the YAML loader and the docs all read one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def flag(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line flag."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **argparse_kwargs})
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class ClusterConfig:
    actor_num_nodes: int = flag(1, "Nodes for the trainer.")
    actor_num_gpus_per_node: int = flag(0, "GPUs per trainer node; 0 trains on the CPU.")
    rollout_num_gpus: int | None = flag(None, "GPUs for all rollout engines together (disaggregated mode).")
    rollout_num_gpus_per_engine: int = flag(1, "GPUs per rollout engine (its tensor-parallel size).")
    rollout_num_engines: int = flag(1, "Rollout engines when they run on the CPU (local backend without GPUs).")
    num_gpus_per_node: int = flag(8, "GPUs on each node of the cluster; rollout engines fill the GPUs the trainer leaves.")
    colocate: bool = flag(False, "Trainer and rollout engines share the same GPUs. The sync loop takes turns (the "
                          "engines release their memory for each train step); with --async both stay resident and "
                          "run at the same time, each in its share of the memory (--sglang-mem-fraction-static).")
    offload_train: bool = flag(
        False, "Colocated sync runs: move the trainer's weights, gradients and optimizer state to the host while the "
        "engines generate, so that their KV cache can take that memory (the async loop keeps both resident: they "
        "run at the same time).")
    ray_address: str | None = flag(None, "Address of a running Ray cluster; a local Ray starts when unset.")


@dataclass
class BackendConfig:
    rollout_backend: str | None = flag(None, "Rollout engine implementation; unset: sglang where the trainer has "
                                       "GPUs (--actor-num-gpus-per-node), local on a CPU.", choices=["local", "sglang"])
    train_backend: str | None = flag(None, "Trainer implementation; unset: megatron where the trainer has GPUs, torch "
                                     "on a CPU.", choices=["torch", "megatron"])


@dataclass
class MegatronConfig:
    """Megatron-core's own flags, under Megatron's names, for `--train-backend megatron`."""

    tensor_model_parallel_size: int = flag(1, "Megatron tensor-parallel size.")
    pipeline_model_parallel_size: int = flag(1, "Megatron pipeline-parallel size.")
    context_parallel_size: int = flag(1, "Megatron context-parallel size.")
    expert_model_parallel_size: int = flag(1, "Megatron expert-parallel size (MoE).")
    sequence_parallel: bool = flag(False, "Megatron sequence parallelism (needs tensor-parallel size > 1).")
    use_distributed_optimizer: bool = flag(False, "Shard Adam's state and the FP32 main weights across data-parallel "
                                           "ranks (GPUs); on by default for the megatron trainer on GPUs, as in slime.")
    recompute_granularity: str | None = flag(None, "Activation recomputation.", choices=["full", "selective"])
    recompute_method: str | None = flag(None, "Full recomputation by layer blocks.", choices=["uniform", "block"])
    recompute_num_layers: int | None = flag(None, "Layers per recomputation block.")
    transformer_impl: str | None = flag(
        None, "Layer implementation: Transformer Engine's (fused kernels, FP8, packed sequences) or megatron-core's "
        "local one. Unset: transformer_engine on GPUs where it imports, local otherwise.",
        choices=["transformer_engine", "local"],
    )
    moe_grouped_gemm: bool = flag(False, "Run each MoE layer's experts as one grouped GEMM (Transformer Engine).")
    bf16: bool = flag(False, "Train in BF16 mixed precision; on by default for the megatron trainer on GPUs, as in slime.")
    fp8_format: str | None = flag(None, "Transformer Engine FP8 training format.", choices=["e4m3", "hybrid"])
    fp8_recipe: str | None = flag(
        None, "Transformer Engine FP8 scaling recipe (default delayed; mxfp8 needs Blackwell).",
        choices=["delayed", "tensorwise", "blockwise", "mxfp8"],
    )
    fp8_param_gather: bool = flag(False, "Keep the model's weights in FP8 (Megatron's fp8_param); the FP32 main "
                                  "weights stay in the optimizer.")
    max_tokens_per_gpu: int | None = flag(None, "Micro-batches packed by token budget instead of --micro-batch-size.")


@dataclass
class ModelConfig:
    hf_checkpoint: str | None = flag(None, "Hugging Face checkpoint directory the policy starts from.")


@dataclass
class DataConfig:
    prompt_data: str | None = flag(None, "Training prompts (.jsonl or .parquet).")
    input_key: str = flag("prompt", "Row key holding the prompt text (or a list of chat messages).")
    label_key: str = flag("label", "Row key holding the ground-truth answer.")
    apply_chat_template: bool = flag(False, "Wrap prompts with the tokenizer's chat template.")
    rollout_shuffle: bool = flag(False, "Shuffle prompts each epoch (deterministic given --seed).")
    skip_bad_rows: bool = flag(False, "Skip (count and log) malformed dataset lines instead of stopping.")


@dataclass
class DebugConfig:
    save_debug_rollout_data: str | None = flag(
        None, "Save every trained batch's samples (tokens, log-probs, rewards, versions) to PATH: a directory, or a "
        "file template with {rollout_id}.")
    load_debug_rollout_data: str | None = flag(
        None, "Train on the batches saved by --save-debug-rollout-data instead of generating (sync loop); "
        "reproduces the saved run's steps.")


@dataclass
class RolloutConfig:
    num_rollout: int = flag(10, "Rollout steps to run (each is generate, reward, train, push weights).")
    rollout_batch_size: int = flag(8, "Prompts per rollout step.")
    n_samples_per_prompt: int = flag(4, "Responses sampled per prompt (the group size).")
    rollout_max_response_len: int = flag(64, "Maximum new tokens per response.")
    rollout_max_context_len: int | None = flag(
        None, "Maximum prompt + response tokens: responses stop there, and prompts that leave no room are "
        "dropped from the dataset (counted and logged).")
    rollout_temperature: float = flag(1.0, "Sampling temperature.")
    rollout_top_p: float = flag(1.0, "Nucleus sampling threshold.")
    rollout_top_k: int = flag(-1, "Sample among the k most likely tokens only; -1 turns top-k off.")
    rollout_stop_token_ids: list[int] | None = flag(None, "Token ids that end a response besides the tokenizer's EOS.")
    max_staleness: int = flag(
        1, "Async mode: admit new rollouts only while every sample will train at most this many weight versions "
        "after its own (AReaL's admission control); older samples are dropped and counted."
    )
    partial_rollout: bool = flag(
        False, "Async mode: a weight push interrupts running generation, which then continues with the new "
        "weights, keeping the tokens (and log-probs) generated so far."
    )
    custom_generate_function_path: str | None = flag(
        None, "Rollout plugin as pkg.module:function: `async def fn(client, sample, params) -> Sample` runs in the "
        "engine for every sample and may take several policy turns with tool output between them (see "
        "docs/rollouts.md).")
    rollout_max_concurrency: int = flag(
        256, "SGLang backend: generation requests in flight per engine at once (the rest wait in the engine actor)."
    )
    router_port: int | None = flag(None, "Port of the sglang-router started in front of several SGLang engines "
                                   "(a free one when unset).")
    router_policy: str = flag("cache_aware", "sglang-router's routing policy.",
                              choices=["cache_aware", "round_robin", "random", "power_of_two"])
    check_weight_update_equal: bool = flag(
        False, "After each weight push, compare a digest of every engine tensor with what the trainer sent (BF16 "
        "exact, FP8 against the trainer's own quantization); stop at the first that differs.")
    update_weight_buffer_size: int = flag(512 * 1024**2, "Bytes sent per weight-sync bucket (FP8 weights: one per element).")
    update_weight_mode: str | None = flag(
        None, "SGLang backend: how weight pushes reach the engines. tensor: CUDA IPC handles from the engine's own "
        "actor (buckets cross nodes through Ray's object store); distributed: trainer rank 0 broadcasts each bucket "
        "to every engine over a process group (SGLang's update_weights_from_distributed). Unset: tensor with "
        "--colocate or channel FP8, else distributed.", choices=["tensor", "distributed"],
    )
    update_weight_group_backend: str = flag(
        "nccl", "Process-group backend of --update-weight-mode distributed; gloo also joins a trainer and an engine "
        "on one GPU, which NCCL refuses.", choices=["nccl", "gloo"],
    )
    force_pow_2_scale: bool = flag(False, "FP8 rollout: round every block scale up to a power of two (E8M0).")
    rollout_quantization: str = flag(
        "none", "Rollout weight precision: fp8 serves E4M3 weights (emulated by the local engine).",
        choices=["none", "fp8"],
    )
    rollout_fp8_granularity: str = flag(
        "block", "FP8 rollout scale layout: block (128x128, DeepSeek-V3 checkpoints; fast with DeepGEMM) or channel "
        "(one scale per output row, per-token activations; CUTLASS, fast on Hopper without DeepGEMM).",
        choices=["block", "channel"],
    )
    dynamic_sampling_filter_path: str | None = flag(
        None, "Group filter as pkg.module:function or pkg.module.function (DAPO: async_rl.rollout.filters:check_reward_nonzero_std)."
    )
    over_sampling_batch_size: int | None = flag(
        None, "Prompts requested per sampling round while filling a filtered batch; defaults to --rollout-batch-size. "
        "Async mode: the most prompts generating at once."
    )
    max_sampling_rounds: int = flag(8, "Sampling rounds before a filtered batch that is still short is trained as is.")
    adaptive_over_sampling: bool = flag(
        False, "Sync mode with a filter: size each sampling round by the filter's recent keep rate (the "
        "--over-sampling-batch-size / --rollout-batch-size ratio kept as the margin, at least one fixed round, at most "
        "--max-sampling-rounds of them), so that a batch usually fills in one round of generation."
    )

    @property
    def fp8_layout(self) -> str | None:
        """The FP8 granularity weights travel and are served in; None for a high-precision rollout."""
        return self.rollout_fp8_granularity if self.rollout_quantization == "fp8" else None


@dataclass
class TrainConfig:
    global_batch_size: int | None = flag(
        None, "Samples per optimizer step; unset means one step per rollout (rollout-batch-size x n-samples)."
    )
    num_steps_per_rollout: int | None = flag(
        None, "Optimizer steps per rollout; sets the global batch size to the rollout's samples over this.")
    micro_batch_size: int = flag(8, "Samples per forward/backward pass (gradient accumulation).")
    balance_data: bool = flag(False, "Megatron backend: give data-parallel ranks samples of about equal token counts "
                              "(the same number of samples each).")
    optimizer: str = flag("adam", "Optimizer (Adam with decoupled weight decay).", choices=["adam"])
    lr: float = flag(1e-6, "Peak learning rate.")
    lr_decay_style: str = flag("constant", "Learning-rate schedule after the warm-up.",
                               choices=["constant", "linear", "cosine"])
    lr_warmup_iters: int = flag(0, "Optimizer steps of linear warm-up from 0 to --lr.")
    lr_decay_iters: int | None = flag(None, "Optimizer steps over which the rate decays to --min-lr (default: the "
                                      "whole run).")
    min_lr: float = flag(0.0, "Learning rate at the end of the decay.")
    weight_decay: float = flag(0.0, "AdamW weight decay.")
    adam_beta1: float = flag(0.9, "AdamW beta1.")
    adam_beta2: float = flag(0.999, "AdamW beta2.")
    clip_grad: float = flag(1.0, "Gradient-norm clip; 0 disables.")
    advantage_estimator: str = flag(
        "grpo", "How advantages are computed; gspo and cispo (slime's names) take GRPO's advantages and their own "
        "policy loss.",
        choices=["grpo", "dr_grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "gspo", "cispo"],
    )
    normalize_advantages_std: bool = flag(True, "GRPO: divide by the group's standard deviation.")
    eps_clip: float = flag(0.2, "PPO clip range below 1.")
    eps_clip_high: float | None = flag(None, "PPO clip range above 1 (DAPO clip-higher); defaults to --eps-clip.")
    eps_clip_c: float | None = flag(None, "Dual-clip bound for negative advantages (DAPO uses 10); must be > 1.")
    kl_coef: float = flag(0.0, "KL in the reward: each token's advantage pays this times its (k1) divergence from "
                          "the reference (initial) policy; > 0 loads the reference.")
    use_kl_loss: bool = flag(False, "Add a KL term to the loss (weight --kl-loss-coef; logged even at 0); loads the "
                             "reference policy.")
    kl_loss_coef: float = flag(0.0, "Weight of the KL term in the loss (with --use-kl-loss).")
    kl_loss_type: str = flag("k3", "KL estimator in the loss; low_var_kl is k3 clamped to [-10, 10].",
                             choices=["k1", "k2", "k3", "low_var_kl"])
    entropy_coef: float = flag(0.0, "Weight of the entropy bonus.")
    loss_aggregation: str = flag(
        "token_mean", "How per-token losses become one number.",
        choices=["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"],
    )
    use_tis: bool = flag(False, "Truncated importance sampling: weight tokens by min(p_old/p_rollout, C).")
    tis_clip: float = flag(2.0, "TIS cap C (the upper bound in mask mode).", aliases=["--tis-imp-ratio-cap"])
    tis_clip_low: float | None = flag(None, "Lower bound of the kept ratio in --tis-mode mask or icepop.")
    custom_tis_function_path: str | None = flag(
        None, "Your importance-sampling correction as pkg.module:function, in place of --tis-mode: "
        "fn(old_log_probs, rollout_log_probs, loss_mask) -> (weights, stats), tensors [rows, tokens].")
    tis_level: str = flag(
        "token", "Ratio per token, per sequence, or per sequence as a geometric mean.", choices=["token", "sequence", "geometric"]
    )
    tis_mode: str = flag("truncate", "truncate: cap the ratio (TIS); mask: zero tokens/sequences out of bounds; "
                         "icepop: mask with IcePop's bounds [0.5, 5] unless --tis-clip-low / --tis-clip say otherwise.",
                         choices=["truncate", "mask", "icepop"])
    use_routing_replay: bool = flag(
        False, "MoE models: the engine returns every token's routed experts and the trainer's forward uses them "
        "instead of routing again (R3), so that near-tied routers do not flip between FP8 or stale rollouts and "
        "training.", aliases=["--use-rollout-routing-replay"])
    mismatch_alert_k3: float | None = flag(
        None, "Warn once the train-vs-rollout KL (mismatch/kl_k3, per token) stays above this for "
        "--mismatch-alert-steps steps in a row; with --mismatch-alert-action stop, end the run there.")
    mismatch_alert_steps: int = flag(3, "Consecutive steps above --mismatch-alert-k3 that raise the alert.")
    mismatch_alert_action: str = flag("warn", "What the mismatch alert does.", choices=["warn", "stop"])
    max_skipped_steps: int | None = flag(
        None, "Stop the run once more optimizer steps than this were skipped for a NaN/inf loss or gradient."
    )
    torch_num_threads: int | None = flag(None, "CPU threads per process (trainer and each engine); unset splits the cores.")
    check_invariants: bool = flag(
        False, "Stop with an error when a correctness invariant fails: at the first step, trainer log-probs equal "
        "the rollout's (on-policy samples, unquantized rollout) and the PPO ratio is 1; after --load, the loss "
        "and gradient norm on the checkpoint's probe batch equal those recorded when it was saved (under another "
        "parallel layout: within FP32 reduction-order noise, not compared in BF16)."
    )
    invariant_logprob_tol: float = flag(1e-3, "--check-invariants: largest mean |trainer - rollout| log-prob difference.")
    deterministic_mode: bool = flag(
        False, "Deterministic GPU kernels in the trainer (Megatron's flag): the same batch gives bit-identical "
        "log-probs and updates, where MoE layers otherwise sum expert outputs with atomics in varying order. Slower; "
        "on under --check-invariants, whose first-step check compares two forward passes bit for bit.")


@dataclass
class RewardConfig:
    rm_type: str = flag("deepscaler", "Built-in rule reward, or remote_rm: a reward server at --rm-url.")
    rm_url: str | None = flag(None, "--rm-type remote_rm: the URL each sample is POSTed to.")
    rm_max_concurrency: int = flag(64, "--rm-type remote_rm: requests in flight at once.")
    rm_max_retries: int = flag(3, "--rm-type remote_rm: retries of a refused connection or a 5xx, with backoff.")
    custom_rm_path: str | None = flag(None, "Reward plugin as pkg.module:function or pkg.module.function; replaces --rm-type.")
    group_rm: bool = flag(False, "The --custom-rm-path function grades a whole group: fn(samples) -> list.")
    reward_timeout: float = flag(5.0, "Seconds one reward call may take; a timeout scores --reward-default.")
    reward_num_workers: int = flag(2, "Worker processes that grade with sync reward functions.")
    reward_default: float = flag(0.0, "Reward of a sample whose grading timed out or raised.")
    overlong_buffer_len: int | None = flag(None, "DAPO overlong shaping: penalise the last this many tokens of the length limit.")
    overlong_penalty_factor: float = flag(1.0, "DAPO overlong shaping: the penalty at the length limit.")


@dataclass
class EvalConfig:
    eval_interval: int | None = flag(None, "Evaluate every this many rollout steps (and at step 0 and the end).")
    eval_prompt_data: list[str] | None = flag(
        None, "Eval sets: a path, or NAME PATH pairs; the flag alone turns off the sets a --config file names.",
        nargs="*",
    )
    n_samples_per_eval_prompt: int = flag(1, "Responses sampled per eval prompt.")
    eval_temperature: float = flag(1.0, "Sampling temperature for evaluation.")
    eval_top_p: float | None = flag(None, "Nucleus sampling threshold for evaluation; defaults to --rollout-top-p.")
    eval_top_k: int | None = flag(None, "Top-k for evaluation (1 is greedy); defaults to --rollout-top-k.")
    eval_max_response_len: int = flag(64, "Maximum new tokens per eval response.")


@dataclass
class CheckpointConfig:
    save: str | None = flag(None, "Directory for checkpoints.")
    save_interval: int | None = flag(None, "Save every this many rollout steps (and at the end).")
    load: str | None = flag(None, "Checkpoint directory to resume from.")


@dataclass
class LoggingConfig:
    output_dir: str = flag("outputs/run", "Directory for config.yaml and metrics.jsonl.")
    overwrite_output_dir: bool = flag(False, "Start afresh in an --output-dir that holds a run (its metrics and "
                                      "TensorBoard scalars are removed); without it such a start is refused.")
    tensorboard_dir: str | None = flag(None, "TensorBoard directory; defaults to <output-dir>/tensorboard.")
    seed: int = flag(1234, "Seed for data order, sampling and initialisation.")
    use_wandb: bool = flag(False, "Also log to Weights & Biases (needs `pip install wandb`).")
    wandb_project: str = flag("async_rl", "Weights & Biases project.")
    wandb_group: str | None = flag(None, "Weights & Biases run group.")
    wandb_team: str | None = flag(None, "Weights & Biases team (entity) the run belongs to.")
    wandb_mode: str = flag("offline", "offline writes under <output-dir>/wandb for a later `wandb sync`.",
                           choices=["offline", "online"])


SECTIONS: dict[str, type] = {
    "cluster": ClusterConfig,
    "backend": BackendConfig,
    "megatron": MegatronConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "rollout": RolloutConfig,
    "train": TrainConfig,
    "reward": RewardConfig,
    "eval": EvalConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "debug": DebugConfig,
}
