"""
The checkpoint format, written by train.py and read by train.py (resume), sample.py, serve.py,
export.py and hellaswag.py; and load_model, which gives those scripts a model and its tokenizer
from a checkpoint or from GPT-2's weights.

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

import glob
import os
import shutil
import sys

import torch

from atomic import write_atomically
from hf import from_pretrained
from model import GPT, MODERN_SWITCHES, GPTConfig
from tokenizer import get_tokenizer


# what makes a model's shape: a run that resumes keeps all of them, a fine-tuned model all but its context
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", *MODERN_SWITCHES)


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


def model_from_checkpoint(ckpt, dropout=None):
    """The checkpoint's GPT, with its weights; dropout, if given, replaces the saved run's."""
    args = ckpt["model_args"] if dropout is None else {**ckpt["model_args"], "dropout": dropout}
    model = GPT(GPTConfig(**args))
    model.load_state_dict(ckpt["model"])
    return model


def shape_mismatch(ckpt, asked, keys=SHAPE_KEYS):
    """The first of keys that asked (a dict of settings) sets otherwise than the checkpoint's model
    has it, as (key, the checkpoint's value, the asked value); None when they agree."""
    saved = vars(GPTConfig(**ckpt["model_args"]))  # checkpoints older than a switch get its default
    for key in keys:
        if key in asked and asked[key] != saved[key]:
            return key, saved[key], asked[key]
    return None


def rng_state(device_type):
    """This process's random generators, one entry of a checkpoint's per-rank rng list."""
    state = {"cpu": torch.get_rng_state()}
    if device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def training_checkpoint(model, optimizer, scaler, loader, rngs, **fields):
    """A training run's checkpoint: the bare model and its config, the optimizer, the loss scaler,
    the train loader's position, every rank's rng_state, and fields (iter_num, best_val_loss,
    config, meta, log_offset)."""
    return dict(model=model.state_dict(), model_args=vars(model.config), optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict(), loader=loader.state_dict(), rng=rngs, **fields)


def restore_training(ckpt, optimizer, scaler, loader, rank, world_size, device_type):
    """Put a resumed run where its checkpoint left off, so that it goes on bit for bit as if it had
    never stopped; returns (iter_num, best_val_loss). The model comes from model_from_checkpoint."""
    # The checkpoint gives the moments and step counts; betas, weight decay and the fused kernel are
    # this run's (load_state_dict would otherwise bring back the saved run's settings over them).
    saved = ckpt["optimizer"]
    groups = [{**old, **{k: v for k, v in new.items() if k != "params"}}
              for old, new in zip(saved["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({**saved, "param_groups": groups})
    if ckpt["scaler"]:  # empty when the run did not scale (bf16/fp32): then nothing to restore
        scaler.load_state_dict(ckpt["scaler"])
    loader.load_state_dict(ckpt["loader"])
    # each rank takes up its own dropout stream; with another number of ranks, they keep the fresh seeds
    if len(ckpt["rng"]) == world_size:
        torch.set_rng_state(ckpt["rng"][rank]["cpu"])
        if device_type == "cuda" and "cuda" in ckpt["rng"][rank]:
            torch.cuda.set_rng_state(ckpt["rng"][rank]["cuda"])
    return ckpt["iter_num"], ckpt["best_val_loss"]


def find_run(out_dir, checkpoint="ckpt.pt"):
    """The run to read: out_dir as given; with none given, the directory here whose checkpoint was
    written last, which is where train.py just trained (saying so on stderr)."""
    if out_dir:
        return out_dir
    paths = glob.glob(os.path.join("*", checkpoint))
    if not paths:
        raise FileNotFoundError(f"no training run here (no */{checkpoint}): train one with `python train.py`, "
                                "or give --out_dir=DIR, or --init_from=gpt2")
    newest = os.path.dirname(max(paths, key=os.path.getmtime))
    print(f"{newest}: the newest run here (--out_dir=DIR picks another)", file=sys.stderr)
    return newest


def load_model(init_from, out_dir, checkpoint="ckpt.pt"):
    """What sample.py and serve.py generate with: the model, the tokenizer of the data it was trained
    on, and the checkpoint's iter_num, best_val_loss and dataset (None for GPT-2 weights). init_from is 'resume'
    (out_dir/checkpoint; no out_dir: find_run's), a GPT-2 preset or a local HF directory. Errors are
    OSError or ValueError."""
    if init_from == "resume":
        path = os.path.join(find_run(out_dir, checkpoint), checkpoint)
        if not os.path.isfile(path):
            runs = sorted(os.path.dirname(p) for p in glob.glob(f"*/{checkpoint}"))
            raise FileNotFoundError(f"no checkpoint at {path}: train one first, or point --out_dir at a run"
                                    + (f" (runs here: {', '.join(runs)})" if runs else ""))
        ckpt = load_checkpoint(path)
        model, tokenizer = model_from_checkpoint(ckpt), get_tokenizer(ckpt["meta"])
        trained = {"iter_num": ckpt["iter_num"], "best_val_loss": float(ckpt["best_val_loss"]),
                   "dataset": ckpt.get("config", {}).get("dataset")}
    else:
        model, tokenizer = from_pretrained(init_from), get_tokenizer({"tokenizer": "gpt2"})
        trained = {"iter_num": None, "best_val_loss": None, "dataset": None}
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise ValueError("the model's weights contain NaN or inf: this checkpoint is broken; "
                         "try --checkpoint=best.pt or an earlier run")
    return model, tokenizer, trained
