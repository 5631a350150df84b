"""Convert a Megatron torch_dist checkpoint back to a Hugging Face checkpoint.

    python tools/convert_torch_dist_to_hf.py --input-dir /ckpt/qwen2.5-7b_torch_dist --output-dir /models/out \
        --origin-hf-dir /models/Qwen2.5-7B

`--origin-hf-dir` supplies the config and tokenizer files. Runs on one process, with or without a GPU.
"""

from __future__ import annotations

import argparse
import sys

from async_rl.trainer.megatron.convert import torch_dist_to_hf

if __name__ == "__main__":  # the checkpoint reader may start worker processes, which re-import this file
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dir", required=True, help="torch_dist checkpoint directory.")
    parser.add_argument("--output-dir", required=True, help="Hugging Face checkpoint directory to write.")
    parser.add_argument("--origin-hf-dir", required=True, help="The Hugging Face checkpoint it was converted from.")
    args = parser.parse_args()
    try:
        torch_dist_to_hf(args.input_dir, args.output_dir, args.origin_hf_dir)
    except ModuleNotFoundError as e:
        sys.exit(f"convert_torch_dist_to_hf: error: {e.name} is not installed (pip install megatron-core psutil)")
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"convert_torch_dist_to_hf: error: {e}")
    print(f"wrote {args.output_dir}")
