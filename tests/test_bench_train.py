import gzip
import json

import pytest

from conftest import run
from model import GPT, GPTConfig


def bench(*args):
    return run("-m bench.train", *args, check=False, timeout=300)


@pytest.mark.slow
def test_reads_a_train_config_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = bench("config/train_shakespeare_char_cpu.py", "--vocab_size=65", "--n_layer=1", "--batch_size=2",
                   "--block_size=16", "--modes=eager", "--warmup=1", "--steps=2", "--repeats=2", f"--out_file={out}")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["config"]["n_embd"] == 128 and report["config"]["n_layer"] == 1  # from the file, then the flag
    assert [(r["mode"], r["phase"]) for r in report["results"]] == [("eager", "forward+backward"),
                                                                   ("eager", "optimizer step")]
    for r in report["results"]:
        assert r["ms_min"] <= r["ms_per_iter"] <= r["ms_max"]
        assert abs(r["tokens_per_sec"] - 2 * 16 / (r["ms_per_iter"] / 1000)) < 1e-6 * r["tokens_per_sec"]
        assert r["mfu"] is None  # a CPU has no known peak: no made-up figure
    assert "optimizer step" in result.stdout


@pytest.mark.slow
def test_benches_the_modern_recipe_and_profiles(tmp_path):
    out = tmp_path / "bench.json"
    shape = ["--vocab_size=96", "--n_layer=1", "--n_head=2", "--n_embd=32", "--batch_size=2", "--block_size=16"]
    result = bench("config/train_gpt2_modern.py", *shape, "--modes=eager", "--warmup=1", "--steps=1", "--repeats=1",
                   "--muon_dtype=float32", "--muon_weight_decay=0.1", "--muon_cautious_wd=True",
                   f"--profile={tmp_path / 'prof'}", f"--out_file={out}")
    assert result.returncode == 0, result.stderr
    assert "Muon orthogonalises in float32" in result.stdout  # whatever this CPU's bfloat16 is
    report = json.loads(out.read_text())
    assert report["config"]["optimizer"] == "muon" and report["config"]["rope"]  # from the file
    assert report["config"]["muon_cautious_wd"]  # a flag
    modern = GPTConfig(vocab_size=96, n_layer=1, n_head=2, n_embd=32, block_size=16, rope=True, norm="rmsnorm",
                       qk_norm=True, mlp_act="relu2", tie_embeddings=False, zero_init_proj=True, logit_softcap=15.0)
    assert report["params"] == GPT(modern).num_params(non_embedding=False)  # its own head, no wpe
    # the profile: a table of the ops that took the most time, and a trace that Perfetto reads
    assert "Self CPU time total" in result.stdout and "aten::mm" in result.stdout
    trace = json.load(gzip.open(tmp_path / "prof" / "trace-eager.json.gz"))
    assert any(e.get("name") == "Optimizer.step#Muon.step" for e in trace["traceEvents"])
    assert sorted(p.name for p in (tmp_path / "prof").iterdir()) == ["trace-eager.json.gz"]


@pytest.mark.slow
def test_a_preset_gives_the_shape_and_flags_win_over_it(tmp_path):
    out = tmp_path / "bench.json"
    # config/train_gpt2.py sets GPT-2 124M's shape: the preset wins over the file, the flag over the preset
    result = bench("config/train_gpt2.py", "--preset=gpt2-medium", "--n_layer=1", "--vocab_size=64", "--block_size=8",
                   "--batch_size=1", "--modes=eager", "--warmup=0", "--steps=1", "--repeats=1", f"--out_file={out}")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [report["config"][k] for k in ("n_layer", "n_head", "n_embd")] == [1, 16, 1024]
    shape = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=16, n_embd=1024)
    assert report["params"] == GPT(shape).num_params(non_embedding=False)


@pytest.mark.slow
def test_bad_arguments():
    result = bench("--modes=eager,jit", "--n_layer=1", "--steps=1")
    assert result.returncode != 0 and "unknown mode 'jit'" in result.stderr
    result = bench("--out_dir=x")
    assert result.returncode != 0 and "unknown config key 'out_dir'" in result.stderr
    result = bench("--device=gpu")
    assert result.returncode != 0 and "device='gpu' is not a device" in result.stderr
    result = bench("--dtype=fp8")
    assert result.returncode != 0 and "dtype='fp8': use auto, float32, bfloat16, float16" in result.stderr
    for args, message in [(["--preset=gpt2-xxl"], "preset='gpt2-xxl': choose one of gpt2, gpt2-medium"),
                          (["--optimizer=sgd"], "optimizer='sgd': use adamw or muon"),
                          (["--muon_dtype=fp16"], "muon_dtype='fp16': use auto, float32 or bfloat16"),
                          (["--norm=batchnorm"], "norm='batchnorm': choose one of layernorm, rmsnorm"),
                          (["--device=cpu", "--max_batch=True"], "max_batch finds what fits in a GPU's memory")]:
        result = bench(*args)
        assert result.returncode != 0 and result.stderr.startswith("error: ") and message in result.stderr, args
        assert result.stderr.strip().count("\n") == 0, result.stderr
