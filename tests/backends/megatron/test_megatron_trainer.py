"""The megatron trainer backend on a CPU: the same RL step as the torch backend, and TP/DP groups equal one rank."""

import dataclasses

import pytest
import ray

from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config import parse_config
from async_rl.config.sections import MegatronConfig, TrainConfig
from async_rl.errors import UserInputError
from async_rl.placement import in_bundle, init_loopback_ray, reserve_trainer_bundles
from async_rl.trainer.batch import micro_batch_indices
from tests.backends.torch.test_torch_trainer import advantages, assert_same_update, rollout

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install -e '.[test]')")

from async_rl.backends.megatron.actor_group import create_megatron_group  # noqa: E402
from async_rl.backends.megatron.checks import check_distributed_optimizer_resume  # noqa: E402
from async_rl.backends.megatron.trainer import MegatronTrainer, data_parallel_shards  # noqa: E402

CFG = TrainConfig(lr=1e-3, micro_batch_size=2, use_tis=True, entropy_coef=0.01)


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(r) for r in a] == [len(r) for r in b]
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


@pytest.fixture(scope="module")
def samples(tiny_model, tokenizer):
    return rollout(tiny_model, tokenizer)


def torch_reference(model_dir, samples):
    """The torch backend's log-probs, first-step metrics, log-probs after the step and exported weights."""
    torch_trainer = TorchTrainer(str(model_dir), CFG, global_batch_size=4, temperature=0.8)
    before = torch_trainer.compute_log_probs(samples)
    metrics = torch_trainer.train_step(samples, advantages(len(samples)))
    return before, metrics, torch_trainer.compute_log_probs(samples), dict(torch_trainer.export_weights())


@pytest.fixture(scope="module")
def reference(tiny_model, samples):
    return torch_reference(tiny_model, samples)


def after_step_tolerance(before: list[list[float]], after: list[list[float]]) -> float:
    """Two optimizer steps at lr 1e-3 move the tiny model's log-probs by up to ~15 nats; how float rounding (which
    differs between CPUs' kernels) propagates through them scales with that move."""
    return 1e-4 * max_diff(before, after)


def check_against_reference(reference, before, metrics, after, weights, tied=True):
    ref_before, ref_metrics, ref_after, ref_weights = reference
    assert max_diff(before, ref_before) < 1e-5
    for key in ("train/loss", "train/grad_norm", "train/entropy", "train/clip_frac", "train/approx_kl"):
        assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-4, abs=1e-6), key
    assert max_diff(after, ref_after) < after_step_tolerance(ref_before, ref_after)
    assert set(weights) == set(ref_weights) - ({"lm_head.weight"} if tied else set())  # tied: the embedding is the output
    for name, tensor in weights.items():  # two optimizer steps
        assert_same_update(tensor, ref_weights[name], name, atol=1e-4, rtol=1e-4, max_step=2 * CFG.lr)


@pytest.fixture
def in_process():
    """MegatronTrainers in this process, each leaving the process group when the test ends."""
    made = []
    yield lambda *args, **kwargs: made.append(MegatronTrainer(*args, **kwargs)) or made[-1]
    for trainer in made:
        trainer.close()


def test_one_rank_takes_the_torch_backends_step(tiny_model, samples, reference, in_process):
    trainer = in_process(str(tiny_model), CFG, MegatronConfig(), global_batch_size=4, temperature=0.8)
    before = trainer.compute_log_probs(samples)
    metrics = trainer.train_step(samples, advantages(len(samples)))
    check_against_reference(reference, before, metrics, trainer.compute_log_probs(samples), dict(trainer.export_weights()))


@pytest.mark.parametrize("model", ["tiny_moe_model", "glm4_model", "glm4_moe_model", "deepseek_v3_model"])
def test_another_model_family_takes_the_torch_backends_step(model, tokenizer, in_process, request):
    """Qwen3-MoE (router and experts through Megatron's MoE layer), GLM-4 (post-block norms, interleaved partial
    RoPE), GLM-4.5 MoE (a dense layer, biased sigmoid routing, shared experts) and DeepSeek-V3 (that MoE under
    multi-latent attention); weights come back in each checkpoint's layout."""
    model_dir = request.getfixturevalue(model)
    samples = rollout(model_dir, tokenizer)
    reference = torch_reference(model_dir, samples)
    trainer = in_process(str(model_dir), CFG, MegatronConfig(), global_batch_size=4, temperature=0.8)
    before = trainer.compute_log_probs(samples)
    metrics = trainer.train_step(samples, advantages(len(samples)))
    check_against_reference(reference, before, metrics, trainer.compute_log_probs(samples), dict(trainer.export_weights()),
                            tied=False)


def test_token_budget_micro_batches_take_the_same_step(tiny_model, samples, reference, in_process):
    budget = 2 * max(len(s.prompt_tokens) + s.response_length for s in samples)
    trainer = in_process(str(tiny_model), CFG, MegatronConfig(max_tokens_per_gpu=budget), global_batch_size=4,
                              temperature=0.8)
    metrics = trainer.train_step(samples, advantages(len(samples)))
    assert metrics["train/loss"] == pytest.approx(reference[1]["train/loss"], rel=1e-4)
    assert max_diff(trainer.compute_log_probs(samples), reference[2]) < after_step_tolerance(reference[0], reference[2])


def test_data_parallel_shards_cut_each_global_batch():
    assert data_parallel_shards(8, 4, 2) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert data_parallel_shards(6, 6, 1) == [[0, 1, 2, 3, 4, 5]]


def test_balanced_shards_even_out_tokens_and_keep_sample_counts():
    """--balance-data: one rank would otherwise get the four long samples of the batch."""
    lengths = [100, 90, 80, 70, 5, 4, 3, 2]
    contiguous = data_parallel_shards(8, 8, 2)
    balanced = data_parallel_shards(8, 8, 2, lengths)
    assert [len(s) for s in balanced] == [len(s) for s in contiguous] == [4, 4]
    assert sorted(i for s in balanced for i in s) == list(range(8))
    tokens = [sum(lengths[i] for i in s) for s in balanced]
    assert tokens == [100 + 70 + 5 + 2, 90 + 80 + 4 + 3] and max(tokens) - min(tokens) < 10


@pytest.fixture
def local_ray():
    """A Ray of its own per test: shutting it down ends the group's actors and frees its placement group."""
    init_loopback_ray(num_cpus=2, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def cpu_ranks(world_size: int) -> list[dict]:
    """Ray options of `world_size` CPU ranks, each in its bundle of a fresh trainer placement group."""
    bundles = reserve_trainer_bundles(world_size, gpus=0)
    return [{"num_cpus": 1, "scheduling_strategy": in_bundle(bundles, rank)} for rank in range(world_size)]


def two_rank_step(model_dir, samples, mcfg: MegatronConfig):
    """A group of two Ray actors joined by gloo: its log-probs, step metrics, log-probs after and exported weights."""
    rank0 = create_megatron_group(str(model_dir), CFG, mcfg, rank_options=cpu_ranks(2), global_batch_size=4,
                                  temperature=0.8, seed=0, num_threads=1)
    before = ray.get(rank0.compute_log_probs.remote(samples))
    metrics = ray.get(rank0.train_step.remote(samples, advantages(len(samples))))
    after = ray.get(rank0.compute_log_probs.remote(samples))
    stream = rank0.export_weight_buckets.options(num_returns="streaming").remote(1 << 16)
    return before, metrics, after, {name: t for ref in stream for name, t in ray.get(ref)}


@pytest.mark.parametrize("layout", [{"tensor_model_parallel_size": 2}, {}], ids=["tp2", "dp2"])
def test_two_rank_group_matches_the_single_rank_step(tiny_model, samples, reference, local_ray, layout):
    """TP=2 splits every matrix and the vocabulary, DP=2 splits the samples."""
    check_against_reference(reference, *two_rank_step(tiny_model, samples, dataclasses.replace(MegatronConfig(), **layout)))


def test_a_glm4_model_split_over_two_tensor_parallel_ranks_takes_the_torch_backends_step(glm4_model, tokenizer,
                                                                                         local_ray):
    """GLM-4's post-block norms sit after the row-parallel projections, on whole hidden vectors."""
    samples = rollout(glm4_model, tokenizer)
    check_against_reference(torch_reference(glm4_model, samples),
                            *two_rank_step(glm4_model, samples, MegatronConfig(tensor_model_parallel_size=2)), tied=False)


def budget_with_uneven_micro_batch_counts(samples: list) -> int:
    """A token budget under which the two data-parallel ranks cut their first global batch differently."""
    shards = data_parallel_shards(len(samples), 4, 2)
    for budget in range(1, 1000):
        if len({len(micro_batch_indices([samples[i] for i in rows[:2]], 2, budget)) for rows in shards}) > 1:
            return budget
    raise AssertionError("no budget splits the two shards differently")


@pytest.mark.parametrize("token_budget", [False, True], ids=["micro-batch-size", "uneven-token-budget"])
def test_an_expert_parallel_group_matches_the_torch_backends_moe_step(tiny_moe_model, samples, local_ray, tmp_path,
                                                                      token_budget):
    """EP=2 over two Ray actors: each holds half of every layer's experts, tokens travel to them and back, the
    exported weights come back whole, numbered as in the Hugging Face checkpoint, and a torch_dist checkpoint of
    the split experts restores them. Under a token budget that cuts the two ranks' shares into different numbers
    of micro-batches, the rank with fewer splits its own so that both run the same forward passes."""
    torch_trainer = TorchTrainer(str(tiny_moe_model), CFG, global_batch_size=4, temperature=0.8)
    reference = (torch_trainer.compute_log_probs(samples), torch_trainer.train_step(samples, advantages(len(samples))),
                 torch_trainer.compute_log_probs(samples), dict(torch_trainer.export_weights()))
    mcfg = dataclasses.replace(MegatronConfig(), expert_model_parallel_size=2,
                               max_tokens_per_gpu=budget_with_uneven_micro_batch_counts(samples) if token_budget else None)
    rank0 = create_megatron_group(str(tiny_moe_model), CFG, mcfg, rank_options=cpu_ranks(2), global_batch_size=4,
                                  temperature=0.8, seed=0, num_threads=1)
    before = ray.get(rank0.compute_log_probs.remote(samples))
    metrics = ray.get(rank0.train_step.remote(samples, advantages(len(samples))))
    after = ray.get(rank0.compute_log_probs.remote(samples))
    stream = rank0.export_weight_buckets.options(num_returns="streaming").remote(1 << 16)
    weights = {name: t for ref in stream for name, t in ray.get(ref)}
    check_against_reference(reference, before, metrics, after, weights, tied=False)
    ray.get(rank0.save.remote(str(tmp_path / "ckpt")))
    ray.get(rank0.train_step.remote(samples, advantages(len(samples))))
    assert max_diff(ray.get(rank0.compute_log_probs.remote(samples)), after) > 1e-4  # the weights moved on
    ray.get(rank0.load.remote(str(tmp_path / "ckpt")))
    assert max_diff(ray.get(rank0.compute_log_probs.remote(samples)), after) < 1e-6


@pytest.mark.parametrize("model, layout", [("tiny_model", {"tensor_model_parallel_size": 2}),
                                           ("tiny_moe_model", {"expert_model_parallel_size": 2})], ids=["tp2", "ep2"])
def test_a_checkpoint_saved_by_two_ranks_resumes_on_one_and_back(model, layout, samples, local_ray, in_process, tmp_path,
                                                                 caplog, request):
    """--save under TP=2 (or EP=2), --load on one rank, and back: the weights and AdamW's moments are resharded, so
    the step after the load is the step the saving layout takes (Adam without its moments would step elsewhere)."""
    hf_dir, adv = str(request.getfixturevalue(model)), advantages(len(samples))
    two = create_megatron_group(hf_dir, CFG, dataclasses.replace(MegatronConfig(), **layout), rank_options=cpu_ranks(2),
                                global_batch_size=4, temperature=0.8, seed=0, num_threads=1)
    one = in_process(hf_dir, CFG, MegatronConfig(), global_batch_size=4, temperature=0.8)
    start = ray.get(two.compute_log_probs.remote(samples))

    ray.get(two.train_step.remote(samples, adv))
    ray.get(two.save.remote(str(tmp_path / "two")))
    ray.get(two.train_step.remote(samples, adv))
    one.load(str(tmp_path / "two"))
    assert "RNG states not restored" in caplog.text  # they belong to ranks of the other layout
    assert (one.version, one.optimizer_steps) == (1, 2)  # two global batches per step
    one.train_step(samples, adv)
    after_two = ray.get(two.compute_log_probs.remote(samples))
    tolerance = after_step_tolerance(start, after_two)
    assert max_diff(one.compute_log_probs(samples), after_two) < tolerance

    one.save(str(tmp_path / "one"))
    one.train_step(samples, adv)
    ray.get(two.load.remote(str(tmp_path / "one")))
    ray.get(two.train_step.remote(samples, adv))
    assert max_diff(ray.get(two.compute_log_probs.remote(samples)), one.compute_log_probs(samples)) < tolerance


def test_a_distributed_optimizer_resume_under_another_tensor_parallel_size_is_refused_before_the_start(
        tiny_model, samples, in_process, tmp_path):
    """Megatron's distributed optimizer state reshards across data-parallel ranks only; the layout the checkpoint
    recorded tells a start that would fail inside the load."""
    trainer = in_process(str(tiny_model), CFG, MegatronConfig(), global_batch_size=4, temperature=0.8)
    trainer.save(str(tmp_path / "ckpt"))

    def resume(tp: int) -> None:
        cfg, _ = parse_config(["--hf-checkpoint", str(tiny_model), "--prompt-data", "x.jsonl", "--train-backend",
                               "megatron", "--actor-num-gpus-per-node", "2", "--use-distributed-optimizer",
                               "--tensor-model-parallel-size", str(tp), "--load", str(tmp_path / "ckpt")])
        check_distributed_optimizer_resume(cfg, tmp_path / "ckpt")

    resume(1)
    with pytest.raises(UserInputError, match=r"written under --tensor-model-parallel-size 1 \(now 2\); with "
                                             r"--use-distributed-optimizer"):
        resume(2)
