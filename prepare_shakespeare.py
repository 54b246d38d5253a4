"""
Tiny Shakespeare as a training set: the first 90% of the text is train, the rest val.

    python prepare_shakespeare.py                    # character level -> data/shakespeare_char
    python prepare_shakespeare.py --tokenizer gpt2   # GPT-2 BPE -> data/shakespeare
    python prepare_shakespeare.py --tokenizer bpe --vocab_size 1024   # its own BPE -> data/shakespeare_bpe1024
    python prepare_shakespeare.py --input mine.txt --tokenizer_from data/shakespeare_bpe1024 --out_dir data/mine

A BPE vocabulary is learned from the train split alone. --tokenizer_from takes the tokenizer of a
dataset made before, so that a model trained on that one can be fine-tuned on this one.

The text is the copy shipped in assets/ unless --input names another file or --download
fetches it from char-rnn's repository (checked against the same sha256).
"""

import argparse
import hashlib
import sys
import time
import urllib.request
from pathlib import Path

import data
from bpe import train_bpe
from tokenizer import CharTokenizer
from tokenizer_choice import add_tokenizer_arguments, choose_tokenizer

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHIPPED = Path(__file__).resolve().parent / "assets" / "tinyshakespeare.txt"
OUT_DIRS = {"char": "data/shakespeare_char", "gpt2": "data/shakespeare", "bpe": "data/shakespeare_bpe{vocab_size}"}


def download():
    try:
        with urllib.request.urlopen(URL, timeout=60) as response:
            raw = response.read()
    except OSError as e:
        raise OSError(f"cannot download {URL} ({e}); the shipped copy is used when --download is left out") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        raise ValueError(f"{URL} has sha256 {digest}, expected {SHA256}")
    return raw.decode("utf-8")


def prepare(args):
    kind, tokenizer = choose_tokenizer(args)
    if args.tokenizer_from and not args.out_dir:
        raise ValueError("--tokenizer_from needs --out_dir: the default directories hold the shipped text's datasets")
    if args.download:
        text = download()
    else:
        path = Path(args.input or SHIPPED)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise OSError(f"cannot read {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text (byte {e.start}): give a text file") from None
    if len(text) < 100:
        raise ValueError(f"the text has {len(text)} characters: too little to split into train and val")
    n = int(0.9 * len(text))
    out_dir = Path(args.out_dir or OUT_DIRS[kind].format(vocab_size=args.vocab_size))
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out_dir {out_dir} is a file, not a directory")
    if tokenizer is None and kind == "char":
        # the vocabulary is the corpus's own characters, sorted so that it does not depend on their order
        tokenizer = CharTokenizer(sorted(set(text)))
    elif tokenizer is None:
        t0 = time.time()
        tokenizer = train_bpe([text[:n]], args.vocab_size, args.pattern)
        print(f"learned a vocabulary of {tokenizer.vocab_size:,} tokens from the {n:,} characters of the train split "
              f"in {time.time() - t0:.1f}s")
    data.check_vocab_size(tokenizer.vocab_size)
    meta = tokenizer.meta()

    out_dir.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", text[:n]), ("val", text[n:])):
        tokens = tokenizer.encode(part)
        data.write_shard(out_dir / data.shard_name("shakespeare", split, 0), tokens)
        meta[f"{split}_tokens"] = len(tokens)
    data.write_meta(out_dir, meta)
    print(f"{out_dir}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
          f"vocab_size {meta['vocab_size']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tokenizer_arguments(parser, ["char", "gpt2", "bpe"], default="char")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", help="a text file to use instead of the shipped copy")
    source.add_argument("--download", action="store_true", help=f"fetch the text from {URL}")
    parser.add_argument("--out_dir", help="default: data/shakespeare_char (char), data/shakespeare (gpt2) or "
                                          "data/shakespeare_bpeN (bpe, --vocab_size N)")
    args = parser.parse_args(argv)
    try:
        prepare(args)
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
