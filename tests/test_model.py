import itertools
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, SigmoidGELU, gelu, gpu_peak_flops, sample_token

transformers = pytest.importorskip("transformers")

SMALL_CONFIGS = [
    dict(vocab_size=97, block_size=16, n_layer=1, n_head=1, n_embd=8),
    dict(vocab_size=211, block_size=32, n_layer=2, n_head=4, n_embd=32),
    dict(vocab_size=50, block_size=24, n_layer=3, n_head=3, n_embd=48),
]


def hf_model(vocab_size, block_size, n_layer, n_head, n_embd):
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_layer=n_layer, n_head=n_head,
                                     n_embd=n_embd, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    # HF inits biases and LayerNorms to constants: randomise everything so a swapped tensor cannot hide
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def full_logits(model, idx):
    logits, _ = model(idx, torch.zeros_like(idx))
    return logits


@pytest.mark.parametrize("cfg", SMALL_CONFIGS)
def test_logits_match_transformers(tmp_path, cfg):
    hf = hf_model(**cfg)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, cfg["vocab_size"], (3, cfg["block_size"]))
    with torch.no_grad():
        torch.testing.assert_close(full_logits(ours, idx), hf(idx).logits, atol=1e-5, rtol=0)


def test_loads_hub_layout_and_pickle_free_bin(tmp_path):
    # The hub's gpt2 files come from GPT2Model (no "transformer." prefix); older ones are pytorch_model.bin.
    cfg = SMALL_CONFIGS[1]
    hf = hf_model(**cfg)
    hf.config.to_json_file(tmp_path / "config.json")
    torch.save(hf.transformer.state_dict(), tmp_path / "pytorch_model.bin")
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, cfg["vocab_size"], (2, cfg["block_size"]))
    with torch.no_grad():
        torch.testing.assert_close(full_logits(ours, idx), hf(idx).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg", SMALL_CONFIGS[1:])
def test_export_loads_in_transformers(tmp_path, cfg):
    torch.manual_seed(1)
    ours = GPT(GPTConfig(**cfg)).eval()
    ours.save_pretrained(str(tmp_path))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, cfg["vocab_size"], (2, cfg["block_size"]))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, full_logits(ours, idx), atol=1e-5, rtol=0)
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_from_pretrained_overrides(tmp_path):
    hf_model(**SMALL_CONFIGS[1]).save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path), dropout=0.2, block_size=8)
    assert model.config.dropout == 0.2 and model.config.block_size == 8
    assert model.transformer.wpe.weight.shape == (8, 32)
    with pytest.raises(ValueError, match="only dropout and block_size"):
        GPT.from_pretrained(str(tmp_path), n_layer=3)


def test_bad_pretrained_inputs(tmp_path):
    with pytest.raises(ValueError, match="neither a GPT-2 preset"):
        GPT.from_pretrained("gpt3")
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(str(tmp_path))
    hf = hf_model(**SMALL_CONFIGS[1])
    hf.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        GPT.from_pretrained(str(tmp_path))
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vocab_size"] += 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model.safetensors: transformer.wte.weight has shape"):
        GPT.from_pretrained(str(tmp_path))


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'gpt5'"):
        GPTConfig.from_preset("gpt5")


def test_causality():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 50, (1, 16))
    with torch.no_grad():
        before = full_logits(model, idx)
        for t in (0, 5, 15):
            changed = idx.clone()
            changed[0, t] = (changed[0, t] + 1) % 50
            after = full_logits(model, changed)
            torch.testing.assert_close(after[:, :t], before[:, :t], atol=0, rtol=0)
            assert not torch.allclose(after[:, t], before[:, t])


def reference_attention(attn, x):
    """Causal self-attention written out: scores, mask, softmax, weighted sum."""
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // attn.n_head)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
    return attn.c_proj(y)


def test_sdpa_matches_explicit_attention():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=4, n_embd=64)).eval()
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference_attention(attn, x), atol=1e-5, rtol=0)


def test_cpu_gelu_is_gpt2_tanh_gelu():
    # the hand-written backward is exact: checked against finite differences in float64
    x = (torch.randn(64, dtype=torch.float64) * 4).requires_grad_()
    assert torch.autograd.gradcheck(SigmoidGELU.apply, (x,))
    # and the float32 path the model takes on CPU agrees with tanh GELU, computed in float64
    x = torch.linspace(-12, 12, 10001, dtype=torch.float64, requires_grad=True)
    reference = F.gelu(x, approximate="tanh")
    (reference_grad,) = torch.autograd.grad(reference.sum(), x)
    x32 = x.detach().float().requires_grad_()
    ours = gelu(x32)
    assert ours.grad_fn.name() == "SigmoidGELUBackward"
    (ours_grad,) = torch.autograd.grad(ours.sum(), x32)
    torch.testing.assert_close(ours.double(), reference.detach(), atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(ours_grad.double(), reference_grad, atol=5e-6, rtol=1e-6)
    # no silently wrong second derivative: it is refused
    (grad,) = torch.autograd.grad(gelu(x32).sum(), x32, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|differentiate twice"):
        grad.sum().backward()


def test_activation_checkpointing_same_loss_and_grads():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=60, block_size=16, n_layer=3, n_head=2, n_embd=32, dropout=0.1))
    idx, targets = torch.randint(0, 60, (4, 16)), torch.randint(0, 60, (4, 16))

    def loss_and_grads(recompute):
        model.activation_checkpointing = recompute
        model.zero_grad()
        torch.manual_seed(42)  # the same dropout masks in both runs
        _, loss = model(idx, targets)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss_a, grads_a = loss_and_grads(False)
    loss_b, grads_b = loss_and_grads(True)
    torch.testing.assert_close(loss_b, loss_a, atol=0, rtol=0)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_dropout_off_in_eval():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.5))
    idx = torch.randint(0, 50, (2, 16))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(full_logits(model, idx), full_logits(model, idx), atol=0, rtol=0)
    model.train()
    with torch.no_grad():
        assert not torch.equal(full_logits(model, idx), full_logits(model, idx))


def test_forward_shapes_and_too_long_sequence():
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8))
    logits, loss = model(torch.zeros(2, 8, dtype=torch.long))
    assert logits.shape == (2, 1, 50) and loss is None
    targets = torch.full((2, 8), -1)
    targets[:, 0] = 3  # positions marked -1 are ignored
    logits, loss = model(torch.zeros(2, 8, dtype=torch.long), targets)
    expected = F.cross_entropy(logits[:, 0], targets[:, 0])
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="length 9 is longer than block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_init_loss_is_uniform():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1000, block_size=32, n_layer=4, n_head=4, n_embd=64))
    _, loss = model(torch.randint(0, 1000, (8, 32)), torch.randint(0, 1000, (8, 32)))
    assert abs(loss.item() - math.log(1000)) < 0.05


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=8, n_layer=8, n_head=4, n_embd=256))
    c_fc, c_proj = model.transformer.h[0].mlp.c_fc, model.transformer.h[0].mlp.c_proj
    assert abs(c_fc.weight.std().item() - 0.02) < 0.001
    assert abs(c_proj.weight.std().item() - 0.02 / 4) < 0.0005
    assert torch.count_nonzero(c_fc.bias) == 0


def test_gpt2_parameter_count_and_flops():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2", vocab_size=50257))
    assert model.num_params(non_embedding=False) == 124_439_808
    # 6 FLOPs per non-embedding parameter (wte counts: it is the LM head) plus attention, 12 * L * C * T
    assert model.flops_per_token(1024) == 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024


def test_weight_decay_groups():
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16))
    decay, no_decay = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu").param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_mfu_peaks():
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_peak_flops("NVIDIA A10G") is None
    assert gpu_peak_flops("NVIDIA L4") == 121e12
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8))
    assert model.estimate_mfu(1e6, gpu_peak_flops("Some Future GPU")) is None
    assert model.estimate_mfu(1e6, 1e15) == pytest.approx(model.flops_per_token() * 1e6 / 1e15)


# ----------------------------------------------------------------------------- generation

def tiny_model(block_size=16, vocab_size=65, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)).eval()


def generated(model, idx, n, **kwargs):
    return torch.stack(list(model.generate(idx, n, **kwargs)), dim=1)


@pytest.mark.parametrize("prompt_len", [1, 5, 20])  # 20: the prompt alone is longer than block_size 16
def test_cache_matches_no_cache_past_block_size(prompt_len):
    model = tiny_model()
    idx = torch.randint(0, 65, (3, prompt_len))
    for kwargs in (dict(temperature=0), dict(temperature=1.0, seed=3), dict(temperature=0.7, top_k=5, top_p=0.9, seed=5)):
        with_cache = generated(model, idx, 40, kv_cache=True, **kwargs)
        without = generated(model, idx, 40, kv_cache=False, **kwargs)
        assert torch.equal(with_cache, without), kwargs


def test_greedy_without_cache_is_argmax_of_the_last_block():
    # the reference: each step feeds the last block_size tokens through the whole model
    model = tiny_model(block_size=8)
    idx = torch.randint(0, 65, (1, 3))
    tokens = generated(model, idx, 12, temperature=0)
    seq = idx
    for t in range(12):
        logits, _ = model(seq[:, -8:])
        seq = torch.cat((seq, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(tokens, seq[:, 3:])


def test_seed_and_batch():
    model = tiny_model()
    idx = torch.randint(0, 65, (1, 4))
    a = generated(model, idx, 20, seed=1)
    assert torch.equal(a, generated(model, idx, 20, seed=1))
    assert not torch.equal(a, generated(model, idx, 20, seed=2))
    # rows of one batch are generated independently: greedy rows equal single-row runs
    prompts = torch.randint(0, 65, (3, 4))
    batch = generated(model, prompts, 10, temperature=0)
    for row in range(3):
        assert torch.equal(batch[row], generated(model, prompts[row:row + 1], 10, temperature=0)[0])


def test_vocab_limit_keeps_padding_ids_out():
    model = tiny_model(vocab_size=100)
    idx = torch.randint(0, 100, (4, 3))
    assert generated(model, idx, 50, temperature=5.0, seed=0, vocab_limit=10).max() < 10
    assert generated(model, idx, 50, temperature=5.0, seed=0).max() >= 10  # without it they do appear
    assert all(max(tokens) < 10 for _, tokens in model.beam_search(idx[:1], 5, num_beams=3, vocab_limit=10))


def test_top_k_keeps_exactly_k_with_ties_and_clamps():
    logits = torch.zeros(1, 10)  # ten-way tie
    generator = torch.Generator().manual_seed(0)
    seen = {sample_token(logits, 1.0, 3, None, generator).item() for _ in range(300)}
    assert len(seen) == 3
    seen = {sample_token(logits, 1.0, 1000, None, generator).item() for _ in range(300)}
    assert len(seen) == 10


def test_top_p_keeps_the_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    generator = torch.Generator().manual_seed(0)
    assert {sample_token(logits, 1.0, None, 0.7, generator).item() for _ in range(300)} == {0, 1}
    assert {sample_token(logits, 1.0, None, 0.5, generator).item() for _ in range(300)} == {0}
    assert {sample_token(logits, 1.0, None, 1.0, generator).item() for _ in range(1000)} == {0, 1, 2, 3}


def test_stop_token_ends_each_row():
    model = tiny_model()
    with torch.no_grad():  # make token 7 the certain choice after token 3
        model.lm_head.weight[7] += 100 * model.transformer.wte.weight[3]
    idx = torch.tensor([[1, 2, 3], [1, 2, 4]])
    tokens = generated(model, idx, 30, temperature=0, stop_token=7)
    assert tokens[0, 0] == 7 and (tokens[0] == 7).all()  # row 0 stopped at once and stays stopped
    greedy = generated(model, idx[1:], 30, temperature=0)
    n = tokens.size(1)
    assert torch.equal(tokens[1], torch.where(torch.cumsum(greedy[0, :n] == 7, 0) > 0, 7, greedy[0, :n]))


def test_beam_search_is_exact_when_wide_enough():
    # with vocab**(steps-1) beams nothing is pruned: the best beam is the most likely sequence
    model = tiny_model(vocab_size=5)
    idx = torch.tensor([[1, 2]])
    best = max(itertools.product(range(5), repeat=3), key=lambda seq: sequence_logprob(model, idx, seq))
    (score, tokens), *_ = model.beam_search(idx, 3, num_beams=25)
    assert tuple(tokens) == best
    assert score == pytest.approx(sequence_logprob(model, idx, best) / 3, abs=1e-5)
    assert model.beam_search(idx, 3, num_beams=25, kv_cache=False)[0][1] == tokens


def test_beam_search_with_cache_past_block_size_and_stop():
    model = tiny_model(block_size=8)
    idx = torch.randint(0, 65, (1, 5))
    for stop in (None, 7):
        a = model.beam_search(idx, 12, num_beams=3, stop_token=stop)
        b = model.beam_search(idx, 12, num_beams=3, stop_token=stop, kv_cache=False)
        assert [t for _, t in a] == [t for _, t in b]
        assert [s for s, _ in a] == pytest.approx([s for s, _ in b], abs=1e-5)


def sequence_logprob(model, idx, seq):
    full = torch.cat((idx, torch.tensor([seq])), dim=1)
    logits, _ = model(full[:, :-1], torch.zeros_like(full[:, :-1]))
    logprobs = F.log_softmax(logits[0, idx.size(1) - 1:], dim=-1)
    return sum(logprobs[i, t].item() for i, t in enumerate(seq))
