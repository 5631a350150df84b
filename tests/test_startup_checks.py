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
    found = problems(tiny_model, tmp_path, "--rm-type", "nope", "--eval-prompt-data", "aime", str(tmp_path / "aime.jsonl"),
                     "--dynamic-sampling-filter-path", "no_such_module.fn", "--load", str(tmp_path / "nowhere"))
    assert len(found) == 4 and all("\n" not in p for p in found)
    assert found[0] == f"--eval-prompt-data {tmp_path / 'aime.jsonl'}: file not found"
    assert found[1].startswith("--rm-type: unknown reward 'nope'")
    assert found[2].startswith("--dynamic-sampling-filter-path: cannot import module 'no_such_module'")
    assert found[3].startswith("--load: no checkpoint at")
