import pytest
import torch

from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from conftest import tiny_model


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
