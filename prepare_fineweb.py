"""
FineWeb-Edu (or any dataset with a text column) tokenized with GPT-2 BPE, or with a BPE vocabulary
learned from the data itself, into uint16 shards.

    python prepare_fineweb.py                                   # fineweb-edu sample-10BT -> data/fineweb_edu
    python prepare_fineweb.py --dataset HuggingFaceFW/fineweb --name sample-10BT --out_dir data/fineweb
    python prepare_fineweb.py --data_files a.parquet b.parquet --out_dir data/mine   # local files, offline
    python prepare_fineweb.py --tokenizer bpe --vocab_size 32768 --out_dir data/fineweb_edu_bpe32k
    python prepare_fineweb.py --data_files chat.jsonl --tokenizer_from data/fineweb_edu_bpe32k --out_dir data/ft

Every document becomes <|endoftext|> followed by its tokens, the layout of llm.c's shards.
The token stream is cut into shards of --shard_size tokens: shard 0 is val, the others are
train, the last one holds the remainder. Documents are tokenized by --num_proc processes in
order, so the shards are the same for any number of them.

A BPE vocabulary (--tokenizer bpe) is learned from the first --vocab_train_chars characters of
the train documents, those after the val shard's; writing the shards then starts.

Local --data_files are parquet, jsonl (one JSON object per line) or txt, where one .txt file
is one document: plain text has no reliable document boundary inside a file.

An interrupted run resumes when run again with the same arguments: the full shards on disk
are kept, the documents are tokenized again up to their end (and checked against them), and
the rest is written anew, so the result is that of an uninterrupted run.
"""

import argparse
import contextlib
import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import data
from bpe import train_bpe
from tokenizer import get_tokenizer
from tokenizer_choice import add_tokenizer_arguments, choose_tokenizer

PREFIX = "fineweb"
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}
DOCS_PER_TASK = 64  # a message to a worker per document costs more than it carries
GUESSED_BYTES_PER_TOKEN = 4  # of web text under a trained vocabulary: a first guess at the val shard's documents

_tokenizer = None  # each worker's


def _init_worker(meta, vocab_file):
    global _tokenizer
    _tokenizer = get_tokenizer(meta, vocab_file)


def _init_pool_worker(meta, vocab_file):
    # Ctrl-C reaches every process of the terminal's group: the main process stops handing out
    # documents and waits for the ones already given, so the workers must not die of it first
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(meta, vocab_file)


def _tokenize(texts):
    tokens = []
    for text in texts:
        tokens.append(_tokenizer.eot_token)
        tokens.extend(_tokenizer.encode(text))
    return np.array(tokens, dtype=np.uint16)


def wait_out(results):
    """Take the results still to come from the documents already handed to the workers; they are not
    used, nor are their errors."""
    while True:
        try:
            next(results)
        except StopIteration:
            return
        except Exception:
            continue


def open_batches(args):
    """The documents' texts in order, in lists of DOCS_PER_TASK."""
    try:
        import datasets  # only here: machines that only train need not install it
    except ImportError:
        raise RuntimeError("prepare_fineweb.py needs the datasets package: pip install datasets") from None

    if args.data_files:
        kinds = {BUILDERS.get(Path(f).suffix) for f in args.data_files}
        if len(kinds) != 1 or None in kinds:
            raise ValueError(f"--data_files must be all .parquet, all .jsonl or all .txt: {' '.join(args.data_files)}")
        builder = kinds.pop()
        options = {"sample_by": "document"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=args.data_files, split="train",
                                   streaming=args.streaming, **options)
    else:
        ds = datasets.load_dataset(args.dataset, name=args.name or None, split=args.split, streaming=args.streaming)
    if ds.column_names is not None and args.text_column not in ds.column_names:
        raise ValueError(f"the data has no column '{args.text_column}' (it has {', '.join(ds.column_names)}): "
                         f"name the text column with --text_column")
    ds = ds.select_columns([args.text_column])  # the other columns need not be decoded
    return (batch[args.text_column] for batch in ds.iter(batch_size=DOCS_PER_TASK))


def texts_only(batches, skipped):
    """A document without text (null) is skipped and counted in skipped[0]; any other value that is
    not text is an error that names the document, since a wrong column would train on garbage."""
    for b, batch in enumerate(batches):
        for i, text in enumerate(batch):
            if text is not None and not isinstance(text, str):
                raise ValueError(f"document {b * DOCS_PER_TASK + i}: its text is {text!r:.40} ({type(text).__name__}), "
                                 f"not a string: is --text_column right?")
        skipped[0] += batch.count(None)
        yield [text for text in batch if text is not None]


def documents(args):
    """The documents' texts one by one, in the order the shards hold them."""
    return itertools.chain.from_iterable(texts_only(open_batches(args), [0]))


def val_documents(args, length):
    """How many documents, from the first, the val shard takes when a document is length(text) tokens
    long, <|endoftext|> included (the one it ends in counts); None if it takes them all."""
    left = min(args.shard_size, args.max_tokens or args.shard_size)
    for n, text in enumerate(documents(args), 1):
        left -= length(text)
        if left <= 0:
            return n
    return None


def characters(texts, limit):
    """texts until limit characters have come."""
    for text in texts:
        if limit <= 0:
            return
        limit -= len(text)
        yield text


def learn_vocabulary(args):
    """A BPE vocabulary learned from train documents only, those after the val shard's. Which documents
    the val shard takes depends on the vocabulary: they are guessed from their length, then counted
    with the vocabulary, which is learned again without them in the rare case that they are more."""
    t0 = time.time()
    held_out = val_documents(args, lambda text: 1 + len(text.encode()) / GUESSED_BYTES_PER_TOKEN) or 0
    while True:
        texts = itertools.islice(documents(args), held_out, None)
        tokenizer = train_bpe(characters(texts, args.vocab_train_chars), args.vocab_size, args.pattern)
        val = val_documents(args, lambda text: 1 + len(tokenizer.encode(text)))
        if val is None:
            raise ValueError(f"the val shard (the first {args.shard_size:,} tokens) takes every document, "
                             f"which leaves none to learn a vocabulary from: lower --shard_size")
        if val <= held_out:
            print(f"learned a vocabulary of {tokenizer.vocab_size:,} tokens from the documents after the first "
                  f"{held_out:,} in {time.time() - t0:.1f}s")
            return tokenizer
        held_out = val


def shard_path(out_dir, index):
    return out_dir / data.shard_name(PREFIX, "val" if index == 0 else "train", index)


def count_finished(out_dir, shard_size, limit):
    """How many shards, from shard 0 on, an earlier run has finished: valid and full."""
    n = 0
    while n < limit:
        try:
            if data.shard_length(shard_path(out_dir, n)) != shard_size:
                break
        except (OSError, ValueError):
            break
        n += 1
    return n


def remove_unfinished(out_dir, finished):
    keep = {shard_path(out_dir, i) for i in range(finished)}
    for path in [*out_dir.glob(f"{PREFIX}_*.bin"), *out_dir.glob(f"{PREFIX}_*.bin.tmp"), out_dir / data.META_FILE,
                 out_dir / data.VOCAB_FILE]:
        if path not in keep and path.exists():
            path.unlink()


def save_shard(out_dir, index, tokens, finished):
    path = shard_path(out_dir, index)
    if index >= finished:
        data.write_shard(path, tokens)
    elif not np.array_equal(data.read_shard(path), tokens):
        raise ValueError(f"{path} differs from what this run makes: it was made from other data or settings; "
                         f"remove it or choose another --out_dir")


def prepare(args):
    out_dir = Path(args.out_dir)
    _, tokenizer = choose_tokenizer(args)  # fails before anything is read or written
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or learn_vocabulary(args)
    meta = tokenizer.meta()
    skipped = [0]
    batches = texts_only(open_batches(args), skipped)
    limit = args.max_tokens // args.shard_size if args.max_tokens else float("inf")
    finished = count_finished(out_dir, args.shard_size, limit)
    remove_unfinished(out_dir, finished)
    if finished:
        print(f"resuming: keeping {finished} finished shards, re-tokenizing the documents they hold")

    shard = np.empty(args.shard_size, dtype=np.uint16)  # the one buffer: memory is bounded by the shard size
    fill = index = total = docs = 0
    t0 = time.time()
    workers = (mp.Pool(args.num_proc, _init_pool_worker, (meta, args.vocab_file)) if args.num_proc > 1
               else contextlib.nullcontext())
    # Once this loop ends early (max_tokens reached, or an error) the workers get no more documents,
    # and what they were given is let finish: a pool ended with documents still on their way can hang,
    # its thread that hands them out blocked writing into a pipe that no worker reads (seen under load).
    enough = threading.Event()
    batches = itertools.takewhile(lambda _: not enough.is_set(), batches)
    with workers as pool, tqdm(total=args.max_tokens, unit="tok", unit_scale=True, desc="tokenizing") as bar:
        if pool:
            # imap keeps the documents' order; memory stays bounded by the pipe to the workers
            stream = pool.imap(_tokenize, batches)
        else:
            _init_worker(meta, args.vocab_file)
            stream = map(_tokenize, batches)
        try:
            for tokens in stream:
                if args.max_tokens:
                    tokens = tokens[:args.max_tokens - total]
                docs += int(np.count_nonzero(tokens == tokenizer.eot_token))  # one a document: text never encodes to it
                total += len(tokens)
                bar.update(len(tokens))
                bar.set_postfix(docs=docs, refresh=False)
                while len(tokens):
                    take = min(len(tokens), args.shard_size - fill)
                    shard[fill:fill + take] = tokens[:take]
                    fill += take
                    tokens = tokens[take:]
                    if fill == args.shard_size:
                        save_shard(out_dir, index, shard, finished)
                        index += 1
                        fill = 0
                if args.max_tokens and total >= args.max_tokens:
                    break
        except BaseException:  # KeyboardInterrupt too: the workers ignore Ctrl-C, this process decides
            enough.set()
            wait_out(stream)
            raise
        enough.set()
        wait_out(stream)
    if fill:
        save_shard(out_dir, index, shard[:fill], finished)
        index += 1
    if total == 0:
        raise ValueError("the dataset gave no tokens")
    if index < finished:
        raise ValueError(f"{out_dir} holds more finished shards than this run makes: "
                         f"they were made from other data or settings")
    seconds = time.time() - t0

    val = min(total, args.shard_size)
    data.write_meta(out_dir, {
        **meta, "train_tokens": total - val, "val_tokens": val,
        "documents": docs, "skipped_documents": skipped[0], "shards": index, "shard_size": args.shard_size,
        "source": args.data_files or {"dataset": args.dataset, "name": args.name, "split": args.split},
    })
    print(f"{out_dir}: {index} shards, {total:,} tokens from {docs:,} documents "
          f"in {seconds:.1f}s ({total / seconds:,.0f} tokens/s)")
    if skipped[0]:
        print(f"skipped {skipped[0]:,} documents whose text is missing (null)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="HuggingFaceFW/fineweb-edu", help="a Hugging Face dataset")
    parser.add_argument("--name", default="sample-10BT", help="its config; '' for none")
    parser.add_argument("--split", default="train")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=True,
                        help="read while tokenizing instead of downloading the whole dataset first")
    parser.add_argument("--data_files", nargs="+", help="local .parquet, .jsonl or .txt files, instead of --dataset")
    parser.add_argument("--out_dir", default="data/fineweb_edu")
    parser.add_argument("--shard_size", type=int, default=100_000_000, help="tokens per shard")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="tokenizer processes")
    parser.add_argument("--max_tokens", type=int, help="stop after this many tokens")
    add_tokenizer_arguments(parser, ["gpt2", "bpe"], default="gpt2")
    parser.add_argument("--vocab_train_chars", type=int, default=1_000_000_000,
                        help="bpe: the characters of train text that the vocabulary is learned from (default: 1e9)")
    args = parser.parse_args(argv)
    if args.shard_size < 1 or args.num_proc < 1 or (args.max_tokens is not None and args.max_tokens < 1):
        parser.error("--shard_size, --num_proc and --max_tokens must be positive")
    try:
        prepare(args)
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
