"""
From tokens on disk to training batches: the shard format, the dataset's metadata (meta.json),
and the loader that train.py draws batches from.

A shard is the file format of llm.c and modded-nanogpt, so shards move between the projects
either way: a header of 256 little-endian int32 (header[0] = 20240520, header[1] = 1 for
uint16 tokens, header[2] = the token count, the rest zero) followed by the tokens as
little-endian uint16. A dataset directory holds shards named *{split}_*.bin and, when made
here, a meta.json that names the tokenizer.

A chat dataset (prepare_chat.py) has two NumPy arrays beside each shard, which load without
pickle: NAME.mask.npy, a uint8 per token, 1 where the loss counts the token (the assistant's
text and the end of its turns), and NAME.starts.npy, the offsets at which conversations start.
"""

import json
import os
from pathlib import Path

import numpy as np

from atomic import write_atomically

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_VOCAB = 2**16  # uint16 holds the token ids 0..65535

META_FILE = "meta.json"
VOCAB_FILE = "vocab.tiktoken"  # beside meta.json: a trained BPE vocabulary's ranks, in tiktoken's format


# -----------------------------------------------------------------------------
# shards

def shard_name(prefix, split, index):
    return f"{prefix}_{split}_{index:06d}.bin"


# how to make the datasets that configs name
PREPARE_COMMANDS = {
    "shakespeare_char": "python prepare_shakespeare.py",
    "shakespeare": "python prepare_shakespeare.py --tokenizer gpt2",
    "shakespeare_bpe512": "python prepare_shakespeare.py --tokenizer bpe --vocab_size 512",
    "fineweb_edu": "python prepare_fineweb.py",
    "shakespeare_chat": "python prepare_chat.py --shakespeare --tokenizer_from data/shakespeare_char --block_size=64",
    "smoltalk": "python prepare_chat.py --dataset HuggingFaceTB/smol-smoltalk --out_dir data/smoltalk",
}


def find_shards(data_dir, split):
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        command = PREPARE_COMMANDS.get(data_dir.name)
        make = f"make it with `{command}`" if command else "make one with prepare_shakespeare.py or prepare_fineweb.py"
        prepared = sorted(p.parent.name for p in Path("data").glob(f"*/{META_FILE}"))
        other = f", or train on one that is ready with --dataset NAME ({', '.join(prepared)})" if prepared else ""
        raise FileNotFoundError(f"no dataset at {data_dir}: {make}{other}")
    paths = sorted(data_dir.glob(f"*{split}_*.bin"))
    if not paths:
        raise FileNotFoundError(f"no {split} shards (*{split}_*.bin) in {data_dir}")
    return paths


def check_vocab_size(vocab_size):
    # refuse rather than let np.uint16 wrap large ids around into other tokens
    if vocab_size > MAX_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} does not fit uint16 shards "
                         f"(token ids must be at most {MAX_VOCAB - 1})")


def write_shard(path, tokens):
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{path}: tokens must be a 1-D integer array, got {tokens.dtype} of shape {tokens.shape}")
    if tokens.dtype != np.uint16 and tokens.size and (tokens.min() < 0 or tokens.max() >= MAX_VOCAB):
        raise ValueError(f"{path}: token ids must lie in 0..{MAX_VOCAB - 1} to fit a uint16 shard, "
                         f"got {tokens.min()}..{tokens.max()}")
    if len(tokens) >= 2**31:
        raise ValueError(f"{path}: {len(tokens)} tokens do not fit the int32 count of the header")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = MAGIC, VERSION, len(tokens)
    # a crash mid-write must never leave a file that looks like a finished shard
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).tofile(f)

    write_atomically(path, write)


def mask_path(shard):
    return Path(shard).with_suffix(".mask.npy")


def starts_path(shard):
    return Path(shard).with_suffix(".starts.npy")


def write_array(path, array):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    write_atomically(path, write)


def read_array(path, dtype, length=None):
    """An array that write_array wrote, memory-mapped; ValueError if it is not of dtype (and length)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a NumPy array file ({e})") from None
    if array.dtype != dtype or array.ndim != 1 or length is not None and len(array) != length:
        raise ValueError(f"{path}: expected {length if length is not None else 'a list of'} {np.dtype(dtype)}, "
                         f"got {array.dtype} of shape {array.shape}: prepare the dataset again")
    return array


def shard_length(path):
    """The token count of a shard, after checking that the file really is a complete shard."""
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: not a token shard ({size} bytes, shorter than the {HEADER_BYTES}-byte header)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise ValueError(f"{path}: not a token shard (magic number {header[0]}, expected {MAGIC})")
    if header[1] != VERSION:
        raise ValueError(f"{path}: shard version {header[1]} is not supported (only version {VERSION}, uint16 tokens)")
    count = int(header[2])
    if count < 0 or size != HEADER_BYTES + 2 * count:
        raise ValueError(f"{path}: truncated or corrupt shard: the header says {count} tokens, "
                         f"which is {HEADER_BYTES + 2 * count} bytes, but the file has {size} bytes")
    return count


def _map_tokens(path, count):
    if count == 0:
        return np.empty(0, dtype=TOKEN_DTYPE)  # mmap cannot map zero bytes
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))


def read_shard(path):
    return _map_tokens(path, shard_length(path))


# -----------------------------------------------------------------------------
# metadata: which tokenizer made a dataset

def dataset_dir(dataset):
    """A dataset named in a config: a directory path, or a name under data/."""
    return dataset if os.path.isdir(dataset) else os.path.join("data", dataset)


def write_meta(data_dir, meta):
    """meta.json; a BPE vocabulary (meta["vocab"], its ranks as text) goes to VOCAB_FILE, which meta.json names."""
    check_vocab_size(meta["vocab_size"])
    meta = dict(meta)
    vocab = meta.pop("vocab", None)
    if vocab is not None:
        write_atomically(Path(data_dir) / VOCAB_FILE, lambda tmp: Path(tmp).write_text(vocab))
        meta["vocab_file"] = VOCAB_FILE
    write_atomically(Path(data_dir) / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))


def read_meta(data_dir):
    """The dataset's metadata, with the text of the vocabulary file it names as meta["vocab"] (so that a
    checkpoint, which carries the meta, needs no data directory); None for a directory without one
    (e.g. shards made by llm.c)."""
    path = Path(data_dir) / META_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if "vocab_file" in meta:
        vocab = Path(data_dir) / meta["vocab_file"]
        try:
            meta["vocab"] = vocab.read_text()
        except OSError as e:
            raise FileNotFoundError(f"cannot read {vocab}, the vocabulary that {path} names: {e.strerror}") from None
    return meta


# -----------------------------------------------------------------------------
# a whole split, every target once: what a loss that compares with another model's is measured on

def whole_split_batches(data_dir, split, batch_size, block_size, rank=0, world_size=1):
    """Batches (x, y) of up to batch_size rows of block_size int64 tokens in which every token of
    the split is a target once, but the first of each segment, which has nothing before it; y is -1
    where a target is not counted (its loss is then 0). A segment is a shard, or in a chat dataset
    a conversation, whose targets are those that its shard's mask counts. A segment is read in
    non-overlapping windows from its start; the targets left over, fewer than a window, come in one
    more window that ends at the segment's last token, its targets that earlier windows covered set
    to -1. A segment shorter than a window is one row, padded at the end. Rank r of world_size
    takes batches r, r + world_size, ...: summed over the ranks, every target counts once."""
    windows = []  # (shard, start, targets to skip, targets in the row)
    paths = find_shards(data_dir, split)
    for s, path in enumerate(paths):
        count = shard_length(path)
        starts = read_array(starts_path(path), np.int64) if mask_path(path).exists() else [0]
        for first, end in zip(starts, [*starts[1:], count]):
            targets = end - first - 1
            full = targets // block_size
            windows += [(s, first + k * block_size, 0, block_size) for k in range(full)]
            left = targets - full * block_size
            if left and full:
                windows.append((s, first + targets - block_size, block_size - left, block_size))
            elif left:
                windows.append((s, first, 0, left))
    return (window_rows(paths, windows[first:first + batch_size], block_size)
            for first in range(rank * batch_size, len(windows), world_size * batch_size))


def window_rows(paths, windows, block_size):
    x = np.zeros((len(windows), block_size), dtype=np.int64)
    y = np.full((len(windows), block_size), -1, dtype=np.int64)
    for row, (s, start, skip, n) in enumerate(windows):
        tokens = read_shard(paths[s])[start:start + n + 1]
        x[row, :n], y[row, skip:n] = tokens[:-1], tokens[1 + skip:]
        if mask_path(paths[s]).exists():  # a chat shard: the targets that its mask counts
            y[row, :n][read_array(mask_path(paths[s]), np.uint8)[start + 1:start + n + 1] == 0] = -1
    return x, y


# -----------------------------------------------------------------------------
# the loader

class ShardLoader:
    """Batches (x, y) of B x T int64 tokens, y being x shifted by one, from the shards of a split.

    Batches are numbered globally, i = 0, 1, 2, ..., and batch i depends only on the seed, i,
    the data, B and T. Rank r of world_size W draws i = r, r + W, r + 2W, ...: ranks see
    disjoint batches, and any split of the same global batches over ranks and gradient
    accumulation steps trains on the same data.

    'train' rows are random windows, shard chosen in proportion to its windows; any other
    split is read in order, in non-overlapping windows, wrapping around at its end, so that
    evaluation after reset() always sees the same batches.

    A chat dataset's windows are its conversations: each row starts where one starts (and reads on
    into the next ones), so the assistant's tokens are learned with the whole conversation before
    them; y is -1 where the mask says that the loss does not count the token.
    """

    def __init__(self, data_dir, split, batch_size, block_size, rank=0, world_size=1, seed=1337, device="cpu"):
        # torch is imported here, not at the top: the prepare scripts and their workers (which
        # import this module anew where processes are spawned) do without its ~200 MB
        import torch
        self.B, self.T = batch_size, block_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = torch.device(device)
        self.random = split == "train"
        paths = find_shards(data_dir, split)
        counts = np.array([shard_length(p) for p in paths])
        masked = [mask_path(p).exists() for p in paths]
        if any(masked) != all(masked):
            raise ValueError(f"{data_dir}: some {split} shards have a .mask.npy beside them and some do not: "
                             "prepare the dataset again")
        self.chat = all(masked)
        # a row needs T + 1 tokens from one shard
        if self.chat:
            starts = [read_array(starts_path(p), np.int64) for p in paths]
            starts = [s[s + block_size < count] for s, count in zip(starts, counts)]
            windows = np.array([len(s) for s in starts])
        else:
            windows = np.maximum(counts - block_size, 0) if self.random else (counts - 1) // block_size
        usable = windows > 0
        if not usable.any() and self.chat:
            raise ValueError(f"{split} data in {data_dir} has no conversation that starts block_size + 1 = "
                             f"{block_size + 1} tokens before the end of its shard: give it more conversations")
        if not usable.any():
            raise ValueError(f"{split} data in {data_dir} is shorter than block_size + 1 = {block_size + 1} tokens "
                             f"(its longest shard has {counts.max()})")
        self.paths = [p for p, ok in zip(paths, usable) if ok]
        self.counts = counts[usable]
        if self.chat:
            self.starts = [s for s, ok in zip(starts, usable) if ok]
            for path, count in zip(self.paths, self.counts):
                read_array(mask_path(path), np.uint8, count)  # checked here, not found mid-run
        self.first_window = np.concatenate([[0], np.cumsum(windows[usable])])  # global number of each shard's first
        self.drawn = 0  # batches this rank has drawn

    def reset(self):
        self.drawn = 0

    def batches_per_pass(self):
        """How many batches read each window of an in-order split once (the last may wrap around)."""
        return -(-int(self.first_window[-1]) // self.B)

    def max_token(self):
        """The largest token id in the shards this loader reads: a scan of about 10 ms per 100M tokens,
        so that a dataset that does not fit the model's vocabulary is refused before training."""
        return max(int(_map_tokens(path, count).max()) for path, count in zip(self.paths, self.counts))

    def state_dict(self):
        # stored as the global batch count, so a run may resume with another world_size
        return {"next_batch": self.drawn * self.world_size}

    def load_state_dict(self, state):
        self.drawn = state["next_batch"] // self.world_size

    def _windows(self, i):
        n = self.first_window[-1]
        if self.random:
            return np.random.default_rng([self.seed, i]).integers(0, n, size=self.B)
        return (i * self.B + np.arange(self.B)) % n

    def next_batch(self):
        import torch
        i = self.rank + self.drawn * self.world_size
        self.drawn += 1
        windows = self._windows(i)
        shard = np.searchsorted(self.first_window, windows, side="right") - 1
        start = windows - self.first_window[shard]
        if self.chat:
            start = np.array([self.starts[s][w] for s, w in zip(shard, start)])
        elif not self.random:
            start *= self.T
        rows = np.empty((self.B, self.T + 1), dtype=np.int64)
        counted = np.ones((self.B, self.T), dtype=bool)
        for s in np.unique(shard):
            # a fresh memmap per batch: pages read for earlier batches are not held on to,
            # so memory stays flat over a long run
            tokens = _map_tokens(self.paths[s], self.counts[s])
            mask = np.load(mask_path(self.paths[s]), mmap_mode="r") if self.chat else None
            for b in np.flatnonzero(shard == s):
                rows[b] = tokens[start[b]:start[b] + self.T + 1]
                if self.chat:
                    counted[b] = mask[start[b] + 1:start[b] + self.T + 1]
        x = torch.from_numpy(rows[:, :-1].copy())
        y = torch.from_numpy(np.where(counted, rows[:, 1:], -1))
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)
