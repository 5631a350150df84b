"""Prompt dataset: jsonl or parquet rows -> prompt text, prompt tokens and label, in a resumable order."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from async_rl.errors import UserInputError

logger = logging.getLogger(__name__)


class DatasetError(UserInputError):
    """A missing file or a malformed row; the message names the file and line."""


@dataclass
class PromptRow:
    prompt: str
    prompt_tokens: list[int]
    label: str | None
    metadata: dict[str, Any]


def read_rows(path: str, *, skip_bad_rows: bool = False) -> tuple[list[tuple[int, dict[str, Any]]], list[int]]:
    """Rows of a .jsonl or .parquet file, each a dict with its number (the line of a .jsonl file, the row of a
    .parquet one, the number every message about the row uses), and the numbers of the malformed lines skipped.

    A malformed line is an error naming file and line, or, with `skip_bad_rows`, skipped for the caller to report
    (the start-up check and the loader both read the file; the loader says it once).
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{path}: file not found")
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except pa.ArrowException as e:
            raise DatasetError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
        return list(enumerate(table.to_pylist(), start=1)), []
    rows, bad = [], []
    with p.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problem = None if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"
            except json.JSONDecodeError as e:
                problem = f"not valid JSON ({e.msg})"
            if problem is None:
                rows.append((line_no, row))
            elif skip_bad_rows:
                bad.append(line_no)
            else:
                raise DatasetError(f"{path}:{line_no}: {problem} (--skip-bad-rows skips such lines)")
    return rows, bad


def row_fields(row: dict[str, Any], where: str, input_key: str, label_key: str | None,
               apply_chat_template: bool) -> tuple[Any, str | None]:
    """The row's prompt (text, or chat messages with `apply_chat_template`) and label, or a DatasetError naming
    `where` and the flag that would fix it."""
    if input_key not in row:
        raise DatasetError(f"{where}: missing input key '{input_key}' (have: {', '.join(row)}; --input-key)")
    prompt = row[input_key]
    if not apply_chat_template and not isinstance(prompt, str):
        raise DatasetError(f"{where}: '{input_key}' is not text; pass --apply-chat-template for chat messages")
    label = row.get(label_key) if label_key else None
    if label_key and label is None:
        raise DatasetError(f"{where}: missing label key '{label_key}' (--label-key)")
    return prompt, None if label is None else str(label)


def check_prompt_file(path: str, *, input_key: str, label_key: str | None, apply_chat_template: bool,
                      skip_bad_rows: bool) -> None:
    """What loading the file would refuse, without a tokenizer: a start's and a dry run's check alike."""
    usable = 0
    for row_no, row in read_rows(path, skip_bad_rows=skip_bad_rows)[0]:
        try:
            row_fields(row, f"{path}:{row_no}", input_key, label_key, apply_chat_template)
            usable += 1
        except DatasetError:
            if not skip_bad_rows:
                raise
    if not usable:
        raise DatasetError(f"{path}: no rows")


class PromptDataset:
    """Tokenised prompts with an epoch-wise deterministic shuffle and a saveable position."""

    def __init__(
        self,
        path: str,
        tokenizer: Any,
        *,
        input_key: str = "prompt",
        label_key: str | None = "label",
        apply_chat_template: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        skip_bad_rows: bool = False,
        max_prompt_tokens: int | None = None,
    ):
        self.path = path
        self.shuffle = shuffle
        self.seed = seed
        self.rows, skipped = [], []
        numbered, bad = read_rows(path, skip_bad_rows=skip_bad_rows)
        if bad:
            logger.warning("%s: skipped %d malformed line(s): %s", path, len(bad), ", ".join(map(str, bad[:20])))
        for row_no, row in numbered:
            try:
                self.rows.append(self._to_prompt_row(row, row_no, tokenizer, input_key, label_key, apply_chat_template))
            except DatasetError as e:
                if not skip_bad_rows:
                    raise
                skipped.append(str(e))
        if skipped:
            logger.warning("%s: skipped %d row(s) without the expected fields, first: %s", path, len(skipped), skipped[0])
        if max_prompt_tokens is not None:
            kept = [r for r in self.rows if len(r.prompt_tokens) <= max_prompt_tokens]
            if len(kept) < len(self.rows):
                logger.warning("%s: dropped %d of %d prompts longer than %d tokens (--rollout-max-context-len leaves "
                               "no room for a response)", path, len(self.rows) - len(kept), len(self.rows), max_prompt_tokens)
            self.rows = kept
        if not self.rows:
            raise DatasetError(f"{path}: no rows")
        self.epoch = 0
        self.offset = 0
        self._order = self._epoch_order()

    def _to_prompt_row(self, row, row_no, tokenizer, input_key, label_key, apply_chat_template) -> PromptRow:
        prompt, label = row_fields(row, f"{self.path}:{row_no}", input_key, label_key, apply_chat_template)
        if apply_chat_template:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        metadata = {k: v for k, v in row.items() if k not in (input_key, label_key)}
        tokens = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return PromptRow(prompt, tokens, label, metadata)

    def __len__(self) -> int:
        return len(self.rows)

    def _epoch_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))

    def next_batch(self, n: int) -> list[PromptRow]:
        """The next n prompts, wrapping into a new (reshuffled) epoch when the current one runs out."""
        batch = []
        while len(batch) < n:
            if self.offset == len(self.rows):
                self.epoch += 1
                self.offset = 0
                self._order = self._epoch_order()
            batch.append(self.rows[self._order[self.offset]])
            self.offset += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._epoch_order()
