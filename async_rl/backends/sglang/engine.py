"""`sglang` rollout backend: one SGLang HTTP server per engine actor, driven through SGLang's native HTTP API.

Token ids go in and come out of `/generate`, with the log-prob SGLang sampled each token from
(temperature-scaled, as the trainer recomputes them); a chunk's requests go out concurrently over one
pooled connection. Weight updates arrive one of two ways: `/update_weights_from_tensor`, CUDA tensors in
Hugging Face names handed to the server through CUDA IPC (`load_weights`), or
`/update_weights_from_distributed`, a bucket the trainer broadcasts over a process group the server joined
(`receive_weights`, see `async_rl.weights.transports.nccl_broadcast`). An FP8 engine takes float8 weights with their
float32 scales in its layout (`weight_scale_inv` per block, `weight_scale` per channel), and anything else
sent to its FP8 parameters is refused here, because SGLang accepts it and then silently generates garbage.
After its first push an FP8 engine also checks that it serves in FP8 exactly the layers the push sent in FP8
(`fp8_layers`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn, Sequence

import aiohttp
import ray
import torch

from async_rl.backends.sglang import channel_fp8, fp8_layers
from async_rl.backends.sglang.attention_default import default_attention
from async_rl.backends.sglang.http_client import HttpClient
from async_rl.backends.sglang.router import register_with_router
from async_rl.backends.sglang.server import SGLangServer
from async_rl.net import LOOPBACK, free_port, node_address
from async_rl.rollout.custom_generate import CustomGenerateMixin
from async_rl.rollout.engine import FINISHED_AT, SamplingParams, WeightVersionMixin
from async_rl.sample import FINISHED_STATUSES, Sample, SampleStatus
from async_rl.weights.fp8 import FP8_SCALE_SUFFIXES, is_fp8_quantizable, scale_name
from async_rl.weights.hf_layout import read_hf_config
from async_rl.weights.transports.object_store import from_transport

logger = logging.getLogger(__name__)

_FINISH = {"stop": SampleStatus.COMPLETED, "length": SampleStatus.TRUNCATED, "abort": SampleStatus.ABORTED}


class SGLangEngine(WeightVersionMixin, CustomGenerateMixin):
    def __init__(self, hf_checkpoint: str, *, seed: int = 0, fp8: str | None = None, host: str | None = LOOPBACK,
                 max_concurrent_requests: int = 256, router_url: str | None = None, return_routed_experts: bool = False,
                 **server_args: Any):
        """Start an SGLang server for `hf_checkpoint` on `host` (None: this node's cluster address) and a free port.

        `server_args` are SGLang `ServerArgs` fields (mem_fraction_static, attention_backend, tp_size, ...); with
        no attention backend named, `attention_default` may pick one where SGLang's own pick is not installed.
        `fp8` ("block" or "channel"): the engine serves FP8 linear weights in that layout (from an FP8
        checkpoint of `tools/bf16_cast_fp8.py`, or dummy weights until the first push), so weight pushes must
        carry FP8 pairs of that layout. At most `max_concurrent_requests` generation requests are in flight.
        With `router_url`, the server registers with that sglang-router once it is up. `return_routed_experts`
        (routing replay; needs `enable_return_routed_experts`): samples carry the experts of every token.
        """
        from sglang.srt.server_args import ServerArgs

        if fp8:  # SGLang runs only the custom loaders its server was started with
            loaders = [fp8_layers.LOAD_FORMAT] + ([channel_fp8.LOAD_FORMAT] if fp8 == "channel" else [])
            server_args["custom_weight_loader"] = [*server_args.get("custom_weight_loader", []), *loaders]
        server_args |= default_attention(server_args)
        host = host or node_address(single_machine=False)
        self.server_args = ServerArgs(model_path=hf_checkpoint, random_seed=seed, host=host, port=free_port(host),
                                      weight_version="0", **server_args)
        self.server = SGLangServer(self.server_args)
        self.client = HttpClient(self.server.url, max_concurrent_requests)
        try:
            if router_url:
                register_with_router(router_url, self.server.url)
            if self.server_args.skip_tokenizer_init:  # benchmarks on dummy weights have no tokenizer
                self.tokenizer, self.eos_token_id = None, None
            else:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(hf_checkpoint)
                self.eos_token_id = self.tokenizer.eos_token_id
        except BaseException:
            self.shutdown()
            raise
        self.fp8 = fp8
        self.return_routed_experts = return_routed_experts
        self.top_k = read_hf_config(hf_checkpoint)["num_experts_per_tok"] if return_routed_experts else None
        self.load_format = channel_fp8.LOAD_FORMAT if fp8 == "channel" else None
        self.weight_version = 0
        self.paused = False
        # names pushed as float8 until the first push is complete and compared with the engine's (then None)
        self._unchecked_fp8: set[str] | None = set() if fp8 else None
        self._rids: dict[int, list[str]] = {}  # request id -> SGLang rids of its samples
        self._aborted_before_start: set[int] = set()  # aborted calls still queued: they return at once
        self._rids_lock = threading.Lock()  # generate calls run concurrently with each other and with abort

    @property
    def url(self) -> str:
        return self.server.url

    def generate(self, samples: list[Sample], params: SamplingParams, request_id: int | None = None) -> list[Sample]:
        """Sample responses (continuing partial ones); unfinished samples of an aborted call come back ABORTED."""
        if self.paused:
            raise RuntimeError("engine memory is released; resume() it and push weights before generating")
        todo = [s for s in samples if s.status not in FINISHED_STATUSES]
        if not todo:
            return samples
        started_version = self.weight_version
        rids = [uuid.uuid4().hex for _ in todo]
        with self._rids_lock:
            if request_id in self._aborted_before_start:
                self._aborted_before_start.discard(request_id)
                for s in todo:
                    s.status = SampleStatus.ABORTED
                return samples
            if request_id is not None:
                self._rids[request_id] = rids
        requests = [{
            "rid": rid, "input_ids": s.prompt_tokens + s.response_tokens, "return_logprob": True,
            "return_routed_experts": self.return_routed_experts,
            "sampling_params": {
                "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
                "max_new_tokens": params.remaining_tokens(s),
                "stop_token_ids": [t for t in (self.eos_token_id, *params.stop_token_ids) if t is not None] or None,
                "skip_special_tokens": False, "no_stop_trim": True,
            },
        } for rid, s in zip(rids, todo)]
        try:
            outputs = self.client.post_many("/generate", requests)
        except aiohttp.ClientError:
            self._check_server(grace_s=10)  # a dead server takes the actor down; a live one's error is raised
            raise
        finally:
            with self._rids_lock:
                self._rids.pop(request_id, None)
        finished_at = time.time()
        for s, out in zip(todo, outputs):
            meta = out["meta_info"]
            new = meta["output_token_logprobs"]  # [(log-prob, token id, text)]
            if s.response_length == 0:  # a push during a paused request: its tokens come from both versions
                s.weight_version = min(started_version, int(meta["weight_version"]))
            s.response_tokens = s.response_tokens + [int(t[1]) for t in new]
            s.rollout_log_probs = s.rollout_log_probs + [float(t[0]) for t in new]
            s.loss_mask = s.loss_mask + [1] * len(new)  # observations a plugin added stay 0
            s.response = self.tokenizer.decode(s.response_tokens, skip_special_tokens=True) if self.tokenizer else ""
            s.status = _FINISH.get(meta["finish_reason"]["type"], SampleStatus.FAILED)
            s.metadata[FINISHED_AT] = finished_at
            if self.return_routed_experts:
                s.routed_experts = decode_routed_experts(meta["routed_experts"], len(s.tokens) - 1, self.top_k)
        return samples

    def abort(self, request_ids: Sequence[int]) -> None:
        """Abort every sample of these calls at once; sent one after another, the last of a few hundred samples
        kept generating, and the push kept waiting, for as many round trips."""
        with self._rids_lock:
            rids = [rid for request_id in request_ids for rid in self._rids.get(request_id, [])]
            self._aborted_before_start |= {r for r in request_ids if r not in self._rids}
        self.client.post_all("/abort_request", [{"rid": rid} for rid in rids])

    def load_weights(self, named_tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Push one bucket (Hugging Face names) into the server through CUDA IPC; FP8 engines only take FP8 pairs."""
        # float8 travels as raw bytes (uint8); nothing else is uint8 in a causal LM
        tensors = [(name, from_transport(t, torch.float8_e4m3fn).cuda()) for name, t in named_tensors]
        if self.fp8:
            check_fp8_bucket(tensors, self.fp8)
        if self._unchecked_fp8 is not None:
            self._unchecked_fp8.update(name for name, t in tensors if t.dtype == torch.float8_e4m3fn)
        self._post_tensors(tensors, self.load_format, flush_cache=True)

    def _post_tensors(self, tensors: list[tuple[str, torch.Tensor]], load_format: str | None, flush_cache: bool) -> None:
        from sglang.srt.utils import MultiprocessingSerializer

        # one payload per tensor-parallel rank: each rank opens (and releases) its own IPC handles
        payloads = [MultiprocessingSerializer.serialize(tensors, output_str=True) for _ in range(self.server_args.tp_size)]
        self.client.post("/update_weights_from_tensor", {
            "serialized_named_tensors": payloads, "load_format": load_format, "flush_cache": flush_cache,
        })

    def init_weight_update_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int,
                                 group_name: str, backend: str) -> None:
        """Join the trainer's weight-broadcast group: this server's tensor-parallel ranks from `rank_offset` on."""
        self.client.post("/init_weights_update_group", {
            "master_address": master_address, "master_port": master_port, "rank_offset": rank_offset,
            "world_size": world_size, "group_name": group_name, "backend": backend,
        })

    def destroy_weight_update_group(self, group_name: str) -> None:
        self.client.post("/destroy_weights_update_group", {"group_name": group_name})

    def receive_weights(self, names: list[str], dtypes: list[str], shapes: list[list[int]], group_name: str) -> None:
        """Take one flattened bucket the trainer broadcasts now (returns once it is loaded; the cache is flushed)."""
        if self.fp8:  # the bucket's layout is known before its bytes arrive
            check_fp8_bucket([(n, torch.empty(s, dtype=getattr(torch, d), device="meta"))
                              for n, d, s in zip(names, dtypes, shapes)], self.fp8)
        if self._unchecked_fp8 is not None:
            self._unchecked_fp8.update(n for n, d in zip(names, dtypes) if getattr(torch, d) == torch.float8_e4m3fn)
        self.client.post("/update_weights_from_distributed", {
            "names": names, "dtypes": dtypes, "shapes": shapes, "group_name": group_name,
            "load_format": "flattened_bucket", "flush_cache": True,
        })

    def pause_generation(self) -> None:
        """Stop scheduling for a weight push; running requests are retracted, kept, and continue after it."""
        self.client.post("/pause_generation", {"mode": "retract"})

    def continue_generation(self) -> None:
        self.client.post("/continue_generation")

    def set_weight_version(self, version: int) -> None:
        """Record the version in the server too: it stamps every response with it (`meta_info.weight_version`)."""
        self.client.post("/update_weight_version", {"new_version": str(version), "abort_all_requests": False})
        self.weight_version = version
        if self._unchecked_fp8:  # the first push that sent float8 weights is complete: it sent every FP8 layer
            report = self.fp8_modules()
            difference = fp8_layers.fp8_layer_difference(self._unchecked_fp8, report["fp8_modules"], report["fused"])
            if difference:
                raise RuntimeError(f"{self.url}: {difference}")
            self._unchecked_fp8 = None

    def fp8_modules(self) -> dict:
        """The server's own account of the modules it serves in FP8, and of its fused projections."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "fp8_modules.json")
            self._post_tensors([(path, torch.zeros(1, device="cuda"))], fp8_layers.LOAD_FORMAT, flush_cache=False)
            return json.loads(Path(path).read_text())

    def rng_state(self) -> torch.Tensor:
        """SGLang seeds each request itself; there is no sampling stream to save."""
        return torch.empty(0)

    def load_rng_state(self, state: torch.Tensor) -> None:
        return None

    def pause(self) -> None:
        """Free the GPU memory of weights and KV cache (needs `enable_memory_saver`), for a colocated trainer."""
        self.client.post("/release_memory_occupation")
        self.paused = True

    def resume(self) -> None:
        """Map the memory back; the weights in it are undefined until the next push."""
        self.client.post("/resume_memory_occupation")
        self.paused = False

    def health(self) -> dict:
        """The server answers `/health` (a dead server takes its engine actor down, see `_check_server`)."""
        self._check_server()
        self.client.get("/health", timeout_s=30)
        return {"pid": os.getpid(), "server_pid": self.server.process.pid, "url": self.url,
                "weight_version": self.weight_version, "paused": self.paused}

    def _check_server(self, grace_s: float = 0.0) -> None:
        try:
            self.server.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            return
        self._server_died()

    def _server_died(self) -> NoReturn:
        message = f"SGLang server {self.url} exited with code {self.server.process.returncode}"
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id():
            # an engine actor dies with its server, so that the engine pool sees it dead and replaces it
            logger.error("%s; the engine actor exits", message)
            os._exit(1)
        raise RuntimeError(message)

    def shutdown(self) -> None:
        self.client.close()
        self.server.stop()


def decode_routed_experts(encoded: str, positions: int, top_k: int) -> torch.Tensor:
    """SGLang's `meta_info.routed_experts`: base64 int32 [positions, layers, top_k], the whole sequence but its last
    token when `routed_experts_start_len` is 0."""
    flat = torch.frombuffer(bytearray(base64.b64decode(encoded)), dtype=torch.int32)
    return flat.view(positions, -1, top_k).to(torch.int16)


def check_fp8_bucket(tensors: Sequence[tuple[str, torch.Tensor]], granularity: str) -> None:
    """Refuse a bucket an FP8 engine would load wrongly: a quantizable weight must be float8 with its scale."""
    names = {name for name, _ in tensors}
    scale_suffix = scale_name("weight", granularity)
    scales = [(n, t) for n, t in tensors if n.endswith(FP8_SCALE_SUFFIXES)]
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
