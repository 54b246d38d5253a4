"""
Count-based n-gram language models, the baseline a GPT's loss should beat.

  python ngram.py --dataset=shakespeare_char --order=5          # -> out-ngram-shakespeare-char/baselines.json
  python ngram.py --dataset=fineweb_edu --order=2 --out_file=bigram.json
  python ngram.py --dataset=shakespeare_char --order=7 --num_samples=2 --max_new_tokens=300

Fits the model on the dataset's train split and reports its val loss in train.py's units:
mean cross-entropy in nats per token over the whole val split, and in bits per character (char
datasets) or per UTF-8 byte (BPE), in which models of any tokenizer compare. Both are recorded in
out_dir/baselines.json, with those of the other orders fitted on the dataset before; plot.py
--baselines OUT_DIR draws them as lines beside training runs.

Smoothing is interpolated modified Kneser-Ney (Chen & Goodman 1998), the standard for count
models. For a k-gram hw (history h of k-1 tokens, h' = h without its first token):

    p_k(w | h) = (c_k(hw) - D_k(c_k(hw))) / c_k(h.)  +  gamma_k(h) p_{k-1}(w | h')
    gamma_k(h) = (D_k1 N1(h.) + D_k2 N2(h.) + D_k3+ N3+(h.)) / c_k(h.)

c_k is the raw count at the model's order and, below it, the continuation count N1+(.hw),
the number of distinct tokens seen before hw; c_k(h.) is its sum over w and Nr(h.) the number
of w with c_k(hw) = r. p_0 is uniform over the vocabulary, so every token keeps some
probability and p_k sums to one over the vocabulary for every history. A history never seen
with a following token (c_k(h.) = 0) backs off: p_k(w | h) = p_{k-1}(w | h'). The three
discounts of each order come from its counts of counts n1..n4: Y = n1 / (n1 + 2 n2),
D_r = r - (r + 1) Y n_{r+1} / n_r; where these are undefined or not within (0, r] (tiny data,
or the few tokens of a char vocabulary at order 1) the order uses KenLM's fallback discounts
0.5, 1, 1.5.

Every val token after the first is scored (the first is only context, as in train.py), each
from the order-1 tokens before it; the first order-1 tokens of the split have a shorter history
and are scored by the lower orders. The shards of a split are read as one stream of tokens.

Each distinct k-gram gets an id, its rank among the k-grams seen in training; a k-gram's key is
(id of its first k-1 tokens) * vocab_size + its last token, so keys stay below
train tokens * vocab_size and any order works with any vocabulary up to 65,536 tokens. Counting
is sorting those keys with numpy; the peak memory is about 20 bytes per train token for a bigram
model and 30 for a trigram (100M GPT-2 tokens: 1.9 and 2.9 GB).
"""

import json
import math
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

from atomic import write_json
from configurator import configure
from data import dataset_dir, find_shards, read_meta, read_shard
from tokenizer import get_tokenizer

# -----------------------------------------------------------------------------
DEFAULTS = dict(
    dataset="shakespeare_char",  # a directory under data/, or a path to one
    order=3,  # 1 unigram, 2 bigram, 3 trigram, ...
    out_dir="",  # baselines.json, each order's val loss; empty: out-ngram-<dataset>, e.g. out-ngram-shakespeare-char
    out_file="",  # also write {"order": N, "val_loss": X} to this JSON file
    num_samples=0,  # print this many samples from the model
    max_new_tokens=500,
    start="\n",  # the samples' prompt
    seed=1337,
)

FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM's, where a count of counts is too small to estimate them
CHUNK = 1 << 22  # large arrays are searched a chunk at a time, which bounds the temporary memory
BASELINES_FILE = "baselines.json"  # {"dataset": DIR, "orders": {"3": {"val_loss": nats, "val_bits": bits}, ...}}


def lookup(keys, query):
    """The index of each query in the sorted array keys, or -1 where it is not there."""
    # in query order, searchsorted's binary searches miss the cache at almost every step: sorting
    # the queries first makes it about 10x faster on large tables
    by_value = np.argsort(query)
    pos = np.empty(len(query), dtype=np.int64)
    pos[by_value] = np.searchsorted(keys, query[by_value])
    found = keys[np.minimum(pos, len(keys) - 1)] == query
    return np.where(found, pos, -1)


def discounts(counts):
    """D_1, D_2, D_3+ from the counts of counts (Chen & Goodman's estimates), and D(0) = 0 first."""
    n = np.bincount(np.minimum(counts, 5), minlength=6)[1:5].astype(float)
    if n.all():
        y = n[0] / (n[0] + 2 * n[1])
        d = [r - (r + 1) * y * n[r] / n[r - 1] for r in (1, 2, 3)]
        if all(0 < d[r - 1] <= r for r in (1, 2, 3)):
            return np.array([0.0, *d])
    return np.array([0.0, *FALLBACK_DISCOUNTS])


class KneserNey:
    def __init__(self, tokens, order, vocab_size, progress=lambda message: None):
        """Counts the n-grams of tokens (a 1-D integer array) up to the given order."""
        self.order, self.V = order, vocab_size
        tokens = np.asarray(tokens)
        L = len(tokens)
        id_dtype = np.int32 if L < 2**31 else np.int64  # ids and counts are below L
        # level k (k = 1..order): the sorted keys of the distinct k-grams and their raw counts
        t0 = time.perf_counter()
        counts = np.bincount(tokens, minlength=vocab_size)
        self.keys, self.counts = [np.flatnonzero(counts)], [counts[counts > 0].astype(id_dtype)]
        self.unigram_id = np.full(vocab_size, -1, dtype=np.int64)  # a table: level 1 needs no search
        self.unigram_id[self.keys[0]] = np.arange(len(self.keys[0]))
        ids = self.unigram_id.astype(id_dtype)[tokens]  # each position's k-gram id, for the next order
        for k in range(2, order + 1):
            progress(f"{k - 1}-grams: {len(self.keys[-1]):,} distinct in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            ids = ids[:L - k + 1]  # k-grams start at 0..L-k
            keys = ids * np.int64(vocab_size) + tokens[k - 1:]
            keys.sort()  # in place: no second copy of the largest array
            new = np.empty(len(keys), dtype=bool)
            new[0] = True
            np.not_equal(keys[1:], keys[:-1], out=new[1:])
            starts = np.flatnonzero(new)
            del new
            counts = np.empty(len(starts), dtype=id_dtype)
            np.subtract(starts[1:], starts[:-1], out=counts[:-1], casting="unsafe")
            counts[-1] = len(keys) - starts[-1]
            self.keys.append(keys[starts])
            self.counts.append(counts)
            del keys, starts
            if k < order:  # each position's k-gram id, from its (k-1)-gram id: in place, a chunk at a time
                for a in range(0, len(ids), CHUNK):
                    ids[a:a + CHUNK] = lookup(self.keys[-1], ids[a:a + CHUNK] * np.int64(vocab_size) +
                                              tokens[k - 1 + a:k - 1 + a + CHUNK])
        del ids
        progress(f"{order}-grams: {len(self.keys[-1]):,} distinct in {time.perf_counter() - t0:.1f} s")

        # below the top order, Kneser-Ney counts each k-gram's distinct left neighbours instead of its
        # occurrences: one for each distinct (k+1)-gram whose last k tokens it is
        suffix = suffix_k = None
        for k in range(2, order + 1):
            suffix_k = np.empty(len(self.keys[k - 1]), dtype=id_dtype)  # the id of each k-gram's last k-1 tokens
            for a in range(0, len(suffix_k), CHUNK):
                prefix, last = np.divmod(self.keys[k - 1][a:a + CHUNK], vocab_size)
                suffix_k[a:a + CHUNK] = (self.unigram_id[last] if k == 2 else
                                         lookup(self.keys[k - 2], suffix[prefix] * np.int64(vocab_size) + last))
            suffix = suffix_k
            self.counts[k - 2] = np.bincount(suffix, minlength=len(self.keys[k - 2])).astype(id_dtype)
        del suffix, suffix_k

        # per level: its discounts, and for each history its total count and gamma
        self.discount, self.total, self.gamma = [], [], []
        for k in range(1, order + 1):
            counts = self.counts[k - 1]
            d = discounts(counts)
            n_histories = len(self.keys[k - 2]) if k > 1 else 1
            total, mass = np.zeros(n_histories), np.zeros(n_histories)
            for a in range(0, len(counts), CHUNK):
                # level k-1 ids, sorted as the keys are; 0, the empty history, at level 1
                history = self.keys[k - 1][a:a + CHUNK] // vocab_size
                c, h0 = counts[a:a + CHUNK], history[0]
                part = np.bincount(history - h0, weights=c)
                total[h0:h0 + len(part)] += part
                mass[h0:h0 + len(part)] += np.bincount(history - h0, weights=d[np.minimum(c, 3)])
            self.discount.append(d)
            self.total.append(total)
            self.gamma.append(np.divide(mass, total, out=np.zeros_like(mass), where=total > 0))
        # p_1 over the whole vocabulary, interpolated with the uniform p_0
        seen = np.arange(len(self.keys[0]))
        self.unigram = np.full(vocab_size, self.gamma[0][0] / vocab_size)
        self.unigram[self.keys[0]] += self._discounted(1, seen, np.zeros_like(seen))

    def _discounted(self, k, grams, histories):
        """(c_k(hw) - D(c_k(hw))) / c_k(h.) for level-k gram ids (-1: unseen, 0) and their histories' ids."""
        counts = np.where(grams >= 0, self.counts[k - 1][grams], 0)
        return (counts - self.discount[k - 1][np.minimum(counts, 3)]) / self.total[k - 1][histories]

    def ids(self, tokens, k):
        """The level-k id of the k-gram starting at each position of tokens (-1 where never seen)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        ids = self.unigram_id[tokens]
        for level in range(2, k + 1):
            n = len(tokens) - level + 1
            ids = lookup(self.keys[level - 1], ids[:n] * self.V + tokens[level - 1:])
        return ids

    def probabilities(self, tokens, first=1):
        """p(tokens[j] | the order-1 tokens before it, or as many as there are) for j = first..len(tokens)-1."""
        tokens = np.asarray(tokens, dtype=np.int64)
        j = np.arange(first, len(tokens))
        p = self.unigram[tokens[j]]
        history = self.ids(tokens, 1)  # the level k-1 id of the (k-1)-gram at each position
        for k in range(2, self.order + 1):
            n = max(len(tokens) - k + 1, 0)
            grams = lookup(self.keys[k - 1], history[:n] * self.V + tokens[k - 1:])
            i = j - k + 1  # where the k-gram ending at j starts
            i = i[i >= 0]
            h = history[i]
            seen = h >= 0
            seen[seen] = self.total[k - 1][h[seen]] > 0  # else back off: p_k = p_{k-1}
            where = i[seen] + k - 1 - first
            p[where] = self._discounted(k, grams[i[seen]], h[seen]) + self.gamma[k - 1][h[seen]] * p[where]
            history = grams
        return p

    def distribution(self, context):
        """p(w | the last order-1 tokens of context) for every token w: a vector of vocab_size."""
        context = list(context)[max(0, len(context) - self.order + 1):]
        p = self.unigram.copy()
        for k in range(2, len(context) + 2):
            h = self.ids(context[len(context) - k + 1:], k - 1)[0]
            if h < 0 or self.total[k - 1][h] == 0:
                continue
            lo, hi = np.searchsorted(self.keys[k - 1], [h * self.V, (h + 1) * self.V])
            p *= self.gamma[k - 1][h]
            p[self.keys[k - 1][lo:hi] % self.V] += self._discounted(k, np.arange(lo, hi), np.full(hi - lo, h))
        return p

    def loss(self, tokens, chunk=CHUNK):
        """Mean -log p in nats over tokens[1:], scored a chunk at a time to bound memory."""
        total = 0.0
        for a in range(1, len(tokens), chunk):
            lo = max(0, a - self.order + 1)
            total -= np.log(self.probabilities(tokens[lo:a + chunk], first=a - lo)).sum()
        return total / (len(tokens) - 1)


# -----------------------------------------------------------------------------
# out_dir/baselines.json: what plot.py --baselines draws as lines

def read_baselines(out_dir):
    """(dataset, {order: {"val_loss": nats per token, "val_bits": bits per character or byte}}) of the
    n-gram models that ngram.py fitted on dataset (its directory's absolute path) and recorded in
    out_dir; None where it recorded none."""
    path = os.path.join(out_dir, BASELINES_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            recorded = json.load(f)
        orders = {int(order): {"val_loss": float(b["val_loss"]), "val_bits": float(b["val_bits"])}
                  for order, b in recorded["orders"].items()}
        return str(recorded["dataset"]), orders
    except (ValueError, AttributeError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: not the n-gram baselines that ngram.py writes ({type(e).__name__}: {e})") from None


def write_baselines(out_dir, dataset, baselines):
    write_json(os.path.join(out_dir, BASELINES_FILE),
               {"dataset": dataset, "orders": {str(k): baselines[k] for k in sorted(baselines)}})


def read_split(data_dir, split):
    shards = [read_shard(p) for p in find_shards(data_dir, split)]
    return shards[0] if len(shards) == 1 else np.concatenate(shards)  # one shard stays a memory map


def sample(model, tokenizer, start, max_new_tokens, rng):
    """Prints one sample as it is generated, like sample.py; returns its text."""
    context = tokenizer.encode(start)
    sys.stdout.write(start)
    decode, text = tokenizer.stream_decoder(), [start]
    for _ in range(max_new_tokens):
        cdf = np.cumsum(model.distribution(context))
        token = int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
        if token == tokenizer.eot_token:
            break
        context.append(token)
        text.append(decode(token))
        sys.stdout.write(text[-1])
        sys.stdout.flush()
    text.append(decode(None))
    print(text[-1] + "\n---------------", flush=True)
    return "".join(text)


def default_out_dir(dataset):
    """out-ngram-<dataset>, e.g. out-ngram-shakespeare-char, as train.py's runs go to out-<dataset>."""
    return "out-ngram-" + os.path.basename(os.path.normpath(dataset)).replace("_", "-")


def fail(message):
    raise SystemExit(f"error: {message}")


def main(argv):
    config, _ = configure(DEFAULTS, argv, usage=__doc__)
    config["out_dir"] = config["out_dir"] or default_out_dir(config["dataset"])
    c = SimpleNamespace(**config)
    if c.order < 1:
        fail(f"order={c.order}: it must be at least 1 (1 unigram, 2 bigram, ...)")
    if c.num_samples < 0 or c.max_new_tokens < 0:
        fail("num_samples and max_new_tokens cannot be negative")
    data_dir = dataset_dir(c.dataset)
    try:
        meta = read_meta(data_dir)
        train, val = read_split(data_dir, "train"), read_split(data_dir, "val")
        tokenizer = get_tokenizer(meta)
    except (OSError, ValueError) as e:
        fail(e)
    try:
        if c.num_samples:  # checked before the fit; an empty prompt samples from order 1 first
            tokenizer.encode(c.start)
    except ValueError as e:  # characters a char-level dataset does not have
        fail(f"the prompt has {e}")
    vocab_size = meta["vocab_size"] if meta else 50257  # no meta.json: GPT-2 tokens, e.g. llm.c's shards
    for split, tokens in (("train", train), ("val", val)):
        if len(tokens) < 2:
            fail(f"the {split} split of {data_dir} has {len(tokens)} tokens: too few to fit or score a model")
        if tokens.max() >= vocab_size:
            fail(f"the {split} split of {data_dir} has token id {tokens.max()}, but its vocab_size is {vocab_size}")
    # out_dir is checked before the fit, which can take minutes
    if os.path.exists(c.out_dir) and not os.path.isdir(c.out_dir):
        fail(f"out_dir={c.out_dir} is a file, not a directory: choose another --out_dir")
    try:
        recorded = read_baselines(c.out_dir)
    except (OSError, ValueError) as e:
        fail(e)
    if recorded and recorded[0] != os.path.abspath(data_dir):
        fail(f"{c.out_dir} holds the n-gram baselines of {recorded[0]}: give {data_dir} an --out_dir of its own")

    t0 = time.perf_counter()
    print(f"{data_dir}: {len(train):,} train and {len(val):,} val tokens, vocab_size {vocab_size}", flush=True)
    model = KneserNey(train, c.order, vocab_size, progress=lambda m: print(m, flush=True))
    t1 = time.perf_counter()
    val_loss = model.loss(val)
    # every val token after the first is scored: its characters or bytes are what the bits are per
    val_bits = val_loss * (len(val) - 1) / tokenizer.units_per_token()[val[1:]].sum() / math.log(2)
    print(f"order {c.order}: val loss {val_loss:.4f} nats/token (perplexity {math.exp(val_loss):.2f}), "
          f"{val_bits:.4f} bits per {tokenizer.unit}; fit in {t1 - t0:.1f} s, scored in {time.perf_counter() - t1:.1f} s",
          flush=True)
    baselines = {**(recorded[1] if recorded else {}), c.order: {"val_loss": val_loss, "val_bits": val_bits}}
    try:
        os.makedirs(c.out_dir, exist_ok=True)
        write_baselines(c.out_dir, os.path.abspath(data_dir), baselines)
    except OSError as e:
        fail(f"cannot write {os.path.join(c.out_dir, BASELINES_FILE)}: {e.strerror}")
    if c.out_file:
        try:
            write_json(c.out_file, {"order": c.order, "val_loss": val_loss, "val_bits": val_bits,
                                    "bits_per": tokenizer.unit})
        except OSError as e:
            fail(f"cannot write {c.out_file}: {e.strerror}")

    rng = np.random.default_rng(c.seed)
    for _ in range(c.num_samples):
        sample(model, tokenizer, c.start, c.max_new_tokens, rng)


if __name__ == "__main__":
    main(sys.argv[1:])
