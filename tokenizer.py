"""
The tokenizers: GPT-2's byte-level BPE (through tiktoken, from the ranks file that ships in
assets/, so nothing needs the network), a byte-level BPE vocabulary trained on a dataset's own
text (bpe.py learns it), and the character-level one of a char dataset; and how a prompt becomes
tokens. A dataset's meta.json names its tokenizer (and whether it has the chat tokens of
chat_template.py), and a checkpoint carries that meta, so every script encodes and decodes as the
data was made.

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

from chat_template import CHAT_TOKENS, chat_token_ids

# GPT-2's BPE ranks in tiktoken's format, byte-identical to tiktoken's r50k_base.tiktoken,
# shipped so that nothing needs the network
GPT2_FILE = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_ENV = "GPT2_TIKTOKEN_FILE"
GPT2_EOT = 50256

# How a trained vocabulary cuts text into pieces before BPE, which never merges across two pieces.
# GPT-4's (cl100k_base's) keeps numbers to 3 digits, and runs of punctuation and line ends apart
# from words; GPT-2's splits numbers only where they meet other characters. tiktoken writes GPT-4's
# with \p{N}{1,3}+, possessive there, but in Hugging Face's regex engine (an export's tokenizer.json)
# {1,3}+ means "{1,3}, once or more": \p{N}{1,3} is the same split in both.
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
                r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
PATTERNS = {"gpt4": GPT4_PATTERN, "gpt2": r50k_pat_str}
# a trained vocabulary's ids: the 256 bytes, its merges, then these
BPE_SPECIAL_TOKENS = (ENDOFTEXT, *CHAT_TOKENS)


def read_ranks(text):
    """tiktoken's ranks format, one "base64(token bytes) rank" pair a line, as {bytes: rank}."""
    return {base64.b64decode(token, validate=True): int(rank)
            for token, rank in (line.split() for line in text.splitlines() if line)}


def write_ranks(ranks):
    return "".join(f"{base64.b64encode(token).decode()} {rank}\n"
                   for token, rank in sorted(ranks.items(), key=lambda item: item[1]))


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
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=read_ranks(raw.decode()),
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


@lru_cache(maxsize=None)
def _with_chat_tokens(enc):
    # tiktoken knows special tokens by their spelling: so it decodes the chat tokens, while
    # encode_ordinary, which reads all user text, never produces them
    return tiktoken.Encoding(name=f"{enc.name}-chat", pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                             special_tokens={**enc._special_tokens, **chat_token_ids(enc.n_vocab)})


class GPT2Tokenizer:
    kind = "gpt2"  # as meta.json names it
    unit = "byte"  # of UTF-8 text: what bits are counted per

    def __init__(self, enc, chat=False):
        self.chat_tokens = chat_token_ids(enc.n_vocab) if chat else {}
        self.enc = _with_chat_tokens(enc) if chat else enc  # sample.py decodes bytes across tokens through it
        self.vocab_size = self.enc.n_vocab
        self.eot_token = enc.eot_token
        self.special_tokens = {self.eot_token, *self.chat_tokens.values()}

    def encode(self, text):
        # user text is data: "<|endoftext|>" written in it stays plain text
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode(ids)

    def meta(self):
        """What meta.json says of this tokenizer."""
        return {"tokenizer": self.kind, "vocab_size": self.vocab_size, **({"chat": True} if self.chat_tokens else {})}

    def stream_decoder(self, skip_special=False):
        """A function from one token to the text it completes; None at the end flushes what is
        left. Byte-level BPE can split a character's UTF-8 bytes over tokens: those bytes wait
        until the character is whole. skip_special: special tokens give no text (a chat reply)."""
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def decode(token):
            if token is None:
                return utf8.decode(b"", final=True)
            return "" if skip_special and token in self.special_tokens else utf8.decode(
                self.enc.decode_single_token_bytes(token))

        return decode

    def units_per_token(self):
        """The UTF-8 bytes each token id stands for; 0 for the special tokens (<|endoftext|>, the chat
        tokens), which are no text."""
        return np.array([0 if i in self.special_tokens else len(self.enc.decode_single_token_bytes(i))
                         for i in range(self.vocab_size)], dtype=np.int64)


class CharTokenizer:
    kind = "char"
    unit = "character"

    def __init__(self, chars, chat=False):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.chat_tokens = chat_token_ids(len(self.chars)) if chat else {}
        self.texts = self.chars + list(self.chat_tokens)  # the text of each id
        self.vocab_size = len(self.texts)
        self.eot_token = None
        self.special_tokens = set(self.chat_tokens.values())

    def encode(self, text):
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {''.join(unknown)!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return "".join(self.texts[i] for i in ids)

    def stream_decoder(self, skip_special=False):
        return lambda token: "" if token is None or skip_special and token in self.special_tokens else self.texts[token]

    def units_per_token(self):
        """One character each; 0 for the chat tokens, which are no text."""
        return np.array([int(i not in self.special_tokens) for i in range(self.vocab_size)], dtype=np.int64)

    def meta(self):
        return {"tokenizer": self.kind, "vocab_size": self.vocab_size, "chars": self.chars,
                **({"chat": True} if self.chat_tokens else {})}


class BPETokenizer(GPT2Tokenizer):
    """A byte-level BPE vocabulary learned from a dataset's text (bpe.train_bpe), which tiktoken encodes and
    decodes as it does GPT-2's: from ranks (token bytes: id) and a split pattern. Its ids are the 256
    bytes, the merges in the order they were learned, then BPE_SPECIAL_TOKENS. The chat tokens are
    always there; chat says whether the model was trained to use them."""
    kind = "bpe"

    def __init__(self, ranks, pattern, chat=False):
        self.pattern = pattern  # a name in PATTERNS
        special = {token: len(ranks) + i for i, token in enumerate(BPE_SPECIAL_TOKENS)}
        super().__init__(tiktoken.Encoding(name="bpe", pat_str=PATTERNS[pattern], mergeable_ranks=ranks,
                                           special_tokens=special, explicit_n_vocab=len(ranks) + len(special)))
        self.chat_tokens = {token: special[token] for token in CHAT_TOKENS} if chat else {}
        self.special_tokens = set(special.values())

    def meta(self):
        # the ranks travel as text: data.write_meta puts them in a file beside meta.json
        return {**super().meta(), "pattern": self.pattern, "vocab": write_ranks(self.enc._mergeable_ranks)}


def encode_prompt(tokenizer, text):
    """A prompt's tokens; an empty prompt starts where a document starts. ValueError for characters
    that a char-level tokenizer never saw."""
    tokens = tokenizer.encode(text)
    if not tokens:
        tokens = [tokenizer.eot_token] if tokenizer.eot_token is not None else tokenizer.encode("\n")
    return tokens


def get_tokenizer(meta, vocab_file=None):
    """The tokenizer that made a dataset, from its meta as data.read_meta gives it or a checkpoint
    carries it; GPT-2 when there is no metadata (llm.c's shards are GPT-2). A chat dataset's (meta
    "chat": true) has the chat tokens too."""
    kind = meta["tokenizer"] if meta else "gpt2"
    chat = bool(meta and meta.get("chat"))
    if kind == "gpt2":
        return GPT2Tokenizer(gpt2_encoding(vocab_file), chat)
    if kind == "char":
        return CharTokenizer(meta["chars"], chat)
    if kind == "bpe":
        try:
            tokenizer = BPETokenizer(read_ranks(meta["vocab"]), meta["pattern"], chat)
        except (ValueError, KeyError) as e:
            raise ValueError(f"the dataset's BPE vocabulary is damaged ({type(e).__name__}: {e}): "
                             "prepare it again") from None
        if tokenizer.vocab_size != meta["vocab_size"]:
            raise ValueError(f"the dataset's BPE vocabulary has {tokenizer.vocab_size} tokens, but its meta.json says "
                             f"{meta['vocab_size']}: prepare it again")
        return tokenizer
    raise ValueError(f"unknown tokenizer {kind!r} in the dataset's meta.json (expected 'gpt2', 'char' or 'bpe')")


def token_ids(meta):
    """What a model's token ids mean, chat tokens aside: the tokenizer, and its characters or its
    trained vocabulary, if any."""
    meta = meta or {"tokenizer": "gpt2"}  # no meta.json: GPT-2 tokens, e.g. llm.c's shards
    return meta["tokenizer"], meta.get("chars"), meta.get("pattern"), meta.get("vocab")
