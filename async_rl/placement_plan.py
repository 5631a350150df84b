"""Which GPU on which node does what: computed from the cluster flags before anything starts.

Trainer ranks take GPUs 0..actor_num_gpus_per_node-1 on nodes 0..actor_num_nodes-1, in Megatron's rank
order (tensor-parallel fastest, then context, data, pipeline). Colocated engines share the trainer's
GPUs; otherwise `--rollout-num-gpus` engines fill the GPUs the trainer leaves free, node by node (each
node has `--num-gpus-per-node`), an engine never spanning two nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from async_rl.config import Config, ConfigError


@dataclass
class PlacementPlan:
    gpus_per_node: int
    roles: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # (node, gpu) -> what runs there
    trainer_gpus: int = 0
    rollout_gpus: int = 0
    engines: int = 0
    weight_sync: str = ""
    cpu_note: str = ""

    @property
    def nodes(self) -> int:
        return 1 + max((node for node, _ in self.roles), default=0)

    def render(self) -> str:
        if self.cpu_note:
            return f"placement plan: {self.cpu_note}"
        lines = [
            f"placement plan: {self.nodes} node(s) x {self.gpus_per_node} GPUs; trainer {self.trainer_gpus} GPUs, "
            f"rollout {self.rollout_gpus} GPUs in {self.engines} engine(s) of {self.rollout_gpus // max(self.engines, 1)}"
        ]
        for node in range(self.nodes):
            lines.append(f"  node {node}:")
            for gpu in range(self.gpus_per_node):
                lines.append(f"    gpu {gpu}: " + (" + ".join(self.roles.get((node, gpu), [])) or "idle"))
        lines.append(f"  weight sync: {self.weight_sync}")
        return "\n".join(lines)


def plan_placement(cfg: Config) -> PlacementPlan:
    c, m = cfg.cluster, cfg.megatron
    if c.actor_num_gpus_per_node == 0:
        return PlacementPlan(0, cpu_note=f"CPU only: 1 trainer process, {c.rollout_num_engines} rollout engine process(es)")
    if c.actor_num_gpus_per_node > c.num_gpus_per_node:
        raise ConfigError(f"--actor-num-gpus-per-node {c.actor_num_gpus_per_node} exceeds --num-gpus-per-node {c.num_gpus_per_node}")
    per_engine = c.rollout_num_gpus_per_engine
    if c.num_gpus_per_node % per_engine:
        raise ConfigError(f"--rollout-num-gpus-per-engine {per_engine} must divide --num-gpus-per-node {c.num_gpus_per_node}")
    plan = PlacementPlan(c.num_gpus_per_node)
    world = c.actor_num_nodes * c.actor_num_gpus_per_node
    tp, cp, pp = m.tensor_model_parallel_size, m.context_parallel_size, m.pipeline_model_parallel_size
    dp = world // (tp * cp * pp)
    trainer_slots = [(node, gpu) for node in range(c.actor_num_nodes) for gpu in range(c.actor_num_gpus_per_node)]
    for rank, slot in enumerate(trainer_slots):
        plan.roles[slot] = [f"trainer rank {rank} (tp {rank % tp}/{tp} cp {rank // tp % cp}/{cp} "
                            f"dp {rank // (tp * cp) % dp}/{dp} pp {rank // (tp * cp * dp)}/{pp})"]
    plan.trainer_gpus = world

    if c.colocate:
        if world % per_engine:
            raise ConfigError(f"--rollout-num-gpus-per-engine {per_engine} must divide the {world} colocated trainer GPUs")
        engine_slots = [trainer_slots[i:i + per_engine] for i in range(0, world, per_engine)]
    else:
        if c.rollout_num_gpus is None:
            raise ConfigError("rollout engines need GPUs: set --rollout-num-gpus, or --colocate to share the trainer's")
        engine_slots = _free_blocks(plan, c.rollout_num_gpus // per_engine, per_engine, c.num_gpus_per_node)
    for engine, slots in enumerate(engine_slots):
        for tp_rank, slot in enumerate(slots):
            plan.roles.setdefault(slot, []).append(f"engine {engine} (tp {tp_rank}/{per_engine})")
    plan.engines = len(engine_slots)
    plan.rollout_gpus = plan.engines * per_engine
    if cfg.weight_update_mode == "distributed":
        plan.weight_sync = (f"the first trainer rank broadcasts buckets to {plan.engines * per_engine} engine rank(s) over "
                            f"{cfg.rollout.update_weight_group_backend} (--update-weight-mode distributed)")
    else:
        plan.weight_sync = "buckets through Ray's object store, loaded by each engine (--update-weight-mode tensor)"
    return plan


def _free_blocks(plan: PlacementPlan, count: int, size: int, gpus_per_node: int) -> list[list[tuple[int, int]]]:
    """`count` blocks of `size` free GPUs, each on one node, taken node by node."""
    blocks: list[list[tuple[int, int]]] = []
    node = 0
    while len(blocks) < count:
        free = [(node, gpu) for gpu in range(gpus_per_node) if (node, gpu) not in plan.roles]
        blocks += [free[i:i + size] for i in range(0, len(free) - size + 1, size)][: count - len(blocks)]
        node += 1
    return blocks
