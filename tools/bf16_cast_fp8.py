"""Cast a BF16 Hugging Face checkpoint to an FP8 checkpoint SGLang loads as is.

Linear weights of attention and MLP blocks become float8_e4m3fn with float32 scales: `<name>_scale_inv` per
128 x 128 block (`--granularity block`, the default) or `<name>_scale` per output row (`channel`);
embeddings, norms, biases and lm_head stay as they are. Tensors stream one at a time, so a 32B model
converts in bounded memory.

    python tools/bf16_cast_fp8.py --input-bf16-hf-path IN --output-fp8-hf-path OUT [--granularity channel]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from async_rl.weights.fp8 import GRANULARITIES, is_fp8_quantizable, quantization_config, quantize_many, scale_name

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # output dim split across TP ranks
ROW_PARALLEL = ("o_proj", "down_proj")  # input dim split


def parse_bool(value: str) -> bool:
    """`True`/`False` as typed on the command line (argparse's `type=bool` would take "False" as true)."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def parse_size(value: str) -> int:
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    for suffix, factor in units.items():
        if value.upper().endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(value)


def tp_shard_fits(name: str, shape: tuple[int, ...], tp_size: int, granularity: str = "block") -> bool:
    """Whether each tensor-parallel shard of this weight is still whole 128-blocks along the split dimension."""
    if tp_size == 1 or granularity == "channel":
        return True
    module = name.rsplit(".", 2)[-2]
    dim = 0 if module in COLUMN_PARALLEL else 1 if module in ROW_PARALLEL else None
    return dim is None or (shape[dim] % tp_size == 0 and (shape[dim] // tp_size) % 128 == 0)


def source_tensors(input_dir: Path) -> list[tuple[str, Path]]:
    """(tensor name, file) for every tensor of a single-file or sharded safetensors checkpoint."""
    index = input_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [(name, input_dir / file) for name, file in weight_map.items()]
    single = input_dir / "model.safetensors"
    if not single.is_file():
        raise SystemExit(f"--input-bf16-hf-path {input_dir}: no model.safetensors or model.safetensors.index.json")
    with safe_open(single, framework="pt") as f:
        return [(name, single) for name in f.keys()]


class ShardWriter:
    """Collects tensors into shards of at most `max_bytes`, written as they fill."""

    def __init__(self, out_dir: Path, max_bytes: int):
        self.out_dir, self.max_bytes = out_dir, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size

    def flush(self) -> None:
        if self.pending:
            save_file(self.pending, self.out_dir / f"shard-{len(self.shards)}.tmp", metadata={"format": "pt"})
            self.shards.append(list(self.pending))
            self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        """Name the shards as Hugging Face does and write the index (a single shard needs none)."""
        self.flush()
        total = len(self.shards)
        if total == 1:
            os.replace(self.out_dir / "shard-0.tmp", self.out_dir / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self.shards):
            file = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
            os.replace(self.out_dir / f"shard-{i}.tmp", self.out_dir / file)
            weight_map.update({name: file for name in names})
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))


def convert(input_dir: Path, output_dir: Path, *, pow2_scale: bool, tp_size: int, max_shard_bytes: int,
            granularity: str = "block") -> list[str]:
    """Write the FP8 checkpoint; returns the modules kept in BF16 because their TP shards would split blocks."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=output_dir.name + ".tmp", dir=output_dir.parent))
    writer = ShardWriter(staging, max_shard_bytes)
    ignored = []
    handles: dict[Path, object] = {}
    for name, file in tqdm(source_tensors(input_dir), desc="bf16 -> fp8", unit="tensor"):
        if file not in handles:
            handles[file] = safe_open(file, framework="pt")
        tensor = handles[file].get_tensor(name)
        if is_fp8_quantizable(name, tensor):
            if tp_shard_fits(name, tuple(tensor.shape), tp_size, granularity):
                [(q, scale)] = quantize_many([tensor], granularity, pow2_scale)
                writer.add(name, q)
                writer.add(scale_name(name, granularity), scale)
                continue
            ignored.append(name.rsplit(".", 1)[0])
        writer.add(name, tensor)
    writer.finish()

    config = json.loads((input_dir / "config.json").read_text())
    config["quantization_config"] = dict(quantization_config(granularity), **({"ignored_layers": ignored} if ignored else {}))
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    for extra in input_dir.iterdir():  # tokenizer, generation config, chat template...
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(extra, staging / extra.name)
    os.replace(staging, output_dir)  # a half-written checkpoint never sits at the output path
    return ignored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-bf16-hf-path", required=True, type=Path)
    parser.add_argument("--output-fp8-hf-path", required=True, type=Path)
    parser.add_argument("--granularity", choices=GRANULARITIES, default="block",
                        help="block: one scale per 128x128 block (DeepSeek-V3 layout); channel: one per output row "
                             "(SGLang's w8a8_fp8; serve with --rollout-fp8-granularity channel).")
    parser.add_argument("--force-pow-2-scale", type=parse_bool, nargs="?", const=True, default=False,
                        help="Every block scale a power of two (E8M0-representable); a switch, as the training flag "
                             "is (an explicit True or False is read too).")
    parser.add_argument("--no-force-pow-2-scale", dest="force_pow_2_scale", action="store_false")
    parser.add_argument("--tensor-parallel-size", type=int, default=1,
                        help="Weights whose TP shards would not be whole 128-blocks stay BF16 (listed in ignored_layers).")
    parser.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"))
    args = parser.parse_args()
    if not (args.input_bf16_hf_path / "config.json").is_file():
        parser.error(f"--input-bf16-hf-path {args.input_bf16_hf_path}: no config.json (not a Hugging Face checkpoint)")
    if args.output_fp8_hf_path.exists():
        parser.error(f"--output-fp8-hf-path {args.output_fp8_hf_path} already exists")
    ignored = convert(args.input_bf16_hf_path, args.output_fp8_hf_path, pow2_scale=args.force_pow_2_scale,
                      tp_size=args.tensor_parallel_size, max_shard_bytes=args.max_shard_size, granularity=args.granularity)
    print(f"wrote {args.output_fp8_hf_path}" + (f"; kept in BF16 for TP: {', '.join(ignored)}" if ignored else ""))


if __name__ == "__main__":
    main()
