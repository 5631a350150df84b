"""`--rm-type remote_rm --rm-url URL`: a reward model served over HTTP, called the way slime calls one.

Each sample is one POST of {"prompt", "response", "label", "metadata"}; the server answers with a number, or a
JSON object holding a "score" (its other keys are logged). At most --rm-max-concurrency requests of a batch are in
flight at once. A refused connection or a 5xx answer is retried with exponential backoff, up to --rm-max-retries
more times, within the grader's --reward-timeout per sample; what still fails scores --reward-default and is
counted, and the grader's one warning line names the URL.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import aiohttp

BACKOFF_S = 0.1  # the first retry's wait; doubled each time, capped at BACKOFF_CAP_S
BACKOFF_CAP_S = 2.0
_limits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its concurrency semaphore


class RewardServerError(RuntimeError):
    pass


def _limit(concurrency: int) -> asyncio.Semaphore:
    """One semaphore per event loop: the grader runs each batch on a loop of its own."""
    loop = asyncio.get_running_loop()
    if loop not in _limits:
        _limits[loop] = asyncio.Semaphore(concurrency)
    return _limits[loop]


async def remote_rm(args: Any, sample: Any) -> float | dict:
    payload = {"prompt": sample.prompt, "response": sample.response, "label": sample.label,
               "metadata": sample.metadata}
    async with _limit(args.rm_max_concurrency):
        for attempt in range(args.rm_max_retries + 1):
            try:
                async with aiohttp.ClientSession() as session, session.post(args.rm_url, json=payload) as answer:
                    if answer.status < 500:
                        if answer.status != 200:
                            raise RewardServerError(f"{args.rm_url} answered HTTP {answer.status}")
                        return await answer.json(content_type=None)
                    reason = f"HTTP {answer.status}"
            except aiohttp.ClientConnectionError as e:
                reason = f"{type(e).__name__}: {e}"
            if attempt < args.rm_max_retries:
                await asyncio.sleep(min(BACKOFF_S * 2 ** attempt, BACKOFF_CAP_S))
    raise RewardServerError(f"{args.rm_url}: {reason} ({args.rm_max_retries + 1} tries)")
