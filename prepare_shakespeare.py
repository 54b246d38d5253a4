"""
Tiny Shakespeare as a training set: the first 90% of the text is train, the rest val.

    python prepare_shakespeare.py                    # character level -> data/shakespeare_char
    python prepare_shakespeare.py --tokenizer gpt2   # GPT-2 BPE -> data/shakespeare

The text is the copy shipped in assets/ unless --input names another file or --download
fetches it from char-rnn's repository (checked against the same sha256).
"""

import argparse
import hashlib
import sys
import urllib.request
from pathlib import Path

import data
from tokenizer import GPT2_ENV, CharTokenizer, get_tokenizer

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHIPPED = Path(__file__).resolve().parent / "assets" / "tinyshakespeare.txt"
OUT_DIRS = {"char": "data/shakespeare_char", "gpt2": "data/shakespeare"}


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
    if args.tokenizer == "char":
        # the vocabulary is the corpus's own characters, sorted so that it does not depend on their order
        tokenizer = CharTokenizer(sorted(set(text)))
        meta = {"tokenizer": "char", "vocab_size": tokenizer.vocab_size, "chars": tokenizer.chars}
    else:
        tokenizer = get_tokenizer({"tokenizer": "gpt2"}, vocab_file=args.vocab_file)
        meta = {"tokenizer": "gpt2", "vocab_size": tokenizer.vocab_size}
    data.check_vocab_size(tokenizer.vocab_size)

    out_dir = Path(args.out_dir or OUT_DIRS[args.tokenizer])
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out_dir {out_dir} is a file, not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    n = int(0.9 * len(text))
    for split, part in (("train", text[:n]), ("val", text[n:])):
        tokens = tokenizer.encode(part)
        data.write_shard(out_dir / data.shard_name("shakespeare", split, 0), tokens)
        meta[f"{split}_tokens"] = len(tokens)
    data.write_meta(out_dir, meta)
    print(f"{out_dir}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
          f"vocab_size {meta['vocab_size']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", choices=["char", "gpt2"], default="char")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", help="a text file to use instead of the shipped copy")
    source.add_argument("--download", action="store_true", help=f"fetch the text from {URL}")
    parser.add_argument("--out_dir", help="default: data/shakespeare_char (char) or data/shakespeare (gpt2)")
    parser.add_argument("--vocab_file", help=f"GPT-2 ranks file (default: ${GPT2_ENV} or the shipped one)")
    args = parser.parse_args(argv)
    try:
        prepare(args)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
