"""The project's deepscaler reward in the form verl's `reward.custom_reward_function` calls."""

from rewards.deepscaler import score


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    return score(solution_str, ground_truth)
