from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import train
from checkpoint import copy_shards, load_checkpoint, model_from_checkpoint, restore_shards, save_checkpoint, save_shards
from conftest import tiny_model
from optim import configure_optimizers


def tiny_checkpoint():
    model = tiny_model(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8)
    return {"model": model.state_dict(), "model_args": vars(model.config), "iter_num": 3}


def test_round_trip(tmp_path):
    ckpt = tiny_checkpoint()
    save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    model = model_from_checkpoint(load_checkpoint(str(tmp_path / "ckpt.pt")))
    for name, tensor in ckpt["model"].items():
        assert torch.equal(model.state_dict()[name], tensor)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(str(tmp_path / "nothing.pt"))
    save_checkpoint(tiny_checkpoint(), str(tmp_path / "ckpt.pt"))
    raw = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.pt is not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "cut.pt"))


class Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_arbitrary_pickles_are_refused(tmp_path, capsys):
    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt is not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "evil.pt"))
    assert "unpickled!" not in capsys.readouterr().out


@pytest.fixture
def one_rank():
    """A process group of this process alone, as torchrun --nproc_per_node=1 makes one."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def sharded_training(seed):
    """A tiny GPT sharded as train.py shards it, with Muon and AdamW, after one step."""
    model = tiny_model(seed, vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16, tie_embeddings=False)
    train.shard(model, SimpleNamespace(device_type="cpu", dtype="float32"))
    optimizer = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu", dict(lr=0.02, momentum=0.95,
                                                                                 weight_decay=0.0))
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(seed))
    model(x, x)[1].backward()
    optimizer.step()
    return model, optimizer


def test_sharded_round_trip(one_rank, tmp_path):
    model, optimizer = sharded_training(seed=0)
    path = str(tmp_path / "ckpt.pt")
    save_shards({"iter_num": 1, "model_args": vars(model.config)}, model, optimizer, path)
    copy_shards(path, str(tmp_path / "best.pt"))
    save_shards({"iter_num": 2, "model_args": vars(model.config)}, model, optimizer, path)  # over the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "ckpt"]  # no .tmp or .old left
    # read in one process as any checkpoint: the fields, and the weights whole
    ckpt = load_checkpoint(path)
    assert ckpt["iter_num"] == 2 and load_checkpoint(str(tmp_path / "best.pt"))["iter_num"] == 1
    assert all(torch.equal(ckpt["model"][name], t.full_tensor()) for name, t in model.state_dict().items())
    # another run's model and optimizer take the shards: the weights, and the moments (the same next step)
    other, other_optimizer = sharded_training(seed=1)
    restore_shards(path, other, other_optimizer)
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(2))
    for m, opt in ((model, optimizer), (other, other_optimizer)):
        opt.zero_grad()
        m(x, x)[1].backward()
        opt.step()
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a.full_tensor(), b.full_tensor()), name
