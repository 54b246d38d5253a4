"""train.py end to end, as users run it, on CPU, with tiny models and few steps: in this process
where the same run as a command would show nothing more, as processes for torchrun, signals and
resource limits, and for the one-line error a user sees."""

import json
import math
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import data
import export as export_py
import memory
import prepare_chat
import prepare_shakespeare
import sample as sample_py
import train as train_py
from checkpoint import load_checkpoint
from configurator import configure
from conftest import PYTHON, REPO, TINY_RUN, TORCHRUN, run, run_main
from hf import save_pretrained
from model import GPT, MODERN_SWITCHES, GPTConfig
from train import Progress

# the timings differ from run to run, and a run resumed with another max_iters logged the first
TIMING = ("ms", "tokens_per_sec", "mfu", "seconds_left", "max_iters")


def train(*args, check=True, cwd=REPO, launcher=None, **kwargs):
    """train.py with args: in this process, or as a process where the test needs one (torchrun,
    subprocess.run's kwargs such as a resource limit)."""
    if launcher or kwargs:
        return run("train.py", *args, check=check, cwd=cwd, launcher=launcher or PYTHON, **kwargs)
    result = run_main(train_py.main, *args, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_log(out_dir):
    """log.jsonl without TIMING."""
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def load(out_dir, name="ckpt.pt"):
    return torch.load(out_dir / name, weights_only=True)


def assert_same_state(a, b):
    assert a["iter_num"] == b["iter_num"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for i, state in a["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(tensor, b["optimizer"]["state"][i][key]), (i, key)
    assert a["loader"] == b["loader"]


@pytest.fixture(scope="session")
def reference(char_data, tmp_path_factory):
    """An uninterrupted 12-step run that the resumed runs must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={out}", "--max_iters=12")
    return out


@pytest.mark.slow
def test_overfits_one_batch(tmp_path):
    # one train window exactly, so every batch is the same batch
    rng = np.random.default_rng(0)
    data.write_shard(tmp_path / "train_000000.bin", rng.integers(0, 50, 33))
    data.write_shard(tmp_path / "val_000000.bin", rng.integers(0, 50, 33))
    data.write_meta(tmp_path, {"tokenizer": "char", "vocab_size": 50, "chars": [chr(65 + i) for i in range(50)]})
    out = tmp_path / "out"
    train(*TINY_RUN, f"--dataset={tmp_path}", f"--out_dir={out}", "--dropout=0.0", "--max_iters=150",
          "--lr_decay_iters=150", "--learning_rate=1e-2", "--eval_interval=1000")
    losses = [r["train_loss"] for r in read_log(out) if "train_loss" in r]
    assert losses[0] > 3.5 and losses[-1] < 0.05


@pytest.mark.parametrize("stop_at", [3, 4, 9])
def test_resume_is_exact(char_data, reference, tmp_path, stop_at):
    # a run cut short at stop_at, then resumed to the end, equals the uninterrupted run bit for bit
    common = [*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}"]
    train(*common, f"--max_iters={stop_at}")
    result = train(*common, "--init_from=resume", "--max_iters=12")
    assert f"resuming {tmp_path} at iter {stop_at}; max_iters: {stop_at} -> 12" in result.stdout
    assert_same_state(load(tmp_path), load(reference))
    assert read_log(tmp_path) == read_log(reference)


def test_deterministic_kernels_change_nothing_on_cpu(char_data, reference, tmp_path):
    # --deterministic is for CUDA's reductions; on a CPU every kernel is already deterministic, so the
    # switch must run every op the loop uses (and resume) and give the reference run bit for bit
    common = [*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}", "--deterministic=True"]
    train(*common, "--max_iters=5")
    train(*common, "--init_from=resume", "--max_iters=12")
    assert_same_state(load(tmp_path), load(reference))
    assert read_log(tmp_path) == read_log(reference)


def test_resume_takes_this_runs_optimizer_settings(char_data, reference, tmp_path):
    # a checkpoint of an older run (unfused AdamW) resumed with a new weight decay and beta2
    ckpt = load(reference)
    for group in ckpt["optimizer"]["param_groups"]:
        group["fused"] = False
    os.makedirs(tmp_path / "out")
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")
    result = train(f"--out_dir={tmp_path / 'out'}", "--init_from=resume", "--max_iters=13",
                   "--weight_decay=0.05", "--beta2=0.9")
    assert "weight_decay: 0.1 -> 0.05" in result.stdout
    decay, no_decay = load(tmp_path / "out")["optimizer"]["param_groups"]
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == no_decay["betas"] == (0.9, 0.9)
    assert decay["fused"] and no_decay["fused"]


def test_checkpoints_are_plain_and_best_is_kept(reference):
    ckpt, best = load(reference), load(reference, "best.pt")
    assert ckpt["iter_num"] == 12 and best["iter_num"] <= 12
    val = {r["iter"]: r["val_loss"] for r in read_log(reference) if "val_loss" in r}
    assert best["best_val_loss"] == min(val.values()) == val[best["iter_num"]]
    assert not any(name.startswith("_orig_mod.") for name in ckpt["model"])
    assert ckpt["meta"]["tokenizer"] == "char" and ckpt["model_args"]["vocab_size"] == 65
    assert not list(reference.glob("*.tmp"))


@pytest.mark.slow
def test_sigterm_saves_and_resumes_exactly(char_data, tmp_path):
    common = [*TINY_RUN, f"--dataset={char_data}"]
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *common, f"--out_dir={stopped}",
                             "--max_iters=100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (stopped / "log.jsonl").exists() or len(read_log(stopped)) < 6:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    stop_at = load(stopped)["iter_num"]
    assert "stopped by signal at iter" in stdout and 4 < stop_at < 100000

    train(*common, f"--out_dir={stopped}", "--init_from=resume", f"--max_iters={stop_at + 3}")
    uninterrupted = tmp_path / "uninterrupted"
    train(*common, f"--out_dir={uninterrupted}", f"--max_iters={stop_at + 3}")
    assert_same_state(load(stopped), load(uninterrupted))
    assert read_log(stopped) == read_log(uninterrupted)


@pytest.mark.ddp
def test_ddp_matches_one_process(char_data, tmp_path):
    # the same global batch (4 micro-batches of 4), over 2 gloo ranks or in one process
    assert_ddp_matches_one_process([*TINY_RUN, f"--dataset={char_data}", "--gradient_accumulation_steps=4"], tmp_path)


def assert_ddp_matches_one_process(args, tmp_path, *parallel, tolerance=1e-5):
    """The same 5 steps in one process and over 2 torchrun ranks, with DDP or with parallel's flags
    (--fsdp=True): the same losses, gradient norms and weights, to float rounding."""
    common = [*args, "--dropout=0.0", "--max_iters=5"]
    train(*common, f"--out_dir={tmp_path / 'single'}")
    train(*common, *parallel, f"--out_dir={tmp_path / 'ddp'}", launcher=TORCHRUN)
    assert_same_training(tmp_path / "single", tmp_path / "ddp", tolerance)


def assert_same_training(single_dir, ddp_dir, tolerance):
    single, ddp = read_log(single_dir), read_log(ddp_dir)
    assert [sorted(r) for r in single] == [sorted(r) for r in ddp] and len(single) == 8  # the first names the dataset
    for a, b in zip(single, ddp):
        for key in ("train_loss", "val_loss", "grad_norm"):
            if key in a:
                assert abs(a[key] - b[key]) < tolerance, (a, b)
    for name, tensor in load_checkpoint(str(single_dir / "ckpt.pt"))["model"].items():
        torch.testing.assert_close(load_checkpoint(str(ddp_dir / "ckpt.pt"))["model"][name], tensor,
                                   atol=tolerance, rtol=0)


# ----------------------------------------------------------------------------- FSDP
TORCHRUN_1 = [*TORCHRUN[:-1], "--nproc_per_node=1"]


@pytest.mark.ddp
def test_fsdp_matches_one_process_with_accumulation(char_data, tmp_path):
    assert_ddp_matches_one_process([*TINY_RUN, f"--dataset={char_data}", "--gradient_accumulation_steps=4"], tmp_path,
                                   "--fsdp=True")
    # each rank wrote its shard: a directory in ckpt.pt's place, read whole above as any checkpoint
    assert not (tmp_path / "ddp" / "ckpt.pt").exists() and (tmp_path / "ddp" / "ckpt" / "train.pt").exists()
    assert sorted(p.name for p in (tmp_path / "ddp" / "ckpt").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (tmp_path / "ddp" / "best" / "train.pt").exists()


@pytest.mark.ddp
def test_fsdp_matches_one_process_with_the_modern_switches_and_muon(char_data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as with DDP: the same bits into Muon's bfloat16 iteration
    assert_ddp_matches_one_process([*TINY_RUN, *MODERN, f"--dataset={char_data}", "--gradient_accumulation_steps=2"],
                                   tmp_path, "--fsdp=True")


@pytest.mark.ddp
def test_fsdp_matches_one_process_with_all_of_muons_options_every_switch_and_ema(char_data, tmp_path):
    # In float32: in bfloat16, FSDP's other order of summing the gradients can round an element to the
    # next bfloat16 value (0.4% away), which Polar Express's first polynomial (8 X - 22 X^3 + 16 X^5) and
    # NorMuon's division amplify to 1e-3 in 5 steps
    float32 = "import optim\noptim.fast_bfloat16 = lambda device_type: False\n"
    common = [*TINY_RUN, *MODERN, "--muon_coefficients=polar_express", "--muon_beta2=0.9", f"--dataset={char_data}",
              "--value_embeddings=True", "--x0_mixing=True", "--unet_skips=True", "--bigram_hash=64", "--ema_decay=0.9",
              "--muon_weight_decay=0.1", "--muon_cautious_wd=True", "--gradient_accumulation_steps=2",
              "--dropout=0.0", "--max_iters=5"]
    for name, parallel, launcher in (("single", [], PYTHON), ("fsdp", ["--fsdp=True"], TORCHRUN)):
        result = train_with(tmp_path, float32, *common, *parallel, f"--out_dir={tmp_path / name}", launcher=launcher)
        assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training(tmp_path / "single", tmp_path / "fsdp", tolerance=1e-5)


def train_with(tmp_path, prelude, *args, launcher=TORCHRUN):
    """train.py's main under torchrun after prelude, Python that each rank runs first (to watch or
    break a part of it), in a script of tmp_path's."""
    script = tmp_path / "train_with.py"
    script.write_text(f"import os, sys\nsys.path.insert(0, {str(REPO)!r})\n{prelude}\n"
                      "import train\ntrain.main(sys.argv[1:])\n")
    return run(str(script), *args, launcher=launcher, check=False)


# each rank notes where it built the model's parameters, in folder/rank0, folder/rank1
WHERE_BUILT = """
import checkpoint, model, train
class Noted(model.GPT):
    def __init__(self, config):
        super().__init__(config)
        with open(os.path.join({folder!r}, f"rank{{os.environ['RANK']}}"), "a") as f:
            f.write(next(self.parameters()).device.type + " ")
checkpoint.GPT = train.GPT = model.GPT = Noted
"""


@pytest.mark.ddp
def test_fsdp_builds_the_model_whole_on_rank_0_alone(fsdp_run, char_data, tmp_path):
    def built_on(out_dir, *args):
        notes = tmp_path / f"{out_dir.name}_notes"
        notes.mkdir()
        result = train_with(tmp_path, WHERE_BUILT.format(folder=str(notes)), *TINY_RUN, f"--dataset={char_data}",
                            "--fsdp=True", f"--out_dir={out_dir}", *args)
        assert result.returncode == 0, result.stderr[-3000:]
        return [(notes / f"rank{r}").read_text().split() for r in (0, 1)]

    # new: rank 0 builds it on its CPU, rank 1 only its shape; resumed: each rank only its shape
    assert built_on(tmp_path / "new", "--max_iters=1") == [["cpu"], ["meta"]]
    # fine-tuned: rank 1 takes the shape that rank 0 settled, its context cropped (rank 0 reads the
    # sharded run into a model of its own first)
    rank0, rank1 = built_on(tmp_path / "tuned", f"--init_from={fsdp_run}", "--block_size=16", "--max_iters=1")
    assert set(rank0) == {"cpu"} and rank1 == ["meta"]
    shutil.copytree(fsdp_run, tmp_path / "run")
    assert built_on(tmp_path / "run", "--max_iters=5") == [["meta"], ["meta"]]


# rank 1 dies (SIGKILL) in the save at iter 8, once its shard is written, before the checkpoint is whole
KILLED_IN_SAVE = """
import signal
from torch.distributed.checkpoint import FileSystemWriter
write_data, saves = FileSystemWriter.write_data, []
def write_then_die(self, plan, planner):
    written = write_data(self, plan, planner)
    saves.append(written.wait())
    if os.environ["RANK"] == "1" and len(saves) == 2:  # the save at iter 4, then the one at iter 8
        os.kill(os.getpid(), signal.SIGKILL)
    return written
FileSystemWriter.write_data = write_then_die
"""


@pytest.mark.ddp
def test_fsdp_resumes_exactly_and_on_another_number_of_ranks(char_data, tmp_path):
    common = [*TINY_RUN, f"--dataset={char_data}", "--fsdp=True", "--dropout=0.0"]
    train(*common, f"--out_dir={tmp_path / 'whole'}", "--max_iters=8", launcher=TORCHRUN)
    # a rank killed in the middle of a save: the job ends, and the checkpoint before it is what is there
    killed = train_with(tmp_path, KILLED_IN_SAVE, *common, f"--out_dir={tmp_path / 'cut'}", "--max_iters=8")
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr
    assert (tmp_path / "cut" / "ckpt.tmp").is_dir() and not (tmp_path / "cut" / "ckpt.tmp" / ".metadata").exists()
    assert load_checkpoint(str(tmp_path / "cut" / "ckpt.pt"))["iter_num"] == 4
    shutil.copytree(tmp_path / "cut", tmp_path / "on_one")
    train(f"--out_dir={tmp_path / 'cut'}", "--init_from=resume", "--max_iters=8", launcher=TORCHRUN)
    whole = load_checkpoint(str(tmp_path / "whole" / "ckpt.pt"))
    assert read_log(tmp_path / "cut") == read_log(tmp_path / "whole")
    assert all(torch.equal(tensor, whole["model"][name])
               for name, tensor in load_checkpoint(str(tmp_path / "cut" / "ckpt.pt"))["model"].items())
    # saved by 2 ranks, resumed by 1, which takes both shards: the same steps, to float rounding
    result = train(f"--out_dir={tmp_path / 'on_one'}", "--init_from=resume", "--max_iters=8", launcher=TORCHRUN_1)
    assert "1 process(es), sharded (FSDP)" in result.stdout
    for a, b in zip(read_log(tmp_path / "on_one"), read_log(tmp_path / "whole")):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in ("train_loss", "val_loss") if k in a)


@pytest.mark.ddp
def test_fsdp_refuses_what_it_cannot_shard_in_one_line(fsdp_run, char_data, tmp_path):
    shutil.copytree(fsdp_run, tmp_path / "run")
    # resumed on 3 ranks: its 2 micro-steps a step do not divide among them
    result = train(f"--out_dir={tmp_path / 'run'}", "--init_from=resume", "--max_iters=6",
                   launcher=[*TORCHRUN[:-1], "--nproc_per_node=3"], check=False)
    assert result.returncode != 0 and result.stderr.count("error: gradient_accumulation_steps=2 does not divide among "
                                                          "3 processes") == 1
    # float16's loss scaling
    result = train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path / 'run'}", "--fsdp=True",
                   "--dtype=float16", launcher=TORCHRUN_1, check=False)
    assert result.returncode != 0 and "error: fsdp=True trains in bfloat16 or float32" in result.stderr
    assert load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))["iter_num"] == 4  # nothing lost
    assert read_log(tmp_path / "run") == read_log(fsdp_run)


def test_a_sharded_run_reads_as_any_run(fsdp_run, tmp_path):
    with warnings.catch_warnings(record=True) as caught:  # nothing on stderr but what the script says
        warnings.simplefilter("always")
        ckpt = load_checkpoint(str(fsdp_run / "ckpt.pt"))
    assert not caught, [str(w.message) for w in caught]
    assert ckpt["iter_num"] == 4 and ckpt["config"]["fsdp"] and "optimizer" not in ckpt
    result = run_main(sample_py.main, f"--out_dir={fsdp_run}", "--device=cpu", "--num_samples=1",
                      "--max_new_tokens=5", "--start=ROMEO:")
    assert result.returncode == 0 and result.stdout.startswith("ROMEO:")
    # exported, its shards gathered: transformers' GPT-2 gives the checkpoint's logits
    transformers = pytest.importorskip("transformers")
    assert run_main(export_py.main, f"--out_dir={fsdp_run}", f"--to={tmp_path / 'hf'}").returncode == 0
    exported = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    model = GPT(GPTConfig(**ckpt["model_args"])).eval()
    model.load_state_dict(load_checkpoint(str(fsdp_run / "ckpt.pt"))["model"])
    x = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(exported(x).logits, model(x, x)[0], atol=1e-5, rtol=0)


def test_a_sharded_checkpoint_cut_short_is_never_read(fsdp_run, tmp_path):
    # a save that died part way left ckpt.tmp/; a crash between replace_dir's two renames left ckpt.old/ alone
    shutil.copytree(fsdp_run, tmp_path / "run")
    (tmp_path / "run" / "ckpt.tmp").mkdir()
    (tmp_path / "run" / "ckpt.tmp" / "__0_0.distcp").write_bytes(b"half")
    (tmp_path / "run" / "ckpt").rename(tmp_path / "run" / "ckpt.old")
    assert load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))["iter_num"] == 4
    with pytest.raises(ValueError, match="is not a readable sharded checkpoint"):
        (tmp_path / "run" / "ckpt.old" / "train.pt").write_bytes(b"cut")
        load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))


def user_dir(tmp_path, char_data):
    """A directory as a user's clone has it after `python prepare_shakespeare.py`: data/shakespeare_char,
    and the repo's configs."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shakespeare_char").symlink_to(char_data)
    (tmp_path / "config").symlink_to(REPO / "config")
    return tmp_path


@pytest.mark.slow
def test_nanogpt_cpu_command_line(char_data, tmp_path):
    # nanoGPT's README command for a CPU, unchanged but for a shorter run; then its sampling command
    cwd = user_dir(tmp_path, char_data)
    train("config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
          "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
          "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0", "--max_iters=6", cwd=cwd)
    ckpt = load(tmp_path / "out-shakespeare-char")
    assert ckpt["iter_num"] == 6 and ckpt["model_args"]["n_layer"] == 4 and ckpt["model_args"]["block_size"] == 64
    result = run("sample.py", "--out_dir=out-shakespeare-char", "--device=cpu", "--max_new_tokens=10", cwd=cwd)
    assert result.stdout.count("---------------") == 3  # num_samples: 3


def test_the_bare_command_trains_the_char_model_on_the_shipped_text(char_data, tmp_path):
    cwd = user_dir(tmp_path, char_data)
    # `python train.py` alone; the flags only shrink the model and the run
    result = train("--n_layer=1", "--n_embd=32", "--n_head=2", "--max_iters=2", "--eval_iters=1", cwd=cwd)
    first = result.stdout.splitlines()[0]
    assert first.startswith("a new run in out-shakespeare-char | ")
    assert "16,384 tokens per iteration = 1 x 1 micro-steps x 64 x 256 | 2 iterations, 32,768 tokens" in first
    assert result.stdout.splitlines()[1] == ("memory a process holds, estimated: weights 0.09 MB, gradients 0.09 MB, "
                                             "optimizer 0.18 MB, activations 71.43 MB: 71.80 MB")
    ckpt = load(tmp_path / "out-shakespeare-char")
    assert ckpt["meta"]["tokenizer"] == "char" and ckpt["config"]["dataset"] == "shakespeare_char"
    assert ckpt["model_args"]["block_size"] == 256 and ckpt["model_args"]["dropout"] == 0.2
    # the schedule follows the run: no warmup in 2 steps, the decay ends at max_iters, min_lr is lr / 10
    assert [ckpt["config"][k] for k in ("warmup_iters", "lr_decay_iters", "min_lr")] == [0, 2, 1e-4]
    # what sample.py (and serve.py, export.py, hellaswag.py) take when no run is named: the newest
    result = run("sample.py", "--prompt", "The meaning of life is", "--num_samples=1", "--max_new_tokens=5", cwd=cwd)
    assert result.stdout.startswith("The meaning of life is")
    assert "out-shakespeare-char: the newest run here" in result.stderr


@pytest.mark.slow
def test_the_minimal_gpt_quick_start_runs_at_accumulation_1(char_data, tmp_path):
    cwd = user_dir(tmp_path, char_data)
    # that repository's README line as it is, with a shorter run appended (a step of this model takes
    # seconds on a CPU, an eval of the whole val split ten); then its sampling line
    result = train("--batch_size", "64", "--block_size", "256", "--n_embd", "384", "--n_head", "6", "--n_layer", "6",
                   "--max_iters", "5000", "--eval_interval", "500", "--max_iters", "2", "--eval_iters", "1", cwd=cwd)
    assert "16,384 tokens per iteration = 1 x 1 micro-steps x 64 x 256 | 2 iterations" in result.stdout
    assert "iter 0/2: loss" in result.stdout and "left" in result.stdout
    ckpt = load(tmp_path / "out-shakespeare-char")
    assert ckpt["iter_num"] == 2 and ckpt["config"]["gradient_accumulation_steps"] == 1
    result = run("sample.py", "--prompt", "ROMEO:", "--temperature", "0.8", "--top_k", "40", "--max_new_tokens", "500",
                 "--num_samples", "1", "--max_new_tokens", "20", cwd=cwd)
    assert result.stdout.startswith("ROMEO:") and len(result.stdout.split("\n---")[0]) == len("ROMEO:") + 20


@pytest.mark.slow
def test_the_minimal_gpt_large_model_line_means_what_it_says(char_data, tmp_path):
    cwd = user_dir(tmp_path, char_data)
    # GPT-2 124M's shape on characters, 4 micro-steps of 16: evaluated once instead of trained, which on a
    # CPU would take minutes a step
    train("--n_layer", "12", "--n_head", "12", "--n_embd", "768", "--batch_size", "16", "--gradient_accumulation_steps",
          "4", "--max_iters", "20000", "--eval_only", "True", "--eval_iters", "1", cwd=cwd)
    header, val = [json.loads(line) for line in (tmp_path / "out-shakespeare-char" / "log.jsonl").open()]
    assert header["max_iters"] == 20000 and header["tokens_per_iter"] == 4 * 16 * 256
    assert "val_loss" in val


@pytest.mark.slow
def test_the_same_command_resumes_a_killed_run_bit_for_bit(char_data, tmp_path):
    common = [*TINY_RUN[:-1], f"--dataset={char_data}", "--eval_interval=3", "--warmup_iters=None",
              "--lr_decay_iters=None", "--max_iters=15"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *common, f"--out_dir={killed}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (killed / "ckpt.pt").exists() or len(read_log(killed)) < 9:  # past the checkpoint at iter 6
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no chance to save; the run goes on from its last checkpoint
    proc.wait()
    assert load(killed)["iter_num"] < 15
    result = train(*common, f"--out_dir={killed}")
    assert result.stdout.startswith(f"resuming {killed} at iter ")
    uninterrupted = tmp_path / "uninterrupted"
    train(*common, f"--out_dir={uninterrupted}")
    assert_same_state(load(killed), load(uninterrupted))
    assert read_log(killed) == read_log(uninterrupted)
    # once more: the run is finished, and says so without touching its checkpoint
    before = (killed / "ckpt.pt").read_bytes()
    result = train(*common, f"--out_dir={killed}")
    assert "is finished (iter 15 of max_iters=15): nothing to train" in result.stdout
    assert (killed / "ckpt.pt").read_bytes() == before


def test_auto_refuses_to_replace_another_runs_checkpoint(char_data, reference, tmp_path):
    (tmp_path / "ckpt.pt").write_bytes((reference / "ckpt.pt").read_bytes())
    result = train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}", "--n_layer=3", check=False)
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0, result.stderr
    assert f"{tmp_path} holds the checkpoint of another run (n_layer=2 there, 3 here)" in result.stderr
    # a run is also its data and its optimizer
    for arg, why in ((f"--dataset={tmp_path}", f"dataset={str(char_data)!r} there, {str(tmp_path)!r} here"),
                     ("--optimizer=muon", "optimizer='adamw' there, 'muon' here")):
        result = train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}", arg, check=False)
        assert result.returncode != 0 and f"holds the checkpoint of another run ({why})" in result.stderr
    assert (tmp_path / "ckpt.pt").read_bytes() == (reference / "ckpt.pt").read_bytes()
    # --init_from=scratch starts over there, as asked
    train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}", "--n_layer=3", "--init_from=scratch",
          "--max_iters=1")
    assert load(tmp_path)["model_args"]["n_layer"] == 3


# each rank notes the shape of what training feeds the model, a line per micro-step, in folder/shapes
SHAPES = """
import model
forward = model.GPT.forward
def noted(self, idx, *args, **kwargs):
    if self.training:
        with open({folder!r} + "/shapes", "a") as f:
            f.write(f"{{tuple(idx.shape)}}\\n")
    return forward(self, idx, *args, **kwargs)
model.GPT.forward = noted
"""


def test_the_ramps_train_on_the_first_rows_and_tokens_of_each_batch_and_resume_exactly(char_data, tmp_path):
    common = [*TINY_RUN, f"--dataset={char_data}", "--batch_size_start=1", "--block_size_start=8", "--ramp_iters=6"]
    result = train_with(tmp_path, SHAPES.format(folder=str(tmp_path)), *common, f"--out_dir={tmp_path / 'whole'}",
                        "--max_iters=8", launcher=PYTHON)
    assert result.returncode == 0, result.stderr[-3000:]
    # from 1 row of 8 tokens to 4 of 32 (batch_size, block_size) over 6 steps, each step two micro-steps
    steps = [(1, 8), (1, 12), (2, 16), (2, 20), (3, 24), (3, 28), (4, 32), (4, 32)]
    assert (tmp_path / "shapes").read_text().split("\n")[:-1] == [str(s) for s in steps for _ in range(2)]
    # a run cut short mid-ramp resumes to the same bits
    train(*common, f"--out_dir={tmp_path / 'resumed'}", "--max_iters=3")
    train(f"--out_dir={tmp_path / 'resumed'}", "--init_from=resume", "--max_iters=8")
    assert_same_state(load(tmp_path / "resumed"), load(tmp_path / "whole"))
    assert read_log(tmp_path / "resumed") == read_log(tmp_path / "whole")


def test_the_learning_rate_warms_up_decays_and_stays_at_its_floor():
    c = SimpleNamespace(learning_rate=1.0, min_lr=0.1, warmup_iters=3, lr_decay_iters=13)
    lrs = [train_py.get_lr(it, c) for it in range(16)]
    assert lrs[:3] == [0.25, 0.5, 0.75]  # a linear warmup that does not start at zero
    assert lrs[3] == 1.0 and lrs[8] == pytest.approx(0.55) and lrs[13:] == [0.1] * 3  # cosine to min_lr, then min_lr
    assert all(a > b for a, b in zip(lrs[3:13], lrs[4:14]))


def test_the_time_left_is_the_steps_and_evals_left():
    c = SimpleNamespace(max_iters=10, eval_interval=4)  # evals at 4 and 8
    progress = Progress(first_step=2)  # a resumed run: its first step, which warms up, is not counted
    assert progress.step(2, 5.0, c) == (5.0, 5.0 * 7)
    progress.eval_seconds = 3.0
    assert progress.step(3, 1.0, c) == (1.0, 1.0 * 6 + 3.0 * 2)
    assert progress.step(4, 2.0, c) == (1.5, 1.5 * 5 + 3.0 * 1)
    assert progress.step(8, 1.5, c) == (1.5, 1.5 * 1)  # after the eval at 8


def test_progress_says_where_the_run_is_and_when_it_ends(char_data, reference):
    log = (reference / "log.jsonl").read_text().splitlines()
    header = json.loads(log[0])
    assert header["max_iters"] == 12 and header["tokens_per_iter"] == 2 * 4 * 32
    steps = [json.loads(line) for line in log if "train_loss" in line]
    assert all(s["seconds_left"] >= 0 for s in steps)
    # a character a token: bits per character are nats per token over ln 2
    assert header["bits_per"] == "character"
    assert all(s["train_bits"] == pytest.approx(s["train_loss"] / math.log(2), rel=1e-5) for s in steps)


def test_finetunes_a_local_hf_directory(tmp_path):
    hf_dir, gpt2_data = tmp_path / "hf", tmp_path / "shakespeare"
    save_pretrained(GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=16)), hf_dir)
    prepare_shakespeare.main(["--tokenizer", "gpt2", "--out_dir", str(gpt2_data)])
    out = tmp_path / "out"
    train(f"--init_from={hf_dir}", f"--dataset={gpt2_data}", f"--out_dir={out}", "--device=cpu", "--compile=False",
          "--block_size=32", "--batch_size=2", "--gradient_accumulation_steps=1", "--max_iters=2",
          "--eval_iters=1", "--learning_rate=3e-5", "--decay_lr=False")
    ckpt = load(out)
    assert ckpt["model_args"]["block_size"] == 32 and ckpt["model_args"]["vocab_size"] == 50257
    assert ckpt["model"]["transformer.wpe.weight"].shape == (32, 16)


def test_nan_loss_stops_and_keeps_the_checkpoint(char_data, tmp_path):
    common = [*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}"]
    train(*common, "--max_iters=4")
    good = load(tmp_path)
    result = train(*common, "--init_from=resume", "--max_iters=12", "--learning_rate=1e30", "--grad_clip=0.0",
                   check=False)
    assert result.returncode != 0
    assert "loss is nan" in result.stderr or "loss is inf" in result.stderr
    assert_same_state(load(tmp_path), good)


@pytest.mark.parametrize("args, message", [
    (["--n_layers=3"], "unknown config key 'n_layers' in --n_layers=3; did you mean 'n_layer'?"),
    (["--dataset=/nonexistent/dir"], "no dataset at /nonexistent/dir: make one with prepare_shakespeare.py"),
    (["--total_batch_size=1000"], "total_batch_size=1000 is not a multiple of batch_size * block_size * world_size "
                                  "= 128: use --total_batch_size=1024, or another batch_size"),
    (["--init_from=resume"], "no checkpoint at"),
    (["--eval_iters=-1"], "eval_iters=-1: it must be a whole number, at least 0"),
    (["--learning_rate", "-1e-3"], "learning_rate=-0.001: it must be a positive number"),
    (["--weight_decay=-0.1"], "weight_decay=-0.1: it must be a number, 0 or more"),
    (["--dropout=1.0"], "dropout=1.0: it must lie in [0, 1)"),
    (["--beta2=1.5"], "beta2=1.5: it must lie in [0, 1)"),
    (["--n_embd=30", "--n_head=4"], "n_embd=30 is not divisible by n_head=4"),
    (["--device=cuda:99"], "device=cuda:99 but"),  # no CUDA here, or not 100 GPUs
    (["--device=gpu"], "device='gpu' is not a device: use auto, cpu, cuda, cuda:N or mps"),
    (["--dtype=fp16"], "dtype='fp16': use one of 'auto', 'float32', 'bfloat16', 'float16'"),
    (["--init_from=gpt3"], "init_from='gpt3': use scratch, resume, gpt2, gpt2-medium, gpt2-large, gpt2-xl or a local"),
    (["--init_from=gpt2"], "init_from=gpt2 needs a GPT-2 BPE dataset, but"),  # said before any download
    (["--total_batch_size=0"], "total_batch_size=0: give a number of tokens, or None"),
    (["--fsdp=True"], "fsdp=True shards over torchrun's processes: launch with `torchrun --standalone"),
    (["--fsdp=True", "--harness_tasks=piqa"], "harness_tasks with fsdp=True: the harness scores a whole model"),
    (["--muon_coefficients=newton"], "muon_coefficients='newton': use one of 'jordan', 'polar_express'"),
    (["--muon_beta2=1.0"], "muon_beta2=1.0: it must lie in [0, 1)"),
    (["--auto_batch_size=True"], "auto_batch_size=True keeps the tokens of an optimizer step: set them with"),
    (["--batch_size_start=5", "--ramp_iters=4"], "batch_size_start=5: give a whole number from 1 to batch_size=4"),
    (["--block_size_start=8"], "block_size_start=8 with ramp_iters=0: give the steps over which it grows to"),
    (["--batch_size_start=2", "--ramp_iters=4", "--auto_batch_size=True", "--total_batch_size=256"],
     "batch_size_start with auto_batch_size=True: the batch size is not known until the run starts"),
])
def test_configuration_errors(char_data, tmp_path, args, message):
    result = train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}", *args, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback


def test_a_configuration_error_is_one_line_from_the_command_line(char_data, tmp_path):
    # the checks above run train.main in this process; as a command, a bad setting is one line on
    # stderr and exit status 1, before anything is written
    result = run("train.py", *TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path / 'out'}", "--n_layers=3",
                 check=False)
    assert result.returncode == 1 and result.stderr == ("error: unknown config key 'n_layers' in --n_layers=3; "
                                                        "did you mean 'n_layer'?\n")
    assert not (tmp_path / "out").exists()


def test_input_errors_are_one_line_and_write_nothing(char_data, tmp_path):
    def fails(*args, cwd=REPO):
        result = train(*args, cwd=cwd, check=False)
        assert result.returncode != 0 and result.stderr.strip().count("\n") == 0, result.stderr
        return result.stderr.strip()

    # a fresh clone: nothing prepared yet, and the message says how to prepare the default dataset
    assert fails(cwd=tmp_path) == "error: no dataset at data/shakespeare_char: make it with `python prepare_shakespeare.py`"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shakespeare_char").symlink_to(char_data)
    assert fails("--dataset=shakespeare", cwd=tmp_path) == (
        "error: no dataset at data/shakespeare: make it with `python prepare_shakespeare.py --tokenizer gpt2`, "
        "or train on one that is ready with --dataset NAME (shakespeare_char)")

    (tmp_path / "a_file").write_text("not a directory")
    assert "out_dir=" in fails(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path / 'a_file'}")

    config = tmp_path / "broken.py"
    config.write_text("batch_size = 4\nlearning_rate = 1e-3 *\n")
    assert fails(str(config)) == f"error: config file {config}, line 2: invalid syntax"

    # token ids beyond the vocabulary that meta.json claims: refused up front, not an IndexError in the embedding
    bad = tmp_path / "bad_ids"
    bad.mkdir()
    data.write_shard(bad / "train_000000.bin", np.arange(100) % 60)
    data.write_shard(bad / "val_000000.bin", np.arange(100) % 50)
    data.write_meta(bad, {"tokenizer": "char", "vocab_size": 50, "chars": [chr(65 + i) for i in range(50)]})
    assert "holds token id 59 but the model's vocabulary has ids 0..49" in fails(
        *TINY_RUN, f"--dataset={bad}", f"--out_dir={tmp_path / 'out'}")
    assert not (tmp_path / "out" / "ckpt.pt").exists()


@pytest.mark.ddp
def test_torchrun_with_accumulation_that_does_not_divide(char_data, tmp_path):
    result = train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}", "--gradient_accumulation_steps=5",
                   launcher=TORCHRUN, check=False)
    assert result.returncode != 0
    # said once, by rank 0 (torchrun then adds its own report of the failed ranks)
    assert result.stderr.count("error: gradient_accumulation_steps=5 does not divide among 2 processes: "
                               "use --gradient_accumulation_steps=6, or a number of processes that divides 5") == 1


def test_auto_batch_size_takes_the_largest_micro_batch_that_fits(char_data, tmp_path, monkeypatch):
    # 16 sequences a step, memory for a micro-batch of 4 at most: the run of --batch_size=4, 4 micro-steps
    config = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    monkeypatch.setattr(train_py, "device_memory", lambda p: sum(memory.estimate(config, 4).values()) / 0.9 + 1)
    common = [*TINY_RUN, f"--dataset={char_data}", "--total_batch_size=512", "--max_iters=4"]
    auto = train(*common, "--auto_batch_size=True", f"--out_dir={tmp_path / 'auto'}")
    train(*common, "--batch_size=4", f"--out_dir={tmp_path / 'four'}")
    assert "512 tokens per iteration = 1 x 4 micro-steps x 4 x 32" in auto.stdout
    assert read_log(tmp_path / "auto") == read_log(tmp_path / "four")
    assert load(tmp_path / "auto")["config"]["batch_size"] == 4


@pytest.mark.ddp
def test_auto_batch_size_under_torchrun_is_each_ranks_share(char_data, tmp_path):
    # 32 sequences a step over 2 ranks, and memory for all of them: 16 a rank, in one micro-step
    result = train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}", "--auto_batch_size=True",
                   "--total_batch_size=1024", "--max_iters=1", "--fsdp=True", launcher=TORCHRUN)
    assert "1,024 tokens per iteration = 2 x 1 micro-steps x 16 x 32" in result.stdout


@pytest.mark.parametrize("fsdp", [False, True])
def test_auto_batch_size_on_a_gpu_takes_the_largest_that_a_trial_step_runs(monkeypatch, fsdp):
    # the estimate lets 8 of 8 through, a forward and backward pass only 2; under FSDP the estimate decides
    tried = []
    monkeypatch.setattr(train_py, "device_memory", lambda p: 1e12)
    monkeypatch.setattr(train_py, "runs_on_gpu", lambda model, b, reserve, c, p: tried.append(b) or b <= 2)
    c = SimpleNamespace(total_batch_size=8 * 32, block_size=32, fsdp=fsdp, optimizer="adamw",
                        activation_checkpointing=False, ema_decay=0.0)
    p = SimpleNamespace(device_type="cuda", device="cpu", dtype="bfloat16", world_size=1, distributed=False)
    model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=1, n_head=1, n_embd=8))
    assert train_py.fitting_batch_size(c, p, model) == (8 if fsdp else 2)
    assert tried == ([] if fsdp else [8, 4, 2])


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_leaves_no_temp_file(char_data, tmp_path):
    import resource

    common = [*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}"]
    train(*common, "--max_iters=4")
    good = (tmp_path / "ckpt.pt").read_bytes()

    def small_disk():  # writes past 100 kB fail with EFBIG, as a full disk fails them with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    result = train(*common, "--init_from=resume", "--max_iters=8", check=False, preexec_fn=small_disk)
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith(f"error: cannot write a checkpoint in {tmp_path} at iter 8 (")
    assert "the last one written is kept" in result.stderr
    assert (tmp_path / "ckpt.pt").read_bytes() == good
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resume_refuses_a_new_shape(char_data, reference, tmp_path):
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "ckpt.pt").write_bytes((reference / "ckpt.pt").read_bytes())
    result = train(f"--out_dir={tmp_path / 'out'}", "--init_from=resume", "--n_embd=64", check=False)
    assert result.returncode != 0
    assert "n_embd=64 but the checkpoint" in result.stderr
    result = train(f"--out_dir={tmp_path / 'out'}", "--init_from=resume", "--fsdp=True", check=False)
    assert result.returncode != 0 and "fsdp=True but the run in" in result.stderr


@pytest.fixture(scope="session")
def gpt2_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("shakespeare_gpt2")
    prepare_shakespeare.main(["--tokenizer", "gpt2", "--out_dir", str(out)])
    return out


@pytest.fixture(scope="session")
def chat_data(char_data, tmp_path_factory):
    """Tiny Shakespeare's chat set, in its character vocabulary, for a context of 32."""
    out = tmp_path_factory.mktemp("shakespeare_chat")
    prepare_chat.main(["--shakespeare", "--tokenizer_from", str(char_data), "--block_size", "32",
                       "--out_dir", str(out)])
    return out


@pytest.fixture(scope="session")
def gpt2_chat_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("shakespeare_chat_gpt2")
    prepare_chat.main(["--shakespeare", "--block_size", "32", "--out_dir", str(out)])
    return out


@pytest.fixture(scope="session")
def fsdp_run(char_data, tmp_path_factory):
    """A 4-step run that 2 torchrun ranks trained with FSDP: its checkpoint sharded."""
    out = tmp_path_factory.mktemp("fsdp_run")
    train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={out}", "--max_iters=4", "--fsdp=True", launcher=TORCHRUN)
    return out


def test_the_loss_counts_only_the_assistant(char_data, tmp_path):
    """User turns of random letters, always answered "I know.": the loss can fall close to zero only if
    it counts the answers alone; with the letters it could not go below about 2.5 (20 of 29 targets
    at ln 52)."""
    rng = random.Random(0)
    rows = [{"messages": [{"role": "user", "content": "".join(rng.choices(string.ascii_letters, k=20))},
                          {"role": "assistant", "content": "I know."}]} for _ in range(400)]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare_chat.main(["--data_files", str(tmp_path / "chats.jsonl"), "--tokenizer_from", str(char_data),
                       "--block_size", "32", "--out_dir", str(tmp_path / "chat")])
    train(*TINY_RUN, f"--dataset={tmp_path / 'chat'}", f"--out_dir={tmp_path / 'out'}", "--dropout=0.0",
          "--max_iters=40", "--lr_decay_iters=40", "--learning_rate=1e-2", "--eval_interval=40")
    log = read_log(tmp_path / "out")
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    assert losses[0] > 3.0 and max(losses[-5:]) < 0.05 and log[-1]["val_loss"] < 0.05


def test_a_run_fine_tuned_for_chat_grows_its_vocabulary_and_resumes_exactly(trained_run, chat_data, tmp_path):
    common = [*TINY_RUN, f"--dataset={chat_data}", f"--init_from={trained_run}"]
    result = train(*common, f"--out_dir={tmp_path / 'whole'}", "--max_iters=8")
    assert f"fine-tuning {trained_run} in {tmp_path / 'whole'}" in result.stdout
    base, chat = load(trained_run), load(tmp_path / "whole")
    # 65 characters and 4 chat tokens, in rows to a multiple of 64
    assert base["model_args"]["vocab_size"] == 65 and chat["model_args"]["vocab_size"] == 128
    assert chat["meta"]["chat"] and chat["meta"]["vocab_size"] == 69
    # stopped and resumed, it is the uninterrupted run bit for bit
    train(*common, f"--out_dir={tmp_path / 'cut'}", "--max_iters=4")
    train(*TINY_RUN, f"--dataset={chat_data}", f"--out_dir={tmp_path / 'cut'}", "--init_from=resume", "--max_iters=8")
    assert_same_state(load(tmp_path / "cut"), chat)
    assert read_log(tmp_path / "cut") == read_log(tmp_path / "whole")


def test_a_bpe_run_fine_tunes_for_chat_on_the_chat_tokens_it_has(bpe_data, tmp_path):
    prepare_chat.main(["--shakespeare", "--tokenizer_from", str(bpe_data), "--block_size", "32",
                       "--out_dir", str(tmp_path / "chat")])
    train(*TINY_RUN, f"--dataset={bpe_data}", f"--out_dir={tmp_path / 'base'}", "--max_iters=2")
    train(*TINY_RUN, f"--dataset={tmp_path / 'chat'}", f"--init_from={tmp_path / 'base'}",
          f"--out_dir={tmp_path / 'chat_run'}", "--max_iters=2")
    chat = load(tmp_path / "chat_run")
    assert chat["model_args"]["vocab_size"] == 512 and chat["meta"]["chat"]  # no row added
    # another vocabulary of the same kind is other tokens
    (tmp_path / "other.txt").write_text((REPO / "assets" / "tinyshakespeare.txt").read_text()[:20_000])
    prepare_shakespeare.main(["--input", str(tmp_path / "other.txt"), "--tokenizer", "bpe", "--vocab_size", "300",
                              "--out_dir", str(tmp_path / "other")])
    result = train(*TINY_RUN, f"--dataset={tmp_path / 'other'}", f"--init_from={tmp_path / 'base'}",
                   f"--out_dir={tmp_path / 'refused'}", check=False)
    assert result.returncode != 0 and (f"was trained on another tokenizer's tokens (bpe) than {tmp_path / 'other'} "
                                       f"(bpe): prepare the data with --tokenizer_from set to the dataset that the run "
                                       f"trained on ({bpe_data})") in result.stderr


def test_openai_gpt2_grows_rows_for_the_chat_tokens(hf_dir, gpt2_chat_data, tmp_path):
    train(f"--init_from={hf_dir}", f"--dataset={gpt2_chat_data}", f"--out_dir={tmp_path}", "--device=cpu",
          "--compile=False", "--block_size=32", "--batch_size=2", "--max_iters=0", "--eval_iters=1")
    wte = load(tmp_path)["model"]["transformer.wte.weight"]
    assert wte.shape == (50304, 16)  # 50257 + 4 chat tokens, padded to a multiple of 64 as ours are
    torch.testing.assert_close(wte[50257:], wte[:50257].mean(0).expand(47, -1))


@pytest.mark.ddp
def test_ddp_on_a_chat_dataset_matches_one_process(chat_data, tmp_path):
    assert_ddp_matches_one_process([*TINY_RUN, f"--dataset={chat_data}", "--gradient_accumulation_steps=4"], tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--block_size=64"], "block_size=64 but the model of {run} has a context of 32: use --block_size=32 or less"),
    (["--n_layer=3"], "n_layer=3 but the run in {run} has n_layer=2: a fine-tuned model keeps its shape"),
    (["--dataset={gpt2_chat}"], "{run} was trained on another tokenizer's tokens (char) than {gpt2_chat} (gpt2)"),
])
def test_fine_tuning_a_run_says_what_does_not_fit(trained_run, chat_data, gpt2_chat_data, tmp_path, args, message):
    names = dict(run=trained_run, gpt2_chat=gpt2_chat_data)
    result = train(*TINY_RUN, f"--dataset={chat_data}", f"--init_from={trained_run}", f"--out_dir={tmp_path}",
                   *(a.format(**names) for a in args), check=False)
    assert result.returncode != 0 and message.format(**names) in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


@pytest.fixture(scope="session")
def hellaswag_args(tmp_path_factory):
    """HellaSwag every 2 steps, on the first 8 examples of the tests' real ones."""
    path = tmp_path_factory.mktemp("hellaswag") / "val.jsonl"
    lines = (REPO / "tests" / "fixtures" / "hellaswag_val_sample.jsonl").read_text().splitlines()
    path.write_text("\n".join(lines[:8]) + "\n")
    return [f"--hellaswag_file={path}", "--hellaswag_interval=2"]


def test_resume_is_exact_with_hellaswag(gpt2_data, hellaswag_args, tmp_path):
    # 3 is odd, so the cut run scores HellaSwag at its end where the full run does not; dropout is on, so
    # the scoring must not draw random numbers
    common = [*TINY_RUN, *hellaswag_args, f"--dataset={gpt2_data}", "--gradient_accumulation_steps=1"]
    train(*common, f"--out_dir={tmp_path / 'full'}", "--max_iters=6")
    train(*common, f"--out_dir={tmp_path / 'cut'}", "--max_iters=3")
    result = train(*common, f"--out_dir={tmp_path / 'cut'}", "--init_from=resume", "--max_iters=6")
    assert "iter 4: hellaswag acc" in result.stdout and "(8 examples)" in result.stdout
    assert_same_state(load(tmp_path / "cut"), load(tmp_path / "full"))
    full, cut = read_log(tmp_path / "full"), read_log(tmp_path / "cut")
    assert [r for r in cut if not (r["iter"] == 3 and "hellaswag_acc" in r)] == full
    assert [r["iter"] for r in full if "hellaswag_acc" in r] == [0, 2, 4, 6]


@pytest.mark.ddp
@pytest.mark.parametrize("parallel", [[], ["--fsdp=True"]], ids=["ddp", "fsdp"])
def test_hellaswag_under_torchrun_matches_one_process(gpt2_data, hellaswag_args, tmp_path, parallel):
    # the examples are split over the 2 gloo ranks and their counts summed; 7 of them, so that FSDP's
    # second rank scores one more than its own, in lockstep with the first
    hellaswag_file = hellaswag_args[0].split("=", 1)[1]
    seven = tmp_path / "seven.jsonl"
    seven.write_text("".join(Path(hellaswag_file).read_text().splitlines(keepends=True)[:7]))
    common = [*TINY_RUN, f"--hellaswag_file={seven}", "--hellaswag_interval=2", f"--dataset={gpt2_data}",
              "--dropout=0.0", "--max_iters=2"]
    train(*common, f"--out_dir={tmp_path / 'single'}")
    result = train(*common, *parallel, f"--out_dir={tmp_path / 'ddp'}", launcher=TORCHRUN)
    assert "(7 examples)" in result.stdout
    assert result.stdout.count("iter 2: hellaswag acc") == 1
    single, ddp = ([r for r in read_log(tmp_path / run) if "hellaswag_acc" in r] for run in ("single", "ddp"))
    assert [r["iter"] for r in single] == [r["iter"] for r in ddp] == [0, 2]
    # the same weights give the same counts; after training steps DDP's weights differ from one
    # process's by float rounding, which may flip a near tie between two endings
    assert single[0] == ddp[0]


def test_hellaswag_refuses_a_char_model(char_data, tmp_path):
    result = train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}", "--hellaswag_interval=4", check=False)
    assert result.returncode != 0 and "HellaSwag needs a model with GPT-2's BPE tokenizer" in result.stderr


# ----------------------------------------------------------------------------- beyond GPT-2, Muon
MODERN = ["--rope=True", "--norm=rmsnorm", "--qk_norm=True", "--mlp_act=relu2", "--tie_embeddings=False",
          "--zero_init_proj=True", "--logit_softcap=15.0", "--optimizer=muon", "--muon_lr=0.02",
          "--muon_weight_decay=0.01"]


@pytest.fixture(scope="session")
def muon_reference(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("muon_reference")
    train(*TINY_RUN, *MODERN, f"--dataset={char_data}", f"--out_dir={out}", "--max_iters=12")
    return out


def test_muon_trains_the_modern_model_on_the_schedule(muon_reference):
    ckpt = load(muon_reference)
    assert ckpt["model_args"]["rope"] and ckpt["model_args"]["mlp_act"] == "relu2"
    assert "transformer.wpe.weight" not in ckpt["model"] and "lm_head.weight" in ckpt["model"]
    adamw_decay, adamw_no_decay, muon = ckpt["optimizer"]["param_groups"]
    assert "momentum_buffer" in ckpt["optimizer"]["state"][muon["params"][0]]
    # the schedule scales both rates alike: Muon's is muon_lr / learning_rate times AdamW's
    last_lr = [r["lr"] for r in read_log(muon_reference) if "lr" in r][-1]
    assert adamw_decay["lr"] == pytest.approx(last_lr)
    assert muon["lr"] == pytest.approx(last_lr * 0.02 / 3e-3) and muon["weight_decay"] == 0.01
    losses = [r["val_loss"] for r in read_log(muon_reference) if "val_loss" in r]
    assert losses[-1] < losses[0] - 0.5


def test_resume_is_exact_with_muon(char_data, muon_reference, tmp_path):
    common = [*TINY_RUN, *MODERN, f"--dataset={char_data}", f"--out_dir={tmp_path}"]
    train(*common, "--max_iters=9")
    train(f"--out_dir={tmp_path}", "--init_from=resume", "--max_iters=12")  # the switches come from the checkpoint
    assert_same_state(load(tmp_path), load(muon_reference))
    assert read_log(tmp_path) == read_log(muon_reference)


def test_ema_evaluates_and_saves_the_average_and_resumes_exactly(char_data, tmp_path):
    # a val split of 2,000 tokens, which the whole-split evals read in moments
    short = tmp_path / "short_val"
    shutil.copytree(char_data, short)
    val = short / "shakespeare_val_000000.bin"
    data.write_shard(val, data.read_shard(val)[:2000])
    common = [*TINY_RUN, *MODERN, f"--dataset={short}", "--ema_decay=0.5", "--eval_iters=0"]
    train(*common, f"--out_dir={tmp_path / 'whole'}", "--max_iters=8")
    train(*common, f"--out_dir={tmp_path / 'resumed'}", "--max_iters=4")
    train(f"--out_dir={tmp_path / 'resumed'}", "--init_from=resume", "--max_iters=8")
    whole, resumed = load(tmp_path / "whole"), load(tmp_path / "resumed")
    assert_same_state(resumed, whole)
    assert read_log(tmp_path / "resumed") == read_log(tmp_path / "whole")
    # the checkpoint's model is the average: evaluate.py scores it as train.py logged its val loss
    # (the trained weights are in the optimizer's state, for the next step)
    result = run("evaluate.py", f"--out_dir={tmp_path / 'whole'}", "--batch_size=4")
    val_loss = [r["val_loss"] for r in read_log(tmp_path / "whole") if "val_loss" in r][-1]
    assert f"{val_loss:.4f}" in result.stdout
    assert not torch.equal(whole["model"]["lm_head.weight"], whole["optimizer"]["state"][0]["ema"])
    result = train(f"--out_dir={tmp_path / 'whole'}", "--init_from=resume", "--max_iters=12", "--ema_decay=0",
                   check=False)
    assert result.returncode != 0 and "ema_decay=0 but the run in" in result.stderr


@pytest.mark.ddp
def test_ddp_matches_one_process_with_muon(char_data, tmp_path, monkeypatch):
    # Muon's bfloat16 Newton-Schulz iteration amplifies last-bit differences of the gradients in the
    # directions of small singular values, so the two runs must compute the same bits: one thread
    # (torchrun's default per rank; else MKL's kernels may sum in another order) and one micro-batch
    # per rank, so that the all-reduced mean (g1 + g2) / 2 is exactly the one process's g1 / 2 + g2 / 2.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert_ddp_matches_one_process([*TINY_RUN, *MODERN, f"--dataset={char_data}", "--gradient_accumulation_steps=2"],
                                   tmp_path)


def test_resume_keeps_the_optimizer_and_reads_older_checkpoints(char_data, reference, tmp_path):
    # a checkpoint from before the switches existed resumes as GPT-2 with AdamW
    ckpt = load(reference)
    for key in MODERN_SWITCHES:
        del ckpt["model_args"][key]
    for key in ("optimizer", "muon_lr", "muon_momentum", "muon_weight_decay", "rope", "norm"):
        del ckpt["config"][key]
    os.makedirs(tmp_path / "out")
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")
    result = train(f"--out_dir={tmp_path / 'out'}", "--init_from=resume", "--optimizer=muon", check=False)
    assert result.returncode != 0
    assert "optimizer=muon but the run in" in result.stderr and "trains with adamw" in result.stderr
    result = train(f"--out_dir={tmp_path / 'out'}", "--init_from=resume", "--rope=True", check=False)
    assert "rope=True but the checkpoint" in result.stderr
    train(f"--out_dir={tmp_path / 'out'}", "--init_from=resume", "--max_iters=13")
    assert load(tmp_path / "out")["iter_num"] == 13


@pytest.mark.parametrize("args, message", [
    (["--optimizer=sgd"], "optimizer='sgd': use one of 'adamw', 'muon'"),
    (["--norm=batchnorm"], "norm='batchnorm': choose one of layernorm, rmsnorm"),
    (["--init_from=gpt2", "--rope=True"], "init_from=gpt2 loads GPT-2's architecture, which has no rope=True"),
])
def test_modern_configuration_errors(char_data, tmp_path, args, message):
    result = train(*TINY_RUN, f"--dataset={char_data}", f"--out_dir={tmp_path}", *args, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


# -----------------------------------------------------------------------------
# the shipped configs: each means what it meant before train.py's defaults became a char model, and starts

# What each config trains: settings that the defaults must not change under it. lr_decay_iters None is max_iters.
GPT2 = dict(dataset="fineweb_edu", n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0, bias=True,
            total_batch_size=524288, batch_size=64, beta1=0.9, beta2=0.95, grad_clip=1.0)
MEANING = {
    "train_gpt2.py": dict(GPT2, learning_rate=6e-4, min_lr=6e-5, weight_decay=0.1, max_iters=19073, warmup_iters=715,
                          lr_decay_iters=None, eval_interval=250, eval_iters=160, hellaswag_interval=250),
    "train_gpt2_modern.py": dict(GPT2, rope=True, norm="rmsnorm", qk_norm=True, mlp_act="relu2", tie_embeddings=False,
                                 zero_init_proj=True, logit_softcap=30.0, optimizer="muon", muon_lr=0.02,
                                 learning_rate=3e-3, min_lr=3e-4, weight_decay=0.0, max_iters=5100, warmup_iters=100,
                                 lr_decay_iters=None),
    "finetune_shakespeare.py": dict(init_from="gpt2", dataset="shakespeare", block_size=1024, dropout=0.0, batch_size=1,
                                    gradient_accumulation_steps=32, learning_rate=3e-5, decay_lr=False, beta2=0.95,
                                    max_iters=20, eval_interval=5, eval_iters=40, always_save_checkpoint=False),
    "train_shakespeare_char.py": dict(dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=64,
                                      block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, learning_rate=1e-3,
                                      max_iters=5000, lr_decay_iters=None, min_lr=1e-4, beta2=0.99, warmup_iters=100,
                                      eval_interval=250, eval_iters=200, always_save_checkpoint=False),
    "train_shakespeare_char_cpu.py": dict(dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=12,
                                          block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                                          learning_rate=3e-3, max_iters=1200, lr_decay_iters=None, min_lr=3e-4,
                                          beta2=0.99, warmup_iters=50, device="cpu", compile=False),
    "train_shakespeare_char_cpu_modern.py": dict(dataset="shakespeare_char", batch_size=12, block_size=64, n_layer=4,
                                                 n_embd=128, dropout=0.0, optimizer="muon", muon_lr=0.015,
                                                 learning_rate=2e-3, min_lr=2e-4, max_iters=400, lr_decay_iters=None,
                                                 beta2=0.99, warmup_iters=50),
    "train_shakespeare_record_cpu.py": dict(dataset="shakespeare_bpe1024", batch_size=16, block_size=128, n_layer=4,
                                            n_head=4, n_embd=192, dropout=0.0, rope=True, tie_embeddings=True,
                                            optimizer="muon", muon_coefficients="polar_express", muon_beta2=0.9,
                                            learning_rate=3e-3, min_lr=3e-3, ema_decay=0.998, max_iters=1000,
                                            eval_iters=0, device="cpu", compile=False),
    **{f"eval_{name.replace('-', '_')}.py": dict(init_from=name, dataset="fineweb_edu", block_size=1024, batch_size=8,
                                                 eval_iters=500, eval_only=True)
       for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")},
    # FSDP's: sharded, their activations checkpointed
    "finetune_gpt2_xl_fsdp.py": dict(init_from="gpt2-xl", dataset="shakespeare", fsdp=True,
                                     activation_checkpointing=True, block_size=1024, batch_size=1,
                                     gradient_accumulation_steps=32, learning_rate=1e-5, decay_lr=False, max_iters=20),
    "train_gpt2_xl_fsdp.py": dict(GPT2, n_layer=48, n_head=25, n_embd=1600, fsdp=True, activation_checkpointing=True,
                                  total_batch_size=1048576, batch_size=16, learning_rate=2e-4, min_lr=2e-5,
                                  max_iters=9537, warmup_iters=358, hellaswag_interval=0),
    # the chat configs: what they set
    "chat_shakespeare_char_cpu.py": dict(init_from="out-shakespeare-char-cpu", dataset="shakespeare_chat",
                                         batch_size=12, block_size=64, dropout=0.0, learning_rate=1e-3, max_iters=300,
                                         beta2=0.99, device="cpu", compile=False),
    "chat_gpt2.py": dict(init_from="gpt2", dataset="smoltalk", total_batch_size=131072, batch_size=16, block_size=1024,
                         dropout=0.0, learning_rate=1e-4, min_lr=1e-5, weight_decay=0.0, max_iters=2000),
}


def test_every_shipped_config_is_listed():
    assert sorted(MEANING) == sorted(p.name for p in (REPO / "config").glob("*.py"))


@pytest.mark.parametrize("name", sorted(MEANING))
def test_each_config_means_what_it_meant(name):
    config, _ = configure(train_py.DEFAULTS, [str(REPO / "config" / name)])
    assert {key: config[key] for key in MEANING[name]} == MEANING[name]


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A tiny GPT-2 in Hugging Face's format, for configs that start from OpenAI's weights."""
    directory = tmp_path_factory.mktemp("hf")
    save_pretrained(GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=16)), directory)
    return directory


@pytest.mark.parametrize("name", sorted(MEANING))
def test_each_config_starts(name, char_data, bpe_data, gpt2_data, chat_data, gpt2_chat_data, hf_dir, tmp_path):
    meaning = MEANING[name]
    data = dict(shakespeare_char=char_data, shakespeare_bpe512=bpe_data, shakespeare_chat=chat_data,
                smoltalk=gpt2_chat_data).get(meaning["dataset"], gpt2_data)
    tiny = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2", "--eval_iters=1",
            "--max_iters=1", "--device=cpu", "--compile=False", "--hellaswag_interval=0",
            "--fsdp=False"]  # in this process; FSDP starts under torchrun in its own tests
    if "total_batch_size" in meaning:
        tiny.append("--total_batch_size=128")
    if meaning.get("init_from") == "out-shakespeare-char-cpu":  # the quick start's run, here a tiny one
        train(*tiny, f"--dataset={char_data}", f"--out_dir={tmp_path / 'base'}")
        tiny.append(f"--init_from={tmp_path / 'base'}")
    elif "init_from" in meaning:
        tiny.append(f"--init_from={hf_dir}")
    result = train(f"config/{name}", f"--dataset={data}", f"--out_dir={tmp_path / 'out'}", *tiny)
    assert "iter 0: val loss" in result.stdout
