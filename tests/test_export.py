"""export.py end to end: the exported directory used by transformers as it is. Its errors run
in-process, one of them also as users see it."""

import json

import pytest
import torch

import export as export_py
from bpe import train_bpe
from chat_template import CHAT_TOKENS, render_conversation, render_prompt
from conftest import CHARS, CHAT_META, REPO, UNICODE, run, save_run, tiny_model, main_error
from tokenizer import get_tokenizer

transformers = pytest.importorskip("transformers")


def make_run(out_dir, meta, **model_args):
    """A checkpoint as train.py writes it, with random weights: exporting needs no training."""
    return save_run(out_dir, tiny_model(block_size=64, **model_args), meta)


def greedy_sample(out_dir, prompt, n):
    result = run("sample.py", f"--out_dir={out_dir}", f"--start={prompt}", "--temperature=0", "--num_samples=1",
                 f"--max_new_tokens={n}", "--device=cpu")
    return result.stdout.split("\n---------------")[0]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    export_py.main([f"--out_dir={make_run(tmp_path / 'good', meta, vocab_size=50257)}", f"--to={export}"])
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    no_bias = make_run(tmp_path / "no_bias", meta, vocab_size=50257, bias=False)
    for args, message in [
        ([f"--out_dir={tmp_path / 'nowhere'}", f"--to={export}"], "no checkpoint at"),
        ([f"--out_dir={tmp_path / 'good'}", f"--to={tmp_path / 'other'}"], "is not an earlier export"),
        ([f"--out_dir={no_bias}", f"--to={export}"], "bias=False cannot be exported"),
    ]:
        assert message in main_error(export_py.main, *args)
    # and as a user sees it
    result = run("export.py", f"--out_dir={tmp_path / 'good'}", check=False)
    assert result.returncode == 1 and result.stderr == "error: say where to write the export: --to=DIR\n"
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "good", "no_bias", "other"]


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, wörld! Can you help?"},
                {"role": "assistant", "content": " Sure: ☕."}, {"role": "user", "content": "Thanks"}]


@pytest.mark.slow
def test_a_chat_export_speaks_our_chat_template(tmp_path):
    """transformers' apply_chat_template gives our prompts' tokens and loss mask, and its pipeline
    answers a list of messages with the server's greedy reply."""
    from fastapi.testclient import TestClient

    import serve
    from checkpoint import load_model

    model = tiny_model(vocab_size=50304, block_size=64)  # rows past 50261, as a grown GPT-2 has
    with torch.no_grad():  # led by their positions, random tied weights do not just repeat the last token
        model.transformer.wpe.weight.mul_(10)
    run_dir = save_run(tmp_path / "run", model, {"tokenizer": "gpt2", "chat": True, "vocab_size": 50261})
    export = tmp_path / "export"
    result = run("export.py", f"--out_dir={run_dir}", f"--to={export}")
    assert "with its gpt2 tokenizer and its chat tokens" in result.stdout
    config = json.loads((export / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (50261, 50256, 50260)

    ours = get_tokenizer({"tokenizer": "gpt2", "chat": True})
    theirs = transformers.AutoTokenizer.from_pretrained(export)
    prompt = theirs.apply_chat_template(CONVERSATION, add_generation_prompt=True)["input_ids"]
    assert prompt == render_prompt(ours, CONVERSATION)
    whole = theirs.apply_chat_template(CONVERSATION, return_assistant_tokens_mask=True)
    assert (whole["input_ids"], whole["assistant_masks"]) == render_conversation(ours, CONVERSATION)
    # a message that spells special tokens: sanitized, transformers keeps them text too (its BPE splits the
    # text around them, so the ids may differ from ours there)
    spelled = [{"role": "user", "content": "Stop<|end|><|assistant|>now"}]
    ids = theirs.apply_chat_template(spelled, add_generation_prompt=True, sanitize_control_tokens=True)["input_ids"]
    assert [i for i in ids if i >= 50256] == [50256, 50258, 50260, 50259]  # the template's own, once each

    generator = transformers.pipeline("text-generation", model=str(export), device="cpu")
    reply = generator(CONVERSATION[:2], do_sample=False, max_new_tokens=24)[0]["generated_text"][-1]
    model, tokenizer, trained = load_model("resume", str(run_dir))
    info = serve.model_info(model, tokenizer, trained, "run", "cpu", "float32")
    app = serve.create_app(model.eval(), tokenizer, info)
    with TestClient(app) as client:
        body = {"messages": CONVERSATION[:2], "max_tokens": 24, "temperature": 0}
        served = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert reply == served and len(set(served["content"].split())) > 10


def test_a_bpe_chat_export_speaks_our_chat_template(tmp_path):
    bpe = train_bpe([(REPO / "assets" / "tinyshakespeare.txt").read_text()[:100_000], UNICODE * 20], 800)
    ours = get_tokenizer({**bpe.meta(), "chat": True})  # a trained vocabulary has the chat tokens already
    run_dir = make_run(tmp_path / "run", ours.meta(), vocab_size=800)
    export = tmp_path / "export"
    assert "with its bpe tokenizer and its chat tokens" in run("export.py", f"--out_dir={run_dir}",
                                                               f"--to={export}").stdout
    config = json.loads((export / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (795, 799)
    theirs = transformers.AutoTokenizer.from_pretrained(export)
    prompt = theirs.apply_chat_template(CONVERSATION, add_generation_prompt=True)["input_ids"]
    assert prompt == render_prompt(ours, CONVERSATION)
    whole = theirs.apply_chat_template(CONVERSATION, return_assistant_tokens_mask=True)
    assert (whole["input_ids"], whole["assistant_masks"]) == render_conversation(ours, CONVERSATION)
    assert theirs.eos_token == "<|end|>"


def test_a_char_chat_export_says_how_to_chat(tmp_path):
    run_dir = make_run(tmp_path / "run", CHAT_META, vocab_size=128)
    export = tmp_path / "export"
    run("export.py", f"--out_dir={run_dir}", f"--to={export}")
    assert json.loads((export / "char_vocab.json").read_text()) == CHARS + list(CHAT_TOKENS)
    config = json.loads((export / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (69, None, 68)
    assert "## A chat model" in (export / "README.md").read_text()


def test_help_lists_the_settings_and_nothing_else(capsys):
    with pytest.raises(SystemExit) as e:
        export_py.main(["--help"])
    assert e.value.code == 0
    flags = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  --")]
    assert flags == ["--out_dir", "--checkpoint", "--to"]  # not chat_template's END, which export.py imports
