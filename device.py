"""
Where a run computes and in what precision: the device ("auto" picks CUDA, then Apple's MPS, then
the CPU), the dtype ("auto": bfloat16 on GPUs that have it natively, float16 on older ones,
float32 on a CPU), the autocast that applies it, and the GPUs' peak FLOP/s that MFU is taken against.
"""

from contextlib import nullcontext

import torch

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' data sheets.
# Matched in order against the device name, so the more specific names come first.
GPU_PEAK_FLOPS = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM; reports itself as "NVIDIA H100 80GB HBM3"
    ("H200", 989e12),  # GH200 too
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", None),  # AWS's A10 variant: no published figure, so no guess
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("RTX A6000", 155e12),
    ("MI300X", 1307e12),
]


def fast_bfloat16(device_type):
    """Whether bfloat16 matrix products are faster than float32's here: on GPUs, and on CPUs with
    AVX-512 BF16 or AMX; elsewhere (most laptops) they are emulated, several times slower."""
    if device_type != "cpu":
        return device_type == "cuda"
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def pick_device(local_rank=0):
    if torch.cuda.is_available():
        return f"cuda:{local_rank}"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(device, dtype="auto"):
    """Refuse, with the reason and the fix, a device that this machine or this torch build lacks,
    or an unknown dtype, rather than fail later deep inside torch. "auto" passes."""
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: use auto, {', '.join(DTYPES)}")
    if device == "auto":
        return
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
        raise ValueError(f"device={device} but {why}: use --device=cpu, or leave device=auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={device} but there are {torch.cuda.device_count()} GPUs: "
                         f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device=mps but Metal (MPS) is not available here: use --device=cpu, or leave device=auto")


def resolve_device(device, dtype, local_rank=0):
    """The device and dtype to run on, "auto" settled: a GPU if there is one, under torchrun the
    process's own (cuda:LOCAL_RANK, which plain "cuda" also means, as in nanoGPT), and its best
    dtype. ValueError, as check_device's, for what this machine lacks."""
    check_device(device, dtype)
    if device == "auto":
        device = pick_device(local_rank)
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    return device, pick_dtype(device) if dtype == "auto" else dtype


def autocast_for(device, dtype):
    """Mixed precision in dtype on device; float32 runs as it is."""
    return nullcontext() if dtype == "float32" else torch.autocast(torch.device(device).type, dtype=DTYPES[dtype])


def pick_dtype(device):
    """bf16 where the GPU has it natively (compute capability 8+; emulated it is slower than
    fp16), fp16 (with loss scaling) on older GPUs, fp32 elsewhere."""
    if torch.device(device).type == "cuda":
        return "bfloat16" if torch.cuda.get_device_capability(device)[0] >= 8 else "float16"
    return "float32"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def gpu_peak_flops(device_name):
    """The bf16 peak of a GPU named like torch.cuda.get_device_name(), or None if unknown."""
    for key, peak in GPU_PEAK_FLOPS:
        if key in device_name:
            return peak
    return None
