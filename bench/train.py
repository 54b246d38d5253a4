"""
Training throughput of a model shape: forward+backward alone, and the full optimizer step
(forward, backward, clipping, AdamW or Muon), eager and under torch.compile, on random tokens.

  python -m bench.train                                      # train.py's defaults: the char model
  python -m bench.train config/train_shakespeare_char_cpu.py --modes=eager
  python -m bench.train config/train_gpt2.py --batch_size=12  # GPT-2 124M, batch 12 x 1024
  python -m bench.train config/train_gpt2_modern.py          # the modern recipe's model and Muon
  python -m bench.train config/train_gpt2.py --preset=gpt2-large --max_batch=True     # CUDA
  python -m bench.train config/train_gpt2.py --modes=compile --profile=prof   # top ops, and traces

Its model, batch, optimizer and device settings are train.py's, with train.py's defaults; it
reads train.py's config files (keys that do not change a step are skipped) and takes --key=value
flags. Warm-up steps are not timed, the device is synchronised before each clock read, and
each figure is the median over repeats, with the fastest and slowest beside it.

--max_batch (CUDA) first finds the largest batch_size whose eager optimizer steps fit in the
GPU's memory, doubling it and then bisecting, and benchmarks every mode at that size (a
compiled step needs more or less memory than an eager one: it may not be compile's largest).

--profile=DIR records a few optimizer steps of each mode after timing, prints the ops that
took the most time, and writes DIR/trace-MODE.json.gz, which Perfetto (ui.perfetto.dev) and
chrome://tracing open.
"""

import json
import os
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from atomic import write_atomically
import train
from configurator import configure
from data import dataset_dir, read_meta
from device import autocast_for, gpu_peak_flops, resolve_device
from model import GPT, PRESETS, GPTConfig
from optim import configure_optimizers

# What a training step depends on is train.py's to say: its settings for the data, the batch, the
# model, the optimizer and the device, with its defaults. Its other keys (evaluation, logging) do
# not change a step; config files may set them, flags may not.
TRAIN_KEYS = ("dataset", "batch_size", "block_size", *(f.name for f in fields(GPTConfig) if f.name != "vocab_size"),
              "activation_checkpointing", "optimizer", "muon_lr", "muon_momentum", "muon_weight_decay",
              "muon_cautious_wd", "muon_coefficients", "muon_beta2",
              "learning_rate", "weight_decay", "beta1", "beta2", "grad_clip", "device", "dtype", "seed")
DEFAULTS = dict(
    vocab_size=None,  # None: the dataset's (its meta.json's), else 50304, GPT-2's padded, as train.py takes it
    preset="",  # a GPT-2 size, gpt2 ... gpt2-xl, in place of n_layer, n_head and n_embd
    modes="eager,compile",  # comma-separated: eager, compile
    warmup=5,  # untimed steps first (compilation happens here)
    steps=20,  # timed steps per repeat
    repeats=3,
    max_batch=False,  # CUDA: bench the largest batch_size that fits instead of batch_size
    profile="",  # a directory: profile each mode's optimizer steps, write its traces here
    out_file="bench.json",
    muon_dtype="auto",  # Newton-Schulz's: auto (bfloat16 where it is fast here, else float32), float32, bfloat16
    **{key: train.DEFAULTS[key] for key in TRAIN_KEYS},
)
config, _ = configure(DEFAULTS, sys.argv[1:], usage=__doc__, files_may_set_others=True)
globals().update(config)

for mode in modes.split(","):
    if mode not in ("eager", "compile"):
        raise SystemExit(f"error: unknown mode {mode!r} in --modes: use eager and/or compile")
if preset:
    if preset not in PRESETS:
        raise SystemExit(f"error: preset={preset!r}: choose one of {', '.join(PRESETS)}")
    # the preset's shape wins over config files, and --n_layer, --n_head, --n_embd flags over it
    flags = {arg[2:].split("=")[0] for arg in sys.argv[1:] if arg.startswith("--")}
    shape = {key: value for key, value in PRESETS[preset].items() if key not in flags}
    config.update(shape)  # bench.json's config then says the shape that ran
    globals().update(shape)
if optimizer not in ("adamw", "muon"):
    raise SystemExit(f"error: optimizer={optimizer!r}: use adamw or muon")
if vocab_size is None:
    meta = read_meta(dataset_dir(dataset)) if dataset else None
    vocab_size = meta["vocab_size"] if meta else 50304
try:
    device, dtype = resolve_device(device, dtype)
except ValueError as e:
    raise SystemExit(f"error: {e}") from None
device_type = device.split(":")[0]
autocast = autocast_for(device, dtype)
device_name = torch.cuda.get_device_name(device) if device_type == "cuda" else f"{device_type}, {torch.get_num_threads()} threads"
peak_flops = gpu_peak_flops(device_name) if device_type == "cuda" else None
if max_batch and device_type != "cuda":
    raise SystemExit(f"error: max_batch finds what fits in a GPU's memory, and the device is {device}: "
                     "set --batch_size instead")
try:
    model_config = GPTConfig(**{f.name: globals()[f.name] for f in fields(GPTConfig)})  # as train.py builds it
except ValueError as e:
    raise SystemExit(f"error: {e}") from None
muon = dict(lr=muon_lr, momentum=muon_momentum, weight_decay=muon_weight_decay, coefficients=muon_coefficients,
            beta2=muon_beta2, cautious=muon_cautious_wd) if optimizer == "muon" else None
if muon_dtype not in ("auto", "float32", "bfloat16"):
    raise SystemExit(f"error: muon_dtype={muon_dtype!r}: use auto, float32 or bfloat16")
if muon and muon_dtype != "auto":
    muon["ns_dtype"] = getattr(torch, muon_dtype)


def synchronize():
    if device_type == "cuda":
        torch.cuda.synchronize()
    elif device_type == "mps":
        torch.mps.synchronize()


def measure(step):
    """Median, min and max over repeats of the mean seconds per step."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times), min(times), max(times)


def build(mode):
    """The bare model, what runs it (compiled or not), and its optimizer and loss scaler."""
    raw_model = GPT(model_config).to(device)
    raw_model.activation_checkpointing = activation_checkpointing
    model = torch.compile(raw_model) if mode == "compile" else raw_model
    optimizer = configure_optimizers(raw_model, weight_decay, learning_rate, (beta1, beta2), device_type, muon)
    return raw_model, model, optimizer, torch.amp.GradScaler(device_type, enabled=dtype == "float16")


def forward_backward(model, scaler, x, y):
    with autocast:
        _, loss = model(x, y)
    scaler.scale(loss).backward()


def optimizer_step(raw_model, model, optimizer, scaler, x, y):
    forward_backward(model, scaler, x, y)
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def random_batch(B):
    return (torch.randint(0, vocab_size, (B, block_size), device=device),
            torch.randint(0, vocab_size, (B, block_size), device=device))


def largest_batch():
    """The largest batch size whose optimizer steps fit in the GPU's memory, eager: doubled until
    one does not fit, then the gap halved."""
    raw_model, model, optimizer, _ = build("eager")

    def fits(B):
        # a scaler of its own each try: an OOM between its unscale_ and update would break the next
        scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
        try:
            for _ in range(2):  # the second step also holds the optimizer's state
                optimizer_step(raw_model, model, optimizer, scaler, *random_batch(B))
            torch.cuda.synchronize()
            return True
        except torch.OutOfMemoryError:
            pass  # leaving the except clause drops the traceback, and with it the step's tensors
        raw_model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return False

    fitting, failing = 0, 1
    while fits(failing):
        fitting, failing = failing, 2 * failing
        print(f"max_batch: {fitting} fits", flush=True)
    while failing - fitting > 1:
        middle = (fitting + failing) // 2
        fitting, failing = (middle, failing) if fits(middle) else (fitting, middle)
    print(f"max_batch: {fitting} is the largest batch_size that fits ({fitting + 1} does not)", flush=True)
    return fitting


def record_profile(mode, step):
    """Profile a few steps; print the ops that took the most time, and write the trace."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device_type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            step()
        synchronize()
    sort_by = "self_cuda_time_total" if device_type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=15))
    os.makedirs(profile, exist_ok=True)
    path = os.path.join(profile, f"trace-{mode}.json.gz")
    tmp = os.path.join(profile, f"trace-{mode}.tmp.json.gz")  # .gz last: the profiler compresses by the name
    try:
        prof.export_chrome_trace(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {path}")


if max_batch:
    batch_size = config["batch_size"] = largest_batch()
    torch.cuda.empty_cache()  # the search's model is gone: its memory goes back for the benchmark's
    if batch_size == 0:
        raise SystemExit("error: not even batch_size=1 fits in the GPU's memory: try --activation_checkpointing=True, "
                         "a shorter --block_size or a smaller model")
print(f"{device_name}, {dtype}, batch {batch_size} x {block_size}, median (fastest-slowest) of {repeats} x {steps} steps")
torch.manual_seed(seed)
x, y = random_batch(batch_size)
results = []


def write_report(params):
    """bench.json, rewritten after each mode: a later mode that fails keeps the earlier ones' figures."""
    report = dict(command=" ".join(["python", *sys.argv]), device=device_name, dtype=dtype, torch=torch.__version__,
                  params=params, config=config, results=results)
    write_atomically(out_file, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))


for mode in modes.split(","):
    raw_model, model, optimizer, scaler = build(mode)
    if muon:  # "auto" settled: whether this machine's bfloat16 was taken to be fast
        print(f"Muon orthogonalises in {str(optimizer.optimizers[-1].ns_dtype).removeprefix('torch.')}")
    phases = (("forward+backward", lambda: forward_backward(model, scaler, x, y)),
              ("optimizer step", lambda: optimizer_step(raw_model, model, optimizer, scaler, x, y)))
    for phase, step in phases:
        if device_type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            seconds, fastest, slowest = measure(step)
        except torch.OutOfMemoryError:
            raise SystemExit(f"error: out of GPU memory in {mode} mode at batch_size={batch_size}: lower --batch_size "
                             "or set --activation_checkpointing=True" + (f" ({out_file} holds the modes before)"
                                                                          if results else "")) from None
        raw_model.zero_grad(set_to_none=True)
        tokens_per_sec = batch_size * block_size / seconds
        mfu = raw_model.estimate_mfu(tokens_per_sec, peak_flops, block_size)
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device_type == "cuda" else None
        results.append(dict(mode=mode, phase=phase, ms_per_iter=seconds * 1000, ms_min=fastest * 1000,
                            ms_max=slowest * 1000, tokens_per_sec=tokens_per_sec, mfu=mfu, peak_mem_gib=peak_mem))
        r = results[-1]
        print(f"{mode:8} {phase:17} {r['ms_per_iter']:9.2f} ms ({r['ms_min']:.2f}-{r['ms_max']:.2f})  "
              f"{tokens_per_sec:12,.0f} tok/s  mfu {'n/a' if mfu is None else f'{mfu:6.1%}'}"
              + ("" if peak_mem is None else f"  peak {peak_mem:.1f} GiB"), flush=True)
    write_report(raw_model.num_params(non_embedding=False))
    if profile:
        record_profile(mode, phases[1][1])
    del model, raw_model, optimizer, phases
print(f"wrote {out_file}")
