"""hellaswag.py: exact against transformers, independent of batch size and process count, clear errors
(in-process, one of them also as users see it)."""

import http.server
import json
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hellaswag
from bpe import train_bpe
from checkpoint import save_checkpoint
from conftest import PYTHON, TORCHRUN, run, save_run, tiny_model, main_error
from hf import save_pretrained
from tokenizer import get_tokenizer

transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE = FIXTURES / "hellaswag_val_sample.jsonl"  # 40 real validation examples, see fixtures/SOURCES.md
BLOCK = 80  # shorter than the longest rows of SAMPLE (120 tokens): some contexts are cut


def tiny_gpt2(block_size=BLOCK):
    model = tiny_model(vocab_size=50257, block_size=block_size)
    # larger than GPT-2's init, so that the endings' losses differ by more than rounding
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval()


def hellaswag_py(*args, launcher=PYTHON, check=True):
    return run("hellaswag.py", "--device=cpu", *args, launcher=launcher, check=check)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    save_pretrained(tiny_gpt2(), directory)
    return directory


@pytest.mark.slow
def test_matches_transformers_example_by_example(hf_dir):
    # the reference: HF's GPT-2 on one unpadded row at a time, its own slicing of the ending's losses
    examples = hellaswag.load_examples(SAMPLE)[:24]
    enc = get_tokenizer(None)
    reference = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ref_losses = torch.zeros(len(examples), 4, dtype=torch.float64)
    ref_counts = torch.zeros(len(examples), 4, dtype=torch.long)
    truncated = 0
    with torch.no_grad():
        for i, (ctx, endings, _) in enumerate(examples):
            for j, ending in enumerate(endings):
                ending_tokens = enc.encode(" " + ending)
                row = enc.encode(ctx) + ending_tokens
                truncated += len(row) > BLOCK + 1
                row = row[-(BLOCK + 1):]
                n = min(len(ending_tokens), len(row) - 1)
                logits = reference(torch.tensor([row[:-1]])).logits[0]
                per_token = F.cross_entropy(logits, torch.tensor(row[1:]), reduction="none")
                ref_losses[i, j], ref_counts[i, j] = per_token[-n:].sum().item(), n
    assert 0 < truncated < 4 * len(examples)  # both kinds of rows are covered

    model = tiny_gpt2()
    tokenized = hellaswag.tokenize(examples, enc, BLOCK)
    losses, counts = hellaswag.ending_losses(model, tokenized, batch_size=6, device="cpu")
    assert torch.equal(counts, ref_counts)
    # sums of up to 87 tokens' losses of about 10 each: float32 rounding, summed in another order
    torch.testing.assert_close(losses, ref_losses, atol=0, rtol=1e-6)
    torch.testing.assert_close(losses / counts, ref_losses / ref_counts, atol=1e-5, rtol=0)

    labels = torch.tensor([label for _, _, label in examples])
    n, acc, acc_norm = hellaswag.evaluate(model, tokenized, batch_size=6, device="cpu")
    assert n == 24
    assert acc * n == (ref_losses.argmin(1) == labels).sum().item()
    assert acc_norm * n == ((ref_losses / ref_counts).argmin(1) == labels).sum().item()


@pytest.mark.slow
def test_batch_size_does_not_change_the_results():
    model = tiny_gpt2()
    tokenized = hellaswag.prepare(str(SAMPLE), get_tokenizer(None), BLOCK, limit=12)
    (one, counts), (many, _) = (hellaswag.ending_losses(model, tokenized, bs, "cpu") for bs in (1, 5))
    # the same choices, so the same counts
    assert torch.equal(one.argmin(1), many.argmin(1))
    assert torch.equal((one / counts).argmin(1), (many / counts).argmin(1))
    torch.testing.assert_close(one, many, atol=0, rtol=1e-6)


@pytest.mark.slow
def test_compiled_matches_eager():
    # padded to multiples of 32 and full batches under torch.compile
    model = tiny_gpt2()
    tokenized = hellaswag.prepare(str(SAMPLE), get_tokenizer(None), BLOCK, limit=3)  # one batch, one graph: compiling is slow
    eager, counts = hellaswag.ending_losses(model, tokenized, 4, "cpu")
    compiled, _ = hellaswag.ending_losses(model, tokenized, 4, "cpu", compile=True)
    torch.testing.assert_close(compiled, eager, atol=0, rtol=1e-5)  # fused kernels round differently
    assert torch.equal(compiled.argmin(1), eager.argmin(1))
    assert torch.equal((compiled / counts).argmin(1), (eager / counts).argmin(1))


@pytest.mark.slow
def test_two_processes_match_one(hf_dir, tmp_path):
    common = [f"--init_from={hf_dir}", f"--data_file={SAMPLE}", "--limit=15", "--batch_size=4"]
    one = hellaswag_py(*common, f"--out_file={tmp_path / 'one.json'}")
    two = hellaswag_py(*common, f"--out_file={tmp_path / 'two.json'}", launcher=TORCHRUN)
    result = json.loads((tmp_path / "one.json").read_text())
    assert result == json.loads((tmp_path / "two.json").read_text())
    assert result["examples"] == 15 and set(result) == {"examples", "acc", "acc_norm"}
    assert f"hellaswag: 15 examples, acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f}" in one.stdout
    assert two.stdout.count("hellaswag: 15 examples") == 1  # rank 0 reports
    assert "examples/s" in one.stderr and not list(tmp_path.glob("*.tmp"))


def test_scores_a_training_checkpoint(tmp_path):
    model = tiny_gpt2()
    save_checkpoint({"model": model.state_dict(), "model_args": vars(model.config), "meta": None,
                     "iter_num": 100, "best_val_loss": 5.0}, str(tmp_path / "best.pt"))
    result = hellaswag_py("--init_from=resume", f"--out_dir={tmp_path}", "--checkpoint=best.pt",
                          f"--data_file={SAMPLE}", "--limit=4")
    assert "hellaswag: 4 examples" in result.stdout


def test_downloads_once_to_the_cache(tmp_path):
    # a local HTTP server stands in for GitHub
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(FIXTURES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = tmp_path / "data" / "hellaswag" / "hellaswag_val.jsonl"
        hellaswag.download(str(path), f"http://127.0.0.1:{server.server_address[1]}/{SAMPLE.name}")
    finally:
        server.shutdown()
    assert path.read_bytes() == SAMPLE.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_offline_download_says_what_to_do(tmp_path):
    path = tmp_path / "hellaswag_val.jsonl"
    with pytest.raises(OSError, match="cannot download HellaSwag from http://127.0.0.1:9/x .*--data_file=PATH"):
        hellaswag.download(str(path), "http://127.0.0.1:9/x")
    assert not list(tmp_path.iterdir())


GOOD = json.loads(SAMPLE.read_text().splitlines()[0])


@pytest.mark.parametrize("text, message", [
    ("not json\n", "line 1 is not JSON"),
    (json.dumps(GOOD) + "\n[1, 2]\n", "line 2 is not a JSON object"),
    (json.dumps({**GOOD, "ctx": None}) + "\n", "line 1: ctx must be a non-empty string"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "endings"}) + "\n", "line 1: endings must be a list of 4"),
    (json.dumps({**GOOD, "endings": GOOD["endings"][:3]}) + "\n", "line 1: endings must be a list of 4"),
    (json.dumps({**GOOD, "label": 4}) + "\n", "line 1: label must be an integer from 0 to 3, got 4"),
    (json.dumps({**GOOD, "label": "2"}) + "\n", "line 1: label must be an integer from 0 to 3, got '2'"),
    ("\n", "has no examples"),
])
def test_bad_data_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        hellaswag.load_examples(str(path))
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_bad_arguments_are_one_clear_line(hf_dir, tmp_path):
    save_run(tmp_path, tiny_model(n_layer=1, n_head=1, n_embd=8),
             meta={"tokenizer": "char", "vocab_size": 65, "chars": [chr(i) for i in range(65)]})
    bpe_run = save_run(tmp_path / "bpe", tiny_model(n_layer=1, n_head=1, n_embd=8, vocab_size=261),
                       meta=train_bpe(["a vocabulary trained here"], 261).meta())
    (tmp_path / "bad.jsonl").write_text(json.dumps({**GOOD, "label": 7}) + "\n")
    for args, message in [
        ([f"--out_dir={tmp_path}"], "HellaSwag needs a model with GPT-2's BPE tokenizer, and this one uses the 'char'"),
        ([f"--out_dir={bpe_run}"], "HellaSwag needs a model with GPT-2's BPE tokenizer, and this one uses the 'bpe'"),
        ([f"--init_from={hf_dir}", f"--data_file={tmp_path / 'missing.jsonl'}"], "no HellaSwag data at"),
        ([f"--init_from={hf_dir}", "--limit=0"], "limit=0: give a number of examples, at least 1"),
        ([f"--init_from={hf_dir}", "--batch_size=0"], "batch_size=0: it must be at least 1"),
    ]:
        assert message in main_error(hellaswag.main, "--device=cpu", *args), args
    # and as a user sees it
    result = hellaswag_py(f"--init_from={hf_dir}", f"--data_file={tmp_path / 'bad.jsonl'}", check=False)
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path / 'bad.jsonl'} line 1: label must be an integer from 0 to 3, got 7\n"
