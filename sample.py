"""
Generate text from a training run's checkpoint or from GPT-2.

  python sample.py --prompt "The meaning of life is"                 # the run train.py just wrote
  python sample.py --out_dir=out-shakespeare-char-cpu               # out_dir/ckpt.pt
  python sample.py --out_dir=out-shakespeare --checkpoint=best.pt
  python sample.py --init_from=gpt2 --start="Once upon a time" --top_p=0.9
  python sample.py --init_from=/models/gpt2-xl --start=FILE:prompt.txt --num_beams=4
  python sample.py --out_dir out-shakespeare-char --prompt "ROMEO:" --top_k 40   # --prompt is --start

Text is printed as it is generated; tokens/s goes to stderr. The same --key=value flags
and config files as train.py.
"""

import os
import sys
import time
from pathlib import Path

import torch

from atomic import write_atomically
from checkpoint import load_model
from configurator import configure
from device import autocast_for, resolve_device
from generation import beam_search, check_sampling, generate
from tokenizer import encode_prompt

DEFAULTS = dict(
    init_from="resume",  # 'resume' (a checkpoint in out_dir), 'gpt2'...'gpt2-xl', or a local HF directory
    out_dir="",  # the training run; empty: the newest run here (the last checkpoint written)
    checkpoint="ckpt.pt",  # or best.pt: the best val loss of the run
    start="\n",  # the prompt, or FILE:path to read it from a file; empty starts from <|endoftext|>
    num_samples=3,
    max_new_tokens=500,
    temperature=0.8,  # 0 is greedy; below 1 sharper, above 1 more random
    top_k=200,  # sample among the k most likely tokens; None for all
    top_p=1.0,  # nucleus: the most likely tokens whose probability adds up to top_p; 1.0 for all
    num_beams=1,  # above 1: beam search, deterministic, printed when done
    seed=1337,
    device="auto",
    dtype="auto",
    compile=False,
    kv_cache=True,
    out_file="",  # also write the samples to this file
)


def fail(message):
    raise SystemExit(f"error: {message}")


def check_settings(c):
    if c["max_new_tokens"] < 0:
        fail(f"max_new_tokens={c['max_new_tokens']}: it cannot be negative")
    if c["num_beams"] < 1:
        fail(f"num_beams={c['num_beams']}: it must be at least 1")
    if c["num_samples"] < 1:
        fail(f"num_samples={c['num_samples']}: it must be at least 1")
    if c["out_file"] and not os.path.isdir(os.path.dirname(os.path.abspath(c["out_file"]))):
        fail(f"out_file={c['out_file']}: its directory does not exist")
    try:
        check_sampling(c["temperature"], c["top_k"], c["top_p"])
    except ValueError as e:
        fail(e)


def read_prompt(start):
    """The prompt's text: start itself, or the file that FILE:path names."""
    if not start.startswith("FILE:"):
        return start
    try:
        with open(start[5:], encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        fail(f"cannot read the prompt file {start[5:]}: {e.strerror}")


def beam_samples(model, tokenizer, idx, start, c):
    """The num_samples best beams, each printed with its score when the search is done."""
    stop_token = tokenizer.eot_token
    beams = beam_search(model, idx, c["max_new_tokens"], c["num_beams"], stop_token, kv_cache=c["kv_cache"],
                        vocab_limit=tokenizer.vocab_size)
    samples = []
    for score, tokens in beams[:c["num_samples"]]:
        text = start + tokenizer.decode([t for t in tokens if t != stop_token])
        print(f"{text}\n[beam score {score:.3f}]\n---------------", flush=True)
        samples.append(text)
    return samples


def streamed_sample(model, tokenizer, idx, start, seed, c):
    """One sample, printed as it is generated; tokens/s to stderr."""
    stop_token = tokenizer.eot_token  # GPT-2 ends a document with <|endoftext|>; char models never stop early
    sys.stdout.write(start)
    decode, text = tokenizer.stream_decoder(), [start]
    t0, n = time.perf_counter(), 0
    tokens = generate(model, idx, c["max_new_tokens"], c["temperature"], c["top_k"], c["top_p"], stop_token, seed,
                      c["kv_cache"], vocab_limit=tokenizer.vocab_size)
    for token in tokens:
        n += 1
        if token.item() == stop_token:
            break
        piece = decode(token.item())  # whole characters only, also when one spans two tokens
        text.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    text.append(decode(None))  # bytes of a character that max_new_tokens cut in two
    sys.stdout.write(text[-1])
    print("\n---------------", flush=True)
    print(f"[{n} tokens at {n / (time.perf_counter() - t0):.1f} tokens/s]", file=sys.stderr)
    return "".join(text)


def main(argv):
    c, _ = configure(DEFAULTS, argv, usage=__doc__, aliases={"prompt": "start"})
    check_settings(c)
    try:
        device, dtype = resolve_device(c["device"], c["dtype"])
    except ValueError as e:
        fail(e)

    # the model, and the tokenizer of the data it was trained on
    try:
        model, tokenizer, _ = load_model(c["init_from"], c["out_dir"], c["checkpoint"])
    except (OSError, ValueError, RuntimeError) as e:
        fail(e)
    model.eval().to(device)
    if c["compile"]:
        # generate() calls forward, so that is what gets compiled; shapes change as the cache grows
        model.forward = torch.compile(model.forward, dynamic=True)

    start = read_prompt(c["start"])
    try:
        prompt = encode_prompt(tokenizer, start)
    except ValueError as e:  # characters a char-level model never saw
        fail(f"the prompt has {e}")
    idx = torch.tensor([prompt], dtype=torch.long, device=device)

    with autocast_for(device, dtype):
        if c["num_beams"] > 1:
            samples = beam_samples(model, tokenizer, idx, start, c)
        else:
            samples = [streamed_sample(model, tokenizer, idx, start, c["seed"] + i, c)
                       for i in range(c["num_samples"])]

    if c["out_file"]:
        write_atomically(c["out_file"], lambda tmp: Path(tmp).write_text("\n---------------\n".join(samples) + "\n",
                                                                          encoding="utf-8"))


if __name__ == "__main__":
    main(sys.argv[1:])
