"""bench/serve.py end to end on a tiny model: it starts serve.py, streams, and reports every count."""

import re

import pytest

from bench.serve import PROMPT
from conftest import run, save_run
from model import GPT, GPTConfig


def bench(*args):
    return run("-m bench.serve", *args, check=False, timeout=300)


@pytest.mark.slow
def test_reports_each_number_of_streams():
    result = bench("--n_layer=1", "--n_head=2", "--n_embd=16", "--streams=1,3", "--max_tokens=4", "--repeats=2")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+) \(([\d.]+)-([\d.]+)\)", result.stdout, re.MULTILINE)
    assert [r[0] for r in rows] == ["1", "3"]
    for _, median, low, high in rows:
        assert 0 < float(low) <= float(median) <= float(high)
    assert result.stdout.count("repeat ") == 4  # 2 repeats x 2 counts, interleaved


@pytest.mark.slow
def test_bad_streams():
    result = bench("--streams=1,four")
    assert result.returncode != 0 and "--streams=1,four: give numbers separated by commas" in result.stderr


@pytest.mark.slow
def test_serves_a_trained_run(tmp_path):
    # a checkpoint of a modern-recipe char model, streamed past its block_size (the ring cache)
    model = GPT(GPTConfig(vocab_size=65, block_size=8, n_layer=1, n_head=2, n_embd=16, rope=True, norm="rmsnorm"))
    chars = sorted(set(PROMPT) | set("abcdefghijklmnopqrstuvwxyz"))
    chars += [chr(0x100 + i) for i in range(65 - len(chars))]
    save_run(tmp_path, model, {"tokenizer": "char", "vocab_size": 65, "chars": chars})
    result = bench(f"--out_dir={tmp_path}", "--streams=2", "--max_tokens=20", "--repeats=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "char (65) tokenizer" in result.stdout  # serve.py's first line: it serves the run, not random GPT-2
    assert re.search(r"^\s+2\s+[\d.]+ \(", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.slow
def test_chats():
    result = bench("--chat", "--n_layer=1", "--n_head=2", "--n_embd=16", "--streams=1,2", "--max_tokens=4",
                   "--repeats=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gpt2 (BPE, 50261) tokenizer" in result.stdout  # a chat model: GPT-2's tokens and the 4 chat tokens
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+) \(", result.stdout, re.MULTILINE)
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[1]) > 0 for r in rows)
