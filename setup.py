"""Packaging for async_rl: the engine (`async_rl`) and its rule rewards (`rewards`)."""

from setuptools import find_packages, setup

setup(
    name="async_rl",
    version="0.1.0",
    description="Asynchronous RL post-training for LLMs: SGLang/local rollouts, Megatron/torch trainers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["async_rl", "async_rl.*", "rewards", "rewards.*"]),
    install_requires=[
        # No upper pin and no CPU-only build: GPU users need the torch their sglang pins.
        "torch>=2.4",
        "transformers>=4.45",
        "safetensors>=0.4",
        "ray>=2.30",
        "aiohttp>=3.9",  # the SGLang engines' HTTP client
        "omegaconf>=2.3",
        "tensorboard>=2.14",
        "numpy>=1.24",
        "tqdm>=4.60",
        "pyarrow>=14",
        "sympy>=1.12",
        "pylatexenc>=2.10",
        "math-verify>=0.7",
        "matplotlib>=3.7",  # tools/plot_run.py
        "psutil>=5.9",  # megatron-core's checkpoint writer needs it wherever megatron-core is installed
    ],
    extras_require={
        # SGLang: the rollout engine is verified with 0.5.17 (tests/gpu, docs/gpu-testing.md)
        "gpu": ["sglang>=0.5.17,<0.6", "sglang-router>=0.3", "megatron-core>=0.16", "transformer-engine>=2.0"],
        # megatron-core runs on the CPU for checkpoint conversion and its tests (0.16: Float16Module(fp32_output=False))
        "test": ["pytest>=8", "pytest-xdist>=3", "megatron-core>=0.16", "ruff>=0.6"],
        "wandb": ["wandb>=0.17"],
    },
    entry_points={
        "console_scripts": [
            "async-rl-train=async_rl.train:main",
            "async-rl-train-async=async_rl.train_async:main",
            "async-rl-evaluate=async_rl.evaluate:main",
        ]
    },
)
