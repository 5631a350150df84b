"""`megatron` trainer backend: megatron-core's GPTModel, DistributedDataParallel and optimizer, one process per GPU.

Every rank of the Megatron world is a Ray actor running this class. The orchestrator talks to rank 0
only, exactly as to the torch backend; rank 0 hands each call to its peers (each data-parallel rank gets
its share of the samples) and takes part itself, so that every rank enters the same collectives.
Statistics are all-reduced over data-parallel ranks, so rank 0 returns the global numbers.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from async_rl.backends.megatron import expert_shards, tp_shards
from async_rl.backends.megatron.cpu_compat import init_megatron
from async_rl.backends.megatron.hf_weights import hf_to_megatron, megatron_to_hf
from async_rl.backends.megatron.model import build_gpt_model, causal_mask, fp8_settings, resolve_transformer_impl
from async_rl.backends.megatron.model_checkpoint import load_model_checkpoint
from async_rl.backends.megatron.offload import MegatronOffloader
from async_rl.backends.megatron.optimizer import build_optimizer
from async_rl.backends.megatron.param_names import local_tensors
from async_rl.backends.megatron.writer_watchdog import watch_writer
from async_rl.config.sections import MegatronConfig, TrainConfig
from async_rl.net import free_port
from async_rl.routing_replay import megatron_routing_replay, packed_rows, padded_rows
from async_rl.sample import Sample
from async_rl.trainer.batch import PackedBatch, micro_batch_indices, score_responses
from async_rl.trainer.policy_trainer import PolicyTrainer, is_max_stat, needs_reference, use_deterministic_kernels
from async_rl.trainer.sharded_batch import ShardedBatch
from async_rl.weights.hf_layout import num_experts, read_hf_config

logger = logging.getLogger(__name__)


TRAINER_STATE = "trainer_state"  # each rank's RNG state, step counters and the parallel layout: rank_N.pt


def recorded_layout(checkpoint: str | Path) -> dict[str, int] | None:
    """The parallel layout a megatron checkpoint was written under (None: another backend's checkpoint)."""
    rank0 = Path(checkpoint) / TRAINER_STATE / "rank_0.pt"
    return torch.load(rank0, weights_only=False).get("layout") if rank0.is_file() else None


def _wait(refs: list) -> list:
    """Results of the peers' Ray calls (none on a single rank, which runs without Ray)."""
    if not refs:
        return []
    import ray

    return ray.get(refs)


def data_parallel_shards(n: int, global_batch_size: int, dp: int, lengths: list[int] | None = None) -> list[list[int]]:
    """Sample indices of each data-parallel rank: every global batch is cut into `dp` contiguous parts, or, given
    the samples' `lengths` (`--balance-data`), dealt longest first in a snake order (0..dp-1, dp-1..0, ...),
    so that each rank gets as many samples as with contiguous parts and about the same number of tokens."""
    shards: list[list[int]] = [[] for _ in range(dp)]
    for start in range(0, n, global_batch_size):
        chunk = list(range(start, min(start + global_batch_size, n)))
        if lengths is None:
            parts = [p.tolist() for p in torch.tensor(chunk, dtype=torch.long).tensor_split(dp)] if chunk else []
        else:
            parts = [[] for _ in range(dp)]
            for turn, i in enumerate(sorted(chunk, key=lambda i: -lengths[i])):
                lap, seat = divmod(turn, dp)
                parts[seat if lap % 2 == 0 else dp - 1 - seat].append(i)
        for d, part in enumerate(parts):
            shards[d].extend(sorted(part))
    return shards


def shard_rows(samples: list[Sample], global_batch_size: int, dp: int, balance: bool, expert_parallel: int = 1) -> list[list[int]]:
    """Each data-parallel rank's sample positions; by token count with `--balance-data`."""
    lengths = [len(s.prompt_tokens) + s.response_length for s in samples] if balance else None
    shards = data_parallel_shards(len(samples), global_batch_size, dp, lengths)
    if expert_parallel > 1 and len({len(rows) for rows in shards}) > 1:
        # every rank of an expert-parallel group must run the same number of forward passes
        raise ValueError(f"{len(samples)} samples do not split evenly over {dp} data-parallel ranks, "
                         "which expert parallelism needs")
    return shards


class MegatronTrainer(PolicyTrainer):
    def __init__(
        self,
        hf_checkpoint: str,
        cfg: TrainConfig,
        mcfg: MegatronConfig,
        *,
        global_batch_size: int,
        temperature: float,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int | None = None,
        num_threads: int | None = None,
        total_optimizer_steps: int = 1,
    ):
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        if num_threads:
            torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        self.deterministic = use_deterministic_kernels(cfg, torch.cuda.is_available())
        self._cpu = contextlib.ExitStack()
        if master_port is None:  # a lone rank rendezvouses with itself on any free port
            if world_size > 1:
                raise ValueError("a megatron group of several ranks needs the master_port they share")
            master_port = free_port(master_addr)
        init_megatron(rank, world_size, master_addr, master_port, mcfg, self._cpu, seed)
        self.rank = rank
        self.dp_size = ps.get_data_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.tp_size = ps.get_tensor_model_parallel_world_size()
        self.ep_size, self.ep_rank = ps.get_expert_model_parallel_world_size(), ps.get_expert_model_parallel_rank()
        super().__init__(cfg, global_batch_size=global_batch_size // self.dp_size, temperature=temperature,
                         max_tokens_per_micro_batch=mcfg.max_tokens_per_gpu, total_optimizer_steps=total_optimizer_steps)
        self.global_batch_size_all_ranks = global_batch_size
        self.mcfg = mcfg
        self.transformer_impl = resolve_transformer_impl(mcfg.transformer_impl)
        # Transformer Engine's fused attention (BF16) takes sequences packed back to back (THD), as slime trains
        self.packed = self.transformer_impl == "transformer_engine" and mcfg.bf16
        # FP8 GEMMs need the token count to be a multiple of 16 (32 for MXFP8)
        self.token_alignment = (32 if mcfg.fp8_recipe == "mxfp8" else 16) if mcfg.fp8_format else 1
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.load_tokenizer(hf_checkpoint)
        self.hf = read_hf_config(hf_checkpoint)
        self.local_experts = (num_experts(self.hf) or 0) // self.ep_size
        hf_state = AutoModelForCausalLM.from_pretrained(hf_checkpoint, dtype=torch.float32).state_dict()
        self.gpt = self._build(hf_state)
        self.model = DistributedDataParallel(
            self.gpt.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                                           use_distributed_optimizer=mcfg.use_distributed_optimizer),
            self._precision(self.gpt),
        )
        self.ref_model = self._precision(self._build(hf_state)).eval().requires_grad_(False) if needs_reference(cfg) else None
        self.optimizer = build_optimizer(self.model, cfg, mcfg)
        self.peers: list[Any] = []
        self.peer_dp_ranks: list[int] = []

    def close(self) -> None:
        """Leave the process group (for in-process use; a Ray actor's process simply ends)."""
        from megatron.core import parallel_state as ps

        ps.destroy_model_parallel()
        dist.destroy_process_group()
        self._cpu.close()

    # ---- model ------------------------------------------------------------------------------------------
    def _build(self, hf_state: dict[str, torch.Tensor]):
        from megatron.core import parallel_state as ps

        m = self.mcfg
        model = build_gpt_model(
            self.hf, self.transformer_impl, tensor_model_parallel_size=m.tensor_model_parallel_size,
            params_dtype=torch.bfloat16 if m.bf16 else torch.float32, bf16=m.bf16,
            recompute_granularity=m.recompute_granularity, recompute_method=m.recompute_method,
            recompute_num_layers=m.recompute_num_layers, expert_model_parallel_size=m.expert_model_parallel_size,
            deterministic_mode=self.deterministic, **fp8_settings(m.fp8_format, m.fp8_recipe, m.fp8_param_gather),
            **({"moe_grouped_gemm": m.moe_grouped_gemm, "moe_enable_routing_replay": self.cfg.use_routing_replay}
               if self.local_experts else {}),
        )
        full = hf_to_megatron(hf_state, self.hf)
        tp_rank = ps.get_tensor_model_parallel_rank()
        with torch.no_grad():
            for name, param in local_tensors(model).items():
                source = full[expert_shards.global_name(name, self.ep_rank, self.local_experts)]
                param.copy_(tp_shards.shard(name, source, param, tp_rank, self.tp_size))
        return model.to(self.device)

    def _precision(self, model):
        from megatron.core.transformer.module import Float16Module

        return Float16Module(model.config, model) if self.mcfg.bf16 else model

    def forward_log_probs(self, model: Any, batch: PackedBatch, with_entropy: bool = False):
        from megatron.core import parallel_state as ps

        logits, row_offsets = self._packed_logits(model, batch) if self.packed else self._padded_logits(model, batch)
        return score_responses(
            logits, batch, self.temperature, row_offsets=row_offsets, with_entropy=with_entropy,
            vocab_start=ps.get_tensor_model_parallel_rank() * logits.shape[-1],
            group=ps.get_tensor_model_parallel_group() if self.tp_size > 1 else None)

    def _logits(self, model: Any, *inputs, **kwargs) -> torch.Tensor:
        """The model's logits in its own precision: Float16Module would otherwise copy them all to float32."""
        return model(*inputs, **kwargs, **({"fp32_output": False} if self.mcfg.bf16 else {}))

    def _padded_logits(self, model: Any, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's logits [rows x seq, vocab / tp] and where each row starts. Rows right-padded to one length:
        Transformer Engine's causal attention needs no mask then, as a real token never sees the padding after it."""
        input_ids, attention_mask = self._common_shape(batch)
        positions = torch.arange(input_ids.shape[1], device=self.device).expand_as(input_ids)
        mask = None if self.transformer_impl == "transformer_engine" else causal_mask(attention_mask)
        with self._routing_replay(model, batch, lambda r: padded_rows(r, *input_ids.shape)):
            logits = self._logits(model, input_ids, positions, attention_mask=mask)
        return logits.flatten(0, 1), torch.arange(batch.input_ids.shape[0], device=self.device) * input_ids.shape[1]

    def _packed_logits(self, model: Any, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's logits [tokens, vocab / tp] and where each row starts. Rows back to back in one sequence
        (THD) with their boundaries in `PackedSeqParams`, so attention and RoPE restart at each row and no compute
        goes to padding. A trailing segment of padding appears only where an alignment asks for it (FP8 GEMMs;
        the same token count over an expert-parallel group)."""
        from megatron.core.packed_seq_params import PackedSeqParams

        lengths = batch.attention_mask.sum(1)
        tokens = batch.input_ids[batch.attention_mask.bool()]  # right padding: each row stays contiguous
        starts = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
        total = int(starts[-1])
        padded = -(-total // self.token_alignment) * self.token_alignment
        if self.ep_size > 1:
            [padded] = self._expert_group_max([padded])
        if padded > total:
            tokens = torch.nn.functional.pad(tokens, (0, padded - total), value=self.pad_token_id)
            starts = torch.cat([starts, starts.new_tensor([padded])])
        segment_lengths = starts.diff()
        positions = torch.arange(padded, device=self.device) - starts[:-1].repeat_interleave(segment_lengths)
        cu_seqlens = starts.to(torch.int32)
        longest = int(segment_lengths.max())
        params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                                 max_seqlen_q=longest, max_seqlen_kv=longest)
        with self._routing_replay(model, batch, lambda r: packed_rows(r, batch.attention_mask, padded)):
            logits = self._logits(model, tokens[None], positions[None], attention_mask=None, packed_seq_params=params)
        return logits[0], starts[: len(lengths)]

    def _routing_replay(self, model: Any, batch: PackedBatch, layout: Callable[[torch.Tensor], torch.Tensor]):
        """The policy's forward routes with the engine's experts (`--use-routing-replay`), laid out as its
        tokens reach the routers; the reference policy routes itself."""
        if batch.routed_experts is None or model is not self.model:
            return contextlib.nullcontext()
        return megatron_routing_replay(model, layout(batch.routed_experts))

    def micro_batch_groups(self, samples: list[Sample]) -> list[list[int]]:
        """Under expert parallelism every rank of the group runs as many micro-batches as the one with the most
        (tokens are exchanged in each forward pass): a rank with fewer splits its largest ones in two, which
        stays within the token budget and leaves the loss as it is (each micro-batch weighs its share)."""
        groups = micro_batch_indices(samples, self.cfg.micro_batch_size, self.max_tokens_per_micro_batch, self.packed)
        if self.ep_size == 1:
            return groups
        [target] = self._expert_group_max([len(groups)])
        while len(groups) < target:  # equal shards: some group still has two rows or more
            largest = max(groups, key=len)
            groups.remove(largest)
            groups += [largest[: len(largest) // 2], largest[len(largest) // 2 :]]
        return groups

    def _common_shape(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch padded to the largest [rows, seq] over the expert-parallel group: Megatron's MoE layer
        all-gathers tokens across that group, which needs the same number on every rank. Padding rows are
        fully masked; their outputs are cut off again."""
        if self.ep_size == 1:
            return batch.input_ids, batch.attention_mask
        rows, seq = self._expert_group_max(list(batch.input_ids.shape))
        pad = (0, seq - batch.input_ids.shape[1], 0, rows - batch.input_ids.shape[0])
        return (torch.nn.functional.pad(batch.input_ids, pad, value=self.pad_token_id),
                torch.nn.functional.pad(batch.attention_mask, pad, value=0))

    def _expert_group_max(self, values: list[int]) -> list[int]:
        """Each value's maximum over the expert-parallel group."""
        from megatron.core import parallel_state as ps

        tensor = torch.tensor(values, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=ps.get_expert_model_parallel_group())
        return tensor.tolist()

    # ---- optimizer hooks --------------------------------------------------------------------------------
    def zero_grad(self) -> None:
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()

    def _finish_gradients(self) -> None:
        """Reduce the accumulated gradients over data-parallel ranks (and whatever else Megatron needs)."""
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads

        finalize_model_grads([self.model])

    def optimizer_step(self) -> tuple[float, bool]:
        self._finish_gradients()
        result = self.optimizer.step()
        self._recast_fp8_weights()
        return result

    def _recast_fp8_weights(self) -> None:
        """Transformer Engine casts each weight to FP8 once and reuses that copy until its module is told a new
        first micro-batch begins (Megatron's schedules say so; this trainer runs its own loop). Without it an FP8
        trainer keeps computing with the weights of its first forward pass while the BF16 weights train."""
        self.model.set_is_first_microbatch()

    def gradient_norm(self) -> float:
        self._finish_gradients()
        return self.optimizer.grad_norm()

    def learning_rate(self) -> float:
        return self.optimizer.lr

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.set_lr(lr)

    def gradient_scale(self) -> float:
        return float(self.dp_size)  # Megatron's DDP averages over data-parallel ranks; the loss is a global sum

    def all_reduce_stats(self, sums: dict[str, float]) -> dict[str, float]:
        from megatron.core import parallel_state as ps

        if self.dp_size == 1:
            return sums
        keys = sorted(sums)
        group = ps.get_data_parallel_group()
        means = torch.tensor([sums[k] for k in keys if not is_max_stat(k)], dtype=torch.float64, device=self.device)
        peaks = torch.tensor([sums[k] for k in keys if is_max_stat(k)], dtype=torch.float64, device=self.device)
        dist.all_reduce(means, group=group)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX, group=group)
        values = iter(means.tolist()), iter(peaks.tolist())
        return {k: next(values[is_max_stat(k)]) for k in keys}

    # ---- GPU memory for a colocated engine -------------------------------------------------------------
    def make_offloader(self) -> MegatronOffloader:
        return MegatronOffloader(self.model, self.optimizer.inner, [self.ref_model] if self.ref_model is not None else [])

    def offload(self, weights: bool) -> dict[str, float]:
        refs = [p.offload.remote(weights) for p in self.peers]
        metrics = super().offload(weights)
        _wait(refs)
        return metrics

    def onload(self) -> dict[str, float]:
        refs = [p.onload.remote() for p in self.peers]
        metrics = super().onload()
        _wait(refs)
        return metrics

    # ---- the Ray group: rank 0 speaks for all ----------------------------------------------------------
    def connect(self, peers: list[Any]) -> None:
        """Rank 0 learns the other ranks, which it drives from then on."""
        self.peers = peers
        self.peer_dp_ranks = _wait([p.data_parallel_rank.remote() for p in peers])

    def data_parallel_rank(self) -> int:
        return self.dp_rank

    def _everywhere(self, method: str, batch: ShardedBatch) -> list[Any]:
        """PolicyTrainer.`method` (a *_sharded entry) on every rank, each on its own shard; results by data-parallel
        rank. The peers get the batch's references, not its samples."""
        refs = {dp: getattr(p, method).remote(batch) for p, dp in zip(self.peers, self.peer_dp_ranks)}
        results = {self.dp_rank: getattr(PolicyTrainer, method)(self, batch)}
        results |= {dp: r for dp, r in zip(refs, _wait(list(refs.values()))) if dp != self.dp_rank}
        return [results[dp] for dp in range(self.dp_size)]

    def _put(self, samples: list[Sample], advantages: list[float] | None = None) -> ShardedBatch:
        """A batch given to rank 0 directly, sharded here (the driver shards its batches itself)."""
        rows = shard_rows(samples, self.global_batch_size_all_ranks, self.dp_size, self.cfg.balance_data, self.ep_size)
        return ShardedBatch.put(samples, advantages, rows)

    def train_sharded(self, batch: ShardedBatch) -> dict[str, float]:
        if not self.peers:
            return super().train_sharded(batch)
        return self._everywhere("train_sharded", batch)[self.dp_rank]

    def probe_sharded(self, batch: ShardedBatch) -> dict[str, float]:
        if not self.peers:
            return super().probe_sharded(batch)
        return self._everywhere("probe_sharded", batch)[self.dp_rank]

    def log_probs_sharded(self, batch: ShardedBatch) -> list[list[float]]:
        if not self.peers:
            return super().log_probs_sharded(batch)
        out: list[list[float]] = [[] for _ in range(len(batch))]
        for rows, values in zip(batch.rows, self._everywhere("log_probs_sharded", batch)):
            for i, v in zip(rows, values):
                out[i] = v
        return out

    def train_step(self, samples: list[Sample], advantages: list[float]) -> dict[str, float]:
        return self.train_sharded(self._put(samples, advantages)) if self.peers else super().train_step(samples, advantages)

    def probe(self, samples: list[Sample], advantages: list[float]) -> dict[str, float]:
        return self.probe_sharded(self._put(samples, advantages)) if self.peers else super().probe(samples, advantages)

    def compute_log_probs(self, samples: list[Sample]) -> list[list[float]]:
        return self.log_probs_sharded(self._put(samples)) if self.peers else super().compute_log_probs(samples)

    # ---- weights out --------------------------------------------------------------------------------------
    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """HF (name, tensor) pairs, gathered over tensor-parallel ranks one parameter at a time."""
        from megatron.core import parallel_state as ps

        params = local_tensors(self.gpt)
        group = ps.get_tensor_model_parallel_group()
        ep_group, ep_rank, local = ps.get_expert_model_parallel_group(), self.ep_rank, self.local_experts
        split_experts = self.ep_size > 1

        class Gathered(dict):
            def __contains__(self, name):
                return name in params

            def __getitem__(self, name):
                expert = expert_shards.gather(name, params, ep_rank, local, ep_group) if split_experts else None
                if expert is not None:
                    return expert
                return tp_shards.gather(name, params[name], group, ps.get_tensor_model_parallel_world_size())

        return megatron_to_hf(Gathered(), self.hf)

    def join_weight_export(self) -> None:
        """A peer's part in an export: take part in every gather (tensor-parallel neighbours of rank 0, and the
        expert-parallel ranks holding the other experts); rank 0 keeps the results."""
        from megatron.core import parallel_state as ps

        if ps.get_data_parallel_rank() == 0 or (self.ep_size > 1 and ps.get_expert_data_parallel_rank() == 0):
            for _ in self.export_weights():
                pass

    def weight_buckets(self, bucket_bytes: int, fp8: str | None = None, pow2_scale: bool = False):
        """The shared bucket stream, with the other ranks taking part in every tensor-parallel gather."""
        refs = [p.join_weight_export.remote() for p in self.peers]
        yield from super().weight_buckets(bucket_bytes, fp8, pow2_scale)
        _wait(refs)

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Weights in torch_dist under `megatron/`, the optimizer's state in torch_dist under `optimizer/` (both
        load under another parallel layout); each rank's RNG state and the layout under `trainer_state/`."""
        from megatron.core import dist_checkpointing

        refs = [p.save.remote(path) for p in self.peers]
        out = Path(path)
        for part in ("megatron", TRAINER_STATE, "optimizer"):
            (out / part).mkdir(parents=True, exist_ok=True)
        state = {"version": self.version, "optimizer_steps": self.optimizer_steps, "torch_rng": torch.get_rng_state(),
                 "layout": self.parallel_layout()}
        with watch_writer(f"megatron trainer rank {self.rank}", str(out)):
            dist_checkpointing.save(self.gpt.sharded_state_dict(), str(out / "megatron"))
            dist_checkpointing.save(self.optimizer.sharded_state_dict(self.gpt.sharded_state_dict()),
                                    str(out / "optimizer"))
        torch.save(state, out / TRAINER_STATE / f"rank_{self.rank}.pt")
        _wait(refs)

    def parallel_layout(self) -> dict[str, int]:
        """This run's parallel layout, recorded with each checkpoint: RNG states are restored, and the resume probe
        compared exactly, only under the same one."""
        return {"world": dist.get_world_size(), "tensor": self.tp_size, "expert": self.ep_size, "data": self.dp_size}

    def load(self, path: str) -> None:
        """Weights and optimizer state under this run's layout, whatever the checkpoint's; RNG states only under
        the same layout (Megatron-LM also drops them when the layout changes)."""
        from megatron.core import dist_checkpointing

        refs = [p.load.remote(path) for p in self.peers]
        src = Path(path)
        load_model_checkpoint(self.gpt, str(src / "megatron"))
        written_under = recorded_layout(src)
        same_layout = written_under == self.parallel_layout()
        state = torch.load(src / TRAINER_STATE / f"rank_{self.rank if same_layout else 0}.pt", weights_only=False)
        if same_layout:
            torch.set_rng_state(state["torch_rng"])
        elif self.rank == 0:
            logger.warning("%s: written under %s, loaded under %s: weights and optimizer state resharded, RNG states "
                           "not restored", path, written_under, self.parallel_layout())
        sharded = self.optimizer.sharded_state_dict(self.gpt.sharded_state_dict(), is_loading=True)
        self.optimizer.load_state_dict(dist_checkpointing.load(sharded, str(src / "optimizer")))
        self.version, self.optimizer_steps = state["version"], state["optimizer_steps"]
        self._recast_fp8_weights()
        _wait(refs)
