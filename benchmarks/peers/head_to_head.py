"""async_rl against its peers on one GPU, one system after another: the same SFT'd addition model, prompts,
deepscaler reward, batch shape, sampling, learning rate and step count (`workload.Workload`). Prints one table.

    python benchmarks/peers/head_to_head.py --output-dir OUT [--systems async_rl verl] [--num-rollout 24]

The model is built once (`tools/make_tiny_model.py`, SFT'd on the GPU, as `benchmarks/gpu_learning_run.py`
builds it) and reused by every system. A system that fails is reported with the end of its log; the others run.
verl must be importable (`bundle_verl.sh` makes an offline bundle of it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "tools"), str(REPO / "benchmarks")]

import async_rl_run  # noqa: E402
import verl_run  # noqa: E402
from gpu_learning_run import MODEL  # noqa: E402
from make_tiny_model import build  # noqa: E402
from workload import Workload, print_table  # noqa: E402

SYSTEMS = {"async_rl": async_rl_run.run, "verl": verl_run.run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--num-rollout", type=int, default=Workload.num_rollout)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop each system after this many seconds and report the steps it finished")
    args = parser.parse_args()
    workload = dataclasses.replace(Workload(), num_rollout=args.num_rollout)
    model = args.output_dir / "model"
    if not model.is_dir():
        start = time.perf_counter()
        accuracy = build(str(model), seed=1, **MODEL["gpu"])
        print(f"SFT model built in {time.perf_counter() - start:.0f} s: {json.dumps(accuracy)}", flush=True)
    results, failures = [], {}
    for system in args.systems:
        start = time.perf_counter()
        try:
            results.append(SYSTEMS[system](workload, model, args.output_dir / system, args.seed, [], args.budget_s))
            print(f"[{system}] done in {time.perf_counter() - start:.0f} s", flush=True)
            print_table(results)
        except RuntimeError as e:
            failures[system] = str(e)
            print(f"[{system}] failed after {time.perf_counter() - start:.0f} s: {e}", flush=True)
    print(f"\n{workload}\n")
    if results:
        print_table(results)
    if failures:
        raise SystemExit(f"failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
