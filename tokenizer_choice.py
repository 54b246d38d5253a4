"""
The prepare scripts' choice of tokenizer: the flags that choose it, and the tokenizer of a dataset
made before (--tokenizer_from), which a fine-tuning set takes from its base model's data.
"""

from pathlib import Path

from bpe import MIN_BPE_VOCAB, check_bpe_vocab_size
from data import MAX_VOCAB, META_FILE, PREPARE_COMMANDS, dataset_dir, read_meta
from tokenizer import GPT2_ENV, PATTERNS, GPT2Tokenizer, get_tokenizer, gpt2_encoding


def add_tokenizer_arguments(parser, kinds, default):
    """The flags that choose a prepare script's tokenizer: --tokenizer among kinds (of gpt2, char, bpe),
    --vocab_size and --pattern for a BPE vocabulary trained on the data, --tokenizer_from for the
    tokenizer of a dataset already made, --vocab_file for GPT-2's ranks."""
    parser.add_argument("--tokenizer", choices=kinds, help=f"default: {default}")
    parser.add_argument("--vocab_size", type=int,
                        help=f"bpe: the vocabulary's size, {MIN_BPE_VOCAB} to {MAX_VOCAB:,}, special tokens included")
    parser.add_argument("--pattern", choices=list(PATTERNS),
                        help="bpe: how text is split before BPE, as GPT-4 (the default) or GPT-2 split it")
    parser.add_argument("--tokenizer_from", metavar="DATA_DIR",
                        help="the tokenizer of a dataset made before (a path or a name under data/), e.g. the "
                             "data of the model to fine-tune")
    parser.add_argument("--vocab_file", help=f"GPT-2 ranks file (default: ${GPT2_ENV} or the shipped one)")
    parser.set_defaults(default_tokenizer=default, tokenizer_kinds=kinds)


def tokenizer_from(dataset, vocab_file=None, chat=False):
    """The tokenizer of a prepared dataset (a directory, or a name under data/), as --tokenizer_from
    takes it; with chat, its chat tokens too."""
    directory = dataset_dir(dataset)
    meta = read_meta(directory)
    if meta is None:
        where = directory if directory == dataset else f"{dataset} or {directory}"
        command = PREPARE_COMMANDS.get(Path(dataset).name)
        make = f"make it with `{command}`" if command else "prepare that dataset first"
        raise ValueError(f"--tokenizer_from {dataset}: no prepared dataset (no {META_FILE}) at {where}, so no "
                         f"tokenizer to take: {make}")
    return get_tokenizer({**meta, "chat": True} if chat else meta, vocab_file)


def choose_tokenizer(args):
    """What add_tokenizer_arguments' flags ask for: (kind, tokenizer), the tokenizer being None for the
    kinds that are made from the data (char, bpe: the script makes it), ready for the others. A bad
    combination of flags is a ValueError, raised before any text is read."""
    if args.tokenizer_from:
        if args.tokenizer or args.vocab_size is not None or args.pattern:
            raise ValueError("--tokenizer_from takes another dataset's tokenizer as it is: "
                             "leave out --tokenizer, --vocab_size and --pattern")
        tokenizer = tokenizer_from(args.tokenizer_from, args.vocab_file)
        if tokenizer.kind not in args.tokenizer_kinds:
            raise ValueError(f"--tokenizer_from {args.tokenizer_from} has a {tokenizer.kind} tokenizer; "
                             f"this script makes datasets of {', '.join(args.tokenizer_kinds)} tokens")
        return tokenizer.kind, tokenizer
    kind = args.tokenizer or args.default_tokenizer
    if kind != "bpe" and (args.vocab_size is not None or args.pattern):
        raise ValueError("--vocab_size and --pattern are for --tokenizer bpe")
    if kind == "bpe":
        if args.vocab_size is None:
            raise ValueError(f"--tokenizer bpe needs --vocab_size N, from {MIN_BPE_VOCAB} to {MAX_VOCAB:,}")
        check_bpe_vocab_size(args.vocab_size)
        args.pattern = args.pattern or "gpt4"
    return kind, GPT2Tokenizer(gpt2_encoding(args.vocab_file)) if kind == "gpt2" else None
