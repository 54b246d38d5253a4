"""
The tokenizers: GPT-2's byte-level BPE (through tiktoken, from the ranks file that ships in
assets/, so nothing needs the network) and the character-level one of a char dataset; how a
prompt becomes tokens; and the chat template. A dataset's meta.json names its tokenizer (and
whether it has the chat tokens), and a checkpoint carries that meta, so every script encodes and
decodes as the data was made.

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

# The chat template. Each turn is its role's opening token, the content's text tokens, and <|end|>:
#   [<|endoftext|>] <|system|>...<|end|> <|user|>...<|end|> <|assistant|>...<|end|> ...
# (a conversation starts with the tokenizer's document token where it has one, as GPT-2's documents
# do). The special tokens take the ids right after the tokenizer's own: 50257..50260 for GPT-2, rows
# that the padded vocabulary (50304) of models trained here already has; a char vocabulary's come
# after its characters. Content is always encoded as text, so a message that spells a special token
# keeps it as text.
ROLES = ("system", "user", "assistant")
END = "<|end|>"
CHAT_TOKENS = (*(f"<|{role}|>" for role in ROLES), END)


def chat_token_ids(first):
    """{spelling: id} of the chat tokens, from id `first` on."""
    return {token: first + i for i, token in enumerate(CHAT_TOKENS)}


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


def encode_prompt(tokenizer, text):
    """A prompt's tokens; an empty prompt starts where a document starts. ValueError for characters
    that a char-level tokenizer never saw."""
    tokens = tokenizer.encode(text)
    if not tokens:
        tokens = [tokenizer.eot_token] if tokenizer.eot_token is not None else tokenizer.encode("\n")
    return tokens


def render_conversation(tokenizer, messages):
    """A conversation as a chat model is trained on it: (tokens, mask), mask 1 where the loss counts
    the token: the assistant's text and the <|end|> that ends each of its turns. messages are
    {"role": one of ROLES, "content": str}. ValueError for a tokenizer without chat tokens, or
    characters that a char vocabulary lacks."""
    if not tokenizer.chat_tokens:
        raise ValueError("the model has no chat tokens: fine-tune it on a chat dataset first (prepare_chat.py, "
                         "then train.py)")
    tokens = [] if tokenizer.eot_token is None else [tokenizer.eot_token]
    mask = [0] * len(tokens)
    for message in messages:
        content = tokenizer.encode(message["content"])
        tokens += [tokenizer.chat_tokens[f"<|{message['role']}|>"], *content, tokenizer.chat_tokens[END]]
        mask += [0] + [int(message["role"] == "assistant")] * (len(content) + 1)
    return tokens, mask


# The same template for transformers' apply_chat_template (export.py writes it into a chat model's
# tokenizer files). Its special tokens are literals, so that apply_chat_template(...,
# sanitize_control_tokens=True) keeps their spellings in messages as text, as render_conversation
# does; {% generation %} marks what the loss counts (return_assistant_tokens_mask=True).
CHAT_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{% generation %}{{ message['content'] }}<|end|>"
    "{% endgeneration %}"
    "{% else %}{{ raise_exception('a role must be system, user or assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def render_prompt(tokenizer, messages):
    """The tokens that ask for the assistant's next turn: the conversation, then <|assistant|>.
    Generation ends at <|end|>."""
    return render_conversation(tokenizer, messages)[0] + [tokenizer.chat_tokens["<|assistant|>"]]


def get_tokenizer(meta, vocab_file=None):
    """The tokenizer that made a dataset; GPT-2 when there is no metadata (llm.c's shards are GPT-2).
    A chat dataset's (meta "chat": true) has the chat tokens too."""
    kind = meta["tokenizer"] if meta else "gpt2"
    chat = bool(meta and meta.get("chat"))
    if kind == "gpt2":
        return GPT2Tokenizer(gpt2_encoding(vocab_file), chat)
    if kind == "char":
        return CharTokenizer(meta["chars"], chat)
    raise ValueError(f"unknown tokenizer {kind!r} in the dataset's meta.json (expected 'gpt2' or 'char')")
