"""
What training a GPT holds in each rank's memory, from its settings alone: the weights, their
gradients, the optimizer's state and the activations that a micro-batch keeps for the backward
pass. train.py prints it before it builds the model, and on a GPU too small for it stops and names
a setting that would make it fit; with auto_batch_size it takes the largest micro-batch that fits.

Weights and gradients are float32 (4 bytes a parameter), AdamW keeps two moments (8 bytes), Muon
one (4 bytes); FSDP splits each parameter's rows over the ranks, and on GPUs gathers a block's
parameters at a time, in bfloat16 (the "gathered" part, for the block in use and the next).
The activations are what the autograd graph saves: per token and layer about 20 x n_embd numbers
(28 with dropout, whose masks it keeps), and per token the logits with their float32 gradient;
with activation checkpointing, each layer keeps only its input, and one block is recomputed at a
time. Measured on a CPU (tests/test_memory.py), these are within a few percent of what PyTorch saves.
"""

import math

import torch

from model import GPT

GB = 1e9


def estimate(config, batch_size, world_size=1, fsdp=False, muon=False, half=False, activation_checkpointing=False,
             ema=False):
    """{part: bytes} that one rank holds to train a GPT of config (a GPTConfig) on micro-batches of
    batch_size x config.block_size tokens; half: activations in bfloat16 or float16 (autocast);
    ema: a moving average of the weights in the optimizer's state."""
    with torch.device("meta"):  # the parameters' shapes, without their memory
        model = GPT(config)
    in_muon = {id(p) for p in model.transformer.h.parameters() if p.dim() == 2} if muon else set()
    shards = world_size if fsdp else 1
    weights = optimizer = 0
    for p in model.parameters():
        rows = math.ceil(p.shape[0] / shards)  # FSDP splits dim 0, padded to a multiple of the ranks
        numel = rows * p[0].numel() if p.dim() > 1 else rows
        weights += 4 * numel
        optimizer += ((4 if id(p) in in_muon else 8) + (4 if ema else 0)) * numel
    C, V, L = config.n_embd, config.vocab_size, config.n_layer
    per_block = (28 if config.dropout > 0 else 20) * C
    kept = L * C + per_block if activation_checkpointing else L * per_block
    tokens = batch_size * config.block_size
    parts = dict(weights=weights, gradients=weights, optimizer=optimizer,
                 activations=tokens * ((kept + 2 * C + V) * (2 if half else 4) + 4 * V))
    if fsdp:  # the whole parameters of the block in use and of the next, gathered
        block = sum(p.numel() for p in model.transformer.h[0].parameters())
        parts["gathered"] = 2 * block * (2 if half else 4)
    return parts


def describe(parts):
    """'weights 0.50 GB, gradients 0.50 GB, ...: 2.31 GB', in MB where the total is under a GB."""
    unit, scale = ("GB", GB) if sum(parts.values()) >= GB else ("MB", 1e6)
    return ", ".join(f"{name} {size / scale:.2f} {unit}" for name, size in parts.items()) + \
        f": {sum(parts.values()) / scale:.2f} {unit}"


def what_fits(config, batch_size, world_size, fsdp, muon, half, activation_checkpointing, capacity, ema=False):
    """None if the estimate fits in capacity bytes (with a tenth left for PyTorch's own), else one
    line that says what would make it fit: activation checkpointing, FSDP over the ranks there are,
    a smaller batch_size (its tokens kept by gradient accumulation), or more GPUs."""
    usable = 0.9 * capacity

    def need(**changes):
        settings = dict(batch_size=batch_size, fsdp=fsdp, activation_checkpointing=activation_checkpointing)
        settings.update(changes)
        return sum(estimate(config, world_size=world_size, muon=muon, half=half, ema=ema, **settings).values())

    if need() <= usable:
        return None
    line = (f"this run needs about {need() / GB:.1f} GB a GPU, more than the {usable / GB:.1f} GB it can use of "
            f"{capacity / GB:.1f} GB")
    if not activation_checkpointing and need(activation_checkpointing=True) <= usable:
        checkpointed = need(activation_checkpointing=True) / GB
        return f"{line}: --activation_checkpointing=True makes it about {checkpointed:.1f} GB"
    if not fsdp and world_size > 1 and need(fsdp=True, activation_checkpointing=True) <= usable:
        return (f"{line}: --fsdp=True --activation_checkpointing=True shard it over the {world_size} GPUs, "
                f"about {need(fsdp=True, activation_checkpointing=True) / GB:.1f} GB each")
    for smaller in (batch_size // 2 ** k for k in range(1, batch_size.bit_length())):
        if need(batch_size=smaller, activation_checkpointing=True) <= usable:
            return (f"{line}: --batch_size={smaller} --activation_checkpointing=True fit (set total_batch_size to keep "
                    f"the tokens a step)")
    more = "more GPUs" if fsdp else "--fsdp=True over more GPUs"
    return f"{line}, even at batch_size=1 with activation checkpointing: {more}"


def fitting_batch_sizes(config, batch_sizes, world_size, fsdp, muon, half, activation_checkpointing, capacity,
                        ema=False):
    """Those of batch_sizes whose estimate fits in capacity bytes (a tenth left, as what_fits leaves),
    largest first."""
    settings = dict(fsdp=fsdp, muon=muon, half=half, activation_checkpointing=activation_checkpointing, ema=ema)
    return [b for b in sorted(batch_sizes, reverse=True)
            if sum(estimate(config, b, world_size, **settings).values()) <= 0.9 * capacity]
