"""
How fast prepare_fineweb.py tokenizes, with 1 and 2 processes, beside the ceiling on this
machine: tiktoken's encode_ordinary_batch over the same texts in this one process.

    python -m bench.prepare                          # the FineWeb sample beside the repo
    python -m bench.prepare --data_dir DIR --repeat 20 --trials 5

The sample's 500 documents (0.8M tokens) are repeated --repeat times into one parquet file,
so that tokenizing outweighs starting up. Rates of prepare_fineweb.py are the ones it prints,
timed from starting its workers to its last shard; peak memory is the largest resident set
of any of its processes (wait4's ru_maxrss covers a process and all its children). Each
figure is the best of --trials runs: on a shared machine the slow runs measure the neighbours.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import data
from tokenizer import gpt2_encoding

REPO = Path(__file__).resolve().parents[1]


def ceiling(texts, num_threads):
    enc = gpt2_encoding()
    t0 = time.perf_counter()
    tokens = sum(map(len, enc.encode_ordinary_batch(texts, num_threads=num_threads)))
    return tokens / (time.perf_counter() - t0)


def run_prepare(parquet, out_dir, num_proc):
    cmd = [sys.executable, str(REPO / "prepare_fineweb.py"), "--data_files", str(parquet),
           "--out_dir", str(out_dir), "--num_proc", str(num_proc)]
    print("$", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out}")
    rate = float(re.search(r"\(([\d,]+) tokens/s\)", out).group(1).replace(",", ""))
    tokens = data.read_meta(out_dir)["train_tokens"] + data.read_meta(out_dir)["val_tokens"]
    peak_mib = usage.ru_maxrss / 1024  # kilobytes on Linux
    return tokens, rate, wall, peak_mib


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "fineweb_sample"))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()

    files = sorted(Path(args.data_dir).glob("*.parquet"))
    if not files:
        sys.exit(f"error: no parquet files in {args.data_dir}")
    texts = [t for f in files for t in pq.read_table(f, columns=["text"])["text"].to_pylist()] * args.repeat
    print(f"{len(texts):,} documents ({len(files)} files x {args.repeat}), {os.cpu_count()} cores")
    sys.stdout.flush()  # before the commands' own output

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "sample.parquet"
        pq.write_table(pa.table({"text": texts}), parquet, row_group_size=100)  # as in the sample's files
        for num_proc in (1, 2):
            runs = [run_prepare(parquet, Path(tmp) / f"out{num_proc}_{t}", num_proc) for t in range(args.trials)]
            tokens, rate, wall, peak = max(runs, key=lambda run: run[1])
            rows.append((f"prepare_fineweb.py --num_proc {num_proc}", rate, f"{wall:.1f}", f"{peak:,.0f}"))
    for threads in sorted({1, os.cpu_count()}):
        rate = max(ceiling(texts, threads) for _ in range(args.trials))
        rows.append((f"encode_ordinary_batch, num_threads={threads}", rate, "-", "-"))

    print(f"\n{tokens:,} tokens; this table: {' '.join([sys.executable, *sys.argv])}\n")
    print(f"{'what':<40} {'tokens/s':>12} {'wall s':>8} {'peak MiB':>9}")
    for what, rate, wall, peak in rows:
        print(f"{what:<40} {rate:>12,.0f} {wall:>8} {peak:>9}")


if __name__ == "__main__":
    main()
