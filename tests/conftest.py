"""
What several test files share: a script of the repo run as a user runs it, as a process (run) or
its main in this process (run_main, main_error); Tiny Shakespeare prepared as a char dataset and
with a trained BPE vocabulary; tiny models, a run's checkpoint written as train.py writes one
(save_run) and a tiny run that train.py trained (trained_run); text that tokenizers must give back
as it was; and the markers' rule: a torchrun or browser test is slow too.
"""

import io
import os
import signal
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
import torch

import prepare_shakespeare
import train
from chat_template import END, render_prompt
from checkpoint import load_model, save_checkpoint
from generation import generate
from model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
CHARS = sorted(set((REPO / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")))  # the char vocabulary
PYTHON = [sys.executable]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]  # gloo on CPU
# train.py's flags for a run of a few milliseconds a step
TINY_RUN = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32",
            "--batch_size=4", "--gradient_accumulation_steps=2", "--eval_iters=2", "--log_interval=1",
            "--warmup_iters=2", "--lr_decay_iters=30", "--learning_rate=3e-3", "--dropout=0.1", "--eval_interval=4"]
TINY_MODEL = dict(vocab_size=len(CHARS), block_size=16, n_layer=2, n_head=2, n_embd=32)
# text for a trained BPE vocabulary to merge across the bytes of multi-byte characters, so that some
# of its tokens end inside a character
UNICODE = "naïve café, 日本語の文章と中文，한국어 🙂🎉 👩‍👩‍👧 e\u0301 Ünïcödé — «quotes» 12345 ½ ∑∫ \t\r\n"
# what a tokenizer must encode and give back: whitespace, controls, scripts, emoji sequences, combining marks
VARIED_TEXTS = [
    "", " ", "\n\n\n", "a", "ROMEO:\nWhat light?", "  leading and trailing  ", "\r\n\t\x00\x7f\x1b",
    UNICODE, "日本語" * 50, "🙂" * 7 + "🏳️‍🌈👨‍👩‍👧‍👦", "a\u0301\u0302\u0303 o\u0308 Z\u0351\u0352\u0353", "\ufeffBOM \u200b\u200d",
    "1234567890 3.14159 $100,000", "don't I'LL we'VE", "<|endoftext|><|user|>", "\U0010ffff\U000e0001",
]
CHAT_META = {"tokenizer": "char", "chars": CHARS, "chat": True, "vocab_size": len(CHARS) + 4}  # a char chat model's


def pytest_collection_modifyitems(items):
    """A torchrun or browser test is slow too: `pytest -m "not slow"` leaves all three out."""
    for item in items:
        if item.get_closest_marker("ddp") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)


def run(script, *args, launcher=PYTHON, check=True, timeout=600, cwd=REPO, **kwargs):
    """`python SCRIPT ARGS` as a user types it: script is a file of the repo ("train.py") or a
    module ("-m bench.train"); launcher takes python's place (TORCHRUN); kwargs go to
    subprocess.run (env, preexec_fn). With check, the run must succeed. Returns the
    CompletedProcess, its stdout and stderr as text."""
    target = script.split() if script.startswith("-m ") else [str(REPO / script)]
    result = subprocess.run([*launcher, *target, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_main(main, *args, cwd=REPO):
    """A script's main(args) in this process, as `python SCRIPT ARGS` runs it but without starting
    Python and importing torch again: a CompletedProcess with its exit status, stdout and stderr (a
    SystemExit's message goes to stderr, as Python's exit writes it). It runs as a process outside
    torchrun would (no RANK in its environment), and what it changes in this one is put back after
    it: the working directory, the environment, the signal handlers, torch's random generator and
    deterministic mode. loss.png is not drawn: its child process would only take a core from the
    tests."""
    stdout, stderr, returncode = io.StringIO(), io.StringIO(), 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    here, rng, deterministic = os.getcwd(), torch.get_rng_state(), torch.are_deterministic_algorithms_enabled()
    outside_torchrun = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    try:
        os.chdir(cwd)
        with redirect_stdout(stdout), redirect_stderr(stderr), mock.patch.dict(os.environ, outside_torchrun,
                                                                              clear=True), \
                mock.patch("plot.BackgroundPlot.__call__"):
            main([str(a) for a in args])
    except SystemExit as e:
        if isinstance(e.code, str):
            stderr.write(e.code + "\n")
        returncode = 1 if isinstance(e.code, str) else e.code or 0
    finally:
        os.chdir(here)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        torch.set_rng_state(rng)
        torch.use_deterministic_algorithms(deterministic)
    return subprocess.CompletedProcess(args, returncode, stdout.getvalue(), stderr.getvalue())


def main_error(main, *args):
    """The error that a script's main(args) stops with, in this process: a one-line message, and
    all that would reach stderr."""
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as e, redirect_stderr(stderr):
        main([str(a) for a in args])
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message and not stderr.getvalue(), message
    return message


def random_text(rng, n):
    """n code points of any kind but surrogates: ASCII, any plane, combining marks, emoji."""
    points = [rng.choice([rng.randrange(0x20, 0x7f), rng.randrange(0, 0xd800), rng.randrange(0xe000, 0x110000),
                          rng.randrange(0x300, 0x370), rng.randrange(0x1f300, 0x1fa00)]) for _ in range(n)]
    return "".join(map(chr, points))


def tiny_model(seed=0, **config):
    """A GPT that runs in milliseconds: TINY_MODEL's shape, with config's changes. A bigram table
    starts at zero, which would test nothing: here it is random."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY_MODEL, **config}))
    if model.config.bigram_hash:
        torch.nn.init.normal_(model.transformer.bigram.weight, std=0.02)
    return model


def save_run(out_dir, model, meta, iter_num=7, best_val_loss=2.0):
    """out_dir/ckpt.pt of a model that needed no training, as sample.py, serve.py, export.py and
    hellaswag.py read what train.py writes."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_checkpoint(dict(model=model.state_dict(), model_args=vars(model.config), iter_num=iter_num,
                         best_val_loss=best_val_loss, meta=meta, config={}), str(Path(out_dir) / "ckpt.pt"))
    return Path(out_dir)


@pytest.fixture(scope="session")
def char_data(tmp_path_factory):
    """Tiny Shakespeare as prepare_shakespeare.py makes it, shared by every test: none writes into
    a dataset."""
    out = tmp_path_factory.mktemp("shakespeare_char")
    prepare_shakespeare.main(["--out_dir", str(out)])
    return out


@pytest.fixture(scope="session")
def bpe_data(tmp_path_factory):
    """Tiny Shakespeare with a 512-token BPE vocabulary learned from its train split, as
    prepare_shakespeare.py --tokenizer bpe makes it, shared by every test."""
    out = tmp_path_factory.mktemp("shakespeare_bpe")
    prepare_shakespeare.main(["--tokenizer", "bpe", "--vocab_size", "512", "--out_dir", str(out)])
    return out


@pytest.fixture(scope="session")
def trained_run(char_data, tmp_path_factory):
    """A char run of TINY_RUN's shape that train.py trained for 4 steps: its ckpt.pt, best.pt and
    log.jsonl, for the scripts that read a run. Shared: copy it before writing into it."""
    out = tmp_path_factory.mktemp("trained_run")
    result = run_main(train.main, *TINY_RUN, f"--dataset={char_data}", f"--out_dir={out}", "--max_iters=4")
    assert result.returncode == 0, result.stderr
    return out


def chat_reply(out_dir, messages, max_tokens, temperature=0.0, top_k=None, top_p=1.0, seed=None):
    """The text of the reply that generation.generate gives to messages with out_dir's model, alone:
    what chat.py and serve.py must give."""
    model, tokenizer, _ = load_model("resume", str(out_dir))
    prompt = torch.tensor([render_prompt(tokenizer, messages)])
    end = tokenizer.chat_tokens[END]
    tokens = [t.item() for t in generate(model.eval(), prompt, max_tokens, temperature, top_k, top_p, end, seed,
                                         vocab_limit=tokenizer.vocab_size)]
    decode = tokenizer.stream_decoder(skip_special=True)  # a reply's text has no special tokens
    return "".join(decode(t) for t in [*tokens, None])
