import json
import struct

import numpy as np
import pytest
import torch

import data

# -----------------------------------------------------------------------------
# the shard format

def test_shard_round_trip_has_the_llmc_layout(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 2**16, size=1000).astype(np.uint16)
    path = tmp_path / "x_train_000000.bin"
    data.write_shard(path, tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * 1000
    assert struct.unpack("<3i", raw[:12]) == (20240520, 1, 1000)
    assert raw[12:1024] == bytes(1012)
    assert raw[1024:] == tokens.astype("<u2").tobytes()
    read = data.read_shard(path)
    assert isinstance(read, np.memmap) and read.dtype == np.uint16
    np.testing.assert_array_equal(read, tokens)
    assert not list(tmp_path.glob("*.tmp"))


def test_shard_written_by_another_project_is_read(tmp_path):
    # how llm.c's and modded-nanogpt's scripts write a shard
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = 20240520, 1, 3
    path = tmp_path / "fineweb_val_000000.bin"
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.array([50256, 15496, 995], dtype=np.uint16).tobytes())
    assert data.read_shard(path).tolist() == [50256, 15496, 995]


def test_write_shard_accepts_python_ints_and_replaces(tmp_path):
    path = tmp_path / "s.bin"
    data.write_shard(path, [1, 2, 3])
    data.write_shard(path, [65535, 0])
    assert data.read_shard(path).tolist() == [65535, 0]


@pytest.mark.parametrize("bad", [[65536], [-1], [1, 2, 70000]])
def test_write_shard_refuses_ids_that_would_wrap(tmp_path, bad):
    path = tmp_path / "s.bin"
    with pytest.raises(ValueError, match="65535") as e:
        data.write_shard(path, bad)
    assert str(path) in str(e.value)
    assert not list(tmp_path.iterdir())


def test_vocab_larger_than_uint16_is_refused(tmp_path):
    data.check_vocab_size(65536)
    with pytest.raises(ValueError, match="vocab_size 65537"):
        data.check_vocab_size(65537)
    with pytest.raises(ValueError, match="vocab_size 100277"):
        data.write_meta(tmp_path, {"tokenizer": "gpt2", "vocab_size": 100277})
    assert not (tmp_path / "meta.json").exists()


def _shard(tmp_path, n=100):
    path = tmp_path / "d_train_000000.bin"
    data.write_shard(path, np.arange(n))
    return path


def test_truncated_shard_is_a_clear_error(tmp_path):
    path = _shard(tmp_path)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        data.read_shard(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("count", [101, 99, -5])
def test_corrupt_count_is_a_clear_error(tmp_path, count):
    path = _shard(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[8:12] = struct.pack("<i", count)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"header says {count} tokens") as e:
        data.read_shard(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("content, message", [
    (b"just some text\n" * 100, "magic number"),
    (b"tiny", "shorter than the 1024-byte header"),
    (struct.pack("<3i", 20240520, 2, 0) + bytes(1012), "version 2 is not supported"),
    (struct.pack("<3i", 20240520, 1, 0) + bytes(1012), None),
])
def test_foreign_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "foreign_train_000000.bin"
    path.write_bytes(content)
    if message is None:  # an empty shard is valid
        assert len(data.read_shard(path)) == 0
        return
    with pytest.raises(ValueError, match=message) as e:
        data.read_shard(path)
    assert str(path) in str(e.value)


# -----------------------------------------------------------------------------
# metadata

def test_meta_round_trip_and_absence(tmp_path):
    assert data.read_meta(tmp_path) is None
    meta = {"tokenizer": "char", "vocab_size": 3, "chars": ["\n", "a", "b"], "train_tokens": 10, "val_tokens": 2}
    data.write_meta(tmp_path, meta)
    assert data.read_meta(tmp_path) == meta
    assert json.loads((tmp_path / "meta.json").read_text()) == meta
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json"):
        data.read_meta(tmp_path)


def test_a_bpe_vocabulary_is_a_file_that_meta_json_names(tmp_path):
    """meta["vocab"] (the ranks) goes to its own file and comes back, so that a checkpoint carries it."""
    meta = {"tokenizer": "bpe", "vocab_size": 263, "pattern": "gpt4", "vocab": "YQ== 0\nYg== 1\n", "train_tokens": 5}
    data.write_meta(tmp_path, meta)
    assert json.loads((tmp_path / "meta.json").read_text()) == {
        "tokenizer": "bpe", "vocab_size": 263, "pattern": "gpt4", "train_tokens": 5, "vocab_file": "vocab.tiktoken"}
    assert (tmp_path / "vocab.tiktoken").read_text() == meta["vocab"]
    assert data.read_meta(tmp_path) == {**meta, "vocab_file": "vocab.tiktoken"}
    data.write_meta(tmp_path, data.read_meta(tmp_path))  # what read_meta gives is written back the same
    assert data.read_meta(tmp_path) == {**meta, "vocab_file": "vocab.tiktoken"}
    (tmp_path / "vocab.tiktoken").unlink()
    with pytest.raises(FileNotFoundError) as e:
        data.read_meta(tmp_path)
    assert str(e.value) == (f"cannot read {tmp_path / 'vocab.tiktoken'}, the vocabulary that {tmp_path / 'meta.json'} "
                            f"names: No such file or directory")


# -----------------------------------------------------------------------------
# the loader

def _dataset(tmp_path, train=(5000, 3000), val=(1000,)):
    """Shards whose tokens are their position within the split, so a row tells where it came from."""
    start = 0
    for split, lengths in (("train", train), ("val", val)):
        for i, n in enumerate(lengths):
            data.write_shard(tmp_path / data.shard_name("t", split, i), (np.arange(n) + start) % 65536)
            start += n
    return tmp_path


def _batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def test_train_batches_are_windows_of_one_shard(tmp_path):
    loader = data.ShardLoader(_dataset(tmp_path), "train", batch_size=64, block_size=16)
    seen = set()
    for x, y in _batches(loader, 20):
        assert x.shape == y.shape == (64, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        # consecutive tokens of a single shard: shard 0 holds 0..4999, shard 1 holds 5000..7999
        assert torch.equal(y[:, -1] - x[:, 0], torch.full((64,), 16))
        seen |= set((x[:, 0] >= 5000).tolist())
        assert (y[:, -1] < 8000).all() and ((x[:, 0] >= 5000) | (y[:, -1] < 5000)).all()
    assert seen == {False, True}  # both shards are drawn from


def test_train_batches_depend_on_seed_and_index_only(tmp_path):
    a = _batches(data.ShardLoader(_dataset(tmp_path), "train", 4, 8, seed=1), 5)
    b = _batches(data.ShardLoader(tmp_path, "train", 4, 8, seed=1), 5)
    c = _batches(data.ShardLoader(tmp_path, "train", 4, 8, seed=2), 5)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert not all(torch.equal(x1, x3) for (x1, _), (x3, _) in zip(a, c))


def test_resumed_loader_sees_the_same_batches(tmp_path):
    _dataset(tmp_path)
    for split in ("train", "val"):
        straight = _batches(data.ShardLoader(tmp_path, split, 8, 32), 10)
        first = data.ShardLoader(tmp_path, split, 8, 32)
        _batches(first, 4)
        state = json.loads(json.dumps(first.state_dict()))  # it goes into a checkpoint
        resumed = data.ShardLoader(tmp_path, split, 8, 32)
        resumed.load_state_dict(state)
        for (x, y), (rx, ry) in zip(straight[4:], _batches(resumed, 6)):
            assert torch.equal(x, rx) and torch.equal(y, ry)


@pytest.mark.parametrize("split", ["train", "val"])
def test_ranks_split_the_global_batches(tmp_path, split):
    _dataset(tmp_path)
    single = _batches(data.ShardLoader(tmp_path, split, 4, 16), 8)
    for rank in range(2):
        loader = data.ShardLoader(tmp_path, split, 4, 16, rank=rank, world_size=2)
        for k, (x, y) in enumerate(_batches(loader, 4)):
            assert torch.equal(x, single[rank + 2 * k][0]) and torch.equal(y, single[rank + 2 * k][1])
    # a resumed run may change its world size: 2 ranks that drew 3 batches each have used 0..5
    two = data.ShardLoader(tmp_path, split, 4, 16, rank=1, world_size=2)
    _batches(two, 3)
    one = data.ShardLoader(tmp_path, split, 4, 16)
    one.load_state_dict(two.state_dict())
    assert torch.equal(one.next_batch()[0], single[6][0])


def test_val_ranks_read_disjoint_windows(tmp_path):
    loader0 = data.ShardLoader(_dataset(tmp_path, val=(2000,)), "val", 4, 16, rank=0, world_size=2)
    loader1 = data.ShardLoader(tmp_path, "val", 4, 16, rank=1, world_size=2)
    starts0 = {int(s) for x, _ in _batches(loader0, 10) for s in x[:, 0]}
    starts1 = {int(s) for x, _ in _batches(loader1, 10) for s in x[:, 0]}
    assert len(starts0) == len(starts1) == 40 and not starts0 & starts1


def test_val_is_sequential_fixed_and_wraps(tmp_path):
    _dataset(tmp_path, val=(100, 41))  # windows of 10: 9 in the first shard, 4 in the second
    offset = 8000
    loader = data.ShardLoader(tmp_path, "val", batch_size=5, block_size=10)
    xs = torch.cat([x for x, _ in _batches(loader, 13)])
    expected = [offset + 10 * w for w in range(9)] + [offset + 100 + 10 * w for w in range(4)]
    assert xs[:, 0].tolist() == (expected * 5)[:65]
    loader.reset()
    again = torch.cat([x for x, _ in _batches(loader, 13)])
    assert torch.equal(xs, again)


def test_loader_memory_is_not_held_between_batches(tmp_path):
    loader = data.ShardLoader(_dataset(tmp_path), "train", 4, 16)
    loader.next_batch()
    # shards are mapped per batch, so pages read long ago are not kept resident by an open map
    assert not any(isinstance(v, np.memmap) for v in vars(loader).values())


def test_llmc_named_shards_without_meta(tmp_path):
    for split, i in (("val", 0), ("train", 1), ("train", 2)):
        data.write_shard(tmp_path / f"fineweb_{split}_{i:06d}.bin", np.arange(500))
    assert data.read_meta(tmp_path) is None
    assert len(data.ShardLoader(tmp_path, "train", 2, 8).paths) == 2
    assert len(data.ShardLoader(tmp_path, "val", 2, 8).paths) == 1


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset at .*: make one with prepare_shakespeare.py") as e:
        data.ShardLoader(tmp_path / "nope", "train", 2, 8)
    assert "nope" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"no train shards .* in .*"):
        data.ShardLoader(tmp_path, "train", 2, 8)
    data.write_shard(tmp_path / "d_train_000000.bin", np.arange(8))
    with pytest.raises(FileNotFoundError, match="no val shards"):
        data.ShardLoader(tmp_path, "val", 2, 8)
    with pytest.raises(ValueError, match=r"shorter than block_size \+ 1 = 9 tokens"):
        data.ShardLoader(tmp_path, "train", 2, 8)
    assert data.ShardLoader(tmp_path, "train", 2, 7).next_batch()[0].shape == (2, 7)
    bad = tmp_path / "d_train_000001.bin"
    bad.write_bytes(b"garbage" * 200)
    with pytest.raises(ValueError, match="magic") as e:
        data.ShardLoader(tmp_path, "train", 2, 4)
    assert str(bad) in str(e.value)


def test_a_whole_split_has_every_target_once_whatever_the_batch_and_the_ranks(tmp_path):
    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 1000, n) for n in (50, 33, 7, 17)]  # 7: shorter than a window
    for i, tokens in enumerate(shards):
        data.write_shard(tmp_path / data.shard_name("t", "val", i), tokens)
    # every (shard, position) that has a token before it, with the token it must predict
    want = sorted((s, p, int(t[p])) for s, t in enumerate(shards) for p in range(1, len(t)))
    for block_size, batch_size, world_size in [(4, 1, 1), (8, 3, 2), (16, 2, 3), (64, 5, 1)]:
        got = []
        for rank in range(world_size):
            for x, y in data.whole_split_batches(tmp_path, "val", batch_size, block_size, rank, world_size):
                assert x.shape == y.shape and x.shape[0] <= batch_size and x.shape[1] == block_size
                for row_x, row_y in zip(x, y):
                    for j in np.flatnonzero(row_y >= 0):
                        # the target follows its context in one shard: find where
                        context = list(row_x[:j + 1])
                        s, p = next((s, p) for s, t in enumerate(shards) for p in range(j + 1, len(t))
                                    if list(t[p - j - 1:p]) == context and t[p] == row_y[j])
                        got.append((s, p, int(row_y[j])))
        assert sorted(got) == want, (block_size, batch_size, world_size)


def _chat_dataset(tmp_path, length=200, every=10):
    """One shard per split whose token i is i: conversations start every `every` tokens, and the
    last 4 tokens of each are the assistant's (mask 1)."""
    for split in ("train", "val"):
        shard = tmp_path / f"chat_{split}_000000.bin"
        data.write_shard(shard, np.arange(length))
        data.write_array(data.mask_path(shard), (np.arange(length) % every >= every - 4).astype(np.uint8))
        data.write_array(data.starts_path(shard), np.arange(0, length, every, dtype=np.int64))
    return tmp_path


def test_chat_rows_start_at_conversations_and_count_only_the_assistant(tmp_path):
    loader = data.ShardLoader(_chat_dataset(tmp_path), "train", 8, 16)
    assert loader.chat and loader.first_window[-1] == 19  # 190 + 16 reaches past the end: not a start
    for x, y in _batches(loader, 20):
        assert (x[:, 0] % 10 == 0).all()  # token i is i: every row starts a conversation
        targets = x + 1  # what y is before masking
        assert torch.equal(y, torch.where(targets % 10 >= 6, targets, -1))
    val = data.ShardLoader(tmp_path, "val", 8, 16)
    firsts = torch.cat([x[:, 0] for x, _ in _batches(val, 3)])
    assert firsts.tolist() == [10 * (i % 19) for i in range(24)]  # every conversation once, in order


def test_chat_side_files_are_checked(tmp_path):
    _chat_dataset(tmp_path)
    shard = tmp_path / "chat_train_000000.bin"
    data.write_array(data.mask_path(shard), np.ones(199, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"mask.npy: expected 200 uint8, got uint8 of shape \(199,\)"):
        data.ShardLoader(tmp_path, "train", 2, 8)
    data.write_shard(tmp_path / "chat_train_000001.bin", np.arange(100))
    with pytest.raises(ValueError, match="some train shards have a .mask.npy beside them and some do not"):
        data.ShardLoader(tmp_path, "train", 2, 8)
    with pytest.raises(ValueError, match="no conversation that starts block_size \\+ 1 = 201 tokens before"):
        data.ShardLoader(tmp_path, "val", 2, 200)


def test_a_chat_split_is_read_whole_a_conversation_a_row(tmp_path):
    """Every target that the masks count, once, each in a row that starts with its conversation."""
    _chat_dataset(tmp_path)
    counted = []
    for x, y in data.whole_split_batches(tmp_path, "val", 3, 16):
        assert (x[:, 0] % 10 == 0).all()  # token i is i: each row starts a conversation
        counted += y[y >= 0].tolist()
    assert sorted(counted) == [i for i in range(200) if i % 10 >= 6]
