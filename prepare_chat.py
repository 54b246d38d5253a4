"""
Conversations as a chat dataset that train.py fine-tunes on: token shards as for pretraining and,
beside each, which tokens the loss counts (the assistant's) and where each conversation starts.

    python prepare_chat.py --shakespeare --tokenizer_from data/shakespeare_char --block_size 64   # offline
    python prepare_chat.py --data_files chats.jsonl --out_dir data/mychat              # local files
    python prepare_chat.py --dataset HuggingFaceTB/smol-smoltalk --out_dir data/smoltalk   # streamed

A conversation is a row whose `messages` (--messages_column) is a list of {"role": "system" |
"user" | "assistant", "content": str}, the format of Hugging Face's chat datasets; local files
are JSON lines (.jsonl, a row a line) or parquet. --shakespeare makes conversations of the Tiny
Shakespeare that ships: each speech said by the user and the next one answered by the model.

Rows that are not a conversation to learn from (a role that is not one of the three, content that
is not a string, no assistant turn, more than --block_size tokens, characters that a char
vocabulary lacks) are skipped and counted; a line that is not JSON is refused with its file and
line. Every 20th conversation goes to val. The tokens are GPT-2's, or with --tokenizer_from those of
the dataset that the model to fine-tune was trained on (its character vocabulary, or its trained
BPE vocabulary).
The dataset is built beside --out_dir and renamed into place: a failed run leaves nothing behind.
"""

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from chat_template import ROLES, render_conversation
import data
from prepare_shakespeare import SHIPPED
from tokenizer import GPT2_ENV, get_tokenizer
from tokenizer_choice import tokenizer_from

PREFIX = "chat"
VAL_EVERY = 20  # conversation 19, 39, 59, ... goes to val


# -----------------------------------------------------------------------------
# sources: (where, messages) for each row, where naming the row in messages to the user

def read_jsonl(path, column):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg}): a .jsonl file has one JSON object a line") from None
            if not isinstance(row, dict) or column not in row:
                raise ValueError(f"{path}:{n}: the row has no '{column}': name the column of the conversations "
                                 "with --messages_column")
            yield f"{path}:{n}", row[column]


def read_parquet(path, column):
    import pyarrow.parquet as pq  # installed with datasets

    table = pq.ParquetFile(path)
    if column not in table.schema_arrow.names:
        raise ValueError(f"{path} has no column '{column}' (it has {', '.join(table.schema_arrow.names)}): name the "
                         "column of the conversations with --messages_column")
    n = 0
    for batch in table.iter_batches(columns=[column], batch_size=1024):
        for messages in batch.column(0).to_pylist():
            n += 1
            yield f"{path} row {n}", messages


def read_dataset(name, config, split, column):
    try:
        import datasets  # only here: machines that only train need not install it
    except ImportError:
        raise RuntimeError("--dataset needs the datasets package: pip install datasets") from None
    ds = datasets.load_dataset(name, name=config or None, split=split, streaming=True)
    if ds.column_names is not None and column not in ds.column_names:
        raise ValueError(f"{name} has no column '{column}' (it has {', '.join(ds.column_names)}): name the column "
                         "of the conversations with --messages_column")
    for n, row in enumerate(ds, 1):
        yield f"{name} row {n}", row[column]


def shakespeare_conversations(fits):
    """Tiny Shakespeare's speeches, each said by the user and answered by the next one, without the
    speakers' names (a speech is a block "NAME:\\nlines" between blank lines). Where the two do not
    fit(messages), the user's last lines and the answer's first lines are kept, as many as fit: a
    reply answers the end of what was said."""
    speeches = [block.partition(":\n")[2].strip("\n") for block in SHIPPED.read_text(encoding="utf-8").split("\n\n")]
    for i, (said, answer) in enumerate(zip(speeches, speeches[1:])):
        if not (said and answer):
            continue
        said, answer = said.split("\n"), answer.split("\n")
        while True:
            messages = [{"role": "user", "content": "\n".join(said)},
                        {"role": "assistant", "content": "\n".join(answer)}]
            if fits(messages) or len(said) == len(answer) == 1:
                break
            said, answer = (said[1:], answer) if len(said) >= len(answer) else (said, answer[:-1])
        yield f"{SHIPPED.name}, speech {i + 1}", messages


def conversations(args, fits):
    if args.shakespeare:
        return shakespeare_conversations(fits)
    if args.dataset:
        return read_dataset(args.dataset, args.name, args.split, args.messages_column)
    readers = {".jsonl": read_jsonl, ".parquet": read_parquet}
    unknown = [f for f in args.data_files if Path(f).suffix not in readers]
    if unknown:
        raise ValueError(f"--data_files: {unknown[0]} is neither .jsonl (JSON lines) nor .parquet")
    missing = [f for f in args.data_files if not Path(f).is_file()]
    if missing:  # said before any row is read, not as an OSError halfway through the files
        raise FileNotFoundError(f"--data_files: no file {missing[0]}")
    return (row for f in args.data_files for row in readers[Path(f).suffix](f, args.messages_column))


def problem(messages):
    """Why a row is not a conversation to learn from, or None."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "that are not a list of messages"
    if any(m.get("role") not in ROLES for m in messages):
        return f"with a role that is not {', '.join(ROLES[:-1])} or {ROLES[-1]}"
    if any(not isinstance(m.get("content"), str) for m in messages):
        return "with content that is not a string"
    if not any(m["role"] == "assistant" for m in messages):
        return "without an assistant turn"
    return None


def render(tokenizer, messages, block_size):
    """(tokens, mask, None) for a conversation to learn from, or (None, None, why not)."""
    reason = problem(messages)
    if reason:
        return None, None, reason
    try:
        tokens, mask = render_conversation(tokenizer, messages)
    except ValueError:  # the only one possible here: characters a char vocabulary lacks
        return None, None, "with characters that the vocabulary lacks"
    if len(tokens) > block_size:
        return None, None, f"longer than --block_size={block_size} tokens"
    return tokens, mask, None


# -----------------------------------------------------------------------------
# writing

class Split:
    """One split's shards as they fill: the tokens, the loss mask and where each conversation starts.
    A conversation never spans two shards."""

    def __init__(self, directory, name, shard_size):
        self.directory, self.name, self.shard_size = directory, name, shard_size
        self.shards = self.tokens = self.conversations = 0
        self.pending, self.masks, self.starts, self.fill = [], [], [], 0

    def add(self, tokens, mask):
        if self.fill + len(tokens) > self.shard_size:
            self.flush()
        self.starts.append(self.fill)
        self.pending.append(np.array(tokens, dtype=np.uint16))
        self.masks.append(np.array(mask, dtype=np.uint8))
        self.fill += len(tokens)
        self.tokens += len(tokens)
        self.conversations += 1

    def flush(self):
        if not self.pending:
            return
        path = self.directory / data.shard_name(PREFIX, self.name, self.shards)
        data.write_shard(path, np.concatenate(self.pending))
        data.write_array(data.mask_path(path), np.concatenate(self.masks))
        data.write_array(data.starts_path(path), np.array(self.starts, dtype=np.int64))
        self.shards += 1
        self.pending, self.masks, self.starts, self.fill = [], [], [], 0


def chat_tokenizer(args):
    """The tokenizer of --tokenizer_from's dataset (GPT-2's without it), with its chat tokens."""
    if args.tokenizer_from:
        return tokenizer_from(args.tokenizer_from, args.vocab_file, chat=True)
    return get_tokenizer({"tokenizer": "gpt2", "chat": True}, vocab_file=args.vocab_file)


def prepare(args):
    tokenizer = chat_tokenizer(args)
    out_dir = Path(args.out_dir)
    old_meta = data.read_meta(out_dir) if out_dir.is_dir() else None
    if out_dir.exists() and any(out_dir.iterdir()) and not (old_meta and old_meta.get("chat")):
        raise ValueError(f"--out_dir {out_dir} exists and is not a chat dataset: choose another --out_dir")
    tmp, old = Path(f"{out_dir}.tmp"), Path(f"{out_dir}.old")
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed run left
    tmp.mkdir(parents=True)
    try:
        splits = {"train": Split(tmp, "train", args.shard_size), "val": Split(tmp, "val", args.shard_size)}
        skipped, first_skipped, assistant_tokens, kept = Counter(), {}, 0, 0
        def fits(messages):
            return render(tokenizer, messages, args.block_size)[2] is None

        for where, messages in tqdm(conversations(args, fits), unit=" conversations", desc="tokenizing"):
            tokens, mask, reason = render(tokenizer, messages, args.block_size)
            if reason:
                skipped[reason] += 1
                first_skipped.setdefault(reason, where)
                continue
            splits["val" if kept % VAL_EVERY == VAL_EVERY - 1 else "train"].add(tokens, mask)
            assistant_tokens += sum(mask)
            kept += 1
        why = "; ".join(f"{n:,} {r} (the first: {first_skipped[r]})" for r, n in skipped.most_common())
        if not splits["val"].conversations:
            raise ValueError(f"{kept} usable conversations: too few for a val split (every {VAL_EVERY}th)"
                             + (f"; skipped {why}" if why else ""))
        for split in splits.values():
            split.flush()
        train, val = splits["train"], splits["val"]
        source = ("shakespeare" if args.shakespeare else args.data_files
                  or {"dataset": args.dataset, "name": args.name, "split": args.split})
        data.write_meta(tmp, {**tokenizer.meta(), "train_tokens": train.tokens,
                              "val_tokens": val.tokens, "train_conversations": train.conversations,
                              "val_conversations": val.conversations, "block_size": args.block_size,
                              "skipped": dict(skipped), "source": source})
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    print(f"{out_dir}: {train.conversations:,} train and {val.conversations:,} val conversations, "
          f"{train.tokens:,} and {val.tokens:,} tokens ({assistant_tokens / (train.tokens + val.tokens):.0%} the "
          f"assistant's, which the loss counts), vocab_size {tokenizer.vocab_size}")
    if skipped:
        print(f"skipped {sum(skipped.values()):,} rows: {why}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_files", nargs="+", help="local .jsonl or .parquet files of conversations")
    source.add_argument("--dataset", help="a Hugging Face dataset of conversations, e.g. HuggingFaceTB/smol-smoltalk")
    source.add_argument("--shakespeare", action="store_true", help="Tiny Shakespeare's speeches as conversations")
    parser.add_argument("--name", default="", help="the Hugging Face dataset's config, if it has several")
    parser.add_argument("--split", default="train", help="the Hugging Face dataset's split")
    parser.add_argument("--messages_column", default="messages")
    parser.add_argument("--tokenizer_from", metavar="DATA_DIR", help="the dataset (a path or a name under data/) "
                        "whose tokenizer the model to fine-tune was trained with; default: GPT-2's")
    parser.add_argument("--block_size", type=int, default=1024, help="the context of the model that will train on "
                        "it: longer conversations are skipped")
    parser.add_argument("--out_dir", help="default: data/shakespeare_chat with --shakespeare; required otherwise")
    parser.add_argument("--shard_size", type=int, default=100_000_000, help="tokens per shard")
    parser.add_argument("--vocab_file", help=f"GPT-2 ranks file (default: ${GPT2_ENV} or the shipped one)")
    args = parser.parse_args(argv)
    if args.out_dir is None:
        if not args.shakespeare:
            parser.error("say where to write the dataset: --out_dir DIR (train.py then takes --dataset=DIR)")
        args.out_dir = "data/shakespeare_chat"
    if args.block_size < 1 or args.shard_size < args.block_size:
        parser.error("--block_size must be positive, and --shard_size at least --block_size")
    try:
        prepare(args)
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
