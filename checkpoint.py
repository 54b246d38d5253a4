"""
The checkpoint format, written by train.py and read by train.py (resume), sample.py, serve.py and export.py.

A checkpoint is one torch.save'd dict of tensors and plain values, so that it loads with
torch.load(weights_only=True) and nothing is ever unpickled:
    model        state_dict of the bare GPT (never DDP- or compile-wrapped)
    model_args   GPTConfig fields
    optimizer    AdamW state_dict, or AdamW's and Muon's as one (optim.ChainedOptimizer);
                 scaler: GradScaler state_dict
    iter_num     optimizer steps taken;  best_val_loss
    config       train.py's whole configuration
    meta         the dataset's meta.json (tokenizer, vocab), so sampling needs no data directory
    rng          per-rank CPU (and CUDA) generator states
    loader       the train loader's position;  log_offset: bytes of log.jsonl written so far
"""

import os
import shutil

import torch

from atomic import write_atomically
from model import GPT, GPTConfig


def save_checkpoint(ckpt, path):
    write_atomically(path, lambda tmp: torch.save(ckpt, tmp))


def copy_checkpoint(source, path):
    write_atomically(path, lambda tmp: shutil.copyfile(source, tmp))


def load_checkpoint(path, device="cpu"):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...: one clear line rather than a deep traceback
        raise ValueError(f"{path} is not a readable checkpoint (truncated or not ours?): {e}") from None


def model_from_checkpoint(ckpt):
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model
