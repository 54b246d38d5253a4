"""evaluate.py: the whole split's loss equals a direct computation over every window, in nats and in
bits, with one process and two; train.py's --eval_iters=0 measures the same. Its errors run in-process,
one of them also as users see it."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import evaluate
from conftest import TORCHRUN, run, save_run, tiny_model, main_error
from evaluate import in_units, loss_sums
from tokenizer import get_tokenizer

CHARS = [chr(ord("a") + i) for i in range(26)] + [" ", "\n"]
META = {"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two val shards whose lengths leave a tail after the last full window of 16."""
    directory = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, lengths in (("train", (600,)), ("val", (203, 70))):
        for i, n in enumerate(lengths):
            data.write_shard(directory / data.shard_name("tiny", split, i), rng.integers(0, len(CHARS), n))
    data.write_meta(directory, META)
    return directory


def direct(model, directory):
    """nats summed over every token of the val split but each shard's first, each predicted from the
    window that data.whole_split_batches puts it in, computed window by window and position by
    position: full windows from each shard's start, then one ending at its last token for the rest."""
    T, total, count = model.config.block_size, 0.0, 0
    for path in data.find_shards(directory, "val"):
        tokens = torch.tensor(np.array(data.read_shard(path)), dtype=torch.long)
        full = (len(tokens) - 1) // T
        windows = [(k * T, True) for k in range(full)]
        if len(tokens) - 1 > full * T:
            windows.append((len(tokens) - 1 - T, False))
        for start, is_full in windows:
            logits, _ = model(tokens[start:start + T][None], tokens[start + 1:start + T + 1][None])
            for j in range(T):
                if is_full or start + j + 1 > full * T:
                    total += F.cross_entropy(logits[0, j], tokens[start + j + 1]).item()
                    count += 1
    return total, count


def bad_input(*args):
    return main_error(evaluate.main, *args)


def test_whole_split_loss_is_the_direct_computation(dataset):
    model = tiny_model(vocab_size=len(CHARS)).eval()
    nats, count = direct(model, dataset)
    assert count == 202 + 69  # every token of each shard but its first
    units = torch.ones(len(CHARS), dtype=torch.long)
    for batch_size, world_size in [(1, 1), (3, 1), (2, 2)]:
        sums = np.sum([loss_sums(model, data.whole_split_batches(dataset, "val", batch_size, 16, rank, world_size),
                                 units, "cpu", torch.autocast("cpu", enabled=False)) for rank in range(world_size)],
                      axis=0)
        assert sums[1] == count and sums[2] == count
        assert sums[0] == pytest.approx(nats, rel=1e-6)
        loss, bits = in_units(sums)
        assert loss == pytest.approx(nats / count, rel=1e-6) and bits == pytest.approx(loss / math.log(2), rel=1e-9)


@pytest.mark.slow
def test_one_and_two_processes_and_train_py_agree(dataset, tmp_path):
    # a trained run whose last eval covers the whole split, then evaluate.py on its checkpoint
    out = tmp_path / "out"
    run("train.py", f"--dataset={dataset}", f"--out_dir={out}", "--device=cpu", "--compile=False", "--n_layer=1",
        "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4", "--max_iters=4", "--eval_interval=4",
        "--eval_iters=0", "--dropout=0.0")
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last_eval = [r for r in logged if "val_loss" in r][-1]
    one = run("evaluate.py", f"--out_dir={out}", "--batch_size=3", f"--out_file={tmp_path / 'one.json'}")
    run("evaluate.py", f"--out_dir={out}", "--batch_size=2", f"--out_file={tmp_path / 'two.json'}",
        launcher=TORCHRUN)
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert a["tokens"] == b["tokens"] == a["units"] == 202 + 69 and a["unit"] == "character"
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) == pytest.approx(last_eval["val_loss"], rel=1e-6)
    assert a["bits"] == pytest.approx(last_eval["val_bits"], rel=1e-6)
    assert f"loss {a['loss']:.4f} nats per token, {a['bits']:.4f} bits per character" in one.stdout


def test_a_chat_model_reads_its_bases_plain_text(dataset, tmp_path):
    """Fine-tuned to chat, a model's ids are its base's and the chat tokens: it scores the base's
    plain val split as the base would be scored (how much the fine-tuning forgot). A model without
    chat tokens cannot read conversations."""
    chat_meta = get_tokenizer({**META, "chat": True}).meta()
    model = tiny_model(vocab_size=chat_meta["vocab_size"], block_size=16).eval()
    save_run(tmp_path / "chat", model, chat_meta)
    run("evaluate.py", f"--out_dir={tmp_path / 'chat'}", f"--dataset={dataset}", f"--out_file={tmp_path / 'r.json'}")
    result = json.loads((tmp_path / "r.json").read_text())
    nats, count = direct(model, dataset)
    assert result["tokens"] == result["units"] == count and result["loss"] == pytest.approx(nats / count, rel=1e-6)

    conversations = tmp_path / "conversations"
    conversations.mkdir()
    data.write_meta(conversations, chat_meta)
    save_run(tmp_path / "plain", tiny_model(vocab_size=len(CHARS)), META)
    assert bad_input(f"--out_dir={tmp_path / 'plain'}", f"--dataset={conversations}") == (
        f"error: {conversations} holds conversations, whose chat tokens the model does not have: evaluate a model "
        "fine-tuned on them, or the model on plain text")


def test_gpt2_bits_are_per_byte(tmp_path):
    gpt2 = get_tokenizer({"tokenizer": "gpt2"})
    text = "naïve café, 日本語 and 🙂! " * 20
    tokens = gpt2.encode(text)
    for split in ("train", "val"):
        data.write_shard(tmp_path / data.shard_name("g", split, 0), tokens)
    data.write_meta(tmp_path, {"tokenizer": "gpt2", "vocab_size": 50257})
    save_run(tmp_path / "out", tiny_model(vocab_size=50257, block_size=32), {"tokenizer": "gpt2", "vocab_size": 50257})
    run("evaluate.py", f"--out_dir={tmp_path / 'out'}", f"--dataset={tmp_path}", f"--out_file={tmp_path / 'r.json'}")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["unit"] == "byte" and result["tokens"] == len(tokens) - 1
    assert result["units"] == len(text.encode()) - len(gpt2.decode(tokens[:1]).encode())  # all but the first token
    assert result["bits"] == pytest.approx(result["loss"] * result["tokens"] / result["units"] / math.log(2))


def test_bad_input_is_one_line(dataset, tmp_path, monkeypatch):
    save_run(tmp_path / "gpt2", tiny_model(vocab_size=50257), {"tokenizer": "gpt2", "vocab_size": 50257})
    monkeypatch.chdir(tmp_path)
    for args, message in [
        ([f"--out_dir={tmp_path / 'gpt2'}", f"--dataset={dataset}"], "is tokenized as char (28 tokens) and the model "
                                                                     "as gpt2 (50257)"),
        (["--init_from=" + str(tmp_path / "gpt2"), "--dataset=x"], "config.json is missing"),  # a run, not HF
        ([f"--out_dir={tmp_path / 'gpt2'}", f"--dataset={tmp_path / 'none'}"], "no dataset at"),
    ]:
        assert message in bad_input(*args), args
    # and as a user sees it
    result = run("evaluate.py", "--batch_size=0", check=False, cwd=tmp_path)
    assert result.returncode == 1 and result.stderr == "error: batch_size=0: it must be at least 1\n"
