"""train.sbatch as Slurm runs it, with stand-ins for Slurm's commands: near its time limit the job has
training save, requeues itself, and the requeued job, the same command, goes on where it stopped."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

TINY = ["--device=cpu", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16",
        "--batch_size=4", "--gradient_accumulation_steps=2", "--eval_iters=1", "--eval_interval=5", "--log_interval=1",
        "--max_iters=40"]

# srun runs the step in a process group of its own, so that scancel can signal all of it, as Slurm does
SRUN = f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
while args[0].startswith("-"):
    args.pop(0)
os.setsid()
open(os.path.join(os.environ["FAKE_SLURM"], "step.pid"), "w").write(str(os.getpid()))
os.execvp(args[0], args)
"""
SCONTROL = """#!/bin/bash
case "$1" in
    show) echo localhost ;;
    requeue) echo "$2" >> "$FAKE_SLURM/requeued" ;;
esac
"""
SCANCEL = """#!/bin/bash
# scancel --signal=TERM JOB: every process of the job's steps, not the batch script
kill -TERM -- "-$(cat "$FAKE_SLURM/step.pid")"
"""


def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("scancel", SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM": str(tmp_path),
            "SLURM_JOB_ID": "42", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node1", "SLURM_SUBMIT_DIR": str(REPO),
            "GPUS_PER_NODE": "2", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}


def steps_logged(out):
    if not (out / "log.jsonl").exists():
        return 0
    return sum("train_loss" in line for line in (out / "log.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_the_time_limit_saves_requeues_and_the_job_goes_on(char_data, tmp_path):
    env, out = fake_slurm(tmp_path), tmp_path / "out"
    command = ["bash", str(REPO / "train.sbatch"), *TINY, f"--dataset={char_data}", f"--out_dir={out}"]
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while steps_logged(out) < 7:
        assert job.poll() is None and time.time() < deadline, job.stdout.read()
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends 5 minutes before the limit
    output, _ = job.communicate(timeout=180)
    assert "near the time limit" in output and "stopped by signal at iter" in output, output
    assert (tmp_path / "requeued").read_text() == "42\n"
    stopped_at = torch.load(out / "ckpt.pt", weights_only=True)["iter_num"]
    assert 7 <= stopped_at < 40

    # the requeued job: the same command, which continues the run
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming {out} at iter {stopped_at}" in result.stdout
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 40
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "train_loss" in r] == list(range(40))
