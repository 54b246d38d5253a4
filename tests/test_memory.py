"""memory.py's estimate against what a CPU measures: the parameters, gradients and optimizer state
exactly, one process and FSDP's shards over 2 ranks; the activations against what autograd saves."""

import json
import os
import textwrap

import pytest
import torch

import memory
from conftest import REPO, TORCHRUN, run
from model import GPT, GPTConfig
from optim import WeightAverage, configure_optimizers

SHAPE = dict(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0)


def held(model, optimizer):
    """Bytes of this rank's weights, gradients and optimizer state: its shards under FSDP."""
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731 (a DTensor's own part)
    size = lambda tensors: sum(local(t).numel() * local(t).element_size() for t in tensors)  # noqa: E731
    return dict(weights=size(model.parameters()), gradients=size(p.grad for p in model.parameters()),
                optimizer=size(t for state in optimizer.state_dict()["state"].values() for t in state.values()
                               if torch.is_tensor(t) and t.dim() > 0))


def one_step(model, optimizer):
    x = torch.randint(0, 65, (2, 32))
    _, loss = model(x, x)
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("muon, ema", [(False, False), (True, False), (True, True)])
def test_weights_gradients_and_optimizer_state_are_what_one_process_holds(muon, ema):
    config = GPTConfig(**SHAPE, tie_embeddings=not muon)
    model = GPT(config)
    optimizer = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu",
                                     dict(lr=0.02, momentum=0.95, weight_decay=0.0) if muon else None)
    one_step(model, optimizer)
    if ema:
        WeightAverage(optimizer, 0.99).update()
    estimated = memory.estimate(config, batch_size=2, muon=muon, ema=ema)
    assert held(model, optimizer) == {k: estimated[k] for k in ("weights", "gradients", "optimizer")}


@pytest.mark.parametrize("changes", [{}, dict(dropout=0.2), dict(vocab_size=1000), dict(n_layer=4, n_embd=128),
                                     dict(activation_checkpointing=True),
                                     dict(n_layer=4, activation_checkpointing=True)])
def test_activations_are_what_autograd_saves(changes):
    checkpointing = changes.get("activation_checkpointing", False)
    config = GPTConfig(**{**SHAPE, **{k: v for k, v in changes.items() if k != "activation_checkpointing"}})
    model = GPT(config).train()
    model.activation_checkpointing = checkpointing
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved, seen = [0], set()

    def pack(t):  # every tensor kept for the backward pass, once, but the parameters
        key = t.untyped_storage().data_ptr()
        if key not in params and key not in seen:
            seen.add(key)
            saved[0] += t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, config.vocab_size, (4, 32))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, x)
    if checkpointing:  # and one block's, recomputed in the backward pass
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.transformer.h[0](torch.randn(4, 32, config.n_embd))
    logits_grad = 4 * 32 * config.vocab_size * 4  # the float32 gradient of the logits, at the loss
    estimated = memory.estimate(config, batch_size=4, activation_checkpointing=checkpointing)["activations"]
    assert estimated == pytest.approx(saved[0] + logits_grad, rel=0.1)


SHARDED = """
import json, sys
import torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
from types import SimpleNamespace
import train
from model import GPT, GPTConfig
from optim import configure_optimizers
from test_memory import held, one_step
dist.init_process_group("gloo")
model = GPT(GPTConfig(**{shape!r}))
train.shard(model, SimpleNamespace(device_type="cpu", dtype="float32"))
optimizer = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu")
one_step(model, optimizer)
with open(f"rank{{dist.get_rank()}}.json", "w") as f:
    json.dump(held(model, optimizer), f)
dist.destroy_process_group()
"""


@pytest.mark.ddp
def test_each_fsdp_rank_holds_its_share(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(textwrap.dedent(SHARDED.format(repo=str(REPO), shape=SHAPE)))
    run(str(script), launcher=TORCHRUN, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    estimated = memory.estimate(GPTConfig(**SHAPE), batch_size=2, world_size=2, fsdp=True)
    whole = memory.estimate(GPTConfig(**SHAPE), batch_size=2)
    for part in ("weights", "gradients", "optimizer"):
        # each rank its rows of every parameter, dim 0 padded to an even split: about half
        assert max(rank[part] for rank in ranks) == estimated[part]
        assert 0.5 <= estimated[part] / whole[part] < 0.52


def test_the_batch_sizes_that_fit_are_those_whose_estimate_fits():
    config = GPTConfig(**SHAPE)
    settings = dict(fsdp=False, muon=False, half=False, activation_checkpointing=False)
    need = {b: sum(memory.estimate(config, b).values()) for b in (1, 2, 4, 8)}
    assert memory.fitting_batch_sizes(config, [1, 2, 4, 8], 1, capacity=need[4] / 0.9 + 1, **settings) == [4, 2, 1]
    assert memory.fitting_batch_sizes(config, [8, 1], 1, capacity=need[1] / 0.9 - 1, **settings) == []


def test_a_gpu_too_small_is_told_what_would_fit():
    xl = GPTConfig(vocab_size=50304, block_size=1024, n_layer=48, n_head=25, n_embd=1600, dropout=0.0)
    gpt2 = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)
    settings = dict(fsdp=False, muon=False, half=True, activation_checkpointing=False)
    assert memory.what_fits(gpt2, 16, 1, capacity=80e9, **settings) is None
    assert memory.what_fits(gpt2, 64, 1, capacity=24e9, **settings).endswith(
        ": --batch_size=32 --activation_checkpointing=True fit (set total_batch_size to keep the tokens a step)")
    four = memory.what_fits(xl, 1, 4, capacity=24e9, **settings)
    assert four.startswith("this run needs about 28.4 GB a GPU, more than the 21.6 GB it can use of 24.0 GB: "
                           "--fsdp=True --activation_checkpointing=True shard it over the 4 GPUs")
    assert memory.what_fits(xl, 1, 1, capacity=24e9, **settings).endswith("--fsdp=True over more GPUs")
