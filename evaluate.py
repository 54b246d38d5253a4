"""
The loss of a model on a dataset's split, every token of it once, in nats per token and in bits
per unit of text: per character for a char dataset, per UTF-8 byte for byte-level BPE. Bits per
unit are what models of different tokenizers, and the count models of ngram.py, compare in.

  python evaluate.py                                          # the newest run here, its dataset's val split
  python evaluate.py --out_dir=out-shakespeare-char --checkpoint=best.pt
  python evaluate.py --init_from=gpt2 --dataset=fineweb_edu --batch_size=8
  torchrun --standalone --nproc_per_node=8 evaluate.py --out_dir=out-gpt2

The split is read as data.whole_split_batches gives it, in windows of the model's block_size:
every target once, whatever the batch size and the number of torchrun processes (which split
the windows and sum). train.py measures the same at each eval with --eval_iters=0.
"""

import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from atomic import write_atomically
from checkpoint import load_model
from configurator import configure
from data import dataset_dir, read_meta, whole_split_batches
from device import autocast_for, resolve_device
from tokenizer import get_tokenizer, token_ids


@torch.no_grad()
def loss_sums(model, batches, units, device, autocast):
    """[nats, targets, units] summed over batches of (x, y) whose y is -1 where a target does not
    count; units (vocab,) gives each token's characters or bytes. Summed over every rank, they give
    nats per token = nats / targets and bits per unit = nats / units / ln 2. Call model.eval() first."""
    sums = [0.0, 0, 0]
    for x, y in batches:
        x, y = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
        with autocast:
            _, losses = model(x, y, reduction="none")  # 0 where y is -1
        counted = y >= 0
        batch = torch.stack([losses.float().sum(), counted.sum().float(), units[y[counted]].sum().float()])
        for i, value in enumerate(batch.tolist()):  # Python floats: float32 would lose digits over 100M tokens
            sums[i] += value
    return sums


def in_units(sums):
    """(nats per token, bits per unit) from loss_sums' totals."""
    nats, targets, units = sums
    return nats / targets, nats / units / math.log(2)


# -----------------------------------------------------------------------------
# the script

DEFAULTS = dict(
    init_from="resume",  # 'resume' (a checkpoint in out_dir), 'gpt2'...'gpt2-xl', or a local HF directory
    out_dir="",  # the training run; empty: the newest run here (the last checkpoint written)
    checkpoint="ckpt.pt",  # or best.pt
    dataset="",  # empty: the run's own dataset (a GPT-2 model needs one named)
    split="val",
    batch_size=8,  # windows of block_size tokens per forward pass
    device="auto",
    dtype="auto",
    out_file="",  # also write the result here as JSON
)


def fail(message):
    raise SystemExit(f"error: {message}" if os.environ.get("RANK", "0") == "0" else 1)


def main(argv):
    c, _ = configure(DEFAULTS, argv, usage=__doc__)
    if c["batch_size"] < 1:
        fail(f"batch_size={c['batch_size']}: it must be at least 1")
    ddp = "RANK" in os.environ  # under torchrun each process takes its own device and a share of the windows
    rank, world_size = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    try:
        device, dtype = resolve_device(c["device"], c["dtype"], int(os.environ.get("LOCAL_RANK", 0)))
        model, tokenizer, trained = load_model(c["init_from"], c["out_dir"], c["checkpoint"])
        dataset = c["dataset"] or trained["dataset"]
        if not dataset:
            raise ValueError(f"init_from={c['init_from']} has no dataset of its own: name one with --dataset=NAME")
        data_dir = dataset_dir(dataset)
        data_tokenizer = get_tokenizer(read_meta(data_dir))
        # a chat model's ids are its base's and the chat tokens: it reads its base's plain data too
        if token_ids(data_tokenizer.meta()) != token_ids(tokenizer.meta()):
            raise ValueError(f"{data_dir} is tokenized as {data_tokenizer.kind} ({data_tokenizer.vocab_size} tokens) "
                             f"and the model as {tokenizer.kind} ({tokenizer.vocab_size}), or with another vocabulary: "
                             "evaluate it on data made with its own tokenizer")
        if data_tokenizer.chat_tokens and not tokenizer.chat_tokens:
            raise ValueError(f"{data_dir} holds conversations, whose chat tokens the model does not have: evaluate a "
                             "model fine-tuned on them, or the model on plain text")
        batches = whole_split_batches(data_dir, c["split"], c["batch_size"], model.config.block_size, rank, world_size)
    except (OSError, ValueError, RuntimeError) as e:
        fail(e)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    model.eval().to(device)
    units = torch.tensor(tokenizer.units_per_token(), device=device)
    sums = loss_sums(model, batches, units, device, autocast_for(device, dtype))
    if ddp:
        totals = torch.tensor(sums, dtype=torch.float64, device=device)  # NCCL reduces on the GPU, gloo on the CPU
        dist.all_reduce(totals)
        sums = totals.tolist()
        dist.destroy_process_group()
    if rank:
        return
    nats, bits = in_units(sums)
    name = trained["out_dir"] or c["init_from"]
    print(f"{name} on {data_dir} {c['split']}: {int(sums[1]):,} tokens, {int(sums[2]):,} {tokenizer.unit}s; "
          f"loss {nats:.4f} nats per token, {bits:.4f} bits per {tokenizer.unit}")
    if c["out_file"]:
        result = {"split": c["split"], "tokens": int(sums[1]), "units": int(sums[2]), "unit": tokenizer.unit,
                  "loss": nats, "bits": bits}
        try:
            write_atomically(c["out_file"], lambda tmp: Path(tmp).write_text(json.dumps(result) + "\n"))
        except OSError as e:
            fail(f"cannot write {c['out_file']}: {e.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
