"""
HellaSwag scoring speed at GPT-2 124M's shape, on random weights: the speed does not depend on
them, and no download is needed.

  python -m bench.hellaswag --data_file=../shared/data/hellaswag/hellaswag_val.jsonl --limit=48
  python -m bench.hellaswag --limit=10042 --modes=eager,compile --batch_sizes=16,64    # a GPU

Each setting (mode, batch size) is timed --repeats times, the settings interleaved, after an
untimed run that compiles (under compile) and warms up; prints examples/s as the median with
the slowest and fastest beside it.
"""

import argparse
import statistics
import time

import torch

import hellaswag
from device import DTYPES, autocast_for, resolve_device
from model import GPT, GPTConfig
from tokenizer import get_tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_file", default="", help="default: data/hellaswag/, downloaded if missing")
    parser.add_argument("--limit", type=int, default=48, help="the first N examples")
    parser.add_argument("--batch_sizes", default="1,4,16", help="examples per forward pass, comma-separated")
    parser.add_argument("--modes", default="eager", help="eager and/or compile, comma-separated")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    try:
        args.device, dtype = resolve_device(args.device, args.dtype)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    device_type = args.device.split(":")[0]
    autocast = autocast_for(args.device, dtype)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2", vocab_size=50257)).to(args.device)
    try:
        tokenized = hellaswag.prepare(args.data_file, get_tokenizer(None), model.config.block_size, args.limit)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    settings = [(mode, int(bs)) for mode in args.modes.split(",") for bs in args.batch_sizes.split(",")]

    def examples_per_second(mode, batch_size):
        if device_type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        hellaswag.ending_losses(model, tokenized, batch_size, args.device, autocast, compile=mode == "compile")
        return len(tokenized) / (time.perf_counter() - t0)  # the losses come back to the CPU: synchronised

    for setting in settings:
        examples_per_second(*setting)
    runs = {setting: [] for setting in settings}
    for _ in range(args.repeats):
        for setting in settings:
            runs[setting].append(examples_per_second(*setting))

    print(f"GPT-2 124M shape, random weights, {len(tokenized)} examples, device {args.device}, {dtype}, "
          f"{torch.get_num_threads()} threads; examples/s, median (min-max) of {args.repeats}")
    for (mode, batch_size), values in runs.items():
        print(f"{mode:<8} batch {batch_size:>3}: {statistics.median(values):8.2f} ({min(values):.2f}-{max(values):.2f})"
              f"   full val set (10,042) in {10042 / statistics.median(values):,.0f} s")


if __name__ == "__main__":
    main()
