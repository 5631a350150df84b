"""An example reward plugin, loaded with `--custom-rm-path rewards.example_plugin:boxed_answer_with_format`.

It grades like deepscaler and also reports whether the response followed the expected format; the extra
field is logged as `rollout/reward_format_ok_mean`.
"""

from __future__ import annotations

from rewards import deepscaler


def boxed_answer_with_format(sample) -> dict:
    format_ok = sample.response.lstrip().startswith("<think>") and "</think>" in sample.response
    return {"score": deepscaler.score(sample.response, sample.label or ""), "format_ok": float(format_ok)}
