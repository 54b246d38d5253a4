"""
Train a GPT on a CPU, one GPU, or many GPUs on one or several nodes.

  python prepare_shakespeare.py && python train.py                          # the defaults: a char model
  python train.py config/train_shakespeare_char_cpu.py                      # a laptop CPU
  torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py    # GPT-2 on one 8-GPU node
  torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
      --rdzv_endpoint=HOST:29500 train.py config/train_gpt2.py              # each of 2 nodes
  torchrun --standalone --nproc_per_node=8 train.py config/X.py --fsdp=True # a model past one GPU's memory
  sbatch train.sbatch config/train_gpt2.py                                  # Slurm, requeued on preemption

Config files and --key=value (or --key value) flags change the defaults below, left to right.
The same command again resumes the run where its checkpoint left it (init_from=auto).
"""

import json
import math
import os
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

import hellaswag
from atomic import write_atomically, write_json
from chat_template import CHAT_TOKENS
from checkpoint import (
    SHAPE_KEYS,
    checkpoint_exists,
    copy_checkpoint,
    copy_shards,
    load_checkpoint,
    model_from_checkpoint,
    restore_shards,
    restore_training,
    rng_state,
    save_checkpoint,
    save_shards,
    shape_mismatch,
)
from configurator import configure
from data import ShardLoader, dataset_dir, read_meta, whole_split_batches
from device import DTYPES, autocast_for, gpu_peak_flops, resolve_device
from evaluate import in_units, loss_sums
from hf import from_pretrained
from memory import describe, estimate, fitting_batch_sizes, what_fits
from model import GPT, MODERN_SWITCHES, PRESETS, GPTConfig
from optim import COEFFICIENTS, WeightAverage, configure_optimizers
from plot import BackgroundPlot
from tokenizer import get_tokenizer, token_ids

# -----------------------------------------------------------------------------
# The defaults train nanoGPT's small character-level model on Tiny Shakespeare, which ships with the
# repo (python prepare_shakespeare.py first): minutes on a GPU. GPT-2 (124M) is config/train_gpt2.py.
DEFAULTS = dict(
    # I/O
    out_dir="",  # checkpoints and log.jsonl; empty: out-<dataset>, e.g. out-shakespeare-char
    eval_interval=250,
    log_interval=10,
    eval_iters=200,  # val batches per eval, over all ranks together, at most one pass; 0: the whole val split
    eval_only=False,  # evaluate once and exit
    always_save_checkpoint=True,  # False: ckpt.pt only when val loss improves, and at the end
    # 'auto': resume the run in out_dir if its checkpoint is there, else start from scratch;
    # 'scratch', 'resume' (out_dir/ckpt.pt), 'gpt2'...'gpt2-xl' or a local Hugging Face directory to fine-tune,
    # or another run to fine-tune: its out_dir (its ckpt.pt) or a checkpoint file
    init_from="auto",
    # HellaSwag accuracy every hellaswag_interval steps and at the end (GPT-2 tokens only); 0 is off
    hellaswag_interval=0,
    hellaswag_file="",  # JSON lines as hellaswag.py reads them; empty: data/hellaswag/, downloaded on first use
    # lm-evaluation-harness tasks scored at the end (as harness.py does), comma-separated: arc_easy,piqa; and
    # a folder of task YAML files of your own
    harness_tasks="",
    harness_include_path="",
    # wandb logging (optional: pip install wandb)
    wandb_log=False,
    wandb_project="gpt",
    wandb_run_name="run",
    # data
    dataset="shakespeare_char",  # a directory under data/, or a path to one
    gradient_accumulation_steps=1,  # micro-steps per optimizer step, over all ranks together
    total_batch_size=None,  # tokens per optimizer step; when set, gradient_accumulation_steps follows from it
    batch_size=64,  # sequences per micro-step, per rank
    auto_batch_size=False,  # True: batch_size becomes the most sequences a micro-step that fit (total_batch_size kept)
    block_size=256,
    # model
    n_layer=6,
    n_head=6,
    n_embd=384,
    dropout=0.2,
    bias=True,  # GPT-2 has biases; only a bias=True model exports to Hugging Face
    activation_checkpointing=False,  # recompute block activations in backward: less memory, more compute
    # beyond GPT-2, each off by default (model.GPTConfig); a model that sets any does not export to Hugging Face
    rope=False,  # rotary position embeddings instead of learned ones
    norm="layernorm",  # or "rmsnorm"
    qk_norm=False,
    mlp_act="gelu",  # or "relu2"
    tie_embeddings=True,
    zero_init_proj=False,
    logit_softcap=0.0,  # 0 is off; e.g. 15
    value_embeddings=False,  # every other layer adds a token embedding of its own to attention's values
    x0_mixing=False,  # each block reads a learned mix of the residual stream and the input embedding
    unet_skips=False,  # the second half's blocks each add a learned share of a first-half block's output
    bigram_hash=0,  # 0 is off; e.g. 5 * vocab_size: rows of a table of hashed (previous, current) token pairs
    # optimizer: "adamw", or "muon" for the blocks' matrices with AdamW (the settings below) for the rest
    optimizer="adamw",
    muon_lr=0.02,  # Muon's peak rate; the schedule scales it as it scales learning_rate
    muon_momentum=0.95,
    muon_weight_decay=0.0,
    muon_cautious_wd=False,  # decay only the weights that the update moves towards zero as well
    muon_coefficients="jordan",  # Newton-Schulz's: "jordan", or "polar_express" (a polynomial a step)
    muon_beta2=0.0,  # 0 is off; e.g. 0.9: NorMuon's running mean of each neuron's squared update evens them
    ema_decay=0.0,  # 0 is off; e.g. 0.99: evals score, and checkpoints save, a moving average of the weights
    # AdamW
    learning_rate=1e-3,  # a small model takes a higher rate than GPT-2's 6e-4
    max_iters=5000,
    weight_decay=1e-1,
    beta1=0.9,
    beta2=0.99,  # GPT-2 used 0.95; few tokens per step make for noisier gradients
    grad_clip=1.0,  # 0 disables clipping
    # learning rate: linear warmup, then cosine decay to min_lr at lr_decay_iters. Unset, they follow the
    # run; a resumed run keeps the values its first start settled on.
    decay_lr=True,
    warmup_iters=None,  # None: 5% of max_iters, at most 100
    lr_decay_iters=None,  # None: max_iters
    min_lr=None,  # None: learning_rate / 10
    # ramps: train on the first rows of each batch, and the first tokens of each row, growing linearly to all
    # of them at ramp_iters: cheaper steps while the model learns what short contexts teach (GPT-3 warmed its
    # batch size up; Li et al., 2022, the sequence length). None: the whole batch from the first step.
    batch_size_start=None,
    block_size_start=None,
    ramp_iters=0,
    # system
    backend="auto",  # DDP backend: nccl on CUDA, gloo on CPU
    # under torchrun: shard the parameters, gradients and optimizer state over the processes (PyTorch's FSDP2)
    # rather than keep a whole copy in each (DDP); checkpoints are then sharded too, each rank writing its part
    fsdp=False,
    device="auto",  # cuda, mps or cpu, whichever is present; or e.g. 'cuda:1'
    dtype="auto",  # bfloat16 on GPUs that have it natively, else float16 with loss scaling; float32 on CPU
    compile=None,  # torch.compile; None: on CUDA only (on a CPU compiling costs more than it saves)
    # deterministic kernels, slower on GPUs, so that runs (and a resumed run against an uninterrupted one)
    # can agree bit for bit on CUDA too: flash attention's backward otherwise sums in a varying order
    deterministic=False,
    seed=1337,
)


def fail(message):
    # under torchrun every rank meets the same bad input: one of them says so
    raise SystemExit(f"error: {message}" if os.environ.get("RANK", "0") == "0" else 1)


def or_fail(fn, *args, **kwargs):
    """Bad input (a missing file, a corrupt shard) ends the run with one line, not a traceback."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError) as e:
        fail(e)


# -----------------------------------------------------------------------------
# configuration: the defaults, config files and flags, and the checkpoint of a run that goes on

def configuration(argv):
    """(config, overrides, ckpt): the run's settings, what argv set (config files and flags), and the
    checkpoint that it resumes, or None. Nothing is touched yet but reading that checkpoint."""
    config, overrides = configure(DEFAULTS, argv, usage=__doc__)
    if not config["out_dir"]:
        config["out_dir"] = "out-" + os.path.basename(os.path.normpath(config["dataset"])).replace("_", "-")
    out_dir = config["out_dir"]
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        fail(f"out_dir={out_dir} is a file, not a directory: choose another --out_dir")

    # init_from=auto: the run in out_dir goes on if its checkpoint is there, else this one starts from
    # scratch. A cluster that requeues a preempted job runs the same command again, and the run continues.
    ckpt, ckpt_path = None, os.path.join(out_dir, "ckpt.pt")
    if config["init_from"] == "auto":
        if checkpoint_exists(ckpt_path):
            ckpt = or_fail(load_checkpoint, ckpt_path, weights=False)
            why = other_run(ckpt, config)
            if why:
                fail(f"{out_dir} holds the checkpoint of another run ({why}): give this run an --out_dir of its "
                     f"own, or pass --init_from=scratch to start over there, replacing that checkpoint")
        config["init_from"] = "resume" if ckpt else "scratch"

    # Resuming starts from the run's own saved config; what this command line sets goes on top.
    if config["init_from"] == "resume":
        ckpt = ckpt or or_fail(load_checkpoint, ckpt_path, weights=False)
        mismatch = shape_mismatch(ckpt, overrides)
        if mismatch:
            key, saved, asked = mismatch
            fail(f"{key}={asked} but the checkpoint in {out_dir} has {key}={saved}: a resumed model keeps its "
                 "shape; use a new out_dir to change it")
        saved_optimizer = ckpt["config"].get("optimizer", "adamw")
        if overrides.get("optimizer", saved_optimizer) != saved_optimizer:
            fail(f"optimizer={overrides['optimizer']} but the run in {out_dir} trains with {saved_optimizer}: "
                 "a resumed run keeps its optimizer; use a new out_dir to change it")
        saved_fsdp = ckpt["config"].get("fsdp", False)
        if overrides.get("fsdp", saved_fsdp) != saved_fsdp:
            fail(f"fsdp={overrides['fsdp']} but the run in {out_dir} trains with fsdp={saved_fsdp}, and its "
                 "checkpoint is written so: a resumed run keeps it; use a new out_dir to change it")
        saved_ema = ckpt["config"].get("ema_decay", 0.0)
        if saved_ema and overrides.get("ema_decay") == 0:
            fail(f"ema_decay=0 but the run in {out_dir} averages its weights (ema_decay={saved_ema}), and its "
                 "checkpoint holds the average as the model: a resumed run keeps averaging; use a new out_dir")
        saved = {k: v for k, v in ckpt["config"].items() if k in DEFAULTS}
        config = {**DEFAULTS, **saved, **overrides, "init_from": "resume"}

    # Unset, the schedule follows the run. Settled here once, it is saved with the config, so that a
    # resumed run keeps it even when its max_iters changes.
    if config["warmup_iters"] is None:
        config["warmup_iters"] = min(100, config["max_iters"] // 20) if isinstance(config["max_iters"], int) else None
    if config["lr_decay_iters"] is None:
        config["lr_decay_iters"] = config["max_iters"]
    if config["min_lr"] is None and isinstance(config["learning_rate"], (int, float)):
        config["min_lr"] = config["learning_rate"] / 10
    check_config(config)
    return config, overrides, ckpt


def other_run(ckpt, config):
    """Why a checkpoint is not of the run that config describes, or None when it is. A run is its
    data, the shape of its model and its optimizer; the rest may change when it resumes."""
    saved_dataset = ckpt["config"].get("dataset", config["dataset"])
    if os.path.abspath(dataset_dir(saved_dataset)) != os.path.abspath(dataset_dir(config["dataset"])):
        return f"dataset={saved_dataset!r} there, {config['dataset']!r} here"
    for key, default in (("optimizer", "adamw"), ("fsdp", False)):
        saved = ckpt["config"].get(key, default)
        if saved != config[key]:
            return f"{key}={saved!r} there, {config[key]!r} here"
    mismatch = shape_mismatch(ckpt, config)
    return mismatch and f"{mismatch[0]}={mismatch[1]!r} there, {mismatch[2]!r} here"


def check_config(config):
    """Values that would otherwise fail deep inside torch, or quietly train nonsense."""
    at_least = dict(eval_interval=1, log_interval=1, eval_iters=0, batch_size=1, block_size=1, n_layer=1, n_head=1,
                    n_embd=1, gradient_accumulation_steps=1, max_iters=0, warmup_iters=0, lr_decay_iters=0,
                    hellaswag_interval=0, ramp_iters=0)
    if config["auto_batch_size"] and config["total_batch_size"] is None:
        fail("auto_batch_size=True keeps the tokens of an optimizer step: set them with --total_batch_size, "
             "e.g. 524288 (GPT-2's)")
    for key, low in at_least.items():
        if not isinstance(config[key], int) or config[key] < low:
            fail(f"{key}={config[key]!r}: it must be a whole number, at least {low}")
    # the schedule scales every group's rate by lr / learning_rate
    if config["learning_rate"] is None or config["learning_rate"] <= 0:
        fail(f"learning_rate={config['learning_rate']!r}: it must be a positive number")
    for key in ("min_lr", "weight_decay", "grad_clip", "muon_lr", "muon_momentum", "muon_weight_decay"):
        if config[key] is None or config[key] < 0:
            fail(f"{key}={config[key]!r}: it must be a number, 0 or more")
    for key in ("dropout", "beta1", "beta2", "muon_beta2", "ema_decay"):
        if config[key] is None or not 0 <= config[key] < 1:
            fail(f"{key}={config[key]!r}: it must lie in [0, 1)")
    for key, full in (("batch_size_start", "batch_size"), ("block_size_start", "block_size")):
        start = config[key]
        if start is not None and (not isinstance(start, int) or not 1 <= start <= config[full]):
            fail(f"{key}={start!r}: give a whole number from 1 to {full}={config[full]}, or None")
        if start is not None and not config["ramp_iters"]:
            fail(f"{key}={start} with ramp_iters=0: give the steps over which it grows to {full}, e.g. --ramp_iters=200")
    if config["batch_size_start"] is not None and config["auto_batch_size"]:
        fail("batch_size_start with auto_batch_size=True: the batch size is not known until the run starts; "
             "set --batch_size")
    if config["n_embd"] % config["n_head"]:
        fail(f"n_embd={config['n_embd']} is not divisible by n_head={config['n_head']}: each head takes "
             "n_embd / n_head channels")
    total = config["total_batch_size"]
    if total is not None and (not isinstance(total, int) or total < 1):
        fail(f"total_batch_size={total!r}: give a number of tokens, or None")
    choices = dict(dtype=("auto", *DTYPES), backend=("auto", "nccl", "gloo"), compile=(None, True, False),
                   optimizer=("adamw", "muon"), fsdp=(False, True), auto_batch_size=(False, True),
                   muon_coefficients=tuple(COEFFICIENTS), muon_cautious_wd=(False, True))
    for key, allowed in choices.items():
        if config[key] not in allowed:
            fail(f"{key}={config[key]!r}: use one of {', '.join(map(repr, allowed))}")
    if config["fsdp"] and config["harness_tasks"]:
        fail("harness_tasks with fsdp=True: the harness scores a whole model, not shards; score the run's "
             "checkpoint with harness.py instead")
    init = config["init_from"]
    if init not in ("scratch", "resume", *PRESETS) and not os.path.exists(init):
        fail(f"init_from={init!r}: use scratch, resume, {', '.join(PRESETS)} or a local directory to fine-tune: a "
             "Hugging Face model's, or a run's out_dir")


# -----------------------------------------------------------------------------
# processes, devices and batches

def start_processes(c):
    """This process's place and device: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE, on every node."""
    distributed = "RANK" in os.environ
    rank, local_rank, world_size = ((int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]),
                                     int(os.environ["WORLD_SIZE"])) if distributed else (0, 0, 1))
    if c.fsdp and not distributed:
        fail("fsdp=True shards over torchrun's processes: launch with `torchrun --standalone --nproc_per_node=N "
             "train.py ...` (N=1 works), or leave fsdp off")
    # the device and dtype this run uses: the settings' "auto" settled for this machine and process
    device, dtype = or_fail(resolve_device, c.device, c.dtype, local_rank)
    device_type = device.split(":")[0]
    if distributed and device_type == "cuda" and torch.device(device).index != local_rank:
        fail(f"device={device} under torchrun: each process uses cuda:LOCAL_RANK; pass --device=cuda or leave it auto")
    if device_type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 for whatever still runs in float32
    if c.fsdp and dtype == "float16":
        fail("fsdp=True trains in bfloat16 or float32: float16's loss scaling is not sharded here; use "
             "--dtype=bfloat16 (GPUs since Ampere) or --dtype=float32")
    if c.deterministic:
        # cuBLAS's fixed-order reductions; before its first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if distributed:
        dist.init_process_group(backend=("nccl" if device_type == "cuda" else "gloo") if c.backend == "auto"
                                else c.backend)
    return SimpleNamespace(distributed=distributed, rank=rank, local_rank=local_rank, world_size=world_size,
                           master=rank == 0, device=device, dtype=dtype, device_type=device_type,
                           autocast=autocast_for(device, dtype))


def batch_shape(c, world_size, batch_size):
    """(this rank's micro-steps per optimizer step, the tokens of an optimizer step over all ranks)."""
    micro_steps = c.gradient_accumulation_steps  # per optimizer step, over all ranks together
    if c.total_batch_size is not None:
        micro_tokens = batch_size * c.block_size * world_size
        if c.total_batch_size % micro_tokens:
            fits = max(1, round(c.total_batch_size / micro_tokens)) * micro_tokens
            fail(f"total_batch_size={c.total_batch_size} is not a multiple of batch_size * block_size * world_size "
                 f"= {micro_tokens}: use --total_batch_size={fits}, or another batch_size")
        micro_steps = c.total_batch_size // (batch_size * c.block_size)
    if micro_steps % world_size:
        fits = -(-micro_steps // world_size) * world_size  # the next multiple of world_size
        fail(f"gradient_accumulation_steps={micro_steps} does not divide among {world_size} processes: "
             f"use --gradient_accumulation_steps={fits}, or a number of processes that divides {micro_steps}")
    return micro_steps // world_size, micro_steps * batch_size * c.block_size


def load_data(c, p):
    """(data_dir, meta, train loader, val loader): this rank's share of the dataset's shards."""
    data_dir = dataset_dir(c.dataset)
    meta = or_fail(read_meta, data_dir)
    args = dict(batch_size=c.batch_size, block_size=c.block_size, rank=p.rank, world_size=p.world_size, seed=c.seed,
                device=p.device)
    train_loader, val_loader = (or_fail(ShardLoader, data_dir, split, **args) for split in ("train", "val"))
    return data_dir, meta, train_loader, val_loader


# -----------------------------------------------------------------------------
# the model

def build_model(c, overrides, ckpt, data_dir, meta, loaders):
    """The GPT to train, on the CPU: new, resumed, or fine-tuned from a run of ours or GPT-2's weights."""
    torch.manual_seed(c.seed)  # the same initial weights on every rank
    if c.init_from == "scratch":
        vocab_size = meta["vocab_size"] if meta else 50304  # no meta.json: GPT-2 tokens, e.g. llm.c's shards
        settings = {**vars(c), "vocab_size": vocab_size}
        model = GPT(or_fail(GPTConfig, **{f.name: settings[f.name] for f in fields(GPTConfig)}))
    elif c.init_from == "resume" and "model" in ckpt:
        model = model_from_checkpoint(ckpt, dropout=c.dropout)  # dropout may change, the shape may not
    elif c.init_from == "resume":  # a sharded checkpoint's weights: restore_shards, once the model is sharded
        model = GPT(GPTConfig(**{**ckpt["model_args"], "dropout": c.dropout}))
    elif base_checkpoint(c.init_from):  # one of our runs, of any shape: fine-tuned on this dataset
        model = fine_tuned_run(c, overrides, data_dir, meta)
    else:
        switches = GPTConfig(**{k: getattr(c, k) for k in MODERN_SWITCHES}).modern_switches()
        if switches:
            fail(f"init_from={c.init_from} loads GPT-2's architecture, which has no "
                 f"{', '.join(f'{k}={v!r}' for k, v in switches.items())}: train from scratch to use them")
        if meta and meta["tokenizer"] != "gpt2":
            fail(f"init_from={c.init_from} needs a GPT-2 BPE dataset, but {data_dir} is tokenized as "
                 f"{meta['tokenizer']}")
        model = or_fail(from_pretrained, c.init_from, dropout=c.dropout, block_size=c.block_size)
    if meta and meta["vocab_size"] > model.config.vocab_size:
        # the chat tokens of a chat dataset come after its tokenizer's own: a model of that tokenizer (OpenAI's
        # GPT-2 has 50257 ids, a char run one per character) grows rows for them, to a multiple of 64 as 50304
        if not meta.get("chat") or meta["vocab_size"] - len(CHAT_TOKENS) > model.config.vocab_size:
            fail(f"{data_dir} has {meta['vocab_size']} token ids but the model only {model.config.vocab_size}")
        model.grow_vocab(-(-meta["vocab_size"] // 64) * 64)
    # Checked once here, not found as an IndexError deep in the embedding: shards of another tokenizer,
    # or a meta.json that does not belong to them.
    for loader in loaders:
        top = loader.max_token()
        if top >= model.config.vocab_size:
            fail(f"{data_dir} holds token id {top} but the model's vocabulary has ids 0..{model.config.vocab_size - 1}"
                 f": the data was made with another tokenizer than the model's; prepare it again, or use another "
                 f"dataset")
    model.activation_checkpointing = c.activation_checkpointing
    return model


def base_checkpoint(init_from):
    """The checkpoint of the run that init_from names to fine-tune (its out_dir, or the file), or None."""
    path = init_from if os.path.isfile(init_from) else os.path.join(init_from, "ckpt.pt")
    return path if checkpoint_exists(path) else None


def fine_tuned_run(c, overrides, data_dir, meta):
    """The model of the run that init_from names, if this dataset's tokens are its tokens, cropped to block_size."""
    base = or_fail(load_checkpoint, base_checkpoint(c.init_from))
    mismatch = shape_mismatch(base, overrides, keys=[key for key in SHAPE_KEYS if key != "block_size"])
    if mismatch:
        key, saved, asked = mismatch
        fail(f"{key}={asked!r} but the run in {c.init_from} has {key}={saved!r}: a fine-tuned model keeps its shape")
    if token_ids(base["meta"]) != token_ids(meta):
        fail(f"{c.init_from} was trained on another tokenizer's tokens ({token_ids(base['meta'])[0]}) than {data_dir} "
             f"({token_ids(meta)[0]}): prepare the data with --tokenizer_from set to the dataset that the run "
             f"trained on ({base['config']['dataset']})")
    model = model_from_checkpoint(base, dropout=c.dropout)
    if c.block_size > model.config.block_size:
        fail(f"block_size={c.block_size} but the model of {c.init_from} has a context of {model.config.block_size}: "
             f"use --block_size={model.config.block_size} or less")
    model.crop_block_size(c.block_size)
    return model


def model_to_shard(c, overrides, ckpt, data_dir, meta, loaders, p):
    """FSDP: (the model to shard, the weights that its shards take: a whole state dict on rank 0, {}
    on the others). Rank 0 builds the model on its CPU as build_model does; the other ranks build its
    shape on the meta device, which allocates nothing, so a node holds it whole once, not once a GPU.
    A resumed run's ranks all build on the meta device and read their shards (weights None)."""
    if c.init_from == "resume":
        with torch.device("meta"):
            return build_model(c, overrides, ckpt, data_dir, meta, loaders), None
    model = build_model(c, overrides, ckpt, data_dir, meta, loaders) if p.master else None
    config = [model and model.config]
    dist.broadcast_object_list(config)  # the shape as rank 0 settled it (a fine-tuned run's crop, a grown vocabulary)
    if p.master:
        return model, model.state_dict()
    with torch.device("meta"):
        model = GPT(config[0])
    model.activation_checkpointing = c.activation_checkpointing
    return model, {}


def memory_settings(c, p):
    """What memory.py's estimate takes from the run, but the model and the batch."""
    return dict(fsdp=c.fsdp, muon=c.optimizer == "muon", half=p.dtype != "float32",
                activation_checkpointing=c.activation_checkpointing, ema=c.ema_decay > 0)


def check_memory(c, p, config):
    """What a rank will hold for a model of config (memory.py's estimate, {part: bytes}); on a GPU
    too small for it, one line that names a setting that would make it fit (auto_batch_size: at 1)."""
    batch_size = 1 if c.auto_batch_size else c.batch_size
    if p.device_type == "cuda":
        why = what_fits(config, batch_size, p.world_size, capacity=device_memory(p), **memory_settings(c, p))
        if why:
            fail(why)
    return estimate(config, batch_size, p.world_size, **memory_settings(c, p))


def device_memory(p):
    """Bytes that this process may fill: its GPU's, or its share of the machine's memory."""
    if p.device_type == "cuda":
        return torch.cuda.get_device_properties(p.device).total_memory
    if p.device_type == "mps":
        return torch.mps.recommended_max_memory()
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def fitting_batch_size(c, p, model):
    """auto_batch_size: the largest micro-batch that divides this rank's share of total_batch_size and
    fits: within the device's memory by memory.py's estimate, and on a GPU also in a forward and backward
    pass beside the optimizer state to come. Not under FSDP, where the ranks gather parameters together
    and one that ran out could not tell the others: there the estimate decides. The ranks take the
    smallest of their answers."""
    share = c.total_batch_size // (c.block_size * p.world_size)  # batch_shape has checked that it divides
    candidates = fitting_batch_sizes(model.config, [b for b in range(1, share + 1) if share % b == 0], p.world_size,
                                     capacity=device_memory(p), **memory_settings(c, p)) or [1]
    if p.device_type == "cuda" and not c.fsdp:
        reserve = estimate(model.config, 1, p.world_size, **memory_settings(c, p))["optimizer"]
        candidates = [next((b for b in candidates if runs_on_gpu(model, b, reserve, c, p)), 1)]
    batch_size = torch.tensor(candidates[0], device=p.device)
    if p.distributed:
        dist.all_reduce(batch_size, op=dist.ReduceOp.MIN)
    return batch_size.item()


def runs_on_gpu(model, batch_size, reserve, c, p):
    """Whether a forward and backward pass of batch_size rows runs beside reserve more bytes (the
    optimizer's state, which its first step makes); the RNG and the gradients are left as they were."""
    try:
        with torch.random.fork_rng(devices=[p.device]):
            trial_step(model, batch_size, reserve, c, p)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def trial_step(model, batch_size, reserve, c, p):
    held = torch.empty(reserve, dtype=torch.uint8, device=p.device)  # noqa: F841 (held while the pass runs)
    x = torch.zeros(batch_size, c.block_size, dtype=torch.long, device=p.device)
    with p.autocast:
        _, loss = model(x, x)
    loss.backward()


def build_optimizer(c, model, p):
    """AdamW, or Muon and AdamW, and the loss scaler that float16 needs."""
    muon = None
    if c.optimizer == "muon":
        muon = dict(lr=c.muon_lr, momentum=c.muon_momentum, weight_decay=c.muon_weight_decay,
                    coefficients=c.muon_coefficients, beta2=c.muon_beta2, cautious=c.muon_cautious_wd)
    opt = configure_optimizers(model, c.weight_decay, c.learning_rate, (c.beta1, c.beta2), p.device_type, muon)
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]  # each group's peak rate (Muon's is muon_lr), which the schedule scales
    scaler = torch.amp.GradScaler(p.device_type, enabled=p.dtype == "float16")  # loss scaling: fp16 only
    return opt, scaler


def shard(model, p):
    """FSDP2: each block a unit whose parameters are gathered for its forward and backward and freed
    after, and the root last, which holds the rest: wte with the lm_head tied to it, wpe, ln_f. On a
    GPU the gathered parameters are bfloat16 and the gradients reduced in float32."""
    low = p.device_type == "cuda" and p.dtype == "bfloat16"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if low else \
        MixedPrecisionPolicy()
    for block in model.transformer.h:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def take_shards(model, weights, p):
    """The sharded model's parameters made on the device, each rank's rows of rank 0's weights, sent
    out a tensor at a time; or, resuming (weights None), left for restore_shards to fill."""
    model.to_empty(device=p.device)
    if weights is not None:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def wrap(model, use_compile, ddp, p):
    """(the model to train: compiled where asked and in DDP where asked, the model to evaluate:
    compiled but never in DDP, since ranks may run different numbers of eval batches)."""
    if use_compile:
        try:
            model = torch.compile(model)
            # a missing compiler or Triton only shows at the first call: then warn and run that code eager
            torch._dynamo.config.suppress_errors = True
        except RuntimeError as e:  # e.g. a Python version or platform that dynamo does not support yet
            print(f"warning: torch.compile unavailable ({e}); running eager", file=sys.stderr)
    if not ddp:
        return model, model
    return DDP(model, device_ids=[p.local_rank] if p.device_type == "cuda" else None), model


# -----------------------------------------------------------------------------
# one step of training, and an evaluation

def get_lr(it, c):
    if it < c.warmup_iters:  # linear warmup that does not start at zero
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if it >= c.lr_decay_iters:
        return c.min_lr
    ratio = (it - c.warmup_iters) / (c.lr_decay_iters - c.warmup_iters)
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c.learning_rate - c.min_lr)


def ramped(it, c):
    """(rows, tokens a row) of each batch that step it trains on: the whole batch, but for the ramps."""
    def grow(start, full):
        return full if start is None or it >= c.ramp_iters else start + (full - start) * it // c.ramp_iters
    return grow(c.batch_size_start, c.batch_size), grow(c.block_size_start, c.block_size)


def train_step(model, opt, scaler, loader, units, accum_steps, c, p, stop_requested, average, shape):
    """One optimizer step over accum_steps micro-batches. Returns (the mean loss over micro-steps and
    ranks, bits per unit of the text it counted, the gradient norm before clipping or None, whether
    any rank must stop). average: the WeightAverage that --ema_decay keeps, or None. shape: (rows,
    tokens) of each batch to train on, from its first row and first token (ramped)."""
    if average:
        average.out_of_model()  # the trained weights, to train on, if an eval or a save took the average in
    loss_sum, nats_sum, units_sum = (torch.zeros((), device=p.device) for _ in range(3))
    for micro_step in range(accum_steps):
        x, y = (t[:shape[0], :shape[1]].contiguous() for t in loader.next_batch())  # no copy when whole
        counted = y >= 0  # all but a chat dataset's prompts, whose y is -1
        units_sum += (units[y.clamp(min=0)] * counted).sum()
        # DDP all-reduces (FSDP reduce-scatters) gradients in backward; only the last micro-step needs it
        sync = not p.distributed or micro_step == accum_steps - 1
        if c.fsdp:
            model.set_requires_gradient_sync(sync)
        with nullcontext() if sync or c.fsdp else model.no_sync():
            with p.autocast:
                _, loss = model(x, y)
            loss_sum += loss.detach()
            nats_sum += loss.detach() * counted.sum()  # loss is the mean over the counted targets
            scaler.scale(loss / accum_steps).backward()
    grad_norm = None
    if c.grad_clip > 0:
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        if isinstance(grad_norm, DTensor):  # FSDP's sharded gradients give a norm that every rank holds whole
            grad_norm = grad_norm.full_tensor()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    if average:
        average.update()
    # one small all-reduce a step: the mean loss over micro-steps and ranks, its nats and the text they
    # cover, and whether any rank must stop
    stats = torch.stack([loss_sum / accum_steps, nats_sum, units_sum,
                         torch.tensor(float(stop_requested), device=p.device)])
    if p.distributed:
        dist.all_reduce(stats)
    loss, nats, text = stats[0].item() / p.world_size, stats[1].item(), stats[2].item()
    return loss, nats / text / math.log(2) if text else None, grad_norm, stats[3].item() > 0


def evaluate(model, eval_model, val_loader, data_dir, units, c, p):
    """(nats per token, bits per unit) on the val split: its first eval_iters batches, the same ones
    at every eval and for any number of ranks (rank r takes batches r, r + world_size, ...); or, with
    eval_iters=0, every token of the split once."""
    model.eval()
    if c.eval_iters:
        val_loader.reset()
        # more would read the same windows of the val split again, which changes nothing but the time
        eval_batches = min(c.eval_iters, val_loader.batches_per_pass())
        batches = (val_loader.next_batch() for _ in range(p.rank, eval_batches, p.world_size))
    else:
        batches = whole_split_batches(data_dir, "val", c.batch_size, c.block_size, p.rank, p.world_size)
    if c.fsdp:
        batches = in_lockstep(batches, c, p)
    sums = loss_sums(eval_model, batches, units, p.device, p.autocast)
    model.train()
    if p.distributed:
        totals = torch.tensor(sums, dtype=torch.float64, device=p.device)
        dist.all_reduce(totals)
        sums = totals.tolist()
    return in_units(sums)


def in_lockstep(batches, c, p):
    """FSDP: every rank runs as many forward passes as the others, since each gathers parameters
    from all of them. A rank whose batches are done runs empty ones (y = -1: nothing counted) until
    no rank has any left: one small all-reduce a batch."""
    batches = iter(batches)
    while True:
        batch = next(batches, None)
        more = torch.tensor(float(batch is not None), device=p.device)
        dist.all_reduce(more)
        if not more.item():
            return
        if batch is None:
            empty = torch.zeros(c.batch_size, c.block_size, dtype=torch.long)
            batch = empty, empty - 1
        yield batch


# -----------------------------------------------------------------------------
# logging, progress and checkpoints

class RunLog:
    """A run's records, as JSON lines in out_dir/log.jsonl and in wandb when asked, and its loss
    curves in out_dir/loss.png; rank 0 keeps them, the other ranks' calls do nothing."""

    def __init__(self, c, p, ckpt, header):
        self.file, self.wandb = None, None
        if not p.master:
            return
        if c.wandb_log:
            try:
                import wandb
            except ImportError:
                fail("wandb_log=True needs Weights & Biases: pip install wandb")
            self.wandb = wandb
        path = os.path.join(c.out_dir, "log.jsonl")
        or_fail(os.makedirs, c.out_dir, exist_ok=True)
        if ckpt is not None and os.path.exists(path):  # drop what was logged after the checkpoint: redone steps
            with open(path, "rb") as f:
                kept = f.read(ckpt["log_offset"])
            write_atomically(path, lambda tmp: Path(tmp).write_bytes(kept))
        self.file = open(path, "a" if ckpt is not None else "w")
        if ckpt is None:  # the dataset and the run's length, which plot.py reads
            self.write(header)  # flushed: plot.py may read the log before the first eval (a HellaSwag pass first)
        # out_dir/loss.png at every eval, when a core is free for it: where training's threads take every
        # core (a laptop CPU run), a drawing beside a step made that step 10x slower, so it waits for the end
        training_threads = torch.get_num_threads() * int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        self.plot = BackgroundPlot(c.out_dir, live=p.device_type != "cpu" or (os.cpu_count() or 1) > training_threads)
        if self.wandb:
            self.wandb.init(project=c.wandb_project, name=c.wandb_run_name, config=vars(c))

    def __call__(self, record):
        if self.file:
            self.write(record)
            if self.wandb:
                self.wandb.log(record, step=record["iter"])

    def write(self, record):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def offset(self):
        return self.file.tell() if self.file else None

    def draw(self, final=False):
        if self.file:
            self.plot(final=final)

    def close(self):
        if self.file:
            self.file.close()

    def finish(self):
        """Marks a run that ended well as finished in wandb; one that failed, wandb marks as it exits."""
        if self.wandb:
            self.wandb.finish()


def save(c, p, model, opt, scaler, loader, meta, log, iter_num, best_val_loss, best):
    """Every rank calls this (the RNG states are gathered, FSDP's shards written by their ranks);
    rank 0 writes ckpt.pt, and best.pt if best: files, or FSDP's sharded directories."""
    rngs = [None] * p.world_size
    if p.distributed:
        dist.all_gather_object(rngs, rng_state(p.device_type))
    else:
        rngs[0] = rng_state(p.device_type)
    path = os.path.join(c.out_dir, "ckpt.pt")
    fields = dict(model_args=vars(model.config), scaler=scaler.state_dict(), loader=loader.state_dict(), rng=rngs,
                  iter_num=iter_num, best_val_loss=best_val_loss, config=vars(c), meta=meta, log_offset=log.offset())
    try:
        if c.fsdp:
            save_shards(fields, model, opt, path)
        elif p.master:
            save_checkpoint({**fields, "model": model.state_dict(), "optimizer": opt.state_dict()}, path)
        if best and p.master:
            (copy_shards if c.fsdp else copy_checkpoint)(path, os.path.join(c.out_dir, "best.pt"))
    # torch.save reports a failed write (full disk, quota) as a RuntimeError, torch.distributed.checkpoint as its own
    except (OSError, RuntimeError, CheckpointException) as e:
        reason = getattr(e, "strerror", None) or "the write failed"
        fail(f"cannot write a checkpoint in {c.out_dir} at iter {iter_num} ({reason}, "
             f"{shutil.disk_usage(c.out_dir).free / 2**20:,.0f} MiB free on its disk); the last one written is kept: "
             f"resume from it with --init_from=resume once there is room")


class Progress:
    """The time a run has left: the steps left at the mean time of this process's steps (its first,
    which compiles and warms up, left out), and the evals left at the last one's time."""

    def __init__(self, first_step):
        self.first_step, self.steps, self.step_seconds, self.eval_seconds = first_step, 0, 0.0, 0.0

    def step(self, iter_num, dt, c):
        """(seconds a step, seconds left) after step iter_num took dt seconds."""
        if iter_num > self.first_step:
            self.steps, self.step_seconds = self.steps + 1, self.step_seconds + dt
        step_time = self.step_seconds / self.steps if self.steps else dt
        evals_left = c.max_iters // c.eval_interval - iter_num // c.eval_interval
        return step_time, step_time * (c.max_iters - iter_num - 1) + self.eval_seconds * evals_left


def tokens(n):
    return f"{n / 1e9:,.2f}B tokens" if n >= 1e9 else f"{n / 1e6:,.1f}M tokens" if n >= 1e6 else f"{n:,} tokens"


def duration(seconds):
    """2h05m, 4m10s or 12s."""
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def step_line(r, max_iters):
    """A step's log record as its line on stdout."""
    norm = "" if r["grad_norm"] is None else f", norm {r['grad_norm']:.2f}"
    mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
    return (f"iter {r['iter']}/{max_iters}: loss {r['train_loss']:.4f}, lr {r['lr']:.2e}{norm}, {r['ms']:.1f} ms, "
            f"{r['tokens_per_sec']:,.0f} tok/s, mfu {mfu}, {duration(r['seconds_left'])} left")


def announce(c, p, overrides, ckpt, model, iter_num, accum_steps, tokens_per_iter):
    """What this run is, where it starts, and how large it is, in one line."""
    if c.init_from == "resume":
        saved = ckpt["config"]
        start = f"resuming {c.out_dir} at iter {iter_num}" + "".join(
            f"; {k}: {saved.get(k)!r} -> {v!r}" for k, v in overrides.items() if k != "init_from" and saved.get(k) != v)
    else:
        start = f"{'a new run' if c.init_from == 'scratch' else 'fine-tuning ' + c.init_from} in {c.out_dir}"
    print(f"{start} | {model.num_params() / 1e6:.2f}M parameters | device {p.device}, {p.dtype}, "
          f"{p.world_size} process(es){', sharded (FSDP)' if c.fsdp else ''} | {tokens_per_iter:,} tokens per "
          f"iteration = {p.world_size} x {accum_steps} "
          f"micro-steps x {c.batch_size} x {c.block_size} | {c.max_iters:,} iterations, "
          f"{tokens(c.max_iters * tokens_per_iter)}")
    if c.init_from == "resume" and iter_num >= c.max_iters and not c.eval_only:
        print(f"the run in {c.out_dir} is finished (iter {iter_num} of max_iters={c.max_iters}): nothing to train. "
              f"A larger --max_iters goes on, --init_from=scratch starts over")


def harness_tasks(c):
    """The harness's index of the tasks that the run scores at its end, checked before it trains
    (an unknown name would otherwise fail after hours); None when there are none."""
    if not c.harness_tasks:
        return None
    import harness  # only here: lm-evaluation-harness takes seconds to import
    return or_fail(harness.task_manager, c.harness_tasks.split(","), c.harness_include_path, "--harness_include_path")


def score_harness(c, p, model, tokenizer, tasks, log, iter_num):
    """lm-evaluation-harness's tasks on the trained model, in rank 0 while the others wait (it needs
    no more than one GPU): out_dir/harness.json, as harness.py writes it, and a record in log.jsonl."""
    if p.master:
        import harness
        model.eval()
        _, report = or_fail(harness.score, model, tokenizer, c.harness_tasks.split(","), tasks, p.autocast)
        report["model"] = c.out_dir
        write_json(os.path.join(c.out_dir, "harness.json"), report)
        log({"iter": iter_num, "harness": report["results"]})
        for task, metrics in report["results"].items():
            print(f"iter {iter_num}: {task} " + ", ".join(f"{name.split(',')[0]} {value:.4f}"
                                                     for name, value in metrics.items() if isinstance(value, float)
                                                     and "stderr" not in name))
    if p.distributed:
        dist.barrier()


def catch_stop_signals():
    """Preemption (SIGTERM) and Ctrl-C finish the current step, save, and exit 0; a second Ctrl-C
    kills. A second SIGTERM does not: a cluster may send one to every process of a job, and torchrun
    passes its own on to its workers. Returns the list that the signals received go into."""
    received = []

    def request_stop(signum, frame):
        received.append(signum)
        if signum == signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return received


# -----------------------------------------------------------------------------
# the run

def main(argv):
    config, overrides, ckpt = configuration(argv)
    c = SimpleNamespace(**config)  # every setting read by its name: c.batch_size
    tasks = harness_tasks(c)
    p = start_processes(c)
    # auto_batch_size: a micro-batch of 1 here, to check total_batch_size; the one that fits is found below
    accum_steps, tokens_per_iter = batch_shape(c, p.world_size, 1 if c.auto_batch_size else c.batch_size)
    data_dir, meta, train_loader, val_loader = load_data(c, p)
    if c.fsdp:  # the model whole on rank 0's CPU at most: the other ranks build its shape on the meta device
        raw_model, weights = model_to_shard(c, overrides, ckpt, data_dir, meta, (train_loader, val_loader), p)
    else:
        raw_model = build_model(c, overrides, ckpt, data_dir, meta, (train_loader, val_loader))  # on the CPU
    memory = check_memory(c, p, raw_model.config)  # before the device holds any of it
    if c.fsdp:  # before the optimizer, which must hold the sharded parameters: the device only ever holds shards
        shard(raw_model, p)
        take_shards(raw_model, weights, p)
    else:
        raw_model.to(p.device)
    if c.auto_batch_size:  # the most sequences a micro-step that fit, the tokens a step kept by accumulation
        c.batch_size = fitting_batch_size(c, p, raw_model)
        accum_steps, tokens_per_iter = batch_shape(c, p.world_size, c.batch_size)
        train_loader, val_loader = load_data(c, p)[2:]  # the loaders' batches have the new size
        memory = estimate(raw_model.config, c.batch_size, p.world_size, **memory_settings(c, p))
    tokenizer = or_fail(get_tokenizer, meta)
    units = torch.tensor(tokenizer.units_per_token(), device=p.device)  # characters or bytes: losses in bits per unit
    if c.hellaswag_interval:
        hellaswag_examples = or_fail(hellaswag.prepare, c.hellaswag_file, tokenizer, raw_model.config.block_size)
    opt, scaler = build_optimizer(c, raw_model, p)
    iter_num, best_val_loss = 0, float("inf")
    torch.manual_seed(c.seed + 1 + p.rank)  # each rank its own dropout stream
    if ckpt is not None:  # where the saved run left off: the optimizer, the scaler, the loader and each rank's RNG
        if c.fsdp:
            restore_shards(os.path.join(c.out_dir, "ckpt.pt"), raw_model, opt)
        iter_num, best_val_loss = restore_training(ckpt, opt, scaler, train_loader, p.rank, p.world_size,
                                                   p.device_type)
    # evals and checkpoints take the average; a checkpoint holds it in the model, the trained weights aside
    average = WeightAverage(opt, c.ema_decay, in_model=c.init_from == "resume") if c.ema_decay else None
    use_compile = p.device_type == "cuda" if c.compile is None else c.compile
    model, eval_model = wrap(raw_model, use_compile, p.distributed and not c.fsdp, p)
    peak_flops = gpu_peak_flops(torch.cuda.get_device_name(p.device)) if p.device_type == "cuda" else None
    log = RunLog(c, p, ckpt, {"iter": iter_num, "dataset": os.path.abspath(data_dir), "max_iters": c.max_iters,
                              "tokens_per_iter": tokens_per_iter, "bits_per": tokenizer.unit})
    if p.master:
        announce(c, p, overrides, ckpt, raw_model, iter_num, accum_steps, tokens_per_iter)
        print(f"memory a process holds, estimated: {describe(memory)}")
    auto_resume = overrides.get("init_from", DEFAULTS["init_from"]) == "auto"  # a config file's or a flag's
    ckpt = None  # free its memory
    stop_signals = catch_stop_signals()

    resumed_at = iter_num if c.init_from == "resume" else None  # its eval is already logged and saved
    saved_at, stop, progress = resumed_at, False, Progress(iter_num)
    try:
        while True:
            t_eval = time.perf_counter()
            # before the val eval, whose checkpoint then holds it in its log offset
            if c.hellaswag_interval and (c.eval_only or iter_num != resumed_at and (
                    iter_num % c.hellaswag_interval == 0 or iter_num == c.max_iters)):
                if average:
                    average.into_model()
                # the bare model, in graphs of its own; batch_size rows (4 an example), no more than a micro-step
                # (eager under FSDP, whose compiled graphs are the training step's)
                n, acc, acc_norm = hellaswag.evaluate(raw_model, hellaswag_examples, max(1, c.batch_size // 4),
                                                      p.device, p.autocast, use_compile and not c.fsdp)
                log({"iter": iter_num, "hellaswag_acc": acc, "hellaswag_acc_norm": acc_norm})
                if p.master:
                    print(f"iter {iter_num}: hellaswag acc {acc:.4f}, acc_norm {acc_norm:.4f} ({n} examples)")
            if c.eval_only or (iter_num % c.eval_interval == 0 and iter_num != resumed_at):
                if average:
                    average.into_model()
                val_loss, val_bits = evaluate(model, eval_model, val_loader, data_dir, units, c, p)
                if not math.isfinite(val_loss):
                    fail(f"val loss is {val_loss} at iter {iter_num}; the last good checkpoint in {c.out_dir} is kept")
                log({"iter": iter_num, "val_loss": val_loss, "val_bits": val_bits})
                if p.master:
                    print(f"iter {iter_num}: val loss {val_loss:.4f}, {val_bits:.4f} bits per {tokenizer.unit}")
                log.draw()
                if c.eval_only:
                    break
                improved = val_loss < best_val_loss
                best_val_loss = min(best_val_loss, val_loss)
                if iter_num > 0 and (improved or c.always_save_checkpoint or iter_num >= c.max_iters):
                    save(c, p, raw_model, opt, scaler, train_loader, meta, log, iter_num, best_val_loss, best=improved)
                    saved_at = iter_num
                progress.eval_seconds = time.perf_counter() - t_eval
            if iter_num >= c.max_iters or stop:
                break

            lr = get_lr(iter_num, c) if c.decay_lr else c.learning_rate
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr / c.learning_rate
            rows, row_tokens = ramped(iter_num, c)
            t0 = time.perf_counter()
            train_loss, train_bits, grad_norm, stop = train_step(model, opt, scaler, train_loader, units, accum_steps,
                                                                 c, p, bool(stop_signals), average, (rows, row_tokens))
            dt = time.perf_counter() - t0
            if not math.isfinite(train_loss):
                fail(f"train loss is {train_loss} at iter {iter_num}; the last good checkpoint in {c.out_dir} is kept "
                     "(try a lower learning_rate, or bfloat16 instead of float16)")
            step_time, time_left = progress.step(iter_num, dt, c)
            if p.master and iter_num == progress.first_step + 1:
                print(f"iter {iter_num}/{c.max_iters}: about {duration(time_left)} to go, at {step_time * 1000:.0f} ms "
                      f"a step and {progress.eval_seconds:.1f} s an eval")
            if iter_num % c.log_interval == 0:
                tokens = tokens_per_iter * rows * row_tokens // (c.batch_size * c.block_size)  # fewer on a ramp
                mfu = raw_model.estimate_mfu(tokens / p.world_size / dt, peak_flops, row_tokens)
                norm = grad_norm.item() if grad_norm is not None and grad_norm.isfinite() else None
                record = dict(iter=iter_num, train_loss=train_loss, train_bits=train_bits, lr=lr, grad_norm=norm,
                              ms=dt * 1000, tokens_per_sec=tokens / dt, mfu=mfu, seconds_left=time_left)
                log(record)
                if p.master:
                    print(step_line(record, c.max_iters))
            iter_num += 1

        if average:
            average.into_model()  # for the last checkpoint, and the harness's tasks
        if not c.eval_only and saved_at != iter_num:
            save(c, p, raw_model, opt, scaler, train_loader, meta, log, iter_num, best_val_loss, best=False)
        if tasks and not stop and (iter_num != resumed_at or c.eval_only):  # after the checkpoint, which a
            # failed task leaves saved; not again for a finished run started again
            score_harness(c, p, raw_model, tokenizer, tasks, log, iter_num)
        log.draw(final=True)
    finally:
        log.close()
    if p.master and stop:
        print(f"stopped by signal at iter {iter_num}: checkpoint in {c.out_dir}; "
              + ("the same command again continues it" if auto_resume else "continue with --init_from=resume"))
    if p.distributed:
        # Leave together, and skip C++'s teardown at exit: a gloo rank sometimes aborted there ("terminate
        # called without an active exception"; 2 runs in 12 without the barrier, still 1 in about 30 with
        # it). Everything is written by now: the checkpoint, and log.jsonl, flushed at every line.
        dist.barrier()
        dist.destroy_process_group()
    log.finish()
    if p.distributed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
