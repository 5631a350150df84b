"""Weight formats and transfer: FP8 blockwise quantization."""
