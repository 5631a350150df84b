"""The learning-rate schedule, by hand, and the torch trainer following it."""

import math

import pytest

from async_rl.config.sections import TrainConfig
from async_rl.trainer.lr_schedule import learning_rate


def rates(cfg: TrainConfig, total: int) -> list[float]:
    return [learning_rate(step, cfg, total) for step in range(total)]


def test_warmup_then_linear_and_cosine_decay_by_hand():
    linear = TrainConfig(lr=1.0, min_lr=0.1, lr_warmup_iters=2, lr_decay_style="linear")
    assert rates(linear, 6) == pytest.approx([0.5, 1.0, 1.0, 0.775, 0.55, 0.325])  # decay over steps 2..6
    cosine = TrainConfig(lr=1.0, min_lr=0.0, lr_decay_style="cosine", lr_decay_iters=4)
    assert rates(cosine, 6) == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0, 0.0])
    assert rates(TrainConfig(lr=0.3), 3) == [0.3, 0.3, 0.3]


def test_the_torch_trainer_steps_with_the_schedule_and_resumes_on_it(tiny_model, tokenizer, tmp_path):
    from async_rl.backends.torch.trainer import TorchTrainer
    from tests.backends.torch.test_torch_trainer import advantages, rollout

    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, lr_decay_style="linear", lr_warmup_iters=1, micro_batch_size=4)
    samples = rollout(tiny_model, tokenizer)

    def trainer():
        return TorchTrainer(str(tiny_model), cfg, global_batch_size=4, temperature=1.0, total_optimizer_steps=6)

    first = trainer()
    seen = [first.train_step(samples, advantages(8))["train/lr"]]  # two optimizer steps of 4 samples
    first.save(str(tmp_path))
    resumed = trainer()
    resumed.load(str(tmp_path))
    seen.append(resumed.train_step(samples, advantages(8))["train/lr"])
    assert seen == pytest.approx([learning_rate(1, cfg, 6), learning_rate(3, cfg, 6)])
    assert resumed.optimizer_steps == 4
