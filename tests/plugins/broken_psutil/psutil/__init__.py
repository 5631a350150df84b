"""Fault injection for the checkpoint-writer test: imports like psutil, fails where megatron-core's writer
process asks it for its memory, so that the writer dies mid-save."""


class Process:
    def __init__(self, pid: int):
        raise RuntimeError("injected checkpoint-writer failure")
