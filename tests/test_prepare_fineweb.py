import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data
import prepare_fineweb
import prepare_shakespeare
import tokenizer
from bpe import train_bpe

SHARD = 1_300  # the sample's 22,074 tokens make 17 shards
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """500 documents in 5 parquet files: 6 real FineWeb documents, then paragraphs of Tiny Shakespeare."""
    web = [json.loads(line)["text"] for line in (FIXTURES / "fineweb_docs.jsonl").read_text().splitlines()]
    paragraphs = prepare_shakespeare.SHIPPED.read_text().split("\n\n")[:494]
    texts = web + paragraphs
    directory = tmp_path_factory.mktemp("sample")
    files = []
    for i in range(5):
        files.append(str(directory / f"batch_{i}.parquet"))
        pq.write_table(pa.table({"id": list(range(i * 100, i * 100 + 100)), "text": texts[i * 100:i * 100 + 100]}),
                       files[-1])
    return files, texts


def _stream(texts):
    """What the shards must hold: every document as <|endoftext|> and its tokens."""
    enc = tokenizer.gpt2_encoding()
    return np.concatenate([[50256] + enc.encode_ordinary(t) for t in texts]).astype(np.uint16)


@pytest.fixture(scope="module")
def expected(sample):
    return _stream(sample[1])


def _run(files, out_dir, *extra):
    prepare_fineweb.main(["--data_files", *files, "--out_dir", str(out_dir), "--shard_size", str(SHARD), *extra])


def _files(out_dir):
    return {p.name: p.read_bytes() for p in sorted(Path(out_dir).iterdir())}


def _tokens(out_dir):
    return np.concatenate([data.read_shard(p) for p in sorted(Path(out_dir).glob("*.bin"), key=lambda p: p.name[-10:])])


@pytest.fixture(scope="module")
def reference(sample, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("reference")
    _run(sample[0], out_dir, "--num_proc", "1")
    return _files(out_dir)


def test_shards_hold_the_document_stream(reference, expected, tmp_path):
    names = [n for n in reference if n.endswith(".bin")]
    assert names[-1] == "fineweb_val_000000.bin"
    assert sorted(names[:-1]) == [f"fineweb_train_{i:06d}.bin" for i in range(1, 17)]
    for name, raw in reference.items():
        (tmp_path / name).write_bytes(raw)
    np.testing.assert_array_equal(_tokens(tmp_path), expected)
    assert all(len(data.read_shard(tmp_path / n)) == SHARD for n in names if not n.endswith("16.bin"))
    meta = json.loads(reference["meta.json"])
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257
    assert (meta["val_tokens"], meta["train_tokens"]) == (SHARD, len(expected) - SHARD)
    assert meta["documents"] == 500 and meta["shards"] == 17
    assert data.ShardLoader(tmp_path, "val", 2, 64).next_batch()[0][0, 0] == 50256


def test_any_number_of_processes_gives_the_same_shards(sample, reference, tmp_path):
    _run(sample[0], tmp_path, "--num_proc", "2")
    assert _files(tmp_path) == reference


def test_interrupted_run_resumes_to_the_same_result(sample, reference, tmp_path, monkeypatch):
    write_shard = data.write_shard
    written = []

    def crash_after_five(path, tokens):
        if len(written) == 5:
            raise KeyboardInterrupt  # e.g. Ctrl-C while writing the sixth shard
        write_shard(path, tokens)
        written.append(Path(path).name)
    monkeypatch.setattr(data, "write_shard", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        _run(sample[0], tmp_path, "--num_proc", "2")
    assert len(list(tmp_path.glob("*.bin"))) == 5 and not (tmp_path / "meta.json").exists()

    # what else a crash can leave: a temp file, a shard cut short
    (tmp_path / "fineweb_train_000005.bin.tmp").write_bytes(b"partial")
    last = tmp_path / "fineweb_train_000004.bin"
    last.write_bytes(last.read_bytes()[:-100])
    written.clear()
    def spy(path, tokens):
        written.append(Path(path).name)
        write_shard(path, tokens)
    monkeypatch.setattr(data, "write_shard", spy)
    _run(sample[0], tmp_path, "--num_proc", "2")
    assert _files(tmp_path) == reference
    assert written == [f"fineweb_train_{i:06d}.bin" for i in range(4, 17)]  # the four good shards were kept


def test_resume_refuses_shards_from_other_data(sample, reference, tmp_path):
    for name, raw in reference.items():
        (tmp_path / name).write_bytes(raw)
    other = tmp_path / "fineweb_train_000003.bin"
    tokens = np.array(data.read_shard(other))
    tokens[7] += 1
    data.write_shard(other, tokens)
    with pytest.raises(SystemExit) as e:
        _run(sample[0], tmp_path, "--num_proc", "1")
    assert str(other) in str(e.value.code) and "differs" in str(e.value.code)


def test_max_tokens_stops_early(sample, expected, tmp_path):
    _run(sample[0], tmp_path, "--num_proc", "2", "--max_tokens", "3120")
    assert sorted(p.name for p in tmp_path.glob("*.bin")) == [
        "fineweb_train_000001.bin", "fineweb_train_000002.bin", "fineweb_val_000000.bin"]
    np.testing.assert_array_equal(_tokens(tmp_path), expected[:3120])
    assert data.read_meta(tmp_path)["train_tokens"] == 1820


def test_jsonl_and_txt_files(sample, tmp_path):
    texts = sample[1][:6]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts)))
    prepare_fineweb.main(["--data_files", str(jsonl), "--text_column", "body", "--out_dir", str(tmp_path / "j"),
                          "--num_proc", "1"])
    np.testing.assert_array_equal(data.read_shard(tmp_path / "j" / "fineweb_val_000000.bin"), _stream(texts))

    # one .txt file is one document, blank lines and all
    txts = []
    for i, t in enumerate(texts[:3]):
        txts.append(tmp_path / f"doc{i}.txt")
        txts[-1].write_text(t + "\n\nlast line\n")
    prepare_fineweb.main(["--data_files", *map(str, txts), "--out_dir", str(tmp_path / "t"), "--num_proc", "1"])
    np.testing.assert_array_equal(data.read_shard(tmp_path / "t" / "fineweb_val_000000.bin"),
                                  _stream([t.read_text() for t in txts]))


def test_documents_without_text_are_skipped_and_counted(sample, tmp_path, capsys):
    texts = sample[1][:8]
    with_nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": [texts[0], None, *texts[1:5], None, None, *texts[5:]]}), with_nulls)
    _run([str(with_nulls)], tmp_path / "out", "--num_proc", "2")
    np.testing.assert_array_equal(_tokens(tmp_path / "out"), _stream(texts))
    meta = data.read_meta(tmp_path / "out")
    assert (meta["documents"], meta["skipped_documents"]) == (8, 3)
    assert "skipped 3 documents whose text is missing (null)" in capsys.readouterr().out


def test_user_errors_are_one_line(sample, tmp_path):
    for argv, message in [
        (["--data_files", *sample[0], "--text_column", "body"], "no column 'body' (it has id, text)"),
        (["--data_files", *sample[0], "--text_column", "id"], "document 0: its text is 0 (int), not a string"),
        (["--data_files", sample[0][0], str(tmp_path / "x.csv")], "x.csv"),
        (["--data_files", *sample[0], "--vocab_file", str(tmp_path / "none.tiktoken")], "none.tiktoken"),
    ]:
        with pytest.raises(SystemExit) as e:
            prepare_fineweb.main([*argv, "--out_dir", str(tmp_path / "out"), "--num_proc", "1"])
        assert message in str(e.value.code) and "\n" not in str(e.value.code)


@pytest.fixture(scope="module")
def bpe_reference(sample, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bpe")
    _run(sample[0], out_dir, "--num_proc", "1", "--tokenizer", "bpe", "--vocab_size", "400")
    return _files(out_dir)


def test_bpe_shards_are_the_same_for_any_number_of_processes(sample, bpe_reference, tmp_path):
    _run(sample[0], tmp_path, "--num_proc", "2", "--tokenizer", "bpe", "--vocab_size", "400")
    assert _files(tmp_path) == bpe_reference
    meta = data.read_meta(tmp_path)
    assert (meta["tokenizer"], meta["vocab_size"], meta["documents"]) == ("bpe", 400, 500)
    bpe = tokenizer.get_tokenizer(meta)
    stream = np.concatenate([[bpe.eot_token] + bpe.encode(t) for t in sample[1]])
    np.testing.assert_array_equal(_tokens(tmp_path), stream)
    # a dataset made with its tokenizer (--tokenizer_from) holds the same shards
    _run(sample[0], tmp_path / "again", "--num_proc", "2", "--tokenizer_from", str(tmp_path))
    assert _files(tmp_path / "again") == bpe_reference


@pytest.mark.parametrize("guess", [1000, 0.01])  # far too many documents held out, then far too few
def test_the_vocabulary_never_learns_from_val_documents(sample, tmp_path, monkeypatch, capsys, guess):
    monkeypatch.setattr(prepare_fineweb, "GUESSED_BYTES_PER_TOKEN", guess)
    _run(sample[0], tmp_path, "--num_proc", "1", "--tokenizer", "bpe", "--vocab_size", "400")
    held_out = int(capsys.readouterr().out.split("documents after the first ")[1].split()[0])
    bpe = tokenizer.get_tokenizer(data.read_meta(tmp_path))
    val_documents = np.count_nonzero(data.read_shard(tmp_path / "fineweb_val_000000.bin") == bpe.eot_token)
    assert 1 < val_documents <= held_out < 100
    learned = train_bpe(sample[1][held_out:], 400)
    assert bpe.enc._mergeable_ranks == learned.enc._mergeable_ranks


def test_bpe_errors_are_one_line(sample, tmp_path):
    for argv, message in [
        (["--tokenizer", "bpe", "--vocab_size", "70000"], "--vocab_size 70000 is too large"),
        (["--tokenizer", "bpe", "--vocab_size", "400", "--shard_size", "10000000"],
         "the val shard (the first 10,000,000 tokens) takes every document, which leaves none to learn a vocabulary "
         "from: lower --shard_size"),
        (["--tokenizer_from", str(tmp_path)], f"--tokenizer_from {tmp_path}: no prepared dataset (no meta.json) at "
         f"{tmp_path}, so no tokenizer to take: prepare that dataset first"),
    ]:
        with pytest.raises(SystemExit) as e:
            prepare_fineweb.main(["--data_files", *sample[0], "--out_dir", str(tmp_path / "out"), "--num_proc", "1",
                                  *argv])
        assert message in str(e.value.code) and "\n" not in str(e.value.code)


@pytest.mark.slow
def test_spawned_workers(sample, reference, tmp_path):
    # macOS and Windows start workers by spawning: they must import, not inherit, what they run
    script = tmp_path / "run.py"
    script.write_text(
        "import multiprocessing, sys\n"
        "import prepare_fineweb\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.set_start_method('spawn')\n"
        "    prepare_fineweb.main(sys.argv[1:])\n")
    out_dir = tmp_path / "out"
    repo = Path(prepare_fineweb.__file__).parent
    subprocess.run([sys.executable, str(script), "--data_files", *sample[0], "--out_dir", str(out_dir),
                    "--shard_size", str(SHARD), "--num_proc", "2"],
                   check=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True)
    assert _files(out_dir) == reference


@pytest.mark.slow
def test_ctrl_c_ends_the_run_at_once_and_keeps_what_is_whole(sample, tmp_path):
    # Ctrl-C reaches the whole process group. The run must end soon, with an error, no meta.json and only
    # whole shards: the workers ignore the signal, so the documents on their way still come back and the
    # main process, which waits for them, is not left waiting on a worker that died.
    texts = sample[1] * 40  # 880k tokens: still tokenizing when the signal comes
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out_dir = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(Path(prepare_fineweb.__file__)), "--data_files", str(source),
                             "--out_dir", str(out_dir), "--shard_size", str(SHARD), "--num_proc", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            # as at a terminal: a shell's background job (CI's, maybe) starts with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while len(list(out_dir.glob("*_train_*.bin"))) < 3:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)  # no hang
    assert proc.returncode != 0 and not (out_dir / "meta.json").exists()
    assert all(data.shard_length(p) == SHARD for p in out_dir.glob("*.bin"))  # only whole shards
