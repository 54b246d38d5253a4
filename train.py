"""
Train a GPT on a CPU, one GPU, or many GPUs on one or several nodes.

  python prepare_shakespeare.py && python train.py                          # the defaults: a char model
  python train.py config/train_shakespeare_char_cpu.py                      # a laptop CPU
  torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py    # GPT-2 on one 8-GPU node
  torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
      --rdzv_endpoint=HOST:29500 train.py config/train_gpt2.py              # each of 2 nodes
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

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import hellaswag
from atomic import write_atomically
from chat_template import CHAT_TOKENS
from checkpoint import (
    copy_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    restore_training,
    rng_state,
    save_checkpoint,
    training_checkpoint,
)
from configurator import configure
from data import ShardLoader, dataset_dir, read_meta, whole_split_batches
from device import DTYPES, autocast_for, gpu_peak_flops, resolve_device
from evaluate import in_units, loss_sums
from hf import from_pretrained
from model import GPT, MODERN_SWITCHES, PRESETS, GPTConfig
from optim import configure_optimizers
from plot import BackgroundPlot
from tokenizer import get_tokenizer, token_ids

# -----------------------------------------------------------------------------
# The defaults train nanoGPT's small character-level model on Tiny Shakespeare, which ships with the
# repo (python prepare_shakespeare.py first): minutes on a GPU. GPT-2 (124M) is config/train_gpt2.py.
# I/O
out_dir = ""  # checkpoints and log.jsonl; empty: out-<dataset>, e.g. out-shakespeare-char
eval_interval = 250
log_interval = 10
eval_iters = 200  # val batches per eval, over all ranks together, at most one pass; 0: the whole val split
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # False: ckpt.pt only when val loss improves, and at the end
# 'auto': resume the run in out_dir if its checkpoint is there, else start from scratch;
# 'scratch', 'resume' (out_dir/ckpt.pt), 'gpt2'...'gpt2-xl' or a local Hugging Face directory to fine-tune,
# or another run to fine-tune: its out_dir (its ckpt.pt) or a checkpoint file
init_from = "auto"
# HellaSwag accuracy every hellaswag_interval steps and at the end (GPT-2 tokens only); 0 is off
hellaswag_interval = 0
hellaswag_file = ""  # JSON lines as hellaswag.py reads them; empty: data/hellaswag/, downloaded on first use
# wandb logging (optional: pip install wandb)
wandb_log = False
wandb_project = "gpt"
wandb_run_name = "run"
# data
dataset = "shakespeare_char"  # a directory under data/, or a path to one
gradient_accumulation_steps = 1  # micro-steps per optimizer step, over all ranks together
total_batch_size = None  # tokens per optimizer step; when set, gradient_accumulation_steps follows from it
batch_size = 64  # sequences per micro-step, per rank
block_size = 256
# model
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
bias = True  # GPT-2 has biases; only a bias=True model exports to Hugging Face
activation_checkpointing = False  # recompute block activations in backward: less memory, more compute
# beyond GPT-2, each off by default (model.GPTConfig); a model that sets any does not export to Hugging Face
rope = False  # rotary position embeddings instead of learned ones
norm = "layernorm"  # or "rmsnorm"
qk_norm = False
mlp_act = "gelu"  # or "relu2"
tie_embeddings = True
zero_init_proj = False
logit_softcap = 0.0  # 0 is off; e.g. 15
# optimizer: "adamw", or "muon" for the blocks' matrices with AdamW (the settings below) for the rest
optimizer = "adamw"
muon_lr = 0.02  # Muon's peak rate; the schedule scales it as it scales learning_rate
muon_momentum = 0.95
muon_weight_decay = 0.0
# AdamW
learning_rate = 1e-3  # a small model takes a higher rate than GPT-2's 6e-4
max_iters = 5000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.99  # GPT-2 used 0.95; few tokens per step make for noisier gradients
grad_clip = 1.0  # 0 disables clipping
# learning rate: linear warmup, then cosine decay to min_lr at lr_decay_iters. Unset, they follow the
# run; a resumed run keeps the values its first start settled on.
decay_lr = True
warmup_iters = None  # None: 5% of max_iters, at most 100
lr_decay_iters = None  # None: max_iters
min_lr = None  # None: learning_rate / 10
# system
backend = "auto"  # DDP backend: nccl on CUDA, gloo on CPU
device = "auto"  # cuda, mps or cpu, whichever is present; or e.g. 'cuda:1'
dtype = "auto"  # bfloat16 on GPUs that have it natively, else float16 with loss scaling; float32 on CPU
compile = None  # torch.compile; None: on CUDA only (on a CPU compiling costs more than it saves)
# deterministic kernels, slower on GPUs, so that runs (and a resumed run against an uninterrupted one)
# can agree bit for bit on CUDA too: flash attention's backward otherwise sums in a varying order
deterministic = False
seed = 1337
# -----------------------------------------------------------------------------
defaults = {k: v for k, v in globals().items()
            if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))}
config, overrides = configure(defaults, sys.argv[1:], usage=__doc__)
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", *MODERN_SWITCHES)


def fail(message):
    # under torchrun every rank meets the same bad input: one of them says so
    raise SystemExit(f"error: {message}" if os.environ.get("RANK", "0") == "0" else 1)


def or_fail(fn, *args, **kwargs):
    """Bad input (a missing file, a corrupt shard) ends the run with one line, not a traceback."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError) as e:
        fail(e)


if not config["out_dir"]:
    config["out_dir"] = "out-" + os.path.basename(os.path.normpath(config["dataset"])).replace("_", "-")
if os.path.exists(config["out_dir"]) and not os.path.isdir(config["out_dir"]):
    fail(f"out_dir={config['out_dir']} is a file, not a directory: choose another --out_dir")



def other_run(ckpt, config):
    """Why a checkpoint is not of the run that config describes, or None when it is. A run is its
    data, the shape of its model and its optimizer; the rest may change when it resumes."""
    saved_model = vars(GPTConfig(**ckpt["model_args"]))  # checkpoints older than a switch get its default
    saved = {"dataset": ckpt["config"].get("dataset", config["dataset"]),
             "optimizer": ckpt["config"].get("optimizer", "adamw"),
             **{key: saved_model[key] for key in SHAPE_KEYS}}
    for key, value in saved.items():
        same = (os.path.abspath(dataset_dir(value)) == os.path.abspath(dataset_dir(config[key])) if key == "dataset"
                else value == config[key])
        if not same:
            return f"{key}={value!r} there, {config[key]!r} here"
    return None


# init_from=auto: the run in out_dir goes on if its checkpoint is there, else this one starts from scratch.
# A cluster that requeues a preempted job runs the same command again, and the run continues.
ckpt, ckpt_path = None, os.path.join(config["out_dir"], "ckpt.pt")
auto_resume = config["init_from"] == "auto"
if auto_resume:
    if os.path.exists(ckpt_path):
        ckpt = or_fail(load_checkpoint, ckpt_path)
        why = other_run(ckpt, config)
        if why:
            fail(f"{config['out_dir']} holds the checkpoint of another run ({why}): give this run an --out_dir of "
                 f"its own, or pass --init_from=scratch to start over there, replacing that checkpoint")
    config["init_from"] = "resume" if ckpt else "scratch"

# Resuming starts from the run's own saved config; what this command line sets goes on top.
if config["init_from"] == "resume":
    ckpt = ckpt or or_fail(load_checkpoint, ckpt_path)
    saved_model = vars(GPTConfig(**ckpt["model_args"]))  # checkpoints older than a switch get its default
    for key in SHAPE_KEYS:
        if key in overrides and overrides[key] != saved_model[key]:
            fail(f"{key}={overrides[key]} but the checkpoint in {config['out_dir']} has {key}="
                 f"{saved_model[key]}: a resumed model keeps its shape; use a new out_dir to change it")
    saved_optimizer = ckpt["config"].get("optimizer", "adamw")
    if overrides.get("optimizer", saved_optimizer) != saved_optimizer:
        fail(f"optimizer={overrides['optimizer']} but the run in {config['out_dir']} trains with {saved_optimizer}: "
             "a resumed run keeps its optimizer; use a new out_dir to change it")
    saved = {k: v for k, v in ckpt["config"].items() if k in defaults}
    resume_changes = {k: (saved.get(k), v) for k, v in overrides.items() if k != "init_from" and saved.get(k) != v}
    config = {**defaults, **saved, **overrides, "init_from": "resume"}

# Unset, the schedule follows the run. Settled here once, it is saved with the config, so that a
# resumed run keeps it even when its max_iters changes.
if config["warmup_iters"] is None:
    config["warmup_iters"] = min(100, config["max_iters"] // 20) if isinstance(config["max_iters"], int) else None
if config["lr_decay_iters"] is None:
    config["lr_decay_iters"] = config["max_iters"]
if config["min_lr"] is None and isinstance(config["learning_rate"], (int, float)):
    config["min_lr"] = config["learning_rate"] / 10


def base_checkpoint(init_from):
    """The checkpoint of the run that init_from names to fine-tune (its out_dir, or the file), or None."""
    path = init_from if os.path.isfile(init_from) else os.path.join(init_from, "ckpt.pt")
    return path if os.path.isfile(path) else None


def check_config(config):
    """Values that would otherwise fail deep inside torch, or quietly train nonsense."""
    at_least = dict(eval_interval=1, log_interval=1, eval_iters=0, batch_size=1, block_size=1, n_layer=1, n_head=1,
                    n_embd=1, gradient_accumulation_steps=1, max_iters=0, warmup_iters=0, lr_decay_iters=0,
                    hellaswag_interval=0)
    for key, low in at_least.items():
        if not isinstance(config[key], int) or config[key] < low:
            fail(f"{key}={config[key]!r}: it must be a whole number, at least {low}")
    # the schedule scales every group's rate by lr / learning_rate
    if config["learning_rate"] is None or config["learning_rate"] <= 0:
        fail(f"learning_rate={config['learning_rate']!r}: it must be a positive number")
    for key in ("min_lr", "weight_decay", "grad_clip", "muon_lr", "muon_momentum", "muon_weight_decay"):
        if config[key] is None or config[key] < 0:
            fail(f"{key}={config[key]!r}: it must be a number, 0 or more")
    for key in ("dropout", "beta1", "beta2"):
        if config[key] is None or not 0 <= config[key] < 1:
            fail(f"{key}={config[key]!r}: it must lie in [0, 1)")
    if config["n_embd"] % config["n_head"]:
        fail(f"n_embd={config['n_embd']} is not divisible by n_head={config['n_head']}: each head takes "
             "n_embd / n_head channels")
    total = config["total_batch_size"]
    if total is not None and (not isinstance(total, int) or total < 1):
        fail(f"total_batch_size={total!r}: give a number of tokens, or None")
    choices = dict(dtype=("auto", *DTYPES), backend=("auto", "nccl", "gloo"), compile=(None, True, False),
                   optimizer=("adamw", "muon"))
    for key, allowed in choices.items():
        if config[key] not in allowed:
            fail(f"{key}={config[key]!r}: use one of {', '.join(map(repr, allowed))}")
    init = config["init_from"]
    if init not in ("scratch", "resume", *PRESETS) and not os.path.exists(init):
        fail(f"init_from={init!r}: use scratch, resume, {', '.join(PRESETS)} or a local directory to fine-tune: a "
             "Hugging Face model's, or a run's out_dir")


check_config(config)
globals().update(config)  # from here on every setting is read by its name, as nanoGPT's are

# -----------------------------------------------------------------------------
# processes and devices: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE, on every node
ddp = "RANK" in os.environ
rank, local_rank, world_size = ((int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
                                if ddp else (0, 0, 1))
master = rank == 0
# the device and dtype this run uses: the settings' "auto" settled for this machine and process
run_device, run_dtype = or_fail(resolve_device, device, dtype, local_rank)
device_type = run_device.split(":")[0]
if ddp and device_type == "cuda" and torch.device(run_device).index != local_rank:
    fail(f"device={run_device} under torchrun: each process uses cuda:LOCAL_RANK; pass --device=cuda or leave it auto")
use_compile = device_type == "cuda" if compile is None else compile
if device_type == "cuda":
    torch.cuda.set_device(run_device)
    torch.set_float32_matmul_precision("high")  # TF32 for whatever still runs in float32
if deterministic:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's fixed-order reductions; before its first use
    torch.use_deterministic_algorithms(True)
if ddp:
    dist.init_process_group(backend=("nccl" if device_type == "cuda" else "gloo") if backend == "auto" else backend)

micro_steps = gradient_accumulation_steps  # per optimizer step, over all ranks together
if total_batch_size is not None:
    micro_tokens = batch_size * block_size * world_size
    if total_batch_size % micro_tokens:
        fail(f"total_batch_size={total_batch_size} is not a multiple of batch_size * block_size * world_size "
             f"= {micro_tokens}: use --total_batch_size={max(1, round(total_batch_size / micro_tokens)) * micro_tokens}"
             f", or another batch_size")
    micro_steps = total_batch_size // (batch_size * block_size)
if micro_steps % world_size:
    fits = -(-micro_steps // world_size) * world_size  # the next multiple of world_size
    fail(f"gradient_accumulation_steps={micro_steps} does not divide among {world_size} processes: "
         f"use --gradient_accumulation_steps={fits}, or a number of processes that divides {micro_steps}")
accum_steps = micro_steps // world_size  # this rank's
tokens_per_iter = micro_steps * batch_size * block_size

autocast = autocast_for(run_device, run_dtype)

# -----------------------------------------------------------------------------
# data
data_dir = dataset_dir(dataset)
meta = or_fail(read_meta, data_dir)
loader_args = dict(batch_size=batch_size, block_size=block_size, rank=rank, world_size=world_size, seed=seed,
                   device=run_device)
train_loader = or_fail(ShardLoader, data_dir, "train", **loader_args)
val_loader = or_fail(ShardLoader, data_dir, "val", **loader_args)

# -----------------------------------------------------------------------------
# model and optimizer
torch.manual_seed(seed)  # the same initial weights on every rank
if init_from == "scratch":
    vocab_size = meta["vocab_size"] if meta else 50304  # no meta.json: GPT-2 tokens, e.g. llm.c's shards
    model = GPT(or_fail(GPTConfig, **{f.name: globals()[f.name] for f in fields(GPTConfig)}))
elif init_from == "resume":
    model = model_from_checkpoint(ckpt, dropout=dropout)  # dropout may change, the shape may not
elif base_checkpoint(init_from):  # one of our runs, of any shape: fine-tuned on this dataset
    base = or_fail(load_checkpoint, base_checkpoint(init_from))
    base_model = vars(GPTConfig(**base["model_args"]))  # checkpoints older than a switch get its default
    for key in SHAPE_KEYS:
        if key in overrides and key != "block_size" and overrides[key] != base_model[key]:
            fail(f"{key}={overrides[key]!r} but the run in {init_from} has {key}={base_model[key]!r}: "
                 "a fine-tuned model keeps its shape")
    if token_ids(base["meta"]) != token_ids(meta):
        fail(f"{init_from} was trained on another tokenizer's tokens ({token_ids(base['meta'])[0]}) than {data_dir} "
             f"({token_ids(meta)[0]}): prepare the data with --tokenizer_from set to the dataset that the run "
             f"trained on ({base['config']['dataset']})")
    model = model_from_checkpoint(base, dropout=dropout)
    if block_size > model.config.block_size:
        fail(f"block_size={block_size} but the model of {init_from} has a context of {model.config.block_size}: "
             f"use --block_size={model.config.block_size} or less")
    model.crop_block_size(block_size)
    del base
else:
    switches = GPTConfig(**{k: globals()[k] for k in MODERN_SWITCHES}).modern_switches()
    if switches:
        fail(f"init_from={init_from} loads GPT-2's architecture, which has no "
             f"{', '.join(f'{k}={v!r}' for k, v in switches.items())}: train from scratch to use them")
    if meta and meta["tokenizer"] != "gpt2":
        fail(f"init_from={init_from} needs a GPT-2 BPE dataset, but {data_dir} is tokenized as {meta['tokenizer']}")
    model = or_fail(from_pretrained, init_from, dropout=dropout, block_size=block_size)
if meta and meta["vocab_size"] > model.config.vocab_size:
    # the chat tokens of a chat dataset come after its tokenizer's own: a model of that tokenizer (OpenAI's
    # GPT-2 has 50257 ids, a char run one per character) grows rows for them, to a multiple of 64 as 50304
    if not meta.get("chat") or meta["vocab_size"] - len(CHAT_TOKENS) > model.config.vocab_size:
        fail(f"{data_dir} has {meta['vocab_size']} token ids but the model only {model.config.vocab_size}")
    model.grow_vocab(-(-meta["vocab_size"] // 64) * 64)
# Checked once here, not found as an IndexError deep in the embedding: shards of another tokenizer,
# or a meta.json that does not belong to them.
for loader in (train_loader, val_loader):
    top = loader.max_token()
    if top >= model.config.vocab_size:
        fail(f"{data_dir} holds token id {top} but the model's vocabulary has ids 0..{model.config.vocab_size - 1}: "
             f"the data was made with another tokenizer than the model's; prepare it again, or use another dataset")
model.activation_checkpointing = activation_checkpointing
model.to(run_device)
raw_model = model  # the bare GPT: what checkpoints hold, never a compiled or DDP wrapper
tokenizer = or_fail(get_tokenizer, meta)
units = torch.tensor(tokenizer.units_per_token(), device=run_device)  # characters or bytes: losses in bits per unit
if hellaswag_interval:
    hellaswag_examples = or_fail(hellaswag.prepare, hellaswag_file, tokenizer, model.config.block_size)

muon = dict(lr=muon_lr, momentum=muon_momentum, weight_decay=muon_weight_decay) if optimizer == "muon" else None
opt = configure_optimizers(model, weight_decay, learning_rate, (beta1, beta2), device_type, muon)
for group in opt.param_groups:
    group["initial_lr"] = group["lr"]  # each group's peak rate (Muon's is muon_lr), which the schedule scales
scaler = torch.amp.GradScaler(device_type, enabled=run_dtype == "float16")  # loss scaling: fp16 only
iter_num, best_val_loss = 0, float("inf")
torch.manual_seed(seed + 1 + rank)  # each rank its own dropout stream
if ckpt is not None:  # where the saved run left off: the optimizer, the scaler, the loader and each rank's RNG
    iter_num, best_val_loss = restore_training(ckpt, opt, scaler, train_loader, rank, world_size, device_type)

if use_compile:
    try:
        model = torch.compile(model)
        # a missing compiler or Triton only shows at the first call: then warn and run that code eager
        torch._dynamo.config.suppress_errors = True
    except RuntimeError as e:  # e.g. a Python version or platform that dynamo does not support yet
        print(f"warning: torch.compile unavailable ({e}); running eager", file=sys.stderr)
eval_model = model  # evaluation needs no DDP: ranks may run different numbers of eval batches
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

peak_flops = gpu_peak_flops(torch.cuda.get_device_name(run_device)) if device_type == "cuda" else None


def get_lr(it):
    if it < warmup_iters:  # linear warmup that does not start at zero
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


# more would read the same windows of the val split again, which changes nothing but the time it takes
eval_batches = min(eval_iters, val_loader.batches_per_pass())


def evaluate():
    """(nats per token, bits per unit) on the val split: the first eval_batches batches, the same
    ones at every eval and for any number of ranks (rank r takes batches r, r + world_size, ...);
    or, with eval_iters=0, every token of the split once."""
    model.eval()
    if eval_iters:
        val_loader.reset()
        batches = (val_loader.next_batch() for _ in range(rank, eval_batches, world_size))
    else:
        batches = whole_split_batches(data_dir, "val", batch_size, block_size, rank, world_size)
    sums = loss_sums(eval_model, batches, units, run_device, autocast)
    model.train()
    if ddp:
        totals = torch.tensor(sums, dtype=torch.float64, device=run_device)
        dist.all_reduce(totals)
        sums = totals.tolist()
    return in_units(sums)


def tokens(n):
    return f"{n / 1e9:,.2f}B tokens" if n >= 1e9 else f"{n / 1e6:,.1f}M tokens" if n >= 1e6 else f"{n:,} tokens"


def duration(seconds):
    """2h05m, 4m10s or 12s."""
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


# -----------------------------------------------------------------------------
# logging: a line per log_interval on stdout, the same as JSON in out_dir/log.jsonl
log_path = os.path.join(out_dir, "log.jsonl")
log_file = None
if master:
    or_fail(os.makedirs, out_dir, exist_ok=True)
    if ckpt is not None and os.path.exists(log_path):  # drop what was logged after the checkpoint: redone steps
        with open(log_path, "rb") as f:
            kept = f.read(ckpt["log_offset"])
        write_atomically(log_path, lambda tmp: Path(tmp).write_bytes(kept))
    log_file = open(log_path, "a" if ckpt is not None else "w")
    if ckpt is None:  # the dataset, where plot.py finds its n-gram baselines, and the run's length
        log_file.write(json.dumps({"iter": iter_num, "dataset": os.path.abspath(data_dir), "max_iters": max_iters,
                                   "tokens_per_iter": tokens_per_iter, "bits_per": tokenizer.unit}) + "\n")
        log_file.flush()  # plot.py may read the log before the first eval (a HellaSwag pass first, say)
    # out_dir/loss.png at every eval, when a core is free for it: where training's threads take every
    # core (a laptop CPU run), a drawing beside a step made that step 10x slower, so it waits for the end
    training_threads = torch.get_num_threads() * int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    redraw_plot = BackgroundPlot(out_dir, live=device_type != "cpu" or (os.cpu_count() or 1) > training_threads)
    if wandb_log:
        try:
            import wandb
        except ImportError:
            fail("wandb_log=True needs Weights & Biases: pip install wandb")
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)
    if init_from == "resume":
        start = f"resuming {out_dir} at iter {iter_num}" + "".join(
            f"; {k}: {old!r} -> {new!r}" for k, (old, new) in resume_changes.items())
    else:
        start = f"{'a new run' if init_from == 'scratch' else 'fine-tuning ' + init_from} in {out_dir}"
    print(f"{start} | {raw_model.num_params() / 1e6:.2f}M parameters | device {run_device}, {run_dtype}, "
          f"{world_size} process(es) | {tokens_per_iter:,} tokens per iteration = {world_size} x {accum_steps} "
          f"micro-steps x {batch_size} x {block_size} | {max_iters:,} iterations, "
          f"{tokens(max_iters * tokens_per_iter)}")
    if init_from == "resume" and iter_num >= max_iters and not eval_only:
        print(f"the run in {out_dir} is finished (iter {iter_num} of max_iters={max_iters}): nothing to train. "
              f"A larger --max_iters goes on, --init_from=scratch starts over")
ckpt = None  # free its memory


def log(record):
    if master:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        if wandb_log:
            wandb.log(record, step=record["iter"])


def save(best):
    """Every rank calls this (the RNG states are gathered); rank 0 writes ckpt.pt, and best.pt if best."""
    rngs = [None] * world_size
    if ddp:
        dist.all_gather_object(rngs, rng_state(device_type))
    else:
        rngs[0] = rng_state(device_type)
    if not master:
        return
    path = os.path.join(out_dir, "ckpt.pt")
    try:
        save_checkpoint(training_checkpoint(raw_model, opt, scaler, train_loader, rngs, iter_num=iter_num,
                                            best_val_loss=best_val_loss, config=config, meta=meta,
                                            log_offset=log_file.tell()), path)
        if best:
            copy_checkpoint(path, os.path.join(out_dir, "best.pt"))
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write (full disk, quota) as a RuntimeError
        reason = getattr(e, "strerror", None) or "the write failed"
        fail(f"cannot write a checkpoint in {out_dir} at iter {iter_num} ({reason}, "
             f"{shutil.disk_usage(out_dir).free / 2**20:,.0f} MiB free on its disk); the last one written is kept: "
             f"resume from it with --init_from=resume once there is room")


# Preemption (SIGTERM) and Ctrl-C finish the current step, save, and exit 0; a second Ctrl-C kills.
# A second SIGTERM does not: a cluster may send one to every process of a job, and torchrun passes
# its own on to its workers.
stop_signal = None


def request_stop(signum, frame):
    global stop_signal
    stop_signal = signum
    if signum == signal.SIGINT:
        signal.signal(signum, signal.SIG_DFL)


signal.signal(signal.SIGTERM, request_stop)
signal.signal(signal.SIGINT, request_stop)

# -----------------------------------------------------------------------------
# the loop
resumed_at = iter_num if init_from == "resume" else None  # its eval is already logged and saved
saved_at = resumed_at
stop = False
# The time left: the steps left at the mean time of this process's steps (its first, which compiles
# and warms up, left out), and the evals left at the last one's time.
first_step, steps_timed, step_seconds, eval_seconds = iter_num, 0, 0.0, 0.0
while True:
    t_eval = time.perf_counter()
    # before the val eval, whose checkpoint then holds it in its log offset
    if hellaswag_interval and (eval_only or iter_num != resumed_at and (iter_num % hellaswag_interval == 0
                                                                        or iter_num == max_iters)):
        # the bare model, in graphs of its own; batch_size rows (4 an example), no more than a micro-step
        n, acc, acc_norm = hellaswag.evaluate(raw_model, hellaswag_examples, max(1, batch_size // 4), run_device,
                                              autocast, use_compile)
        log({"iter": iter_num, "hellaswag_acc": acc, "hellaswag_acc_norm": acc_norm})
        if master:
            print(f"iter {iter_num}: hellaswag acc {acc:.4f}, acc_norm {acc_norm:.4f} ({n} examples)")
    if eval_only or (iter_num % eval_interval == 0 and iter_num != resumed_at):
        val_loss, val_bits = evaluate()
        if not math.isfinite(val_loss):
            fail(f"val loss is {val_loss} at iter {iter_num}; the last good checkpoint in {out_dir} is kept")
        log({"iter": iter_num, "val_loss": val_loss, "val_bits": val_bits})
        if master:
            print(f"iter {iter_num}: val loss {val_loss:.4f}, {val_bits:.4f} bits per {tokenizer.unit}")
            redraw_plot()
        if eval_only:
            break
        improved = val_loss < best_val_loss
        best_val_loss = min(best_val_loss, val_loss)
        if iter_num > 0 and (improved or always_save_checkpoint or iter_num >= max_iters):
            save(best=improved)
            saved_at = iter_num
        eval_seconds = time.perf_counter() - t_eval
    if iter_num >= max_iters or stop:
        break

    lr = get_lr(iter_num) if decay_lr else learning_rate
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * lr / learning_rate
    t0 = time.perf_counter()
    loss_sum, nats_sum, units_sum = (torch.zeros((), device=run_device) for _ in range(3))
    for micro_step in range(accum_steps):
        x, y = train_loader.next_batch()
        counted = y >= 0  # all but a chat dataset's prompts, whose y is -1
        units_sum += (units[y.clamp(min=0)] * counted).sum()
        # DDP all-reduces gradients in backward; only the last micro-step needs it
        sync = not ddp or micro_step == accum_steps - 1
        with nullcontext() if sync else model.no_sync():
            with autocast:
                _, loss = model(x, y)
            loss_sum += loss.detach()
            nats_sum += loss.detach() * counted.sum()  # loss is the mean over the counted targets
            scaler.scale(loss / accum_steps).backward()
    grad_norm = None
    if grad_clip > 0:
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    # one small all-reduce a step: the mean loss over micro-steps and ranks, its nats and the text they
    # cover, and whether any rank must stop
    stats = torch.stack([loss_sum / accum_steps, nats_sum, units_sum,
                         torch.tensor(float(stop_signal is not None), device=run_device)])
    if ddp:
        dist.all_reduce(stats)
    train_loss, train_nats, train_units = stats[0].item() / world_size, stats[1].item(), stats[2].item()
    stop = stats[3].item() > 0
    dt = time.perf_counter() - t0
    if not math.isfinite(train_loss):
        fail(f"train loss is {train_loss} at iter {iter_num}; the last good checkpoint in {out_dir} is kept "
             "(try a lower learning_rate, or bfloat16 instead of float16)")
    if iter_num > first_step:
        steps_timed, step_seconds = steps_timed + 1, step_seconds + dt
    step_time = step_seconds / steps_timed if steps_timed else dt
    evals_left = max_iters // eval_interval - iter_num // eval_interval
    time_left = step_time * (max_iters - iter_num - 1) + eval_seconds * evals_left
    if master and iter_num == first_step + 1:
        print(f"iter {iter_num}/{max_iters}: about {duration(time_left)} to go, at {step_time * 1000:.0f} ms a step "
              f"and {eval_seconds:.1f} s an eval")
    if iter_num % log_interval == 0:
        mfu = raw_model.estimate_mfu(tokens_per_iter / world_size / dt, peak_flops, block_size)
        record = {"iter": iter_num, "train_loss": train_loss,
                  "train_bits": train_nats / train_units / math.log(2) if train_units else None, "lr": lr,
                  "grad_norm": grad_norm.item() if grad_norm is not None and grad_norm.isfinite() else None,
                  "ms": dt * 1000, "tokens_per_sec": tokens_per_iter / dt, "mfu": mfu, "seconds_left": time_left}
        log(record)
        if master:
            norm = "" if record["grad_norm"] is None else f", norm {record['grad_norm']:.2f}"
            print(f"iter {iter_num}/{max_iters}: loss {train_loss:.4f}, lr {lr:.2e}{norm}, {dt * 1000:.1f} ms, "
                  f"{record['tokens_per_sec']:,.0f} tok/s, mfu {'n/a' if mfu is None else f'{mfu:.1%}'}, "
                  f"{duration(time_left)} left")
    iter_num += 1

if not eval_only and saved_at != iter_num:
    save(best=False)
if master:
    redraw_plot(final=True)
if master and stop:
    print(f"stopped by signal at iter {iter_num}: checkpoint in {out_dir}; "
          + ("the same command again continues it" if auto_resume else "continue with --init_from=resume"))
if ddp:
    # Leave together, and skip C++'s teardown at exit: a gloo rank sometimes aborted there ("terminate
    # called without an active exception"; 2 runs in 12 without the barrier, still 1 in about 30 with
    # it). Everything is written by now: the checkpoint, and log.jsonl, flushed at every line.
    dist.barrier()
    dist.destroy_process_group()
    if master and wandb_log:
        wandb.finish()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
