"""How a training batch reaches a group of trainer ranks: by value through rank 0, or by reference.

    by value      the batch is an argument of the call to rank 0, which cuts it into data-parallel shards and
                  sends each peer its shard as an argument of its call (the hand-off before `ShardedBatch`)
    by reference  the driver puts one object per shard into Ray's object store and hands rank 0 the references;
                  rank 0 hands its peers the same references, and each rank fetches its own shard

A megatron group of `--ranks` CPU ranks (gloo, data-parallel) trains one step on `--samples` samples of
`--response-tokens` tokens each, a step per hand-off, alternated `--repeats` times. Bytes are the pickled sizes of
what each process serializes for each hop (what Ray copies into a call or into the object store).

    python benchmarks/bench_batch_handoff.py --hf-checkpoint outputs/tiny_model --ranks 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray
from ray import cloudpickle

from async_rl.backends.megatron.actor_group import create_megatron_group
from async_rl.backends.megatron.trainer import shard_rows
from async_rl.config.sections import MegatronConfig, TrainConfig
from async_rl.placement import in_bundle, init_loopback_ray, reserve_trainer_bundles
from async_rl.sample import Sample, SampleStatus
from async_rl.trainer.sharded_batch import ShardedBatch


def synthetic_batch(n: int, prompt_tokens: int, response_tokens: int, vocab: int) -> tuple[list[Sample], list[float]]:
    samples = []
    for i in range(n):
        tokens = [(7 * i + 13 * j) % (vocab - 2) + 1 for j in range(response_tokens)]
        samples.append(Sample(prompt="p", prompt_tokens=[(i + j) % (vocab - 2) + 1 for j in range(prompt_tokens)],
                              group_id=i // 8, response_tokens=tokens, response="r",
                              rollout_log_probs=[-1.0] * response_tokens, loss_mask=[1] * response_tokens,
                              status=SampleStatus.COMPLETED))
    return samples, [1.0 if i % 2 else -1.0 for i in range(n)]


def size(obj) -> int:
    return len(cloudpickle.dumps(obj))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hf-checkpoint", required=True)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--response-tokens", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(args.hf_checkpoint).vocab_size
    samples, advantages = synthetic_batch(args.samples, args.prompt_tokens, args.response_tokens, vocab)
    init_loopback_ray(num_cpus=args.ranks + 1)
    try:
        bundles = reserve_trainer_bundles(args.ranks, gpus=0)
        rank_options = [{"num_cpus": 1, "scheduling_strategy": in_bundle(bundles, r)} for r in range(args.ranks)]
        cfg = TrainConfig(lr=1e-6, micro_batch_size=4)
        rank0 = create_megatron_group(args.hf_checkpoint, cfg, MegatronConfig(), rank_options=rank_options,
                                      global_batch_size=args.samples, temperature=1.0, seed=0, num_threads=1)
        rows = shard_rows(samples, args.samples, args.ranks, balance=False)
        shards = [([samples[i] for i in part], [advantages[i] for i in part]) for part in rows]
        batch = ShardedBatch.put(samples, advantages, rows)
        whole = size((samples, advantages))
        bytes_by_mode = {
            "by value": {"driver call": whole, "driver puts": 0, "rank 0 receives": whole,
                         "rank 0 sends on": sum(size(s) for s in shards[1:]), "a rank fetches": size(shards[1])},
            "by reference": {"driver call": size(batch), "driver puts": sum(size(s) for s in shards),
                             "rank 0 receives": size(batch), "rank 0 sends on": (args.ranks - 1) * size(batch),
                             "a rank fetches": size(shards[1])},
        }
        calls = {"by value": lambda: rank0.train_step.remote(samples, advantages),
                 "by reference": lambda: rank0.train_sharded.remote(
                     ShardedBatch.put(samples, advantages, shard_rows(samples, args.samples, args.ranks, False)))}
        ray.get(calls["by reference"]())  # warm-up: first-step allocations
        times: dict[str, list[float]] = {mode: [] for mode in calls}
        for _ in range(args.repeats):
            for mode, call in calls.items():
                start = time.perf_counter()
                ray.get(call())
                times[mode].append(time.perf_counter() - start)
    finally:
        ray.shutdown()

    columns = list(bytes_by_mode["by value"])
    print(f"{args.ranks} ranks, {args.samples} samples x ({args.prompt_tokens} + {args.response_tokens}) tokens, "
          f"median of {args.repeats} steps")
    print("| hand-off | " + " | ".join(f"{c} (MB)" for c in columns) + " | step time (s) |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for mode, counts in bytes_by_mode.items():
        print(f"| {mode} | " + " | ".join(f"{counts[c] / 1e6:.3f}" for c in columns)
              + f" | {statistics.median(times[mode]):.2f} |")
    ratio = statistics.median(times["by value"]) / statistics.median(times["by reference"])
    print(f"step time by value / by reference: {ratio:.2f}x")


if __name__ == "__main__":
    main()
