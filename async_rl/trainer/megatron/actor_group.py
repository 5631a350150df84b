"""The megatron trainer as a Ray actor group: one actor per rank, placed together, joined by torch.distributed.

Ranks are packed onto nodes in order (one bundle per GPU), so tensor-parallel neighbours share a node.
Rank 0's node and a free port on it are the rendezvous address; every rank joins from its constructor,
then rank 0 is handed the others and speaks for the group.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from async_rl.config.sections import MegatronConfig, TrainConfig
from async_rl.net import free_port, node_address


def _rendezvous_address(single_machine: bool) -> tuple[str, int]:
    return node_address(single_machine), free_port()


def create_megatron_group(
    hf_checkpoint: str, train: TrainConfig, mcfg: MegatronConfig, *, world_size: int, gpus_per_rank: int,
    global_batch_size: int, temperature: float, seed: int, num_threads: int | None, single_machine: bool = True,
) -> Any:
    """Start `world_size` MegatronTrainer actors; returns rank 0, already connected to the others."""
    from async_rl.trainer.megatron.trainer import MegatronTrainer

    bundle = {"CPU": 1, "GPU": gpus_per_rank} if gpus_per_rank else {"CPU": 1}
    group = placement_group([bundle] * world_size, strategy="PACK")
    ray.get(group.ready())

    def on(rank: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank)

    addr, port = ray.get(ray.remote(num_cpus=0)(_rendezvous_address).options(scheduling_strategy=on(0)).remote(single_machine))
    actor = ray.remote(num_cpus=1, num_gpus=gpus_per_rank)(MegatronTrainer)
    ranks = [
        actor.options(scheduling_strategy=on(rank)).remote(
            hf_checkpoint, train, mcfg, global_batch_size=global_batch_size, temperature=temperature, seed=seed,
            rank=rank, world_size=world_size, master_addr=addr, master_port=port, num_threads=num_threads,
        )
        for rank in range(world_size)
    ]
    ray.get(ranks[0].connect.remote(ranks[1:]))
    return ranks[0]
