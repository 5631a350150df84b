"""Build the embedded default's policy: a tiny Qwen2 model and tokenizer, SFT-warmed on arithmetic.

Responses look like a reasoning model's, `<think>7+8=15 3+4+1=8</think>\\boxed{85}`, so the deepscaler reward applies
as is. SFT stops early on purpose: the policy is right sometimes, not always, which leaves RL room to
improve it. Everything is built here; nothing is downloaded.

    python tools/make_tiny_model.py --output-dir outputs/tiny_model
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REASONING_TOKENS = ["<think>", "</think>", "\\boxed{"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges (one token per byte), as Qwen2's tokenizer class expects.

    Any text round-trips; the reasoning markers are single tokens.
    """
    byte_vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token=EOS,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_tokens(REASONING_TOKENS)
    return tokenizer


def worked_solution(a: int, b: int, digits: int = 2, slip_column: int | None = None, slip: int = 0) -> str:
    """Column addition of two `digits`-digit numbers from the ones digit up, as reasoning, then the boxed sum.

    `slip` is added to one column's sum to imitate a careless teacher; the carries and the boxed answer
    follow from the slipped column, so the solution stays self-consistent but wrong.
    """
    steps, out_digits, carry = [], [], 0
    for column, (x, y) in enumerate(zip(reversed(f"{a:0{digits}d}"), reversed(f"{b:0{digits}d}"))):
        total = int(x) + int(y) + carry
        if column == slip_column:
            total = max(0, total + slip)
        steps.append(f"{x}+{y}{f'+{carry}' if carry else ''}={total}")
        out_digits.append(str(total % 10))
        carry = total // 10
    answer = (str(carry) if carry else "") + "".join(reversed(out_digits))
    return f"<think>{' '.join(steps)}</think>\\boxed{{{answer}}}"


def teacher_solution(a: int, b: int, digits: int, error_rate: float, rng: random.Random) -> str:
    if rng.random() >= error_rate:
        return worked_solution(a, b, digits)
    return worked_solution(a, b, digits, slip_column=rng.randrange(digits), slip=rng.choice([-2, -1, 1, 2]))


def write_prompts(path: Path, problems: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for prompt, label in problems:
            f.write(json.dumps({"prompt": prompt, "label": label}) + "\n")


def split_problems(seed: int, n_eval: int, digits: int = 2) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """All a+b problems of two `digits`-digit numbers, split into disjoint train and eval sets."""
    numbers = range(10 ** (digits - 1), 10**digits)
    problems = [(f"{a}+{b}=", str(a + b)) for a in numbers for b in numbers]
    random.Random(seed).shuffle(problems)
    return problems[n_eval:], problems[:n_eval]


def operands(prompt: str) -> tuple[int, int]:
    a, b = prompt.rstrip("=").split("+")
    return int(a), int(b)


def sft(model, tokenizer, train_problems, *, steps: int, batch_size: int, lr: float, error_rate: float, seed: int,
        digits: int, device: torch.device) -> None:
    """Teacher-forced next-token loss on the response tokens of a teacher that slips at `error_rate`."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    eos = tokenizer.eos_token_id
    model.train()
    bar = tqdm(range(steps), desc="SFT warm-up", disable=None)  # no bar in a log file: the summary line says it
    for _ in bar:
        rows, targets = [], []
        for prompt, _ in rng.sample(train_problems, batch_size):
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            r = tokenizer(teacher_solution(*operands(prompt), digits, error_rate, rng), add_special_tokens=False)["input_ids"]
            rows.append(p + r + [eos])
            targets.append([-100] * len(p) + r + [eos])
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows], device=device)
        labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")


@torch.no_grad()
def answer_accuracy(model, tokenizer, problems: list[tuple[str, str]], *, greedy: bool, max_new_tokens: int,
                    seed: int = 0) -> float:
    """Share of `problems` whose boxed answer is right, decoding greedily or sampling at temperature 1."""
    torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _ in problems]
    width = max(map(len, prompts))
    eos = tokenizer.eos_token_id
    input_ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts], device=device)  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=not greedy,
                         temperature=None if greedy else 1.0, top_p=None, top_k=None, pad_token_id=eos)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return sum(text.endswith(f"\\boxed{{{label}}}") for text, (_, label) in zip(texts, problems)) / len(problems)


def build(
    output_dir: str, *, sft_steps: int, error_rate: float, seed: int, hidden_size: int, num_layers: int, n_eval: int,
    digits: int = 2, batch_size: int = 64, lr: float = 3e-3, device: str = "cpu",
) -> dict[str, float]:
    """Build, SFT and save the model with its train/eval prompts; returns its greedy and sampled eval accuracy."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, rope_theta=10000.0,
    )
    model = Qwen2ForCausalLM(config).to(device)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {digits}-digit sums")
    train_problems, eval_problems = split_problems(seed, n_eval, digits)
    start = time.time()
    sft(model, tokenizer, train_problems, steps=sft_steps, batch_size=batch_size, lr=lr, error_rate=error_rate,
        seed=seed, digits=digits, device=torch.device(device))
    print(f"SFT: {sft_steps} steps in {time.time() - start:.0f}s")
    probe = eval_problems[:200]
    max_new_tokens = len(tokenizer(worked_solution(10**digits - 1, 10**digits - 1, digits))["input_ids"]) + 8
    accuracy = {mode: answer_accuracy(model, tokenizer, probe, greedy=mode == "greedy", max_new_tokens=max_new_tokens)
                for mode in ("greedy", "sampled")}
    print(f"eval accuracy after SFT ({len(probe)} prompts): greedy {accuracy['greedy']:.2f}, "
          f"sampled at temperature 1 {accuracy['sampled']:.2f}")

    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    model.to("cpu").save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    write_prompts(staging / "data" / "train.jsonl", train_problems)
    write_prompts(staging / "data" / "eval.jsonl", eval_problems)
    os.replace(staging, out)  # a half-built model never sits at the output path
    print(f"tiny model, tokenizer and prompts written to {out}")
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--sft-steps", type=int, default=800)
    parser.add_argument("--teacher-error-rate", type=float, default=0.6,
                        help="Fraction of SFT answers with one digit wrong: the warm policy is right only sometimes.")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--digits", type=int, default=2, help="Digits of each operand.")
    parser.add_argument("--batch-size", type=int, default=64, help="SFT batch size.")
    parser.add_argument("--lr", type=float, default=3e-3, help="SFT peak learning rate.")
    parser.add_argument("--device", default="cpu", help="Where to SFT (cpu, cuda).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=1,
                        help="PyTorch threads. One by default: on 2 cores, 800 SFT steps take 50 s with one and 46 s "
                             "with two, but two spinning threads beside another job took 4x as long (docs/getting-started.md)")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    if Path(args.output_dir).exists():
        parser.error(f"--output-dir {args.output_dir} already exists; remove it to rebuild")
    build(args.output_dir, sft_steps=args.sft_steps, error_rate=args.teacher_error_rate, seed=args.seed, hidden_size=args.hidden_size,
          num_layers=args.num_layers, n_eval=args.n_eval, digits=args.digits, batch_size=args.batch_size, lr=args.lr,
          device=args.device)


if __name__ == "__main__":
    main()
