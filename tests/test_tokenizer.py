import random

import pytest
import tiktoken

import tokenizer
from bpe import train_bpe, utf8_text
from chat_template import CHAT_TOKENS
from conftest import REPO, UNICODE, VARIED_TEXTS, random_text


def test_offline_gpt2_tokenizer():
    tok = tokenizer.get_tokenizer({"tokenizer": "gpt2"})
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    assert isinstance(tok.enc, tiktoken.Encoding)
    # special tokens in user text stay text
    assert 50256 not in tok.encode("a<|endoftext|>b")
    assert tok.decode(tok.encode("Hello world")) == "Hello world"
    assert tokenizer.get_tokenizer(None).encode("Hello world") == [15496, 995]


def test_gpt2_ranks_from_an_explicit_file(tmp_path):
    copy = tmp_path / "r50k_base.tiktoken"
    copy.write_bytes(tokenizer.GPT2_FILE.read_bytes())
    enc = tokenizer.gpt2_encoding(copy)
    assert enc.encode_ordinary("Hello world") == [15496, 995]


def test_gpt2_ranks_file_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(tokenizer.GPT2_FILE.read_bytes()[:-10])
    with pytest.raises(ValueError, match="306cd27f") as e:
        tokenizer.gpt2_encoding(bad)
    assert str(bad) in str(e.value)
    # the environment variable is read, and wins over the shipped file
    monkeypatch.setenv("GPT2_TIKTOKEN_FILE", str(bad))
    with pytest.raises(ValueError, match="bad.tiktoken"):
        tokenizer.gpt2_encoding()
    monkeypatch.setenv("GPT2_TIKTOKEN_FILE", str(tmp_path / "missing.tiktoken"))
    with pytest.raises(FileNotFoundError, match="missing.tiktoken"):
        tokenizer.gpt2_encoding()


def test_no_gpt2_ranks_anywhere_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.delenv("GPT2_TIKTOKEN_FILE", raising=False)
    monkeypatch.setattr(tokenizer, "GPT2_FILE", tmp_path / "gone.tiktoken")

    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(FileNotFoundError) as e:
        tokenizer.gpt2_encoding()
    message = str(e.value)
    assert "gone.tiktoken" in message and "GPT2_TIKTOKEN_FILE" in message and "--vocab_file" in message
    assert "\n" not in message


def test_streaming_decode_keeps_multibyte_characters_whole():
    tok = tokenizer.get_tokenizer({"tokenizer": "gpt2"})
    text = "naïve café, 日本語 and 🙂🎉!"
    tokens = tok.encode(text)
    # the test means something only if some token ends in the middle of a character
    assert any("\ufffd" in tok.decode([t]) for t in tokens)
    decode = tok.stream_decoder()
    pieces = [decode(t) for t in tokens]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert decode(None) == ""
    # cut in the middle of a character, the flush at the end gives what is left
    decode = tok.stream_decoder()
    partial = "".join(decode(t) for t in tok.encode("a\U0001F642")[:-1])
    assert partial + decode(None) == "a\ufffd"


def test_char_tokenizer():
    tok = tokenizer.get_tokenizer({"tokenizer": "char", "vocab_size": 4, "chars": [" ", "a", "b", "c"]})
    assert tok.encode("cab a") == [3, 1, 2, 0, 1]
    assert tok.decode([3, 1, 2, 0, 1]) == "cab a"
    decode = tok.stream_decoder()
    assert [decode(t) for t in [3, 1, 2]] == ["c", "a", "b"]
    assert tok.vocab_size == 4 and tok.eot_token is None
    with pytest.raises(ValueError, match="'XZ'"):
        tok.encode("aZbX")


def test_units_per_token_count_the_text_a_token_stands_for():
    gpt2 = tokenizer.get_tokenizer({"tokenizer": "gpt2"})
    units = gpt2.units_per_token()
    text = "naïve café, 日本語 and 🙂🎉!\n"
    assert gpt2.unit == "byte" and units[gpt2.encode(text)].sum() == len(text.encode("utf-8"))
    assert units[gpt2.eot_token] == 0 and len(units) == gpt2.vocab_size
    chars = tokenizer.get_tokenizer({"tokenizer": "char", "vocab_size": 3, "chars": ["a", "é", "\n"]})
    assert chars.unit == "character" and list(chars.units_per_token()) == [1, 1, 1]


# -----------------------------------------------------------------------------
# a byte-level BPE vocabulary trained here

SHAKESPEARE = (REPO / "assets" / "tinyshakespeare.txt").read_text()


@pytest.fixture(scope="module", params=["gpt4", "gpt2"])
def bpe(request):
    return train_bpe([SHAKESPEARE[:200_000], UNICODE * 20], 700, request.param)


def test_bpe_decodes_any_unicode_to_what_was_encoded(bpe):
    rng = random.Random(0)
    for text in VARIED_TEXTS + [random_text(rng, rng.randrange(1, 60)) for _ in range(300)]:
        tokens = bpe.encode(text)
        assert bpe.decode(tokens) == text
        assert all(0 <= t < bpe.eot_token for t in tokens)  # user text never becomes a special token
    # the vocabulary learned from the text: fewer tokens than bytes
    assert len(bpe.encode(SHAKESPEARE[:10_000])) < 10_000 / 2


def test_bpe_lone_surrogates_are_replacement_characters(bpe):
    # no UTF-8 text holds a lone surrogate (JSON's "\ud800" escapes make them): each encodes as U+FFFD
    assert bpe.encode("a\ud800b\udfffc") == bpe.encode("a\ufffdb\ufffdc")
    assert bpe.decode(bpe.encode("a\ud800b")) == "a\ufffdb"
    assert bpe.encode("\ud83d\ude42") == bpe.encode("🙂")  # a surrogate pair written out is its character
    assert utf8_text("x\ud800") == "x\ufffd" and utf8_text("ok é") == "ok é"
    # and text to learn from may hold them too
    assert train_bpe(["a\ud800b xab yab zab"], 262).encode("ab") == [256]


def test_bpe_ids_are_bytes_merges_then_the_special_tokens(bpe):
    assert bpe.vocab_size == 700 and bpe.kind == "bpe"
    assert [bpe.encode(chr(b)) for b in range(128)] == [[b] for b in range(128)]  # byte b is id b
    assert bpe.enc.decode_single_token_bytes(256) in SHAKESPEARE.encode()  # the first merge is the most frequent pair
    specials = ["<|endoftext|>", *CHAT_TOKENS]
    assert [bpe.enc.encode_single_token(t) for t in specials] == list(range(695, 700))
    assert bpe.eot_token == 695


def test_bpe_units_are_bytes_and_its_special_tokens_none(bpe):
    units = bpe.units_per_token()
    for text in VARIED_TEXTS:
        assert units[bpe.encode(text)].sum() == len(utf8_text(text).encode("utf-8"))
    assert bpe.unit == "byte" and list(units[695:]) == [0] * 5 and units[:256].tolist() == [1] * 256


def test_bpe_streaming_keeps_multibyte_characters_whole(bpe):
    text = "ROMEO: 日本語 🙂 naïve"
    tokens = bpe.encode(text)
    assert any("\ufffd" in bpe.decode([t]) for t in tokens)  # some token ends inside a character
    decode = bpe.stream_decoder()
    pieces = [decode(t) for t in tokens]
    assert "".join(pieces) == text and not any("\ufffd" in piece for piece in pieces)


def test_bpe_meta_gives_the_same_tokenizer(bpe):
    meta = bpe.meta()
    assert (meta["tokenizer"], meta["vocab_size"], meta["pattern"]) == ("bpe", 700, bpe.pattern)
    again = tokenizer.get_tokenizer(meta)
    assert again.enc._mergeable_ranks == bpe.enc._mergeable_ranks and again.encode(UNICODE) == bpe.encode(UNICODE)
    with pytest.raises(ValueError, match="says 701: prepare it again"):
        tokenizer.get_tokenizer({**meta, "vocab_size": 701})
    with pytest.raises(ValueError, match="damaged"):
        tokenizer.get_tokenizer({**meta, "vocab": meta["vocab"].replace("IA==", "I*==")})
