"""
Talk with a chat model (one fine-tuned on a chat dataset from prepare_chat.py) in the terminal.

  python chat.py --out_dir=out-shakespeare-chat                      # a conversation, streamed
  python chat.py --out_dir=out-shakespeare-chat --prompt "Good morrow."   # one answer, for scripts
  python chat.py --system "Answer briefly." --temperature=0          # the run train.py just wrote

A conversation keeps as much of its history as the model's context holds, leaving room for the
answer, and drops the oldest turns first. Type /new to start over, /quit or Ctrl-D to leave.
The same model flags as sample.py.
"""

import sys
import time

import torch

from chat_template import END, render_prompt
from checkpoint import load_model
from configurator import configure
from device import autocast_for, resolve_device
from generation import check_sampling, generate

DEFAULTS = dict(
    init_from="resume",  # 'resume' (a checkpoint in out_dir), or a local Hugging Face directory
    out_dir="",  # the training run; empty: the newest run here (the last checkpoint written)
    checkpoint="ckpt.pt",  # or best.pt
    prompt="",  # answer this one message and exit; empty: a conversation
    system="",  # a system message that starts every conversation
    max_new_tokens=256,  # the longest answer
    temperature=0.8,  # 0 is greedy
    top_k=200,
    top_p=1.0,
    seed=1337,
    device="auto",
    dtype="auto",
    compile=False,
    kv_cache=True,
)


def fail(message):
    raise SystemExit(f"error: {message}")


def load_chat_model(c):
    """(model, tokenizer, device, autocast), the model ready to generate; one without chat tokens is an error."""
    if c["max_new_tokens"] < 1:
        fail(f"max_new_tokens={c['max_new_tokens']}: it must be at least 1")
    try:
        check_sampling(c["temperature"], c["top_k"], c["top_p"])
        device, dtype = resolve_device(c["device"], c["dtype"])
        model, tokenizer, _ = load_model(c["init_from"], c["out_dir"], c["checkpoint"])
    except (OSError, ValueError, RuntimeError) as e:
        fail(e)
    if not tokenizer.chat_tokens:
        fail("this model has no chat tokens: fine-tune it on a chat dataset first (prepare_chat.py, then train.py), "
             "or generate text with sample.py")
    model.eval().to(device)
    if c["compile"]:
        model.forward = torch.compile(model.forward, dynamic=True)
    return model, tokenizer, device, autocast_for(device, dtype)


def fit_context(tokenizer, messages, block_size, room):
    """The conversation with its oldest exchanges dropped until its prompt leaves room for the answer
    (the system message stays); ValueError if even the last message does not fit the context."""
    head, turns = (messages[:1], messages[1:]) if messages[0]["role"] == "system" else ([], messages)
    while len(turns) > 1 and len(render_prompt(tokenizer, head + turns)) > block_size - room:
        turns = turns[2:]  # a user message and its answer
    tokens = len(render_prompt(tokenizer, head + turns))
    if tokens > block_size:
        raise ValueError(f"the message makes a prompt of {tokens} tokens, more than the model's context of "
                         f"{block_size}: say it in fewer words")
    return head + turns


def answer(messages, model, tokenizer, device, autocast, c):
    """Print the assistant's answer to messages as it is generated; returns its text. The n-th answer
    of a conversation draws with seed + n - 1: one seed for all would start every answer alike."""
    block_size = model.config.block_size
    room = min(c["max_new_tokens"], block_size // 2)  # the history leaves this much of the context to the answer
    end = tokenizer.chat_tokens[END]
    turn = sum(m["role"] == "user" for m in messages) - 1
    prompt = render_prompt(tokenizer, fit_context(tokenizer, messages, block_size, room))
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    decode, pieces = tokenizer.stream_decoder(skip_special=True), []
    t0, n = time.perf_counter(), 0
    with autocast:
        for token in generate(model, idx, c["max_new_tokens"], c["temperature"], c["top_k"], c["top_p"], end,
                              c["seed"] + turn, c["kv_cache"], vocab_limit=tokenizer.vocab_size):
            n += 1
            if token.item() == end:
                break
            pieces.append(decode(token.item()))
            sys.stdout.write(pieces[-1])
            sys.stdout.flush()
    pieces.append(decode(None))
    print(pieces[-1], flush=True)
    print(f"[{n} tokens at {n / (time.perf_counter() - t0):.1f} tokens/s]", file=sys.stderr)
    return "".join(pieces)


def converse(start, model, tokenizer, device, autocast, c):
    """Read the user's lines from stdin and answer each, until /quit or the end of input."""
    print(f"a conversation with a model of {model.config.block_size} tokens of context: /new starts over, "
          "/quit or Ctrl-D leaves", file=sys.stderr)
    messages = list(start)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            break
        if line.strip() == "/quit":
            break
        if line.strip() == "/new":
            messages = list(start)
            print("(a new conversation)")
            continue
        if not line.strip():
            continue
        sys.stdout.write("model> ")
        try:
            reply = answer(messages + [{"role": "user", "content": line}], model, tokenizer, device, autocast, c)
        except ValueError as e:  # too long, or characters a char model never saw: say so, and go on
            print(f"\nerror: {e}")
            continue
        messages += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]


def main(argv):
    c, _ = configure(DEFAULTS, argv, usage=__doc__)
    model, tokenizer, device, autocast = load_chat_model(c)
    start = [{"role": "system", "content": c["system"]}] if c["system"] else []
    if c["prompt"]:
        try:
            answer(start + [{"role": "user", "content": c["prompt"]}], model, tokenizer, device, autocast, c)
        except ValueError as e:
            fail(e)
    else:
        converse(start, model, tokenizer, device, autocast, c)


if __name__ == "__main__":
    main(sys.argv[1:])
