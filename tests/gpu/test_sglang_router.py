"""Several SGLang engines behind sglang-router: each registers its server, and requests sent to the router reach all.

Two engines share the one GPU (0.3 of its memory each); run with `pytest -m gpu tests/gpu`.
"""

import importlib.util

import pytest
import torch

from async_rl.backends.sglang.engine import SGLangEngine
from async_rl.backends.sglang.http_client import HttpClient
from async_rl.backends.sglang.router import SGLangRouter
from tests.gpu.conftest import SGLANG_SERVER

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or None in (importlib.util.find_spec("sglang"),
                                                                 importlib.util.find_spec("sglang_router")),
                       reason="needs a CUDA GPU, sglang and sglang-router"),
]


def prompt_tokens_served(engine: SGLangEngine) -> float:
    """SGLang's own counter of prompt tokens it has processed (`/metrics`, Prometheus text format)."""
    text = engine.client.get_text("/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("sglang:prompt_tokens_total"))


def test_requests_through_the_router_reach_every_registered_engine(sglang_models):
    router = SGLangRouter("127.0.0.1", policy="round_robin")
    engines: list[SGLangEngine] = []
    try:
        for seed in (0, 1):
            engines.append(SGLangEngine(str(sglang_models / "bf16"), seed=seed, router_url=router.url, enable_metrics=True,
                                        **SGLANG_SERVER))
        print("router /workers:", router.client.get("/workers"))
        assert router.worker_urls() == {e.url for e in engines}
        before = [prompt_tokens_served(e) for e in engines]
        client = HttpClient(router.url, max_concurrency=8)
        prompts = [engines[0].tokenizer(f"{a}+{a + 3}=")["input_ids"] for a in range(16)]
        outputs = client.post_many("/generate", [
            {"input_ids": p, "sampling_params": {"temperature": 0.0, "max_new_tokens": 8}, "return_logprob": True}
            for p in prompts
        ])
        client.close()
        served = [prompt_tokens_served(e) - b for e, b in zip(engines, before)]
        print(f"prompt tokens served per engine: {served}")
        assert all(len(o["meta_info"]["output_token_logprobs"]) > 0 for o in outputs)
        assert all(s > 0 for s in served) and sum(served) >= sum(len(p) for p in prompts)
    finally:
        for engine in engines:
            engine.shutdown()
        router.stop()
