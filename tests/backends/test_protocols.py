"""Every registered backend, and the actors it builds, implement the protocols the driver is written against; the
driver calls nothing on an engine or a trainer that the protocols do not name."""

import ast
import inspect
import re
from typing import get_type_hints

import pytest

from async_rl.backends import ROLLOUT_BACKENDS, TRAIN_BACKENDS, protocols
from async_rl.backends.local.engine import LocalEngine
from async_rl.backends.megatron.trainer import MegatronTrainer
from async_rl.backends.sglang.engine import SGLangEngine
from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config.sections import BackendConfig
from tests.conftest import REPO

DRIVER = ["session.py", "train.py", "train_async.py", "evaluate.py", "evaluation.py", "rollout/batch_assembler.py",
          "rollout/engine_pool.py", "rollout/producer.py", "weights/transports/__init__.py"]


def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(protocol).items()
            if inspect.isfunction(member) and not name.startswith("_")}


def protocol_attributes(protocol: type) -> set[str]:
    return set(get_type_hints(protocol, vars(protocols))) - set(protocol_methods(protocol))


def assert_implements(cls: type, protocol: type) -> None:
    for name, expected in protocol_methods(protocol).items():
        method = getattr(cls, name, None)
        assert callable(method), f"{cls.__name__} lacks {protocol.__name__}.{name}"
        # ray.remote(cls) wraps the class's own methods with a tracing parameter of Ray's
        got = [p for p in inspect.signature(method).parameters if p != "_ray_trace_ctx"]
        assert got == list(expected.parameters), f"{cls.__name__}.{name}{got} differs from {protocol.__name__}: {expected}"
    for name in protocol_attributes(protocol):
        assert hasattr(cls, name), f"{cls.__name__} lacks {protocol.__name__}.{name}"


def test_the_registry_holds_the_backends_the_flags_offer():
    choices = {f.name: f.metadata["choices"] for f in BackendConfig.__dataclass_fields__.values()}
    assert sorted(ROLLOUT_BACKENDS) == sorted(choices["rollout_backend"])
    assert sorted(TRAIN_BACKENDS) == sorted(choices["train_backend"])


@pytest.mark.parametrize("name", sorted(ROLLOUT_BACKENDS))
def test_each_rollout_backend_implements_the_protocol(name):
    assert ROLLOUT_BACKENDS[name].name == name
    assert_implements(type(ROLLOUT_BACKENDS[name]), protocols.RolloutBackend)


@pytest.mark.parametrize("name", sorted(TRAIN_BACKENDS))
def test_each_train_backend_implements_the_protocol(name):
    assert TRAIN_BACKENDS[name].name == name
    assert_implements(type(TRAIN_BACKENDS[name]), protocols.TrainBackend)


ENGINES = {"local": LocalEngine, "sglang": SGLangEngine}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_each_engine_implements_the_engine_protocol(name):
    assert_implements(ENGINES[name], protocols.RolloutEngine)
    if ROLLOUT_BACKENDS[name].checks_weights:
        assert_implements(ENGINES[name], protocols.WeightDigests)


@pytest.mark.parametrize("trainer", [TorchTrainer, MegatronTrainer])
def test_each_trainer_implements_the_trainer_protocol(trainer):
    assert_implements(trainer, protocols.Trainer)


def remote_calls(source: str) -> set[str]:
    """Names of actor methods called as `x.NAME.remote(...)` or `x.NAME.options(...).remote(...)`."""
    calls = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "remote":
            target = node.value
            if isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute) and target.func.attr == "options":
                target = target.func.value
            if isinstance(target, ast.Attribute):
                calls.add(target.attr)
    return calls


def test_the_driver_calls_only_protocol_methods():
    allowed = {name for p in (protocols.RolloutEngine, protocols.WeightDigests, protocols.Trainer)
               for name in protocol_methods(p)}
    for module in DRIVER:
        called = remote_calls((REPO / "async_rl" / module).read_text())
        assert called <= allowed, f"async_rl/{module} calls {sorted(called - allowed)}, which no protocol names"


def test_the_driver_never_compares_backend_names():
    """Backends are picked through the registry; a name compared in the driver is a backend concern leaking out."""
    for path in sorted((REPO / "async_rl").rglob("*.py")):
        if "backends" in path.parts or path.parent.name == "config":  # the parser says which flags go with which
            continue
        hits = re.findall(r"(?:rollout|train)_backend\s*[!=]=", path.read_text())
        assert not hits, f"{path.relative_to(REPO)} compares backend names: {hits}"
