"""Megatron-core pieces of the `megatron` trainer backend: model from a Hugging Face config, weight mapping, CPU use."""
