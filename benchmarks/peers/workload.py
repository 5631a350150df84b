"""The learning workload every system runs with the same settings, and one result row per system."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Workload:
    """GRPO with clip-higher on the SFT'd addition model, deepscaler reward, synchronous and colocated."""

    num_rollout: int = 24
    rollout_batch_size: int = 32  # prompts per step
    n_samples_per_prompt: int = 8
    max_response_len: int = 64
    temperature: float = 1.0
    lr: float = 7e-5
    eps_clip: float = 0.2
    eps_clip_high: float = 0.28
    eval_interval: int = 4
    n_samples_per_eval_prompt: int = 2
    gpu_memory_fraction: float = 0.2  # the rollout engine's share (SGLang's mem_fraction_static)

    @property
    def samples_per_step(self) -> int:
        return self.rollout_batch_size * self.n_samples_per_prompt


@dataclass
class StepTimes:
    """Seconds per step after warm-up, by phase; phases a system does not have or does not time stay None."""

    step: float
    generation: float | None = None
    log_probs: float | None = None  # old (and reference) log-probs recomputed by the trainer
    training: float | None = None
    weight_update: float | None = None
    memory_moves: float | None = None  # offload / onload, engine memory release / resume


@dataclass
class Result:
    system: str
    times: StepTimes
    samples_per_step: int
    response_tokens_per_step: float
    trained_tokens_per_step: float
    peak_gpu_memory_gib: float | None
    eval_curve: list[tuple[int, float]] = field(default_factory=list)
    note: str = ""
    steps_done: int = 0
    start_up_s: float | None = None  # wall time outside the training steps: imports, engine start, first eval
    stopped: bool = False  # ran into its time budget; its row covers the steps it finished

    @property
    def samples_per_s(self) -> float:
        return self.samples_per_step / self.times.step


def start_up_s(wall_s: float, step_times: list[float]) -> float:
    return wall_s - sum(step_times)


def mean_after_warmup(rows: list[dict], key: str, first_step: int) -> float | None:
    values = [r[key] for r in rows if r.get("step", -1) > first_step and isinstance(r.get(key), (int, float))]
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[Result]) -> None:
    """One table; ratios against the first system of the run."""
    base = results[0]
    print("| system | samples/s | vs " + base.system + " | step s | generation | log-probs | training | weight update | "
          "memory moves | output tok/s | trainer tok/s | peak GPU GiB | eval first | eval last | steps | start-up s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        t = r.times
        out_tok = r.response_tokens_per_step / t.generation if t.generation else None
        train_tok = r.trained_tokens_per_step / t.training if t.training else None
        first = r.eval_curve[0][1] if r.eval_curve else None
        last = r.eval_curve[-1][1] if r.eval_curve else None
        print(f"| {r.system} | {r.samples_per_s:.1f} | {r.samples_per_s / base.samples_per_s:.2f} | {t.step:.2f} | "
              f"{_fmt(t.generation, '.2f')} | {_fmt(t.log_probs, '.2f')} | {_fmt(t.training, '.2f')} | "
              f"{_fmt(t.weight_update, '.2f')} | {_fmt(t.memory_moves, '.2f')} | {_fmt(out_tok, ',.0f')} | "
              f"{_fmt(train_tok, ',.0f')} | {_fmt(r.peak_gpu_memory_gib, '.1f')} | {_fmt(first, '.3f')} | "
              f"{_fmt(last, '.3f')} | {r.steps_done}{' (stopped)' if r.stopped else ''} | {_fmt(r.start_up_s, '.0f')} |")
    for r in results:
        if r.note:
            print(f"- {r.system}: {r.note}")
    for r in results:
        print(f"- {r.system} eval by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in r.eval_curve))
