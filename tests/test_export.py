"""export.py end to end: the exported directory used by transformers as it is."""

import json

import pytest
import torch

from conftest import CHARS, REPO, UNICODE, run, save_run, tiny_model
from tokenizer import get_tokenizer, train_bpe

transformers = pytest.importorskip("transformers")


def make_run(out_dir, meta, **model_args):
    """A checkpoint as train.py writes it, with random weights: exporting needs no training."""
    return save_run(out_dir, tiny_model(block_size=64, **model_args), meta)


def greedy_sample(out_dir, prompt, n):
    result = run("sample.py", f"--out_dir={out_dir}", f"--start={prompt}", "--temperature=0", "--num_samples=1",
                 f"--max_new_tokens={n}", "--device=cpu")
    return result.stdout.split("\n---------------")[0]


def test_gpt2_export_works_in_a_pipeline_as_it_is(tmp_path):
    run_dir = make_run(tmp_path / "run", {"tokenizer": "gpt2", "vocab_size": 50257}, vocab_size=50257)
    export = tmp_path / "export"
    assert "with its gpt2 tokenizer" in run("export.py", f"--out_dir={run_dir}", f"--to={export}").stdout
    config = json.loads((export / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == 50256

    generator = transformers.pipeline("text-generation", model=str(export), device="cpu")
    theirs = generator("ROMEO: hello, wörld", do_sample=False, max_new_tokens=24)[0]["generated_text"]
    assert theirs == greedy_sample(run_dir, "ROMEO: hello, wörld", 24)

    # the tokenizer is GPT-2's: the same ids as ours on text with spaces, newlines and non-ASCII
    text = "First Citizen:\n  Before we proceed any further, hear me speak. Café — 你好 🤖"
    assert generator.tokenizer(text)["input_ids"] == get_tokenizer({"tokenizer": "gpt2"}).encode(text)


def test_bpe_export_works_in_a_pipeline_as_it_is(tmp_path):
    bpe = train_bpe([(REPO / "assets" / "tinyshakespeare.txt").read_text()[:300_000], UNICODE * 20], 800)
    run_dir = make_run(tmp_path / "run", bpe.meta(), vocab_size=800)
    export = tmp_path / "export"
    assert "with its bpe tokenizer" in run("export.py", f"--out_dir={run_dir}", f"--to={export}").stdout
    assert json.loads((export / "config.json").read_text())["eos_token_id"] == bpe.eot_token == 795

    generator = transformers.pipeline("text-generation", model=str(export), device="cpu")
    text = "ROMEO: 日本 🙂"
    assert generator.tokenizer(text)["input_ids"] == bpe.encode(text)
    assert generator(text, do_sample=False, max_new_tokens=24)[0]["generated_text"] == greedy_sample(run_dir, text, 24)


def test_char_export_says_how_to_tokenize(tmp_path):
    meta = {"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS}
    run_dir = make_run(tmp_path / "run", meta, vocab_size=len(CHARS))
    export = tmp_path / "export"
    result = run("export.py", f"--out_dir={run_dir}", f"--to={export}")
    assert "char_vocab.json" in result.stdout and "README.md" in result.stdout
    config = json.loads((export / "config.json").read_text())
    assert config["bos_token_id"] is None and config["eos_token_id"] is None  # no id outside its 65 tokens
    chars = json.loads((export / "char_vocab.json").read_text())
    assert chars == CHARS and "char_vocab.json" in (export / "README.md").read_text()

    # what README.md tells a user to do gives sample.py's greedy text
    model = transformers.GPT2LMHeadModel.from_pretrained(str(export)).eval()
    ids = torch.tensor([[chars.index(c) for c in "ROMEO:"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False)
    assert "".join(chars[i] for i in out[0]) == greedy_sample(run_dir, "ROMEO:", 30)


def test_bad_exports_are_one_line_and_keep_the_earlier_export(tmp_path):
    meta = {"tokenizer": "gpt2", "vocab_size": 50257}
    export = tmp_path / "export"
    run("export.py", f"--out_dir={make_run(tmp_path / 'good', meta, vocab_size=50257)}", f"--to={export}")
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    no_bias = make_run(tmp_path / "no_bias", meta, vocab_size=50257, bias=False)
    for args, message in [
        ([f"--out_dir={tmp_path / 'good'}"], "say where to write the export: --to=DIR"),
        ([f"--out_dir={tmp_path / 'nowhere'}", f"--to={export}"], "no checkpoint at"),
        ([f"--out_dir={tmp_path / 'good'}", f"--to={tmp_path / 'other'}"], "is not an earlier export"),
        ([f"--out_dir={no_bias}", f"--to={export}"], "bias=False cannot be exported"),
    ]:
        result = run("export.py", *args, check=False)
        assert result.returncode != 0 and message in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "good", "no_bias", "other"]
