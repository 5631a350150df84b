"""A two-turn rollout with a calculator tool, on the embedded arithmetic task (`12+34=`).

    --custom-generate-function-path async_rl.rollout.examples.calculator_tool:generate

Turn 1: the policy reasons until it closes its `</think>`. The tool: a Python calculator evaluates the prompt's
expression, and its answer is appended as an observation, which later turns see and training skips (loss mask 0).
Turn 2: the policy writes its final answer. A policy that never closes its reasoning gets no tool call.
"""

from __future__ import annotations

import ast
import operator

from async_rl.rollout.custom_generate import EngineClient, with_stop_tokens
from async_rl.rollout.engine import SamplingParams
from async_rl.sample import Sample, SampleStatus

THINK_END = "</think>"
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_MAX_CHARS, _MAX_MAGNITUDE = 64, 10**18


def calculate(expression: str) -> str:
    """Integer +, - and * only, on short expressions with bounded numbers; anything else is an error string."""
    if len(expression) > _MAX_CHARS:
        return "error: expression too long"
    try:
        value = _evaluate(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError) as e:
        return f"error: {e}"
    return str(value)


def _evaluate(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        value = node.value
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = -_evaluate(node.operand)
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        value = _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    else:
        raise ValueError(f"unsupported {type(node).__name__}")
    if abs(value) > _MAX_MAGNITUDE:
        raise ValueError("number out of range")
    return value


async def generate(client: EngineClient, sample: Sample, params: SamplingParams) -> Sample:
    think_end = client.tokenizer.convert_tokens_to_ids(THINK_END)
    await client.generate(sample, with_stop_tokens(params, think_end))
    if sample.status != SampleStatus.COMPLETED or sample.response_tokens[-1] != think_end:
        return sample  # ended (EOS) or ran out of budget without asking for the tool
    expression = sample.prompt.rstrip().rstrip("=")
    client.append_observation(sample, f"[calculator: {expression} = {calculate(expression)}]")
    return await client.generate(sample, params)
