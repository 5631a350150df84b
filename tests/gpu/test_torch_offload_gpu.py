"""`--offload-train` with the torch backend on a GPU: AdamW's state and the weights leave the GPU into page-locked
host buffers and come back bit for bit, and a second cycle refills the same buffers with the newer values.

Run with `pytest -m gpu tests/gpu`; needs a CUDA GPU.
"""

import pytest
import torch

from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config.sections import TrainConfig
from tests.backends.torch.test_torch_trainer import advantages, rollout

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def state_of(trainer: TorchTrainer) -> dict[str, torch.Tensor]:
    state = {f"model.{n}": p.detach().cpu().clone() for n, p in trainer.model.named_parameters()}
    for i, s in enumerate(trainer.optimizer.state.values()):
        state |= {f"adam.{i}.{k}": v.detach().cpu().clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
    return state


def test_offloading_refills_the_same_pinned_buffers_and_restores_every_bit(tiny_model, tokenizer):
    samples = rollout(tiny_model, tokenizer, n=16)
    trainer = TorchTrainer(str(tiny_model), TrainConfig(lr=1e-3, micro_batch_size=4), global_batch_size=8,
                           temperature=1.0, device="cuda")
    params = sum(p.numel() for p in trainer.model.parameters())
    cycles = []
    for _ in range(2):
        trainer.train_step(samples, advantages(len(samples)))
        torch.cuda.synchronize()
        before, resident = state_of(trainer), torch.cuda.memory_allocated()
        trainer.offload(weights=False)
        trainer.offload(weights=True)
        freed = resident - torch.cuda.memory_allocated()
        buffers = {key: (b.data_ptr(), b.is_pinned()) for key, b in trainer.offloader.stash.buffers.items()}
        trainer.onload()
        cycles.append((before, state_of(trainer), freed, buffers))
        assert all(p.is_cuda for p in trainer.model.parameters())
    for n, (before, after, freed, buffers) in enumerate(cycles):
        assert freed >= 0.9 * 12 * params, n  # FP32 weights + two Adam moments
        assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items()), n
        assert buffers and all(pinned for _, pinned in buffers.values())
    assert cycles[1][3] == cycles[0][3]
    assert any(not torch.equal(cycles[1][0][k], cycles[0][0][k]) for k in cycles[0][0])
    assert torch.isfinite(torch.tensor(trainer.train_step(samples, advantages(len(samples)))["train/loss"]))
