"""sample.py end to end, its main in this process; an error also as a process, as users see it."""

import os
import shutil

import pytest
import torch
from conftest import CHARS, REPO, main_error, run, run_main, save_run, tiny_model

import sample as sample_py
import train
from checkpoint import load_model, save_checkpoint
from generation import generate
from hf import save_pretrained
from model import GPT, GPTConfig


def sample(*args, check=True, cwd=REPO):
    result = run_main(sample_py.main, "--device=cpu", *args, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A char-level checkpoint with random weights, as train.py writes one: enough to stop on bad input."""
    meta = {"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS}
    return save_run(tmp_path_factory.mktemp("untrained") / "out", tiny_model(), meta)


def test_samples_from_a_training_run(trained_run, tmp_path):
    out_file = tmp_path / "generated.txt"
    result = sample(f"--out_dir={trained_run}", "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=50",
                    f"--out_file={out_file}", "--seed=7")
    samples = result.stdout.split("\n---------------\n")
    assert len(samples) == 3 and samples[-1] == ""
    assert all(s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 50 for s in samples[:2])
    assert out_file.read_text() == "\n---------------\n".join(samples[:2]) + "\n"
    assert "tokens/s" in result.stderr
    # the same seed gives the same text, the cache or not; best.pt is there too
    again = sample(f"--out_dir={trained_run}", "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=50", "--seed=7",
                   "--kv_cache=False", "--checkpoint=best.pt")
    assert again.stdout == result.stdout


def test_a_vocabulary_learned_here_from_prepare_to_sample(bpe_data, tmp_path):
    """prepare_shakespeare.py --tokenizer bpe, train.py, sample.py: the text streams in whole characters,
    and the checkpoint carries the vocabulary, so sampling needs no data directory."""
    data_dir, out = shutil.copytree(bpe_data, tmp_path / "data"), tmp_path / "out"
    trained = run_main(train.main, f"--dataset={data_dir}", f"--out_dir={out}", "--device=cpu", "--compile=False",
                       "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--max_iters=20",
                       "--eval_interval=10", "--eval_iters=2", "--learning_rate=1e-2")
    assert trained.returncode == 0, trained.stderr
    run("plot.py", out, f"--out={tmp_path / 'curves.png'}")
    assert (tmp_path / "curves.png").stat().st_size > 0
    shutil.rmtree(data_dir)
    prompt = "ROMEO: café 日本"  # bytes the vocabulary never merged: a character over several tokens
    result = sample(f"--out_dir={out}", f"--start={prompt}", "--temperature=0", "--num_samples=1",
                    "--max_new_tokens=40")
    model, tokenizer, _ = load_model("resume", str(out))
    assert tokenizer.kind == "bpe" and tokenizer.vocab_size == 512
    tokens = [t.item() for t in generate(model.eval(), torch.tensor([tokenizer.encode(prompt)]), 40, temperature=0,
                                         stop_token=tokenizer.eot_token, vocab_limit=512)]
    tokens = tokens[:tokens.index(tokenizer.eot_token)] if tokenizer.eot_token in tokens else tokens
    assert result.stdout == prompt + tokenizer.decode(tokens) + "\n---------------\n"


def bad_input(*args):
    return main_error(sample_py.main, "--device=cpu", *args)


def test_without_out_dir_it_samples_the_newest_run_here(trained_run, tmp_path, monkeypatch):
    # `python sample.py` right after `python train.py`, in the same directory
    monkeypatch.chdir(tmp_path)
    assert "no training run here (no */ckpt.pt): train one with" in bad_input("--num_samples=1")
    for age, name in ((200, "out-older"), (100, "out-newer"), (300, "out-oldest")):
        shutil.copytree(trained_run, tmp_path / name)
        os.utime(tmp_path / name / "ckpt.pt", (1e9 - age, 1e9 - age))
    result = sample("--start=ROMEO:", "--num_samples=1", "--max_new_tokens=5", "--seed=7", cwd=tmp_path)
    assert "out-newer: the newest run here" in result.stderr
    assert result.stdout == sample(f"--out_dir={trained_run}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=5",
                                   "--seed=7").stdout


def test_prompt_from_a_file_and_beam_search(trained_run, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("JULIET:\n")
    result = sample(f"--out_dir={trained_run}", f"--start=FILE:{prompt}", "--num_beams=3", "--num_samples=2",
                    "--max_new_tokens=10")
    beams = result.stdout.split("\n---------------\n")[:2]
    assert all(b.startswith("JULIET:\n") and "[beam score" in b for b in beams)


def test_samples_from_a_local_hf_directory(tmp_path):
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)), tmp_path)
    result = sample(f"--init_from={tmp_path}", "--start=Hello", "--num_samples=1", "--max_new_tokens=5",
                    "--temperature=0")
    assert result.stdout.startswith("Hello")
    # an empty prompt starts from <|endoftext|>
    sample(f"--init_from={tmp_path}", "--start=", "--num_samples=1", "--max_new_tokens=5")


@pytest.mark.parametrize("args, message", [
    (["--start=ROMEO: \u00e9\u4e16"], "characters not in the vocabulary: '\u00e9\u4e16'"),
    (["--top_k=0"], "top_k=0: it must be at least 1"),
    (["--top_p=1.5"], "top_p=1.5: it must lie in (0, 1]"),
    (["--top_p=0.0"], "top_p=0.0: it must lie in (0, 1]"),
    (["--max_new_tokens=-1"], "max_new_tokens=-1: it cannot be negative"),
    (["--checkpoint=nothing.pt"], "no checkpoint at"),
    (["--num_samples=0"], "num_samples=0: it must be at least 1"),
    (["--out_file=/nonexistent/dir/samples.txt"], "out_file=/nonexistent/dir/samples.txt: its directory does not exist"),
    (["--device=gpu"], "device='gpu' is not a device: use auto, cpu, cuda, cuda:N or mps"),
    (["--prompt"], "--prompt has no value"),
])
def test_bad_input_is_one_clear_line(untrained, args, message):
    assert message in bad_input(f"--out_dir={untrained}", *args)


def test_an_error_is_one_line_on_stderr(untrained):
    result = run("sample.py", "--device=cpu", f"--out_dir={untrained}", "--checkpoint=nothing.pt", check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: no checkpoint at")
    assert result.stderr.count("\n") == 1, result.stderr


def test_broken_checkpoints(untrained, tmp_path):
    raw = (untrained / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(raw[: len(raw) // 2])
    assert "is not a readable checkpoint" in bad_input(f"--out_dir={tmp_path}")
    ckpt = torch.load(untrained / "ckpt.pt", weights_only=True)
    ckpt["model"]["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    assert "NaN or inf" in bad_input(f"--out_dir={tmp_path}")


def test_help_lists_the_settings_and_nothing_else(capsys):
    with pytest.raises(SystemExit) as e:
        sample_py.main(["--help"])
    assert e.value.code == 0
    flags = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  --")]
    assert flags == [f"--{key}" for key in sample_py.DEFAULTS] + ["--prompt"]
