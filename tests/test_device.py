import pytest

from conftest import tiny_model
from device import gpu_peak_flops


def test_mfu_peaks():
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_peak_flops("NVIDIA A10G") is None
    assert gpu_peak_flops("NVIDIA L4") == 121e12
    model = tiny_model(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8)
    assert model.estimate_mfu(1e6, gpu_peak_flops("Some Future GPU")) is None
    assert model.estimate_mfu(1e6, 1e15) == pytest.approx(model.flops_per_token() * 1e6 / 1e15)
