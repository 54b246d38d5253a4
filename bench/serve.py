"""
Serving speed through serve.py's HTTP API: tokens/s of one stream, and the aggregate tokens/s of
1, 4 and 8 concurrent streams, on random weights of GPT-2 124M's shape or on a trained run.

  python -m bench.serve                               # CPU, 64 tokens a stream, 3 repeats
  python -m bench.serve --streams=1,2,4,8 --max_tokens=128 --repeats=5
  python -m bench.serve --out_dir=out-shakespeare-char-cpu-modern --max_tokens=500  # a trained run
  python -m bench.serve --chat --streams=1,8          # chats: /v1/chat/completions of a chat model

It saves the model to a temporary directory (or serves the run's ckpt.pt), starts `python
serve.py` on a free loopback port, and sends concurrent streamed requests from threads. The
counts are interleaved (1, 4, 8, 1, 4, 8, ...), so that a machine that slows down mid-run
affects them alike. Prints the median of the repeats with the slowest and fastest beside it.
"""

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from checkpoint import save_checkpoint
from hf import save_pretrained
from model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The history of the printing press begins"


def start_server(model_args, args):
    limits = [f"--max_batch={max(args.streams)}", "--max_n=1", f"--max_tokens={max(args.max_tokens, 1024)}"]
    proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), *model_args, "--port=0", f"--device={args.device}",
                             *limits], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    address = re.search(r" on (http://\S+)$", line.strip())
    if not address:
        proc.kill()
        raise SystemExit(f"error: serve.py did not start: {line!r}")
    print(line.strip())
    return proc, address.group(1)


def one_stream(client, seed, max_tokens, chat, result):
    """Streams one completion (or chat reply); result gets (start, end, tokens) in perf_counter seconds."""
    start = time.perf_counter()
    body = {"max_tokens": max_tokens, "temperature": 1.0, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}}
    body.update({"messages": [{"role": "user", "content": PROMPT}]} if chat else {"prompt": PROMPT})
    tokens = 0
    with client.stream("POST", "/v1/chat/completions" if chat else "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith('data: {"id"') and '"usage"' in line:
                tokens = int(re.search(r'"completion_tokens": (\d+)', line).group(1))
    result.append((start, time.perf_counter(), tokens))


def concurrent(address, streams, max_tokens, seed, chat):
    """(aggregate tokens/s, mean tokens/s of one stream) for `streams` requests sent at once."""
    results = []
    with httpx.Client(base_url=address, timeout=600, limits=httpx.Limits(max_connections=streams)) as client:
        threads = [threading.Thread(target=one_stream, args=(client, seed + i, max_tokens, chat, results))
                   for i in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if len(results) != streams:
        raise SystemExit("error: a stream failed; see the server's output above")
    wall = max(end for _, end, _ in results) - min(start for start, _, _ in results)
    per_stream = statistics.mean(tokens / (end - start) for start, end, tokens in results)
    return sum(tokens for _, _, tokens in results) / wall, per_stream


def measure(model_args, args):
    """{streams: [(aggregate tokens/s, per stream), ...] a repeat} from a server of model_args."""
    proc, address = start_server(model_args, args)
    try:
        concurrent(address, max(args.streams), 8, 0, args.chat)  # warm-up: allocator, the batched cache
        runs = {n: [] for n in args.streams}
        for repeat in range(args.repeats):
            for n in args.streams:
                runs[n].append(concurrent(address, n, args.max_tokens, 1000 * repeat, args.chat))
                print(f"  repeat {repeat + 1}, {n} streams: {runs[n][-1][0]:.1f} tokens/s in all, "
                      f"{runs[n][-1][1]:.1f} per stream", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--streams", default="1,4,8", help="comma-separated numbers of concurrent streams")
    parser.add_argument("--max_tokens", type=int, default=64, help="tokens each stream asks for")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n_layer", type=int, default=12)
    parser.add_argument("--n_head", type=int, default=12)
    parser.add_argument("--n_embd", type=int, default=768)
    parser.add_argument("--out_dir", default="", help="serve this training run's ckpt.pt (any model, modern "
                        "switches too) instead of random GPT-2 weights of the shape above")
    parser.add_argument("--chat", action="store_true", help="chats (/v1/chat/completions) instead of completions: "
                        "random weights get GPT-2's chat tokens, a run given must be a chat model")
    args = parser.parse_args()
    try:
        args.streams = [int(s) for s in args.streams.split(",")]
    except ValueError:
        raise SystemExit(f"error: --streams={args.streams}: give numbers separated by commas, e.g. 1,4,8") from None

    if args.out_dir:
        runs = measure(["--init_from=resume", f"--out_dir={args.out_dir}"], args)
    else:
        with tempfile.TemporaryDirectory() as model_dir:
            torch.manual_seed(0)
            shape = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
            if args.chat:  # a chat model is a run's checkpoint, whose meta says it has the chat tokens
                model = GPT(GPTConfig(vocab_size=50304, **shape))
                save_checkpoint(dict(model=model.state_dict(), model_args=vars(model.config), iter_num=0,
                                     best_val_loss=math.log(50257), config={},  # what random weights score
                                     meta={"tokenizer": "gpt2", "chat": True, "vocab_size": 50261}),
                                os.path.join(model_dir, "ckpt.pt"))
                runs = measure(["--init_from=resume", f"--out_dir={model_dir}"], args)
            else:
                save_pretrained(GPT(GPTConfig(vocab_size=50257, **shape)), model_dir)
                runs = measure([f"--init_from={model_dir}"], args)

    print(f"{torch.get_num_threads()} threads, {args.max_tokens} tokens a stream, median (min-max) of {args.repeats}")
    print(f"{'streams':>7} {'aggregate tokens/s':>22} {'per stream':>20} {f'vs {args.streams[0]}':>12}")
    base = statistics.median(a for a, _ in runs[args.streams[0]])
    for n, results in runs.items():
        aggregate, per_stream = [a for a, _ in results], [p for _, p in results]
        cells = [f"{statistics.median(x):7.1f} ({min(x):.1f}-{max(x):.1f})" for x in (aggregate, per_stream)]
        print(f"{n:>7} {cells[0]:>22} {cells[1]:>20} {statistics.median(aggregate) / base:11.2f}x")


if __name__ == "__main__":
    main()
