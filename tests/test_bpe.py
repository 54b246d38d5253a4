"""bpe.py: a vocabulary that rustbpe learns, which tiktoken encodes with as the trainer does, and the
sizes that a vocabulary cannot have."""

import random

import pytest

from bpe import train_bpe
from conftest import REPO, UNICODE, VARIED_TEXTS, random_text
from tokenizer import PATTERNS

SHAKESPEARE = (REPO / "assets" / "tinyshakespeare.txt").read_text()


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_tiktoken_from_the_ranks_encodes_as_the_trainer(pattern):
    """We encode with tiktoken (faster than the trainer's own encoder): the same ids."""
    rustbpe = pytest.importorskip("rustbpe")
    bpe = train_bpe([SHAKESPEARE[:200_000], UNICODE * 20], 700, pattern)
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter([SHAKESPEARE[:200_000], UNICODE * 20]), 695, pattern=PATTERNS[pattern])
    assert dict(trainer.get_mergeable_ranks()) == bpe.enc._mergeable_ranks
    rng = random.Random(1)
    for text in VARIED_TEXTS[:-2] + [SHAKESPEARE[-5000:]] + [random_text(rng, 40) for _ in range(100)]:
        assert bpe.encode(text) == trainer.encode(text)


@pytest.mark.parametrize("vocab_size, message", [
    (260, "--vocab_size 260 is too small: a byte-level BPE vocabulary has the 256 bytes and 5 special tokens, "
          "so at least 261"),
    (65537, "--vocab_size 65537 is too large: token ids must fit the uint16 shards, so at most 65,536"),
    (300, "the text has room for 3 merges, not the 39 that --vocab_size 300 needs: use --vocab_size 264 or less"),
])
def test_bpe_vocab_sizes_that_cannot_be(vocab_size, message):
    with pytest.raises(ValueError) as e:
        train_bpe(["ab ab ab abc"], vocab_size)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert train_bpe(["ab"], 261).vocab_size == 261  # the bytes alone
