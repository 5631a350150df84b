"""`sglang` rollout backend: one SGLang engine (in-process `sglang.Engine`) behind the `RolloutEngine` interface.

Token ids go in and come out, with the log-prob SGLang sampled each token from (temperature-scaled,
as the trainer recomputes them). Weight updates use SGLang's `update_weights_from_tensor` with CUDA
tensors in Hugging Face names; an FP8 engine takes float8 weights with their float32 scales in its layout
(`weight_scale_inv` per block, `weight_scale` per channel), and anything else sent to its FP8 parameters is
refused here, because SGLang accepts it and then silently generates garbage.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Sequence

import torch

from async_rl.rollout.engine import FINISHED_AT, SamplingParams, WeightVersionMixin
from async_rl.sample import FINISHED_STATUSES, Sample, SampleStatus
from async_rl.rollout import sglang_channel_fp8
from async_rl.weights.fp8 import is_fp8_quantizable, scale_name
from async_rl.weights.sync import from_transport

_FINISH = {"stop": SampleStatus.COMPLETED, "length": SampleStatus.TRUNCATED, "abort": SampleStatus.ABORTED}


class SGLangEngine(WeightVersionMixin):
    def __init__(self, hf_checkpoint: str, *, seed: int = 0, fp8: str | None = None, **server_args: Any):
        """`server_args` are SGLang `ServerArgs` fields (mem_fraction_static, attention_backend, ...).

        `fp8` ("block" or "channel"): the engine serves FP8 linear weights in that layout (from an FP8
        checkpoint of `tools/bf16_cast_fp8.py`, or dummy weights until the first push), so weight pushes must
        carry FP8 pairs of that layout.
        """
        import sglang

        if fp8 == "channel":
            server_args["custom_weight_loader"] = [*server_args.get("custom_weight_loader", []), sglang_channel_fp8.LOAD_FORMAT]
        self.engine = sglang.Engine(model_path=hf_checkpoint, random_seed=seed, **server_args)
        self.tokenizer = self.engine.tokenizer_manager.tokenizer  # None with skip_tokenizer_init (benchmarks)
        self.eos_token_id = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        self.fp8 = fp8
        self.load_format = sglang_channel_fp8.LOAD_FORMAT if fp8 == "channel" else None
        self.weight_version = 0
        self.paused = False
        self._rids: dict[int, list[str]] = {}  # request id -> SGLang rids of its samples

    def generate(self, samples: list[Sample], params: SamplingParams, request_id: int | None = None) -> list[Sample]:
        """Sample responses (continuing partial ones); unfinished samples of an aborted call come back ABORTED."""
        if self.paused:
            raise RuntimeError("engine memory is released; resume() it and push weights before generating")
        todo = [s for s in samples if s.status not in FINISHED_STATUSES]
        if not todo:
            return samples
        rids = [uuid.uuid4().hex for _ in todo]
        if request_id is not None:
            self._rids[request_id] = rids
        try:
            outputs = self.engine.generate(
                input_ids=[s.prompt_tokens + s.response_tokens for s in todo],
                sampling_params=[{
                    "temperature": params.temperature, "top_p": params.top_p,
                    "max_new_tokens": params.max_new_tokens - s.response_length,
                    "stop_token_ids": [self.eos_token_id] if self.eos_token_id is not None else None,
                    "skip_special_tokens": False, "no_stop_trim": True,
                } for s in todo],
                return_logprob=True, rid=rids,
            )
        finally:
            self._rids.pop(request_id, None)
        finished_at = time.time()
        for s, out in zip(todo, outputs):
            new = out["meta_info"]["output_token_logprobs"]  # [(log-prob, token id, text)]
            if s.response_length == 0:
                s.weight_version = self.weight_version
            s.response_tokens = s.response_tokens + [int(t[1]) for t in new]
            s.rollout_log_probs = s.rollout_log_probs + [float(t[0]) for t in new]
            s.loss_mask = [1] * s.response_length
            s.response = self.tokenizer.decode(s.response_tokens, skip_special_tokens=True) if self.tokenizer else ""
            s.status = _FINISH.get(out["meta_info"]["finish_reason"]["type"], SampleStatus.FAILED)
            s.metadata[FINISHED_AT] = finished_at
        return samples

    def abort(self, request_ids: Sequence[int]) -> None:
        for request_id in request_ids:
            for rid in self._rids.get(request_id, []):
                self.engine.tokenizer_manager.abort_request(rid=rid)

    def load_weights(self, named_tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Push one bucket (Hugging Face names) into the engine; FP8 engines only take FP8 pairs."""
        # float8 travels as raw bytes (uint8); nothing else is uint8 in a causal LM
        tensors = [(name, from_transport(t, torch.float8_e4m3fn).cuda()) for name, t in named_tensors]
        if self.fp8:
            check_fp8_bucket(tensors, self.fp8)
        ok, message = self.engine.update_weights_from_tensor(tensors, load_format=self.load_format, flush_cache=True)[:2]
        if not ok:
            raise RuntimeError(f"SGLang refused the weight update: {message}")

    def rng_state(self) -> torch.Tensor:
        """SGLang seeds each request itself; there is no sampling stream to save."""
        return torch.empty(0)

    def load_rng_state(self, state: torch.Tensor) -> None:
        return None

    def pause(self) -> None:
        """Free the GPU memory of weights and KV cache (needs `enable_memory_saver`), for a colocated trainer."""
        self.engine.release_memory_occupation()
        self.paused = True

    def resume(self) -> None:
        """Map the memory back; the weights in it are undefined until the next push."""
        self.engine.resume_memory_occupation()
        self.paused = False

    def health(self) -> dict:
        return {"pid": os.getpid(), "weight_version": self.weight_version, "paused": self.paused}

    def shutdown(self) -> None:
        self.engine.shutdown()


def check_fp8_bucket(tensors: Sequence[tuple[str, torch.Tensor]], granularity: str) -> None:
    """Refuse a bucket an FP8 engine would load wrongly: a quantizable weight must be float8 with its scale."""
    names = {name for name, _ in tensors}
    scale_suffix = scale_name("weight", granularity)
    scales = [(n, t) for n, t in tensors if n.endswith((".weight_scale_inv", ".weight_scale"))]
    for name, tensor in scales:
        if not name.endswith(scale_suffix):
            raise ValueError(f"{name}: the engine holds {granularity}-wise FP8 weights, whose scales are *.{scale_suffix}")
        if tensor.dtype != torch.float32:
            raise ValueError(f"{name}: FP8 scales must be float32, got {tensor.dtype}")
    for name, tensor in tensors:
        if not is_fp8_quantizable(name, tensor):
            continue
        if tensor.dtype != torch.float8_e4m3fn:
            raise ValueError(f"{name}: the engine holds {granularity}-wise FP8 weights but was sent {tensor.dtype} "
                             "(quantize the bucket with async_rl.weights.fp8 first)")
        if scale_name(name, granularity) not in names:
            raise ValueError(f"{name}: FP8 weight sent without its {scale_name(name, granularity)} in the same bucket")
