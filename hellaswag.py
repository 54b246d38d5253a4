"""
HellaSwag accuracy of a GPT-2-tokenized model, scored as build-nanogpt and llm.c score it.

  python hellaswag.py --init_from=gpt2                                   # OpenAI's 124M
  python hellaswag.py --init_from=resume --out_dir=out-gpt2 --checkpoint=best.pt
  python hellaswag.py --init_from=./gpt2-xl --limit=1000 --out_file=hellaswag.json
  torchrun --standalone --nproc_per_node=8 hellaswag.py --init_from=gpt2-xl

Each example is a context and 4 endings. The model reads the context's tokens followed by
the tokens of " " + ending; its cross-entropy over the ending's tokens is the ending's loss.
acc counts the examples whose lowest summed loss is the right ending, acc_norm those whose
lowest mean loss per token is. A row longer than the model's context (block_size + 1 tokens)
loses tokens from the left of its context.

The data is HellaSwag's 10,042 validation examples, downloaded on first use to
data/hellaswag/, or any JSON-lines file (--data_file) whose lines have ctx (a string),
endings (4 strings) and label (0 to 3). train.py imports this module to score runs as they
train (hellaswag_interval).
"""

import json
import os
import sys
import time
import urllib.request
from contextlib import nullcontext
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from atomic import write_atomically
from checkpoint import load_model
from configurator import configure
from device import autocast_for, resolve_device

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
DEFAULT_FILE = os.path.join("data", "hellaswag", "hellaswag_val.jsonl")
# Under torch.compile each new batch shape is a new graph: lengths round up to a multiple of this
# (at most 5 shapes for HellaSwag, whose longest row has 149 tokens), and the last batch is filled up.
COMPILE_LENGTH_MULTIPLE = 32


# -----------------------------------------------------------------------------
# data

def download(path, url=URL):
    """Fetch the val set to path; a temp file then a rename, so that no half file is ever cached."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # several ranks may download at once, each to its own temp
    try:
        print(f"downloading {url} to {path}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            f.write(response.read())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(f"cannot download HellaSwag from {url} ({e}); fetch that file where the network is and "
                      "pass its path (hellaswag.py --data_file=PATH, train.py --hellaswag_file=PATH)") from None


def load_examples(path):
    """The examples of a JSON-lines file as (ctx, endings, label), each line checked."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"no HellaSwag data at {path}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text: HellaSwag data is JSON lines") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not JSON ({e.msg}): HellaSwag data is one JSON object a line") from None
        if not isinstance(example, dict):
            raise ValueError(f"{where} is not a JSON object with ctx, endings and label")
        ctx, endings, label = example.get("ctx"), example.get("endings"), example.get("label")
        if not isinstance(ctx, str) or not ctx:
            raise ValueError(f"{where}: ctx must be a non-empty string, got {ctx!r}")
        if not (isinstance(endings, list) and len(endings) == 4 and all(isinstance(e, str) for e in endings)):
            raise ValueError(f"{where}: endings must be a list of 4 strings, got {endings!r}")
        if type(label) is not int or not 0 <= label <= 3:
            raise ValueError(f"{where}: label must be an integer from 0 to 3, got {label!r}")
        examples.append((ctx, endings, label))
    if not examples:
        raise ValueError(f"{path} has no examples")
    return examples


def tokenize(examples, tokenizer, block_size):
    """Per example: its 4 rows (context + ending tokens, at most block_size + 1 of them, cut
    from the left), how many of each row's last tokens are the ending, and the label."""
    tokenized = []
    for ctx, endings, label in examples:
        ctx_tokens = tokenizer.encode(ctx)
        rows, ending_lengths = [], []
        for ending in endings:
            ending_tokens = tokenizer.encode(" " + ending)  # GPT-2's tokens carry their leading space
            row = (ctx_tokens + ending_tokens)[-(block_size + 1):]
            rows.append(row)
            # the first token has nothing before it to be predicted from
            ending_lengths.append(min(len(ending_tokens), len(row) - 1))
        tokenized.append((rows, ending_lengths, label))
    return tokenized


def prepare(data_file, tokenizer, block_size, limit=None):
    """The tokenized examples for a model of tokenizer.get_tokenizer's tokenizer. An empty data_file
    means HellaSwag's val set in data/hellaswag/, downloaded if missing."""
    if tokenizer.kind != "gpt2":
        raise ValueError(f"HellaSwag needs a model with GPT-2's BPE tokenizer, and this one uses the "
                         f"{tokenizer.kind!r} tokenizer: train on GPT-2 tokens (prepare_fineweb.py, "
                         "prepare_shakespeare.py --tokenizer gpt2)")
    path = data_file or DEFAULT_FILE
    if not data_file:
        # one download per node: local rank 0 fetches, the others wait for it
        if not os.path.exists(path) and int(os.environ.get("LOCAL_RANK", 0)) == 0:
            download(path)
        if dist.is_initialized():
            dist.barrier()
    examples = load_examples(path)[:limit]
    return tokenize(examples, tokenizer, block_size)


# -----------------------------------------------------------------------------
# scoring

def row_losses(model, idx, targets):
    """Each row's summed cross-entropy over its targets; -1 marks a position that is not scored."""
    _, losses = model(idx, targets, reduction="none")  # float32: autocast runs cross_entropy in float32
    return losses.sum(1)


@cache
def compiled_row_losses():
    # its own compiled function, with its own cache: training's graphs are never recompiled for HellaSwag
    return torch.compile(row_losses, dynamic=False)


@torch.no_grad()
def ending_losses(model, tokenized, batch_size, device, autocast=nullcontext(), compile=False, progress=False):
    """(N, 4) summed losses of the endings and (N, 4) their token counts, in the order given.
    batch_size examples (4 rows each) go through the model at once, right-padded: the model is
    causal, so padding after a row does not change its losses."""
    n = len(tokenized)
    counts = torch.tensor([lengths for _, lengths, _ in tokenized], dtype=torch.long).view(n, 4)
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.float64), counts
    block_size = model.config.block_size
    multiple = COMPILE_LENGTH_MULTIPLE if compile else 1
    score = compiled_row_losses() if compile else row_losses
    # longest first, so that a batch holds rows of similar length and pads little
    order = sorted(range(n), key=lambda i: -max(len(row) for row in tokenized[i][0]))
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    results = []
    was_training = model.training
    model.eval()
    for batch in tqdm_or_plain(batches, progress):
        rows = [(row, length) for i in batch for row, length in zip(*tokenized[i][:2])]
        longest = max(len(row) for row, _ in rows) - 1  # inputs are a row but its last token
        T = min(block_size, -(-longest // multiple) * multiple)
        R = 4 * (batch_size if compile else len(batch))
        idx = np.zeros((R, T), dtype=np.int64)
        targets = np.full((R, T), -1, dtype=np.int64)
        for r, (row, length) in enumerate(rows):
            idx[r, :len(row) - 1] = row[:-1]
            # position j predicts token j + 1: the ending's tokens are predicted from len(row) - 1 - length on
            targets[r, len(row) - 1 - length:len(row) - 1] = row[-length:]
        with autocast:
            losses = score(model, torch.from_numpy(idx).to(device), torch.from_numpy(targets).to(device))
        results.append(losses[:len(rows)].view(-1, 4))
    model.train(was_training)
    losses = torch.empty(n, 4, dtype=torch.float64)
    losses[order] = torch.cat(results).double().cpu()
    return losses, counts


def tqdm_or_plain(batches, progress):
    if not progress:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc="hellaswag", unit="batch", file=sys.stderr)


def evaluate(model, tokenized, batch_size, device, autocast=nullcontext(), compile=False, progress=False):
    """(examples, acc, acc_norm) over every process: under torch.distributed rank r scores examples
    r, r + world_size, ... and the counts are summed, so the result does not depend on world_size."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = tokenized[rank::world_size]
    # Every rank runs as many forward passes, as FSDP's ranks must (each block's parameters are gathered
    # from all of them): a rank with an example fewer than the others scores the first one too, uncounted.
    most = -(-len(tokenized) // world_size)  # the examples of the ranks that have the most
    padded = mine + tokenized[:most - len(mine)]
    losses, counts = ending_losses(model, padded, batch_size, device, autocast, compile, progress and rank == 0)
    losses, counts = losses[:len(mine)], counts[:len(mine)]
    labels = torch.tensor([label for _, _, label in mine], dtype=torch.long)
    totals = torch.tensor([len(mine), (losses.argmin(1) == labels).sum().item(),
                           ((losses / counts).argmin(1) == labels).sum().item()], dtype=torch.long, device=device)
    if world_size > 1:
        dist.all_reduce(totals)
    n, correct, correct_norm = totals.tolist()
    return n, correct / n, correct_norm / n


# -----------------------------------------------------------------------------
# the script

DEFAULTS = dict(
    init_from="resume",  # 'resume' (a checkpoint in out_dir), 'gpt2'...'gpt2-xl', or a local HF directory
    out_dir="",  # the training run; empty: the newest run here (the last checkpoint written)
    checkpoint="ckpt.pt",  # or best.pt
    data_file="",  # JSON lines with ctx, endings, label; empty: HellaSwag's val set, downloaded to data/hellaswag/
    limit=None,  # score only the first N examples
    batch_size=16,  # examples per forward pass, 4 rows each
    device="auto",
    dtype="auto",
    compile=False,
    out_file="",  # also write {"examples": N, "acc": A, "acc_norm": B} as JSON here
)


def fail(message):
    raise SystemExit(f"error: {message}")


def main(argv):
    c, _ = configure(DEFAULTS, argv, usage=__doc__)
    if c["limit"] is not None and (type(c["limit"]) is not int or c["limit"] < 1):
        fail(f"limit={c['limit']!r}: give a number of examples, at least 1 (or None for all)")
    if c["batch_size"] < 1:
        fail(f"batch_size={c['batch_size']}: it must be at least 1")
    # under torchrun each process takes its own device and a share of the examples
    ddp = "RANK" in os.environ
    try:
        device, dtype = resolve_device(c["device"], c["dtype"], int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        fail(e)
    device_type = device.split(":")[0]
    if device_type == "cuda":
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    master = not ddp or dist.get_rank() == 0
    autocast = autocast_for(device, dtype)

    try:
        model, tokenizer, _ = load_model(c["init_from"], c["out_dir"], c["checkpoint"])
        tokenized = prepare(c["data_file"], tokenizer, model.config.block_size, c["limit"])
    except (OSError, ValueError, RuntimeError) as e:
        fail(e)
    model.to(device)

    t0 = time.perf_counter()
    n, acc, acc_norm = evaluate(model, tokenized, c["batch_size"], device, autocast, c["compile"], progress=True)
    seconds = time.perf_counter() - t0
    if master:
        print(f"hellaswag: {n} examples, acc {acc:.4f}, acc_norm {acc_norm:.4f}")
        print(f"{seconds:.1f} s, {n / seconds:.1f} examples/s on {device} ({dtype})", file=sys.stderr)
        if c["out_file"]:
            result = json.dumps({"examples": n, "acc": acc, "acc_norm": acc_norm}) + "\n"
            try:
                write_atomically(c["out_file"], lambda tmp: Path(tmp).write_text(result))
            except OSError as e:
                fail(f"cannot write {c['out_file']}: {e.strerror}")
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
