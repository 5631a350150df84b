"""Convert a Megatron torch_dist checkpoint back to a Hugging Face checkpoint.

    python tools/convert_torch_dist_to_hf.py --input-dir /ckpt/qwen2.5-7b_torch_dist --output-dir /models/out \
        --origin-hf-dir /models/Qwen2.5-7B

`--origin-hf-dir` supplies the config and tokenizer files. Runs on one process, with or without a GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from async_rl.backends.megatron.convert import torch_dist_to_hf

if __name__ == "__main__":  # the checkpoint reader may start worker processes, which re-import this file
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dir", required=True, help="torch_dist checkpoint directory.")
    parser.add_argument("--output-dir", required=True, help="Hugging Face checkpoint directory to write.")
    parser.add_argument("--origin-hf-dir", required=True, help="The Hugging Face checkpoint it was converted from.")
    args = parser.parse_args()
    if Path(args.output_dir).exists():  # never over an earlier conversion: bad input exits 2, as in every tool here
        parser.error(f"--output-dir {args.output_dir} already exists")
    try:
        torch_dist_to_hf(args.input_dir, args.output_dir, args.origin_hf_dir)
    except ModuleNotFoundError as e:
        parser.error(f"{e.name} is not installed (pip install megatron-core psutil)")
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    print(f"wrote {args.output_dir}")
