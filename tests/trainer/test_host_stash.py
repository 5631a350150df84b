import pytest
import torch

from async_rl.trainer.host_stash import HostStash


def test_a_storage_freed_in_place_comes_back_under_the_same_views():
    """What the distributed optimizer's parameter buffer needs: parameters that view one flat buffer keep viewing it
    while its storage is freed and after it is refilled, twice, through the same host buffer."""
    buffer = torch.arange(12, dtype=torch.float32)
    weight, bias = buffer[:8].view(2, 4), buffer[8:]
    stash = HostStash()
    for cycle in range(2):
        expected = buffer.clone()
        stash.offload_storage("buffer", buffer)
        assert buffer.untyped_storage().nbytes() == 0
        stash.onload(torch.device("cpu"))
        assert torch.equal(buffer, expected) and weight.data_ptr() == buffer.data_ptr()
        weight.add_(1)  # an optimizer writing through the view reaches the buffer
        assert torch.equal(buffer[:8], expected[:8] + 1) and torch.equal(bias, expected[8:])
        assert torch.equal(stash.buffers["buffer"], expected)


def test_a_view_into_part_of_a_storage_is_refused():
    with pytest.raises(ValueError, match="whole storage"):
        HostStash().offload_storage("part", torch.zeros(10)[2:])
