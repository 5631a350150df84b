"""The megatron trainer as a Ray actor group: one actor per rank, each in its bundle of the trainer's placement
group, joined by torch.distributed.

Rank 0's node and a free port on it are the rendezvous address; every rank joins from its constructor,
then rank 0 is handed the others and speaks for the group.
"""

from __future__ import annotations

from typing import Any

import ray

from async_rl.config.sections import MegatronConfig, TrainConfig
from async_rl.net import free_port, node_address


def _rendezvous_address(single_machine: bool) -> tuple[str, int]:
    return node_address(single_machine), free_port()


def create_megatron_group(
    hf_checkpoint: str, train: TrainConfig, mcfg: MegatronConfig, *, rank_options: list[dict[str, Any]],
    global_batch_size: int, temperature: float, seed: int, num_threads: int | None, single_machine: bool = True,
    total_optimizer_steps: int = 1,
) -> Any:
    """Start one MegatronTrainer actor per entry of `rank_options` (Ray options: resources and bundle); returns
    rank 0, already connected to the others."""
    from async_rl.backends.megatron.trainer import MegatronTrainer

    world_size = len(rank_options)
    find_address = ray.remote(num_cpus=0)(_rendezvous_address).options(scheduling_strategy=rank_options[0]["scheduling_strategy"])
    addr, port = ray.get(find_address.remote(single_machine))
    ranks = [
        ray.remote(MegatronTrainer).options(**rank_options[rank]).remote(
            hf_checkpoint, train, mcfg, global_batch_size=global_batch_size, temperature=temperature, seed=seed,
            rank=rank, world_size=world_size, master_addr=addr, master_port=port, num_threads=num_threads,
            total_optimizer_steps=total_optimizer_steps,
        )
        for rank in range(world_size)
    ]
    ray.get(ranks[0].connect.remote(ranks[1:]))
    return ranks[0]
