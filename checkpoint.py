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

A run trained with FSDP (train.py --fsdp=True) writes its checkpoints sharded instead, each rank
its part, with torch.distributed.checkpoint: out_dir/ckpt.pt is then the directory out_dir/ckpt/,
its model and optimizer in shards that any number of ranks can read back, and the other fields
in its train.pt. load_checkpoint reads either kind whole, so every script reads an FSDP run as
any other. Only read sharded checkpoints you made: their index (.metadata) is a pickle.
"""

import glob
import os
import shutil
import sys
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from atomic import live_dir, replace_dir, write_atomically
from hf import from_pretrained
from model import GPT, MODERN_SWITCHES, GPTConfig
from tokenizer import get_tokenizer


# what makes a model's shape: a run that resumes keeps all of them, a fine-tuned model all but its context
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", *MODERN_SWITCHES)


def save_checkpoint(ckpt, path):
    write_atomically(path, lambda tmp: torch.save(ckpt, tmp))


def copy_checkpoint(source, path):
    write_atomically(path, lambda tmp: shutil.copyfile(source, tmp))


def load_checkpoint(path, device="cpu", weights=True):
    """A checkpoint file, or the sharded checkpoint in its place, whole. weights=False reads only a
    sharded checkpoint's other fields, as a resumed FSDP run loads its shards itself (restore_shards);
    a file is read whole either way."""
    shards = live_dir(sharded(path))
    if not os.path.isfile(path) and shards:
        return read_sharded(shards, device, weights)
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


def checkpoint_exists(path):
    return os.path.isfile(path) or live_dir(sharded(path)) is not None


# -----------------------------------------------------------------------------
# sharded checkpoints, as FSDP runs write them

FIELDS = "train.pt"  # a sharded checkpoint's fields but the model and the optimizer, in its directory


def sharded(path):
    """Where the sharded form of the checkpoint file path lives: out_dir/ckpt.pt -> out_dir/ckpt."""
    return os.path.splitext(path)[0]


def optimizers(optimizer):
    return getattr(optimizer, "optimizers", [optimizer])  # optim.ChainedOptimizer's, or the one


def save_shards(fields, model, optimizer, path):
    """Every rank calls this: each writes its shards of the FSDP model and of the optimizer, rank 0
    the other fields. The directory takes the place of the one before only once it is whole."""
    directory = sharded(path)
    tmp = f"{directory}.tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # what a save that died part way left
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizers(optimizer))
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp)
    if dist.get_rank() == 0:
        torch.save(fields, os.path.join(tmp, FIELDS))
        replace_dir(tmp, directory)
    dist.barrier()


def copy_shards(source, path):
    """Rank 0 copies the sharded checkpoint of source to path's place, whole or not at all."""
    directory = sharded(path)
    shutil.rmtree(f"{directory}.tmp", ignore_errors=True)
    shutil.copytree(sharded(source), f"{directory}.tmp")
    replace_dir(f"{directory}.tmp", directory)


def restore_shards(path, model, optimizer):
    """Every rank calls this: the FSDP model and the optimizer take their shards of the sharded
    checkpoint of path, however many ranks wrote it. As in restore_training, the optimizer keeps
    this run's settings (betas, weight decay, fused kernel) and takes the saved moments and steps."""
    model_state, optimizer_state = get_state_dict(model, optimizers(optimizer))
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=live_dir(sharded(path)))
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    set_state_dict(model, optimizers(optimizer), model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    for group, mine in zip(optimizer.param_groups, settings):
        group.update(mine)


def read_sharded(directory, device, weights):
    """A sharded checkpoint read in one process, without torchrun: its fields, and with weights
    its model's whole tensors (its optimizer's shards are left where they are)."""
    try:
        ckpt = torch.load(os.path.join(directory, FIELDS), map_location=device, weights_only=True)
        if weights:
            state = {"model": GPT(GPTConfig(**ckpt["model_args"])).state_dict()}
            with warnings.catch_warnings():  # that no process group is there is what no_dist says
                warnings.filterwarnings("ignore", "torch.distributed is disabled")
                dcp.load(state, checkpoint_id=directory, no_dist=True)
            ckpt["model"] = {name: tensor.to(device) for name, tensor in state["model"].items()}
    except Exception as e:
        raise ValueError(f"{directory} is not a readable sharded checkpoint (cut short or not ours?): {e}") from None
    return ckpt


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


def restore_training(ckpt, optimizer, scaler, loader, rank, world_size, device_type):
    """Put a resumed run where its checkpoint left off, so that it goes on bit for bit as if it had
    never stopped; returns (iter_num, best_val_loss). The model comes from model_from_checkpoint
    (or restore_shards)."""
    # The checkpoint gives the moments and step counts; betas, weight decay and the fused kernel are
    # this run's (load_state_dict would otherwise bring back the saved run's settings over them). A
    # sharded checkpoint has none here: its ranks have read their shards (restore_shards).
    if "optimizer" in ckpt:
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


def runs_here(checkpoint):
    """{run directory: its checkpoint's file} for the runs in the working directory that have a
    checkpoint of that name, a file or sharded (then its FIELDS file, written last)."""
    runs = {os.path.dirname(path): path for path in glob.glob(os.path.join("*", checkpoint))}
    for path in glob.glob(os.path.join("*", sharded(checkpoint), FIELDS)):
        runs[os.path.dirname(os.path.dirname(path))] = path
    return runs


def find_run(out_dir, checkpoint="ckpt.pt"):
    """The run to read: out_dir as given; with none given, the directory here whose checkpoint was
    written last, which is where train.py just trained (saying so on stderr)."""
    if out_dir:
        return out_dir
    runs = runs_here(checkpoint)
    if not runs:
        raise FileNotFoundError(f"no training run here (no */{checkpoint}): train one with `python train.py`, "
                                "or give --out_dir=DIR, or --init_from=gpt2")
    newest = max(runs, key=lambda run: os.path.getmtime(runs[run]))
    print(f"{newest}: the newest run here (--out_dir=DIR picks another)", file=sys.stderr)
    return newest


def load_model(init_from, out_dir, checkpoint="ckpt.pt"):
    """What sample.py and serve.py generate with: the model, the tokenizer of the data it was trained
    on, and the checkpoint's iter_num, best_val_loss and dataset (None for GPT-2 weights) with the run's
    out_dir, find_run's where none is given (None for GPT-2 weights). init_from is 'resume'
    (out_dir/checkpoint), a GPT-2 preset or a local HF directory. Errors are OSError or ValueError."""
    if init_from == "resume":
        out_dir = find_run(out_dir, checkpoint)
        path = os.path.join(out_dir, checkpoint)
        if not checkpoint_exists(path):
            runs = sorted(runs_here(checkpoint))
            raise FileNotFoundError(f"no checkpoint at {path}: train one first, or point --out_dir at a run"
                                    + (f" (runs here: {', '.join(runs)})" if runs else ""))
        ckpt = load_checkpoint(path)
        model, tokenizer = model_from_checkpoint(ckpt), get_tokenizer(ckpt["meta"])
        trained = {"iter_num": ckpt["iter_num"], "best_val_loss": float(ckpt["best_val_loss"]),
                   "dataset": ckpt.get("config", {}).get("dataset"), "out_dir": out_dir}
    else:
        model, tokenizer = from_pretrained(init_from), get_tokenizer({"tokenizer": "gpt2"})
        trained = {"iter_num": None, "best_val_loss": None, "dataset": None, "out_dir": None}
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise ValueError("the model's weights contain NaN or inf: this checkpoint is broken; "
                         "try --checkpoint=best.pt or an earlier run")
    return model, tokenizer, trained
