"""ngram.py: its counts and probabilities against a direct computation, and the script as users run it."""

import json
import math
from collections import Counter

import numpy as np
import pytest

import data
import ngram
import tokenizer
from conftest import CHARS, REPO, run

TEXT = (REPO / "assets" / "tinyshakespeare.txt").read_text()
SMALL = [CHARS.index(c) for c in TEXT[:3000]]  # small enough for the direct computation
V = len(CHARS)


class Direct:
    """Interpolated modified Kneser-Ney written out from its definition, one n-gram at a time."""

    def __init__(self, tokens, order):
        self.order = order
        raw = {k: Counter(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1)) for k in range(1, order + 1)}
        # below the top order: how many distinct tokens come before the n-gram
        self.c = {k: Counter(g[1:] for g in raw[k + 1]) for k in range(1, order)}
        self.c[order] = raw[order]
        self.D, self.total, self.gamma = {}, {}, {}
        for k in range(1, order + 1):
            n = Counter(c for c in self.c[k].values())  # n[r]: how many have count r
            y = n[1] / (n[1] + 2 * n[2])
            D = [0, 1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3]]
            if not all(0 < D[r] <= r for r in (1, 2, 3)):
                D = [0, 0.5, 1.0, 1.5]
            self.D[k] = D
            total, mass = Counter(), Counter()
            for g, c in self.c[k].items():
                total[g[:-1]] += c
                mass[g[:-1]] += D[min(c, 3)]
            self.total[k] = total
            self.gamma[k] = {h: mass[h] / total[h] for h in total}

    def p(self, w, history):
        """p(w | the last order-1 tokens of history)."""
        history = tuple(history)[max(0, len(history) - self.order + 1):]
        k = len(history) + 1
        lower = self.p(w, history[1:]) if k > 1 else 1 / V
        if not self.total[k].get(history):
            return lower  # never seen: back off
        c = self.c[k].get(history + (w,), 0)
        return (c - self.D[k][min(c, 3)]) / self.total[k][history] + self.gamma[k][history] * lower


def decode(model, k, index):
    """The tokens of the level-k n-gram with this index."""
    if k == 1:
        return (int(model.keys[0][index]),)
    prefix, last = divmod(int(model.keys[k - 1][index]), model.V)
    return decode(model, k - 1, prefix) + (last,)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_counts_and_probabilities_match_the_direct_computation(order):
    model, direct = ngram.KneserNey(np.array(SMALL, dtype=np.uint16), order, V), Direct(SMALL, order)
    for k in range(1, order + 1):
        counts = {decode(model, k, i): int(c) for i, c in enumerate(model.counts[k - 1]) if c}
        assert counts == {g: c for g, c in direct.c[k].items() if c}, k
        np.testing.assert_allclose(model.discount[k - 1], direct.D[k], rtol=1e-12)
    # every history in the text, and a few the text never has
    rng = np.random.default_rng(0)
    histories = {tuple(SMALL[i - order + 1:i]) for i in range(order - 1, len(SMALL))}
    histories = sorted(histories)[::max(1, len(histories) // 60)]
    histories += [tuple(rng.integers(0, V, order - 1)) for _ in range(5)]
    for h in histories:
        expected = [direct.p(w, h) for w in range(V)]
        np.testing.assert_allclose(model.distribution(list(h)), expected, rtol=1e-10, atol=0)
    # scoring a text: the first tokens with the shorter history they have
    held_out = [CHARS.index(c) for c in TEXT[5000:5400]]
    expected = [direct.p(held_out[j], held_out[max(0, j - order + 1):j]) for j in range(1, len(held_out))]
    np.testing.assert_allclose(model.probabilities(held_out), expected, rtol=1e-10, atol=0)
    assert model.loss(np.array(held_out), chunk=37) == pytest.approx(-np.mean(np.log(expected)), rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 5, 7])
def test_probabilities_sum_to_one_for_every_context(order):
    tokens = np.array([CHARS.index(c) for c in TEXT[:200_000]], dtype=np.uint16)
    model = ngram.KneserNey(tokens, order, V)
    rng = np.random.default_rng(order)
    seen = [list(tokens[i:i + order - 1]) for i in rng.integers(0, len(tokens) - order, 50)]
    unseen = [list(rng.integers(0, V, rng.integers(0, order))) for _ in range(50)]
    for context in seen + unseen:
        p = model.distribution(context)
        assert p.shape == (V,) and (p > 0).all()
        assert abs(p.sum() - 1) < 1e-12


def test_an_unseen_context_backs_off():
    tokens = np.array([CHARS.index(c) for c in TEXT[:200_000]], dtype=np.uint16)
    model = ngram.KneserNey(tokens, 4, V)
    x = CHARS.index("X")
    seen = [CHARS.index(c) for c in "the"]
    assert model.ids([x, *seen[:2]], 3)[0] == -1 and model.ids(seen[:2], 2)[0] >= 0  # "Xth" never, "th" often
    np.testing.assert_array_equal(model.distribution([x, *seen[:2]]), model.distribution(seen[:2]))
    # it backs off to the longest history seen, not further
    assert np.abs(model.distribution(seen[:2]) - model.distribution(seen[1:2])).max() > 0.05


def test_a_vocabulary_the_keys_of_a_flat_scheme_overflow():
    # 6-grams of GPT-2's 50,257 tokens: 50257**6 does not fit 64 bits, the ranked ids do
    rng = np.random.default_rng(0)
    tokens = rng.integers(50000, 50257, 5000).astype(np.uint16)
    model = ngram.KneserNey(tokens, 6, 50257)
    assert model.counts[-1].sum() == len(tokens) - 5
    for context in (list(tokens[100:105]), [1, 2, 3, 4, 5]):
        p = model.distribution(context)
        assert abs(p.sum() - 1) < 1e-12 and (p > 0).all()


def test_discounts_fall_back_where_the_counts_of_counts_cannot_estimate_them():
    counts = np.array([1] * 10 + [2] * 4 + [3] * 2 + [4] * 1 + [7] * 3)
    y = 10 / (10 + 2 * 4)
    np.testing.assert_allclose(ngram.discounts(counts), [0, 1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2])
    np.testing.assert_array_equal(ngram.discounts(np.array([1, 1, 2, 5])), [0, 0.5, 1.0, 1.5])  # no 3s nor 4s


# -----------------------------------------------------------------------------
# the script

def ngram_py(*args, check=True):
    return run("ngram.py", *args, check=check)


def test_script_reports_records_and_samples(char_data, tmp_path):
    out_file = tmp_path / "trigram.json"
    # run where the user stands: the baselines go to out-ngram-<dataset> there
    result = run("ngram.py", f"--dataset={char_data}", "--order=3", f"--out_file={out_file}", "--num_samples=2",
                 "--max_new_tokens=40", "--start=ROMEO:", cwd=tmp_path)
    report = json.loads(out_file.read_text())
    assert set(report) == {"order", "val_loss", "val_bits", "bits_per"} and report["order"] == 3
    # the same number as the model scored directly on the val shard
    train = data.read_shard(next(char_data.glob("*train_*.bin")))
    val = data.read_shard(next(char_data.glob("*val_*.bin")))
    assert report["val_loss"] == pytest.approx(ngram.KneserNey(train, 3, 65).loss(val), rel=1e-12)
    assert f"val loss {report['val_loss']:.4f}" in result.stdout
    # a character a token: bits per character are nats per token over ln 2
    assert report["bits_per"] == "character" and report["val_bits"] == pytest.approx(report["val_loss"] / math.log(2))
    assert f"{report['val_bits']:.4f} bits per character" in result.stdout
    samples = result.stdout.split("\n---------------\n")
    assert len(samples) == 3
    text = [s[s.index("ROMEO:"):] for s in samples[:2]]
    assert all(len(t) == len("ROMEO:") + 40 for t in text) and text[0] != text[1]
    # in the out_dir, merged with what is there; nothing is written into the dataset
    out_dir = tmp_path / ("out-ngram-" + char_data.name.replace("_", "-"))
    ngram_py(f"--dataset={char_data}", "--order=1", f"--out_dir={out_dir}")
    dataset, baselines = ngram.read_baselines(out_dir)
    assert dataset == str(char_data) and sorted(baselines) == [1, 3]
    assert baselines[1]["val_loss"] == pytest.approx(3.3473, abs=1e-4)
    assert baselines[3] == {"val_loss": report["val_loss"], "val_bits": report["val_bits"]}
    assert not list(out_dir.glob("*.tmp")) and not list(char_data.glob("baselines*"))


def test_an_out_dir_keeps_the_baselines_of_one_dataset(char_data, bpe_data, tmp_path):
    ngram_py(f"--dataset={char_data}", "--order=1", f"--out_dir={tmp_path}")
    result = ngram_py(f"--dataset={bpe_data}", "--order=1", f"--out_dir={tmp_path}", check=False)
    assert result.returncode == 1 and result.stderr == (f"error: {tmp_path} holds the n-gram baselines of {char_data}: "
                                                        f"give {bpe_data} an --out_dir of its own\n")
    assert ngram.read_baselines(tmp_path)[0] == str(char_data)
    (tmp_path / "file").write_text("")
    result = ngram_py(f"--dataset={char_data}", f"--out_dir={tmp_path / 'file'}", check=False)
    assert result.stderr == f"error: out_dir={tmp_path / 'file'} is a file, not a directory: choose another --out_dir\n"
    (tmp_path / "baselines.json").write_text("[]")
    result = ngram_py(f"--dataset={char_data}", f"--out_dir={tmp_path}", check=False)
    assert result.stderr == (f"error: {tmp_path / 'baselines.json'}: not the n-gram baselines that ngram.py writes "
                             "(TypeError: list indices must be integers or slices, not str)\n")


def test_bits_of_gpt2_tokens_are_per_byte_of_text(tmp_path):
    text = "naïve café, 日本語 🙂 " * 300
    gpt2 = tokenizer.get_tokenizer({"tokenizer": "gpt2"})
    for split in ("train", "val"):
        data.write_shard(tmp_path / data.shard_name("toy", split, 0), gpt2.encode(text))
    data.write_meta(tmp_path, {"tokenizer": "gpt2", "vocab_size": 50257})
    ngram_py(f"--dataset={tmp_path}", "--order=2", f"--out_file={tmp_path / 'bigram.json'}",
             f"--out_dir={tmp_path / 'out'}")
    report = json.loads((tmp_path / "bigram.json").read_text())
    val = gpt2.encode(text)
    scored_bytes = len(text.encode()) - len(gpt2.decode([val[0]]).encode())  # the first token is only context
    assert report["bits_per"] == "byte"
    assert report["val_bits"] == pytest.approx(report["val_loss"] * (len(val) - 1) / scored_bytes / math.log(2))


def test_script_samples_gpt2_tokens_and_stops_at_endoftext(tmp_path):
    # a text that always ends its "document" after " world"
    enc = tokenizer.get_tokenizer({"tokenizer": "gpt2"})
    doc = enc.encode("Hello world") + [tokenizer.GPT2_EOT]
    for split in ("train", "val"):
        data.write_shard(tmp_path / data.shard_name("toy", split, 0), doc * 1000)
    data.write_meta(tmp_path, {"tokenizer": "gpt2", "vocab_size": 50257})
    result = ngram_py(f"--dataset={tmp_path}", "--order=2", "--num_samples=1", "--start=Hello", "--max_new_tokens=20",
                      f"--out_dir={tmp_path / 'out'}")
    assert result.stdout.endswith("Hello world\n---------------\n")


def test_script_on_a_vocabulary_learned_here(bpe_data, tmp_path):
    result = ngram_py(f"--dataset={bpe_data}", "--order=3", "--num_samples=1", "--max_new_tokens=30",
                      "--start=ROMEO:", f"--out_dir={tmp_path}")
    train, val = (data.read_shard(next(bpe_data.glob(f"*{split}_*.bin"))) for split in ("train", "val"))
    loss = ngram.KneserNey(train, 3, 512).loss(val)
    units = tokenizer.get_tokenizer(data.read_meta(bpe_data)).units_per_token()
    bits = loss * (len(val) - 1) / units[val[1:]].sum() / math.log(2)  # the text is ASCII: a byte a character
    assert ngram.read_baselines(tmp_path) == (str(bpe_data), {3: {"val_loss": pytest.approx(loss, rel=1e-12),
                                                                  "val_bits": pytest.approx(bits, rel=1e-12)}})
    assert f"{bits:.4f} bits per byte" in result.stdout
    assert "vocab_size 512" in result.stdout and "\nROMEO:" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--dataset=/nonexistent/data"], "no dataset at /nonexistent/data"),
    (["--order=0"], "order=0: it must be at least 1"),
    (["--max_new_tokens=-1"], "cannot be negative"),
    (["--orders=3"], "unknown config key 'orders'"),
    (["--num_samples=1", "--start=\u00e9"], "the prompt has characters not in the vocabulary"),
])
def test_script_errors(char_data, args, message):
    result = ngram_py(f"--dataset={char_data}", *args, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback


def test_script_refuses_token_ids_beyond_the_vocabulary(tmp_path):
    for split in ("train", "val"):
        data.write_shard(tmp_path / data.shard_name("bad", split, 0), [1, 2, 70, 3])
    data.write_meta(tmp_path, {"tokenizer": "char", "vocab_size": 65, "chars": CHARS})
    result = ngram_py(f"--dataset={tmp_path}", check=False)
    assert result.returncode != 0 and "has token id 70, but its vocab_size is 65" in result.stderr
