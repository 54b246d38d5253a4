"""
Learning a BPE vocabulary (seconds, memory), and tokenizing with it beside tiktoken's GPT-2 on the
same text and cores (tokens/s, and UTF-8 bytes a token).

    python -m bench.tokenizer                         # Tiny Shakespeare and the FineWeb sample beside the repo
    python -m bench.tokenizer --sizes 512,4096 --trials 5 --repeat 20

Learning: each (text, size) runs in a fresh process, which reports the seconds train_bpe took and
the peak resident memory of the process before (the text read) and after. Tiny Shakespeare's text
is its train split, what prepare_shakespeare.py learns from; the FineWeb sample's is its 500
documents. Tokenizing: the FineWeb sample repeated --repeat times, encoded by tiktoken with GPT-2's
ranks and with the --encode_size vocabulary learned from the sample, in one thread and in one per
core (encode_ordinary_batch), the two tokenizers interleaved, each figure the best of --trials.
The learned vocabulary tokenizes the text it was learned from, which flatters its bytes a token.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from bpe import train_bpe
from tokenizer import gpt2_encoding

REPO = Path(__file__).resolve().parents[1]


def texts(name, fineweb_dir):
    if name == "shakespeare":
        text = (REPO / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")
        return [text[:int(0.9 * len(text))]]  # the train split, as prepare_shakespeare.py cuts it
    files = sorted(Path(fineweb_dir).glob("*.parquet"))
    if not files:
        raise SystemExit(f"error: no parquet files in {fineweb_dir}: give --fineweb_dir")
    return [t for f in files for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def learn(name, size, fineweb_dir):
    """In this process: learn one vocabulary and print what it took, as JSON."""
    corpus = texts(name, fineweb_dir)
    before = peak_mib()
    t0 = time.perf_counter()
    train_bpe(corpus, size)
    print(json.dumps({"seconds": time.perf_counter() - t0, "mib_before": before, "mib_after": peak_mib(),
                      "chars": sum(map(len, corpus))}))


def learn_in_child(name, size, fineweb_dir):
    cmd = [sys.executable, "-m", "bench.tokenizer", "--learn", name, str(size), "--fineweb_dir", fineweb_dir]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def encode_rate(enc, corpus, threads):
    t0 = time.perf_counter()
    tokens = sum(map(len, enc.encode_ordinary_batch(corpus, num_threads=threads)))
    return tokens / (time.perf_counter() - t0), tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fineweb_dir", default=str(REPO.parent / "shared" / "data" / "fineweb_sample"))
    parser.add_argument("--sizes", default="512,1024,4096,16384", help="vocabulary sizes to learn")
    parser.add_argument("--encode_size", type=int, default=32768, help="the vocabulary that tokenizes")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--learn", nargs=2, metavar=("TEXT", "SIZE"), help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.learn:
        return learn(args.learn[0], int(args.learn[1]), args.fineweb_dir)

    print(f"{os.cpu_count()} cores; this table: {' '.join([sys.executable, *sys.argv])}\n")
    print(f"{'learning':<28} {'chars':>10} {'seconds':>8} {'peak MiB':>9} {'before':>7}")
    for name in ("shakespeare", "fineweb"):
        for size in map(int, args.sizes.split(",")):
            runs = [learn_in_child(name, size, args.fineweb_dir) for _ in range(args.trials)]
            best = min(runs, key=lambda run: run["seconds"])
            print(f"{f'{name}, {size:,} tokens':<28} {best['chars']:>10,} {best['seconds']:>8.2f} "
                  f"{best['mib_after']:>9,.0f} {best['mib_before']:>7,.0f}", flush=True)

    corpus = texts("fineweb", args.fineweb_dir)
    encoders = {"gpt2 (50,257)": gpt2_encoding(),
                f"learned ({args.encode_size:,})": train_bpe(corpus, args.encode_size).enc}
    corpus = corpus * args.repeat
    size = sum(len(t.encode()) for t in corpus)
    print(f"\n{'tokenizing':<28} {'threads':>7} {'tokens/s':>12} {'bytes/token':>11}   ({size / 1e6:.1f} MB of text)")
    for threads in sorted({1, os.cpu_count()}):
        best = {name: (0, 0) for name in encoders}
        for _ in range(args.trials):
            for name, enc in encoders.items():  # interleaved: a neighbour's burst slows both alike
                best[name] = max(best[name], encode_rate(enc, corpus, threads))
        for name, (rate, tokens) in best.items():
            print(f"{name:<28} {threads:>7} {rate:>12,.0f} {size / tokens:>11.2f}")


if __name__ == "__main__":
    main()
