"""Build the embedded default's policy: a tiny Qwen2 model and tokenizer, SFT-warmed on arithmetic.

Responses look like a reasoning model's, `<think>a+b=c</think>\\boxed{c}`, so the deepscaler reward applies
as is. SFT stops early on purpose: the policy is right sometimes, not always, which leaves RL room to
improve it. Everything is built here; nothing is downloaded.

    python tools/make_tiny_model.py --output-dir outputs/tiny_model
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REASONING_TOKENS = ["<think>", "</think>", "\\boxed{"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer with whole tokens for the reasoning markers."""
    specials = [EOS, "<|im_start|>", "<|im_end|>", "<unk>"]
    chars = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate(specials + REASONING_TOKENS + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token=EOS, unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_tokens(REASONING_TOKENS)
    return tokenizer


def noisy_answer(answer: str, error_rate: float, rng: random.Random) -> str:
    """The answer, or with probability `error_rate` the answer with one digit changed (a plausible slip)."""
    if rng.random() >= error_rate:
        return answer
    i = rng.randrange(len(answer))
    wrong = rng.choice([d for d in string.digits if d != answer[i]])
    return answer[:i] + wrong + answer[i + 1 :]


def solution(prompt: str, answer: str) -> str:
    return f"<think>{prompt}{answer}</think>\\boxed{{{answer}}}"


def write_prompts(path: Path, problems: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for prompt, label in problems:
            f.write(json.dumps({"prompt": prompt, "label": label}) + "\n")


def split_problems(seed: int, n_eval: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """All a+b problems, split into disjoint train and eval sets."""
    problems = [(f"{a}+{b}=", str(a + b)) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(problems)
    return problems[n_eval:], problems[:n_eval]


def sft(model, tokenizer, train_problems, *, steps: int, batch_size: int, lr: float, error_rate: float, seed: int) -> None:
    """Teacher-forced next-token loss on the response tokens of a teacher that slips at `error_rate`."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    eos = tokenizer.eos_token_id
    model.train()
    bar = tqdm(range(steps), desc="SFT warm-up")
    for _ in bar:
        rows, targets = [], []
        for prompt, answer in rng.sample(train_problems, batch_size):
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            r = tokenizer(solution(prompt, noisy_answer(answer, error_rate, rng)), add_special_tokens=False)["input_ids"] + [eos]
            rows.append(p + r)
            targets.append([-100] * len(p) + r)
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
        labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")


def build(
    output_dir: str, *, sft_steps: int, error_rate: float, seed: int, hidden_size: int, num_layers: int, n_eval: int
) -> None:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, rope_theta=10000.0,
    )
    model = Qwen2ForCausalLM(config)
    train_problems, eval_problems = split_problems(seed, n_eval)
    start = time.time()
    sft(model, tokenizer, train_problems, steps=sft_steps, batch_size=64, lr=3e-3, error_rate=error_rate, seed=seed)
    print(f"SFT: {sft_steps} steps in {time.time() - start:.0f}s")

    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    write_prompts(staging / "data" / "train.jsonl", train_problems)
    write_prompts(staging / "data" / "eval.jsonl", eval_problems)
    os.replace(staging, out)  # a half-built model never sits at the output path
    print(f"tiny model, tokenizer and prompts written to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--sft-steps", type=int, default=1500)
    parser.add_argument("--teacher-error-rate", type=float, default=0.6,
                        help="Fraction of SFT answers with one digit wrong: the warm policy is right only sometimes.")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if Path(args.output_dir).exists():
        parser.error(f"--output-dir {args.output_dir} already exists; remove it to rebuild")
    build(args.output_dir, sft_steps=args.sft_steps, error_rate=args.teacher_error_rate, seed=args.seed, hidden_size=args.hidden_size,
          num_layers=args.num_layers, n_eval=args.n_eval)


if __name__ == "__main__":
    main()
