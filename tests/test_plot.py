"""plot.py: logs it writes itself drawn into images of the expected size, bad input, and train.py's redraw."""

import json
import math
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import ngram
import plot
from conftest import TORCHRUN, run


def plot_cli(*args, check=True, **kwargs):
    return run("plot.py", *args, check=check, timeout=120, **kwargs)


def plot_main(capsys, *args):
    """plot.py's main in this process (a subprocess costs seconds of imports): (exit status, stderr)."""
    capsys.readouterr()
    try:
        plot.main([str(a) for a in args])
    except SystemExit as e:  # sys.exit("error: ...") prints its message and exits with 1
        return 1, capsys.readouterr().err + f"{e.code}\n"
    return 0, capsys.readouterr().err


def png_size(path):
    raw = Path(path).read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR" and raw[-8:-4] == b"IEND"
    return struct.unpack(">II", raw[16:24])


def write_log(run, records, tail=""):
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def steps(first, last, tokens_per_iter, loss=lambda it: 4 - it / 100, every=1):
    """train.py's step records: tokens_per_sec and ms as it computes them from the step time."""
    rng = np.random.default_rng(first)
    out = []
    for it in range(first, last, every):
        dt = rng.uniform(0.01, 0.5)
        out.append({"iter": it, "train_loss": loss(it), "lr": 1e-3, "grad_norm": None, "ms": dt * 1000,
                    "tokens_per_sec": tokens_per_iter / dt, "mfu": None})
    return out


def ngram_dir(path, dataset, baselines):
    """ngram.py's out_dir: {order: (nats, bits)} of dataset's n-grams."""
    path.mkdir(parents=True)
    ngram.write_baselines(path, str(dataset), {k: {"val_loss": v[0], "val_bits": v[1]} for k, v in baselines.items()})
    return path


@pytest.fixture
def two_runs(tmp_path):
    """A finished run with HellaSwag evals, and a run resumed at iter 20 that redid iters 20..24; the
    n-gram baselines of their dataset are in tmp_path/out-ngram."""
    dataset = tmp_path / "data"
    dataset.mkdir()
    ngram_dir(tmp_path / "out-ngram", dataset, {3: (2.04, 2.94), 5: (1.56, 2.25)})
    a, b = tmp_path / "out-a", tmp_path / "out-b"
    write_log(a, [{"iter": 0, "dataset": str(dataset)}, {"iter": 0, "val_loss": 4.2}, *steps(0, 40, 512),
                  {"iter": 20, "val_loss": 2.5}, {"iter": 20, "hellaswag_acc": 0.25, "hellaswag_acc_norm": 0.26},
                  {"iter": 40, "val_loss": 2.1}, {"iter": 40, "hellaswag_acc": 0.27, "hellaswag_acc_norm": 0.29}])
    write_log(b, [{"iter": 0, "dataset": str(dataset)}, *steps(0, 25, 1024, loss=lambda it: 9.0),
                  {"iter": 20, "val_loss": 2.4}, *steps(20, 40, 1024, every=5)])
    return a, b


def test_draws_two_runs_into_a_png_of_the_expected_size(two_runs, tmp_path):
    out = tmp_path / "curves.png"
    plot_cli(*two_runs, f"--out={out}", "--ref", "GPT-2 124M=3.29", "--x=tokens", "--baselines", tmp_path / "out-ngram")
    # five panels (train, val, HellaSwag, lr, tokens/s) in two columns: three rows of 350 px
    assert png_size(out) == (1200, 1050)
    assert not list(tmp_path.glob("*.tmp"))


def test_bits_draws_the_losses_and_baselines_in_bits(tmp_path, capsys):
    dataset = tmp_path / "data"
    dataset.mkdir()
    ngrams = ngram_dir(tmp_path / "out-ngram", dataset, {2: (2.48, 3.58), 3: (2.04, 2.94)})
    run = tmp_path / "out"
    records = [{**r, "train_bits": r["train_loss"] / math.log(2)} for r in steps(0, 20, 64)]
    write_log(run, [{"iter": 0, "dataset": str(dataset), "bits_per": "character"}, *records,
                    {"iter": 19, "val_loss": 2.1, "val_bits": 2.1 / math.log(2)}])
    series, _ = plot.read_log(run)
    assert plot.reference_lines([plot.read_log(run)], [], bits=True, ngram_dirs=[ngrams]) == [
        ("2-gram KN", 3.58), ("3-gram KN", 2.94)]
    assert plot.reference_lines([plot.read_log(run)], [], ngram_dirs=[ngrams]) == [("2-gram KN", 2.48),
                                                                                   ("3-gram KN", 2.04)]
    assert plot_main(capsys, run, f"--out={tmp_path / 'bits.png'}", "--bits", "--baselines", ngrams) == (0, "")
    assert png_size(tmp_path / "bits.png") == (1200, 700)  # train and val in bits, lr, tokens/s


def test_baselines_adds_another_datasets_ngrams_in_bits(tmp_path, capsys, monkeypatch):
    """A BPE run beside the character n-grams of the same text: only bits per character compare."""
    monkeypatch.chdir(tmp_path)
    chars_data, bpe_data = tmp_path / "data" / "chars", tmp_path / "data" / "bpe"
    chars = ngram_dir(tmp_path / "out-ngram-chars", chars_data, {3: (2.04, 2.94), 7: (1.52, 2.19)})
    bpe = ngram_dir(tmp_path / "out-ngram-bpe", bpe_data, {6: (3.01, 2.18)})
    old, bad = tmp_path / "old", tmp_path / "bad"
    for directory in old, bad:
        directory.mkdir()
    (old / "baselines.json").write_text('{"7": 1.52}')  # what ngram.py once wrote beside a dataset
    (bad / "baselines.json").write_text('{"7": ')
    run = tmp_path / "out"
    records = [{**r, "train_bits": r["train_loss"] / math.log(2)} for r in steps(0, 20, 64)]
    write_log(run, [{"iter": 0, "dataset": str(bpe_data), "bits_per": "byte"}, *records,
                    {"iter": 19, "val_loss": 3.0, "val_bits": 2.17}])
    logs = [plot.read_log(run)]
    assert plot.reference_lines(logs, [], bits=True, ngram_dirs=[bpe, chars]) == [
        ("6-gram KN", 2.18), ("3-gram KN (chars)", 2.94), ("7-gram KN (chars)", 2.19)]
    assert plot.reference_lines(logs, [], bits=True, ngram_dirs=[bpe]) == [("6-gram KN", 2.18)]
    # without --baselines, ngram.py's default out_dir for the run's dataset, here out-ngram-bpe
    assert plot.reference_lines(logs, [], bits=True) == [("6-gram KN", 2.18)]
    assert plot.reference_lines(logs, [], ngram_dirs=[bpe]) == [("6-gram KN", 3.01)]  # the run's own tokens
    assert plot_main(capsys, run, "--out=bits.png", "--bits", "--baselines", "out-ngram-chars") == (0, "")
    assert png_size(tmp_path / "bits.png") == (1200, 700)
    # --ymax: the loss panels end there, and a line above it is not labelled in the margin
    train, val, lr, _ = plot.draw([run], "capped.png", bits=True, ngram_dirs=[bpe, chars], ymax=2.5).axes
    assert train.get_ylim()[1] == val.get_ylim()[1] == 2.5 and lr.get_ylim()[1] < 0.01
    assert [t.get_text() for t in val.texts] == ["6-gram KN 2.180", "7-gram KN (chars) 2.190"]

    for args, error in [(["--baselines", "out-ngram-chars"], f"error: --baselines out-ngram-chars: the n-grams of "
                         f"another dataset ({chars_data}) compare with a run's losses only in bits per character or "
                         "byte; add --bits\n"),
                        (["--bits", "--baselines", "nowhere"], "error: --baselines nowhere: no n-gram baselines "
                         "(baselines.json) there; run python ngram.py --dataset=DATASET --order=7 --out_dir=nowhere "
                         "first\n"),
                        (["--ymax=0"], "error: --ymax=0.0: a loss axis's top must be above 0\n"),
                        (["--bits", "--baselines", "bad"], f"error: {os.path.join('bad', 'baselines.json')}: not the "
                         "n-gram baselines that ngram.py writes (JSONDecodeError: Expecting value: line 1 column 7 "
                         "(char 6))\n"),
                        (["--bits", "--baselines", "old"], f"error: {os.path.join('old', 'baselines.json')}: not the "
                         "n-gram baselines that ngram.py writes (KeyError: 'orders')\n")]:
        assert plot_main(capsys, run, "--out=no.png", *args) == (1, error)
    assert not (tmp_path / "no.png").exists()


def test_svg_and_pdf_by_extension(two_runs, tmp_path, capsys):
    assert plot_main(capsys, *two_runs, f"--out={tmp_path / 'curves.svg'}") == (0, "")
    assert plot_main(capsys, two_runs[0], f"--out={tmp_path / 'curves.PDF'}") == (0, "")
    svg = (tmp_path / "curves.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    pdf = (tmp_path / "curves.PDF").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")


def test_a_resumed_runs_later_records_win_and_tokens_follow_the_batch_size(two_runs):
    series, dataset = plot.read_log(two_runs[1])
    assert series["train_loss"][20] == 4 - 20 / 100  # the redone step, not the first try's 9.0
    assert series["train_loss"][21] == 9.0  # logged once, before the checkpoint
    assert dataset == str(two_runs[1].parent / "data")
    series, _ = plot.read_log(two_runs[0])
    iters = np.array([0, 1, 20, 39, 40])
    assert list(plot.tokens_at(series, iters, "a")) == list(iters * 512)
    # a resume with twice the tokens per step: 10 steps of 256 then 1024 a step
    series = {"tokens_per_sec": {0: 256 / 0.3, 5: 256 / 0.1, 10: 1024 / 0.7}, "ms": {0: 300.0, 5: 100.0, 10: 700.0}}
    assert list(plot.tokens_at(series, [0, 7, 10, 12], "c")) == [0, 7 * 256, 2560, 2560 + 2 * 1024]


def test_reference_lines_are_the_named_baselines_and_the_command_lines(two_runs):
    logs = [plot.read_log(run) for run in two_runs]
    ngrams = two_runs[0].parent / "out-ngram"
    assert plot.reference_lines(logs, [("GPT-2 124M", 3.29)], ngram_dirs=[ngrams]) == [
        ("3-gram KN", 2.04), ("5-gram KN", 1.56), ("GPT-2 124M", 3.29)]
    assert plot.reference_lines(logs, [], bits=True, ngram_dirs=[ngrams]) == [("3-gram KN", 2.94), ("5-gram KN", 2.25)]
    # without --baselines no n-gram lines: the dataset that the logs name is not searched for any
    (two_runs[0].parent / "data" / "baselines.json").write_text((ngrams / "baselines.json").read_text())
    assert plot.reference_lines(logs, [("GPT-2 124M", 3.29)]) == [("GPT-2 124M", 3.29)]
    assert plot.parse_ref("GPT-2 124M=3.29") == ("GPT-2 124M", 3.29)


def test_a_log_being_written_and_a_corrupt_line(two_runs, tmp_path, capsys):
    run = two_runs[0]
    lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
    # the last line half written: skipped without a word
    (run / "log.jsonl").write_text("".join(lines) + '{"iter": 41, "train_lo')
    assert plot_main(capsys, run, f"--out={tmp_path / 'a.png'}") == (0, "")
    assert png_size(tmp_path / "a.png") == (1200, 1050)
    assert 41 not in plot.read_log(run)[0]["train_loss"]
    # a broken line in the middle: a warning, and the rest is drawn
    (run / "log.jsonl").write_text("".join(lines[:5]) + "garbage\n" + "".join(lines[5:]))
    status, err = plot_main(capsys, run, f"--out={tmp_path / 'b.png'}")
    assert (status, err) == (0, f"warning: {run / 'log.jsonl'}, line 6: not a log record; skipped\n")
    assert png_size(tmp_path / "b.png") == (1200, 1050)


def test_smoothing_is_centred_and_keeps_the_ends():
    y = np.array([5.0, 1, 2, 3, 4, 5, 6, 7, 8, 0])
    np.testing.assert_allclose(plot.smoothed(y, 0.3), [5, 8 / 3, 2, 3, 4, 5, 6, 7, 5, 0])
    np.testing.assert_array_equal(plot.smoothed(y, 0), y)


@pytest.mark.parametrize("make, args, message", [
    (lambda d: d.mkdir(), [], "has no log.jsonl: is it a training run's out_dir?"),
    (lambda d: None, [], "is not a directory"),
    (lambda d: write_log(d, []), [], "log.jsonl has no records yet"),
    (lambda d: write_log(d, [], tail='{"iter": 0, "val'), [], "log.jsonl has no records yet"),
    (lambda d: write_log(d, [{"iter": 0, "val_loss": 4.0}]), ["--out=curves.jpg"], "name a .png, .svg or .pdf file"),
    (lambda d: write_log(d, [{"iter": 0, "val_loss": 4.0}]), ["--ref", "GPT-2"], "write NAME=VALUE"),
    (lambda d: write_log(d, [{"iter": 0, "val_loss": 4.0}]), ["--x=tokens"], "logs no training steps"),
])
def test_bad_input_is_one_line(tmp_path, make, args, message, capsys, monkeypatch):
    make(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    status, err = plot_main(capsys, tmp_path / "run", *args)
    assert status != 0 and message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not list(tmp_path.glob("curves*"))


def test_bad_input_from_the_command_line_is_one_line_without_a_traceback(tmp_path):
    result = plot_cli(tmp_path / "missing", check=False, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path / 'missing'} is not a directory: give training runs' out_dirs\n"


def test_an_existing_image_survives_a_failed_drawing(tmp_path, capsys):
    write_log(tmp_path / "run", [{"iter": 0, "val_loss": 4.0}])
    out = tmp_path / "curves.png"
    out.write_bytes(b"the previous drawing")
    assert plot_main(capsys, tmp_path / "run", f"--out={out}", "--x=tokens")[0] != 0
    assert out.read_bytes() == b"the previous drawing" and not list(tmp_path.glob("*.tmp"))


# -----------------------------------------------------------------------------
# train.py's redraw

TINY = ["--device=cpu", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16",
        "--batch_size=4", "--gradient_accumulation_steps=2", "--eval_iters=2", "--max_iters=8", "--eval_interval=4"]


def wait_for(path, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.ddp
def test_ddp_training_redraws_its_loss_png(char_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    # a bigram line from ngram.py's default out_dir in the directory train.py runs in
    ngram_dir(tmp_path / ngram.default_out_dir(str(char_data)), char_data, {2: (2.48, 3.58)})
    result = run("train.py", *TINY, f"--dataset={char_data}", f"--out_dir={out}", launcher=TORCHRUN, timeout=300,
                 cwd=tmp_path)
    assert "loss.png" not in result.stderr
    wait_for(out / "loss.png")  # drawn by a child process that may outlive the run
    assert png_size(out / "loss.png") == (1200, 700)  # train, val, lr, tokens/s
    series, dataset = plot.read_log(out)
    assert dataset == str(char_data) and sorted(series["val_loss"]) == [0, 4, 8]
    # 2 ranks x 1 micro-step x 4 x 16 tokens a step, read back from the step records
    assert list(plot.tokens_at(series, [1, 8], out)) == [128, 8 * 128]
    monkeypatch.chdir(tmp_path)  # what the drawing read, from where train.py ran
    assert plot.reference_lines([(series, dataset)], []) == [("2-gram KN", 2.48)]


def test_without_a_free_core_only_the_final_drawing_is_made(tmp_path):
    run_dir = tmp_path / "run"
    write_log(run_dir, steps(0, 9, 64))
    redraw = plot.BackgroundPlot(str(run_dir), live=False)
    redraw()  # at an eval: a drawing would take a core from the training step
    assert redraw.child is None
    redraw(final=True)
    redraw.child.wait(timeout=60)
    assert redraw.child.returncode == 0 and png_size(run_dir / "loss.png")[0] == 1200


def test_a_drawing_under_way_is_not_waited_for_but_at_the_end(tmp_path):
    run_dir = tmp_path / "run"
    write_log(run_dir, steps(0, 9, 64))
    redraw = plot.BackgroundPlot(str(run_dir))
    redraw()
    first = redraw.child
    redraw()  # at the next eval, the first drawing is still under way: no second one beside it
    assert redraw.child is first and first.poll() is None
    redraw(final=True)  # the last must show the run's end: it waits for the first, then draws again
    assert first.returncode == 0 and redraw.child is not first
    redraw.child.wait(timeout=60)
    assert redraw.child.returncode == 0 and png_size(run_dir / "loss.png")[0] == 1200


def test_a_failed_drawing_warns_once_and_stops_redrawing(tmp_path, capsys):
    redraw = plot.BackgroundPlot(str(tmp_path / "no-run-here"))
    redraw()
    redraw.child.wait(timeout=60)
    assert redraw.child.returncode != 0
    for _ in range(3):
        redraw()
    assert capsys.readouterr().err.count("warning: loss.png could not be drawn") == 1
    assert not redraw.enabled


@pytest.mark.slow
def test_a_broken_matplotlib_never_stops_training(char_data, tmp_path):
    # a matplotlib that importlib finds but that fails on import
    (tmp_path / "fake" / "matplotlib").mkdir(parents=True)
    (tmp_path / "fake" / "matplotlib" / "__init__.py").write_text("raise RuntimeError('broken')\n")
    out = tmp_path / "out"
    result = run("train.py", *TINY, f"--dataset={char_data}", f"--out_dir={out}", "--max_iters=20", "--eval_interval=2",
                 timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path / "fake")})
    assert "iter 20: val loss" in result.stdout and (out / "ckpt.pt").exists()
    # one warning once a drawing has failed (none if the run ended first)
    assert result.stderr.count("loss.png") <= 1 and result.stderr.count("\n") <= 1, result.stderr
    assert not (out / "loss.png").exists()
