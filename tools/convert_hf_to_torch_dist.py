"""Convert a Hugging Face checkpoint (Qwen2/Qwen2.5, Qwen3, Llama) to a Megatron torch_dist checkpoint.

    python tools/convert_hf_to_torch_dist.py --hf-checkpoint /models/Qwen2.5-7B --save /ckpt/qwen2.5-7b_torch_dist

Runs on one process, with or without a GPU (login nodes work); the model shape comes from the HF config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from async_rl.backends.megatron.convert import hf_to_torch_dist

if __name__ == "__main__":  # the checkpoint writer starts worker processes, which re-import this file
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-checkpoint", required=True, help="Hugging Face checkpoint directory.")
    parser.add_argument("--save", required=True, help="Output directory (torch_dist).")
    args = parser.parse_args()
    if Path(args.save).exists():  # never over an earlier conversion: bad input exits 2, as in every tool here
        parser.error(f"--save {args.save} already exists")
    try:
        hf_to_torch_dist(args.hf_checkpoint, args.save)
    except ModuleNotFoundError as e:
        parser.error(f"{e.name} is not installed (pip install megatron-core psutil)")
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    print(f"wrote {args.save}")
