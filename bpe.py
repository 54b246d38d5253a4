"""
Learning a byte-level BPE vocabulary from a dataset's text (prepare_*.py --tokenizer bpe): rustbpe
learns the merges, and tokenizer.BPETokenizer encodes and decodes with them through tiktoken.
"""

from data import MAX_VOCAB
from tokenizer import BPE_SPECIAL_TOKENS, PATTERNS, BPETokenizer

MIN_BPE_VOCAB = 256 + len(BPE_SPECIAL_TOKENS)


def check_bpe_vocab_size(vocab_size):
    if vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"--vocab_size {vocab_size} is too small: a byte-level BPE vocabulary has the 256 bytes "
                         f"and {len(BPE_SPECIAL_TOKENS)} special tokens, so at least {MIN_BPE_VOCAB}")
    if vocab_size > MAX_VOCAB:
        raise ValueError(f"--vocab_size {vocab_size} is too large: token ids must fit the uint16 shards, "
                         f"so at most {MAX_VOCAB:,}")


def utf8_text(text):
    """text as UTF-8 can hold it. A str read from UTF-8 always can; one from elsewhere (JSON's "\\ud800"
    escapes) may hold lone surrogates, which no UTF-8 text has: each becomes U+FFFD, the replacement
    character, and a surrogate pair becomes its character. tiktoken's encode does the same."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def train_bpe(texts, vocab_size, pattern="gpt4"):
    """A BPETokenizer of vocab_size ids, special tokens included, learned from the strings of texts by
    rustbpe (nanochat's trainer: parallel, and the same merges for any number of threads)."""
    check_bpe_vocab_size(vocab_size)
    try:
        import rustbpe  # only here: sampling and serving need tiktoken alone
    except ImportError:
        raise RuntimeError("training a BPE vocabulary needs the rustbpe package: pip install rustbpe") from None
    trainer = rustbpe.Tokenizer()
    merged = vocab_size - len(BPE_SPECIAL_TOKENS)  # the 256 bytes and the merges
    trainer.train_from_iterator(map(utf8_text, texts), merged, pattern=PATTERNS[pattern])
    ranks = dict(trainer.get_mergeable_ranks())
    if len(ranks) < merged:
        # once every piece of the text is one token, no pair is left to merge
        raise ValueError(f"the text has room for {len(ranks) - 256:,} merges, not the {merged - 256:,} that "
                         f"--vocab_size {vocab_size} needs: use --vocab_size {len(ranks) + len(BPE_SPECIAL_TOKENS)} "
                         f"or less, or more text")
    return BPETokenizer(ranks, pattern)
