import hashlib
import io
import urllib.error
import urllib.request

import pytest

import data
import prepare_shakespeare
import tokenizer
from bpe import train_bpe


def _decoded(out_dir):
    meta = data.read_meta(out_dir)
    tok = tokenizer.get_tokenizer(meta)
    train = data.read_shard(out_dir / "shakespeare_train_000000.bin")
    val = data.read_shard(out_dir / "shakespeare_val_000000.bin")
    assert (len(train), len(val)) == (meta["train_tokens"], meta["val_tokens"])
    return meta, tok.decode(train.tolist()), tok.decode(val.tolist())


def shipped_text():
    raw = prepare_shakespeare.SHIPPED.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == prepare_shakespeare.SHA256  # karpathy/char-rnn's input.txt
    return raw.decode()


def test_char_level(tmp_path):
    prepare_shakespeare.main(["--out_dir", str(tmp_path)])
    meta, train, val = _decoded(tmp_path)
    text = shipped_text()
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == 65
    assert meta["chars"] == sorted(set(text))
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert train + val == text
    loader = data.ShardLoader(tmp_path, "train", 2, 64)
    assert loader.next_batch()[0].max() < 65


def test_gpt2(tmp_path):
    prepare_shakespeare.main(["--tokenizer", "gpt2", "--out_dir", str(tmp_path)])
    meta, train, val = _decoded(tmp_path)
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and "chars" not in meta
    assert (meta["train_tokens"], meta["val_tokens"]) == (301_966, 36_059)  # nanoGPT's figures
    assert train + val == shipped_text()


def test_bpe_learned_from_the_train_split(tmp_path):
    prepare_shakespeare.main(["--tokenizer", "bpe", "--vocab_size", "512", "--out_dir", str(tmp_path)])
    meta, train, val = _decoded(tmp_path)
    text = shipped_text()
    assert train + val == text
    assert (meta["tokenizer"], meta["vocab_size"], meta["pattern"], meta["vocab_file"]) == ("bpe", 512, "gpt4",
                                                                                            "vocab.tiktoken")
    assert meta["train_tokens"] < 1_003_854 / 2  # fewer tokens than characters, by far
    # the vocabulary is the one learned from the first 90% of the text, not a character of val
    learned = train_bpe([text[:1_003_854]], 512)
    assert tokenizer.get_tokenizer(meta).enc._mergeable_ranks == learned.enc._mergeable_ranks
    assert train_bpe([text], 512).enc._mergeable_ranks != learned.enc._mergeable_ranks


def test_a_dataset_made_with_the_tokenizer_of_another(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "data" / "base"
    prepare_shakespeare.main(["--tokenizer", "bpe", "--vocab_size", "300", "--pattern", "gpt2", "--out_dir", str(base)])
    mine = tmp_path / "mine.txt"
    mine.write_text("Fine-tuning text, with characters Shakespeare never wrote: 日本語 🙂\n" * 10)
    # the dataset by its name under data/, as --dataset names it
    prepare_shakespeare.main(["--input", str(mine), "--tokenizer_from", "base", "--out_dir", str(tmp_path / "ft")])
    meta, train, val = _decoded(tmp_path / "ft")
    assert train + val == mine.read_text()
    assert (meta["vocab_size"], meta["pattern"]) == (300, "gpt2")
    assert (tmp_path / "ft" / "vocab.tiktoken").read_bytes() == (base / "vocab.tiktoken").read_bytes()

    # a char vocabulary taken over cannot encode characters it never saw
    prepare_shakespeare.main(["--out_dir", str(tmp_path / "chars")])
    with pytest.raises(SystemExit) as e:
        prepare_shakespeare.main(["--input", str(mine), "--tokenizer_from", str(tmp_path / "chars"),
                                  "--out_dir", str(tmp_path / "ft_chars")])
    assert str(e.value.code).startswith("error: characters not in the vocabulary: '")


def test_default_out_dirs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = tmp_path / "small.txt"
    small.write_text("to be or not to be\n" * 20)
    prepare_shakespeare.main(["--input", str(small)])
    prepare_shakespeare.main(["--input", str(small), "--tokenizer", "gpt2"])
    prepare_shakespeare.main(["--input", str(small), "--tokenizer", "bpe", "--vocab_size", "266"])
    assert data.read_meta(tmp_path / "data" / "shakespeare_char")["vocab_size"] == len(set(small.read_text()))
    assert data.read_meta(tmp_path / "data" / "shakespeare")["tokenizer"] == "gpt2"
    assert data.read_meta(tmp_path / "data" / "shakespeare_bpe266")["tokenizer"] == "bpe"


@pytest.mark.parametrize("setup, args, message", [
    (None, ["--input", "nope.txt"], "error: cannot read nope.txt: No such file or directory"),
    ("latin1.txt", ["--input", "latin1.txt"], "error: latin1.txt is not UTF-8 text (byte 3): give a text file"),
    ("short.txt", ["--input", "short.txt"], "error: the text has 10 characters: too little to split"),
    ("a_file", ["--out_dir", "a_file"], "error: --out_dir a_file is a file, not a directory"),
    (None, ["--tokenizer", "bpe"], "error: --tokenizer bpe needs --vocab_size N, from 261 to 65,536"),
    (None, ["--tokenizer", "bpe", "--vocab_size", "256"],
     "error: --vocab_size 256 is too small: a byte-level BPE vocabulary has the 256 bytes and 5 special tokens, "
     "so at least 261"),
    (None, ["--tokenizer", "bpe", "--vocab_size", "65537"], "error: --vocab_size 65537 is too large: token ids must "
                                                           "fit the uint16 shards, so at most 65,536"),
    (None, ["--tokenizer", "bpe", "--vocab_size", "65536"], "error: the text has room for 20,"),
    (None, ["--vocab_size", "512"], "error: --vocab_size and --pattern are for --tokenizer bpe"),
    (None, ["--tokenizer", "gpt2", "--pattern", "gpt2"], "error: --vocab_size and --pattern are for --tokenizer bpe"),
    (None, ["--tokenizer_from", "data/x"], "error: --tokenizer_from data/x: no prepared dataset (no meta.json) at data/x "
                                           "or data/data/x, so no tokenizer to take: prepare that dataset first"),
    (None, ["--tokenizer_from", "shakespeare_bpe512"], "error: --tokenizer_from shakespeare_bpe512: no prepared dataset "
     "(no meta.json) at shakespeare_bpe512 or data/shakespeare_bpe512, so no tokenizer to take: make it with "
     "`python prepare_shakespeare.py --tokenizer bpe --vocab_size 512`"),
    ("a_file", ["--tokenizer_from", ".", "--tokenizer", "bpe"], "error: --tokenizer_from takes another dataset's "
                                                                "tokenizer as it is: leave out --tokenizer"),
])
def test_bad_input_is_a_one_line_error(tmp_path, monkeypatch, setup, args, message):
    monkeypatch.chdir(tmp_path)
    files = {"latin1.txt": "café au lait".encode("latin-1") * 20, "short.txt": b"to be or n", "a_file": b"x"}
    if setup:
        (tmp_path / setup).write_bytes(files[setup])
    with pytest.raises(SystemExit) as e:
        prepare_shakespeare.main(args)
    assert str(e.value.code).startswith(message) and "\n" not in str(e.value.code)
    assert not (tmp_path / "data").exists()


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_is_checked_by_sha256(tmp_path, monkeypatch):
    shipped = prepare_shakespeare.SHIPPED.read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == prepare_shakespeare.SHA256
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return _Response(shipped)
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    prepare_shakespeare.main(["--download", "--out_dir", str(tmp_path / "ok")])
    assert urls == [prepare_shakespeare.URL]
    assert data.read_meta(tmp_path / "ok")["train_tokens"] == 1_003_854

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _Response(shipped + b"tampered"))
    with pytest.raises(SystemExit) as e:
        prepare_shakespeare.main(["--download", "--out_dir", str(tmp_path / "bad")])
    assert "sha256" in str(e.value.code) and prepare_shakespeare.SHA256 in str(e.value.code)
    assert not list((tmp_path / "bad").glob("*"))


def test_download_failure_says_what_to_do(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit) as e:
        prepare_shakespeare.main(["--download", "--out_dir", str(tmp_path)])
    assert prepare_shakespeare.URL in str(e.value.code) and "shipped copy" in str(e.value.code)
