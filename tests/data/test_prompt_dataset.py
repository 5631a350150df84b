import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from async_rl.data.prompt_dataset import DatasetError, PromptDataset, read_rows
from tests.conftest import FIXTURES

GSM8K = FIXTURES / "gsm8k_test_head24.jsonl"


def test_jsonl_rows_keep_label_and_metadata(tokenizer):
    ds = PromptDataset(str(GSM8K), tokenizer)
    assert len(ds) == 24
    first = ds.next_batch(1)[0]
    assert first.prompt.startswith("Janet")
    assert first.label == "18"
    assert "solution" in first.metadata
    assert tokenizer.decode(first.prompt_tokens) == first.prompt


def test_parquet_loads_the_same_rows_as_jsonl(tokenizer, tmp_path):
    rows = [row for _, row in read_rows(str(GSM8K))[0]]
    path = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    from_parquet = PromptDataset(str(path), tokenizer)
    from_jsonl = PromptDataset(str(GSM8K), tokenizer)
    assert [r.prompt for r in from_parquet.rows] == [r.prompt for r in from_jsonl.rows]


def test_malformed_line_error_names_file_and_line(tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "1+1=", "label": "2"}\n{"prompt": "2+2=", "label": \n')
    with pytest.raises(DatasetError, match=rf"{path}:2"):
        PromptDataset(str(path), tokenizer)


def test_skip_bad_rows_counts_and_logs_instead_of_stopping(tokenizer, tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "1+1=", "label": "2"}\n{"prompt": \n[1, 2]\n{"prompt": "2+2=", "label": "4"}\n')
    with path.open("a") as f:
        f.write('{"question": "3+3=", "label": "6"}\n')
    ds = PromptDataset(str(path), tokenizer, skip_bad_rows=True)
    assert [r.label for r in ds.rows] == ["2", "4"]
    assert "skipped 2 malformed line(s): 2, 3" in caplog.text
    assert f"skipped 1 row(s) without the expected fields, first: {path}:5: missing input key" in caplog.text


def test_prompts_without_room_for_a_response_are_counted_and_logged(tokenizer, tmp_path, caplog):
    path = tmp_path / "lengths.jsonl"
    path.write_text('{"prompt": "1+1=", "label": "2"}\n{"prompt": "' + "12+34=" * 20 + '", "label": "0"}\n')
    ds = PromptDataset(str(path), tokenizer, max_prompt_tokens=10)
    assert [r.label for r in ds.rows] == ["2"]
    assert "dropped 1 of 2 prompts longer than 10 tokens" in caplog.text


def test_missing_keys_name_the_row(tokenizer, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "1+1=", "label": "2"}\n{"question": "2+2=", "label": "4"}\n')
    with pytest.raises(DatasetError, match=rf"{path}:2: missing input key 'prompt'"):
        PromptDataset(str(path), tokenizer)
    with pytest.raises(DatasetError, match=rf"{path}:1: missing label key 'answer'"):
        PromptDataset(str(path), tokenizer, label_key="answer")


def test_missing_file_is_named(tokenizer, tmp_path):
    with pytest.raises(DatasetError, match="nope.jsonl: file not found"):
        PromptDataset(str(tmp_path / "nope.jsonl"), tokenizer)


def test_chat_template_wraps_text_and_message_prompts(tokenizer, tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"prompt": "1+1=", "label": "2"}, {"prompt": [{"role": "user", "content": "2+2="}], "label": "4"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds = PromptDataset(str(path), tokenizer, apply_chat_template=True)
    assert ds.rows[0].prompt == "<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n"
    assert ds.rows[1].prompt.startswith("<|im_start|>user\n2+2=")


def test_shuffle_is_deterministic_by_seed_and_reshuffles_each_epoch(tokenizer):
    def order(seed, n=48):
        return [r.label for r in PromptDataset(str(GSM8K), tokenizer, shuffle=True, seed=seed).next_batch(n)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    first_epoch, second_epoch = order(1)[:24], order(1)[24:]
    assert sorted(first_epoch) == sorted(second_epoch) and first_epoch != second_epoch


def test_position_resumes_exactly(tokenizer):
    full = PromptDataset(str(GSM8K), tokenizer, shuffle=True, seed=3)
    expected = [r.prompt for r in full.next_batch(40)]
    part = PromptDataset(str(GSM8K), tokenizer, shuffle=True, seed=3)
    head = [r.prompt for r in part.next_batch(30)]
    resumed = PromptDataset(str(GSM8K), tokenizer, shuffle=True, seed=3)
    resumed.load_state_dict(part.state_dict())
    assert head + [r.prompt for r in resumed.next_batch(10)] == expected


def test_a_corrupt_parquet_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_text('{"prompt": "1+1?", "label": "2"}\n')  # JSON lines under a .parquet name
    with pytest.raises(DatasetError, match=r"train\.parquet: not a readable parquet file"):
        read_rows(str(path))
