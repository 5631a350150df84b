"""What a start (and --dry-run) finds wrong before anything launches, one line per problem naming the flag."""

from async_rl.config import parse_config
from async_rl.startup_checks import startup_problems


def problems(tiny_model, tmp_path, *flags):
    cfg, _ = parse_config(["--hf-checkpoint", str(tiny_model), "--prompt-data", str(tiny_model / "data" / "train.jsonl"),
                           "--output-dir", str(tmp_path / "run"), *flags])
    return startup_problems(cfg)


def test_a_good_configuration_has_no_problems(tiny_model, tmp_path):
    assert problems(tiny_model, tmp_path, "--dynamic-sampling-filter-path",
                    "async_rl.rollout.filters.check_reward_nonzero_std") == []


def test_each_problem_is_one_line_naming_its_flag(tiny_model, tmp_path):
    not_a_checkpoint = tmp_path / "elsewhere"
    not_a_checkpoint.mkdir()
    (not_a_checkpoint / "notes.txt").write_text("")
    found = problems(tiny_model, tmp_path, "--rm-type", "nope", "--eval-prompt-data", "aime", str(tmp_path / "aime.jsonl"),
                     "--dynamic-sampling-filter-path", "no_such_module.fn", "--load", str(not_a_checkpoint))
    assert len(found) == 4 and all("\n" not in p for p in found)
    assert found[0] == f"--eval-prompt-data {tmp_path / 'aime.jsonl'}: file not found"
    assert found[1].startswith("--rm-type: unknown reward 'nope'")
    assert found[2].startswith("--dynamic-sampling-filter-path: cannot import module 'no_such_module'")
    assert found[3] == f"--load: {not_a_checkpoint} is incomplete (no driver_state.json)"


def test_a_custom_tis_function_that_does_not_load_is_named(tiny_model, tmp_path):
    assert problems(tiny_model, tmp_path, "--use-tis", "--custom-tis-function-path",
                    "tests.plugins.tis_functions:halve") == []
    (found,) = problems(tiny_model, tmp_path, "--use-tis", "--custom-tis-function-path", "tests.plugins.tis_functions:nope")
    assert found == "--custom-tis-function-path: module 'tests.plugins.tis_functions' has no attribute 'nope'"


def test_bad_prompt_files_and_a_missing_package_are_all_reported_at_once(tiny_model, tmp_path):
    """What a start refuses, a dry run reports too, every problem in one pass: malformed JSON, rows without the
    --input-key field, an empty file, --use-wandb without wandb."""
    import importlib.util

    malformed, wrong_keys, empty = tmp_path / "malformed.jsonl", tmp_path / "keys.jsonl", tmp_path / "empty.jsonl"
    malformed.write_text('{"prompt": "1+1=", "label": "2"}\n{"prompt": \n')
    wrong_keys.write_text('{"question": "1+1=", "label": "2"}\n')
    empty.write_text("")
    found = problems(tiny_model, tmp_path, "--prompt-data", str(malformed), "--eval-prompt-data", "keys",
                     str(wrong_keys), "empty", str(empty), "--use-wandb")
    expected = [
        f"--prompt-data {malformed}:2: not valid JSON",
        f"--eval-prompt-data {wrong_keys}:1: missing input key 'prompt' (have: question, label; --input-key)",
        f"--eval-prompt-data {empty}: no rows",
    ] + ([] if importlib.util.find_spec("wandb") else ["--use-wandb needs the wandb package"])
    assert len(found) == len(expected), found
    assert all(line.startswith(start) for line, start in zip(found, expected)), found


def test_a_dry_run_and_a_start_refuse_the_same_file_with_the_same_line(tiny_model, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO, run_flags

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1=", "label": "2"}\n')
    flags = run_flags(tiny_model, tmp_path / "run", "--prompt-data", str(bad), evaluate=False)
    lines = []
    for mode in (["--dry-run"], []):
        result = subprocess.run([sys.executable, "-m", "async_rl.train", *flags, *mode], cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        lines.append([line for line in result.stderr.splitlines() if line.startswith("async_rl.train: error:")])
    assert lines[0] == lines[1] == [f"async_rl.train: error: --prompt-data {bad}:1: missing input key 'prompt' "
                                    f"(have: question, label; --input-key)"]


def test_skipped_lines_are_reported_by_the_loader_alone(tiny_model, tmp_path, caplog):
    """The check reads the file too: with --skip-bad-rows it stays silent, so a start says "skipped" once."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "label": "2"}\n{"prompt": \n')
    assert problems(tiny_model, tmp_path, "--prompt-data", str(bad), "--skip-bad-rows") == []
    assert "skipped" not in caplog.text
