"""
The tokenizers: GPT-2's byte-level BPE (through tiktoken, from the ranks file that ships in
assets/, so nothing needs the network) and the character-level one of a char dataset; and how
a prompt becomes tokens. A dataset's meta.json names its tokenizer, and a checkpoint carries
that meta, so every script encodes and decodes as the data was made.

Losses of different tokenizers compare in bits per unit of text, the unit being a character for
a char vocabulary and a UTF-8 byte for byte-level BPE: units_per_token gives each token's count.
"""

import base64
import codecs
import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

# GPT-2's BPE ranks in tiktoken's format, byte-identical to tiktoken's r50k_base.tiktoken,
# shipped so that nothing needs the network
GPT2_FILE = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_ENV = "GPT2_TIKTOKEN_FILE"
GPT2_EOT = 50256


@lru_cache(maxsize=None)
def _gpt2_from_file(path):
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"cannot read the GPT-2 BPE ranks file {path}: {e.strerror}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != GPT2_SHA256:
        raise ValueError(f"{path} is not the GPT-2 BPE ranks file "
                         f"(sha256 {digest[:8]}..., expected {GPT2_SHA256[:8]}...): use tiktoken's r50k_base.tiktoken or this repo's assets/gpt2.tiktoken")
    # the format is one "base64(token bytes) rank" pair a line
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines() if line)}
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: GPT2_EOT}, explicit_n_vocab=GPT2_EOT + 1)


def gpt2_encoding(vocab_file=None):
    """GPT-2's tiktoken Encoding, from the first of: vocab_file, $GPT2_TIKTOKEN_FILE, the shipped
    assets/gpt2.tiktoken, tiktoken's own download. A file that is named but wrong is an error,
    not a reason to try the next source."""
    path = vocab_file or os.environ.get(GPT2_ENV)
    if path:
        return _gpt2_from_file(str(path))
    if GPT2_FILE.exists():
        return _gpt2_from_file(str(GPT2_FILE))
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise FileNotFoundError(f"no GPT-2 BPE ranks: {GPT2_FILE} is missing and tiktoken could not fetch them "
                           f"({type(e).__name__}); provide tiktoken's r50k_base.tiktoken (sha256 {GPT2_SHA256[:8]}...) "
                           f"with --vocab_file PATH or {GPT2_ENV}=PATH") from None


class GPT2Tokenizer:
    kind = "gpt2"  # as meta.json names it
    unit = "byte"  # of UTF-8 text: what bits are counted per

    def __init__(self, enc):
        self.enc = enc  # sample.py decodes token bytes across token boundaries through it
        self.vocab_size = enc.n_vocab
        self.eot_token = enc.eot_token

    def encode(self, text):
        # user text is data: "<|endoftext|>" written in it stays plain text
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode(ids)

    def stream_decoder(self):
        """A function from one token to the text it completes; None at the end flushes what is
        left. Byte-level BPE can split a character's UTF-8 bytes over tokens: those bytes wait
        until the character is whole."""
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda token: (utf8.decode(b"", final=True) if token is None
                              else utf8.decode(self.enc.decode_single_token_bytes(token)))

    def units_per_token(self):
        """The UTF-8 bytes each token id stands for; 0 for <|endoftext|>, which is no text."""
        return np.array([0 if i == self.eot_token else len(self.enc.decode_single_token_bytes(i))
                         for i in range(self.vocab_size)], dtype=np.int64)


class CharTokenizer:
    kind = "char"
    unit = "character"

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)
        self.eot_token = None

    def encode(self, text):
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {''.join(unknown)!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def stream_decoder(self):
        return lambda token: "" if token is None else self.chars[token]

    def units_per_token(self):
        return np.ones(self.vocab_size, dtype=np.int64)


def encode_prompt(tokenizer, text):
    """A prompt's tokens; an empty prompt starts where a document starts. ValueError for characters
    that a char-level tokenizer never saw."""
    tokens = tokenizer.encode(text)
    if not tokens:
        tokens = [tokenizer.eot_token] if tokenizer.eot_token is not None else tokenizer.encode("\n")
    return tokens


def get_tokenizer(meta, vocab_file=None):
    """The tokenizer that made a dataset; GPT-2 when there is no metadata (llm.c's shards are GPT-2)."""
    kind = meta["tokenizer"] if meta else "gpt2"
    if kind == "gpt2":
        return GPT2Tokenizer(gpt2_encoding(vocab_file))
    if kind == "char":
        return CharTokenizer(meta["chars"])
    raise ValueError(f"unknown tokenizer {kind!r} in the dataset's meta.json (expected 'gpt2' or 'char')")
