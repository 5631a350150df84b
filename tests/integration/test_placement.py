"""Where Ray puts trainer ranks and rollout engines, checked in a real Ray that declares GPUs it does not have:
Ray hands out GPU ids by its own bookkeeping, so the placement logic runs exactly as on a GPU node."""

import psutil
import pytest
import ray
import torch

from async_rl.config import parse_config
from async_rl.errors import UserInputError
from async_rl.placement import (
    check_gpus_here,
    check_training_gpus,
    engine_options,
    init_loopback_ray,
    start_ray,
    trainer_bundles,
    trainer_rank_options,
)
from async_rl.startup_checks import check_rollout_backend


@ray.remote(num_cpus=0)
class GpuProbe:
    def gpu_ids(self) -> list[int]:
        return [int(i) for i in ray.get_gpu_ids()]


@pytest.fixture
def ray_with_four_gpus():
    init_loopback_ray(num_cpus=8, num_gpus=4)
    yield
    ray.shutdown()


def config(*flags):
    return parse_config(["--hf-checkpoint", "model", "--prompt-data", "x.jsonl", "--train-backend", "megatron",
                         "--num-gpus-per-node", "4", *flags])[0]


def placed_gpus(cfg) -> tuple[list[list[int]], list[list[int]]]:
    """GPU ids of each trainer rank and each engine, placed as a run places them."""
    bundles = trainer_bundles(cfg)
    trainers = [GpuProbe.options(**trainer_rank_options(cfg, bundles, rank)).remote()
                for rank in range(cfg.trainer_world_size)]
    engines = [GpuProbe.options(**engine_options(cfg, rank, bundles)).remote() for rank in range(cfg.num_rollout_engines)]
    # timeout: an engine Ray cannot place would wait for a GPU forever
    return ray.get([p.gpu_ids.remote() for p in trainers], timeout=60), ray.get([p.gpu_ids.remote() for p in engines], timeout=60)


def test_colocated_engine_shares_the_gpu_of_its_trainer_rank(ray_with_four_gpus):
    trainer, engines = placed_gpus(config("--actor-num-gpus-per-node", "4", "--colocate"))
    assert sorted(sum(trainer, [])) == [0, 1, 2, 3]  # one GPU per rank
    assert engines == trainer


def test_engines_of_their_own_take_the_gpus_the_trainer_leaves(ray_with_four_gpus):
    trainer, engines = placed_gpus(config("--actor-num-gpus-per-node", "2", "--rollout-num-gpus", "2"))
    assert len(engines) == 2 and all(len(ids) == 1 for ids in trainer + engines)
    assert sorted(sum(trainer + engines, [])) == [0, 1, 2, 3]


def test_a_colocated_engine_must_fit_in_one_trainer_gpu():
    cfg = config("--actor-num-gpus-per-node", "4", "--colocate", "--rollout-num-gpus-per-engine", "2")
    with pytest.raises(UserInputError, match="--rollout-num-gpus-per-engine > 1"):
        check_rollout_backend(cfg)


def test_a_plan_is_checked_against_the_gpus_of_our_own_ray():
    check_gpus_here(config("--actor-num-gpus-per-node", "2", "--rollout-num-gpus", "2"), available=4)
    with pytest.raises(UserInputError, match=r"needs 4 GPU\(s\) .*--rollout-num-gpus 2\) but this machine has 3"):
        check_gpus_here(config("--actor-num-gpus-per-node", "2", "--rollout-num-gpus", "2"), available=3)
    check_gpus_here(config("--actor-num-gpus-per-node", "0"), available=0)


def test_a_gpu_run_on_a_machine_without_gpus_fails_at_start_instead_of_waiting():
    """Ray would wait forever for GPUs that a machine of its own does not have."""
    here = torch.cuda.device_count()
    cfg = config("--actor-num-gpus-per-node", str(here + 1), "--num-gpus-per-node", str(max(4, here + 1)), "--colocate")
    with pytest.raises(UserInputError, match=rf"--actor-num-gpus-per-node {here + 1}\) but this machine has {here}:"):
        start_ray(cfg)
        check_training_gpus(cfg)
    ray.shutdown()


def test_our_ray_listens_on_loopback_only(ray_with_four_gpus):
    """Ray's own servers (GCS, raylet, object manager, workers) accept connections on 127.0.0.1 and nowhere else."""
    ray_processes = {child.pid for child in psutil.Process().children(recursive=True)}
    listening = [c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ray_processes]
    assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in listening), listening
