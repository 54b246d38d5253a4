import math
import re
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from model import GPT, GPTConfig, SigmoidGELU, apply_rope, bigram_rows, gelu, rope_angles


def full_logits(model, idx):
    logits, _ = model(idx, torch.zeros_like(idx))
    return logits


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'gpt5'"):
        GPTConfig.from_preset("gpt5")


def test_causality():
    model = tiny_model(vocab_size=50, n_embd=16).eval()
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
    model = tiny_model(vocab_size=50, block_size=32, n_layer=1, n_head=4, n_embd=64).eval()
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
    model = tiny_model(vocab_size=60, n_layer=3, dropout=0.1)
    assert_checkpointing_changes_nothing(model, torch.randint(0, 60, (4, 16)), torch.randint(0, 60, (4, 16)))


def assert_checkpointing_changes_nothing(model, idx, targets):
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
    model = tiny_model(vocab_size=50, n_embd=16, dropout=0.5)
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


def test_per_position_losses():
    model = tiny_model(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8)
    idx, targets = torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))
    targets[1, :3] = -1
    logits, losses = model(idx, targets, reduction="none")
    assert losses.shape == (2, 8) and (losses[1, :3] == 0).all()
    expected = -F.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(losses[targets != -1], expected[targets != -1])
    _, mean = model(idx, targets)
    torch.testing.assert_close(mean, losses.sum() / (targets != -1).sum())


def test_init_loss_is_uniform():
    model = tiny_model(vocab_size=1000, block_size=32, n_layer=4, n_head=4, n_embd=64)
    _, loss = model(torch.randint(0, 1000, (8, 32)), torch.randint(0, 1000, (8, 32)))
    assert abs(loss.item() - math.log(1000)) < 0.05


def test_init_scales_residual_projections():
    model = tiny_model(vocab_size=100, block_size=8, n_layer=8, n_head=4, n_embd=256)
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


# ----------------------------------------------------------------------------- generation


# ----------------------------------------------------------------------------- beyond GPT-2
SWITCHES = dict(rope=True, norm="rmsnorm", qk_norm=True, mlp_act="relu2", tie_embeddings=False,
                zero_init_proj=True, logit_softcap=15.0, value_embeddings=True, x0_mixing=True, unet_skips=True,
                bigram_hash=64)
TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_default_is_gpt2():
    config = GPTConfig(**TINY)
    assert config.modern_switches() == {}
    assert GPTConfig(**TINY, rope=True, logit_softcap=15.0).modern_switches() == {"rope": True, "logit_softcap": 15.0}
    model = GPT(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert "transformer.wpe.weight" in model.state_dict()


def test_rope_scores_depend_only_on_distance():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 10, 16), torch.randn(2, 3, 10, 16)
    pos = torch.arange(10)

    def scores(q_shift, k_shift):
        q_rot = apply_rope(q, *rope_angles(pos + q_shift, 16))
        k_rot = apply_rope(k, *rope_angles(pos + k_shift, 16))
        return q_rot @ k_rot.transpose(-2, -1)

    torch.testing.assert_close(scores(1000, 1000), scores(0, 0), atol=2e-4, rtol=1e-4)
    assert not torch.allclose(scores(0, 3), scores(0, 0), atol=1e-2)  # a relative shift does change them
    # a rotation: each pair of channels keeps its norm
    rotated = apply_rope(q, *rope_angles(pos + 7, 16))
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))


def test_rope_model_has_no_wpe_and_reads_longer_sequences_with_a_window():
    model = tiny_model(**TINY, rope=True).eval()
    assert not any("wpe" in name for name in model.state_dict())
    idx = torch.randint(0, 50, (1, 40))
    with torch.no_grad():
        logits = full_logits(model, idx)
        # the token at 39 sees tokens 24..39 in layer 1, but through layer 0 back to 39 - 2 * 15 = 9
        torch.testing.assert_close(full_logits(model, idx[:, 9:])[:, -1], logits[:, -1], atol=1e-5, rtol=0)
        assert not torch.allclose(full_logits(model, idx[:, 10:])[:, -1], logits[:, -1], atol=1e-4)


def test_qk_norm_gives_unit_rms_queries_and_keys():
    model = tiny_model(**TINY, qk_norm=True, rope=True).eval()
    seen = []
    sdpa = F.scaled_dot_product_attention

    def capture(q, k, v, **kwargs):
        seen.append((q, k))
        return sdpa(q, k, v, **kwargs)

    with torch.no_grad(), mock.patch("torch.nn.functional.scaled_dot_product_attention", capture):
        model(torch.randint(0, 50, (2, 16)))
    assert len(seen) == 2
    for q, k in seen:
        for t in (q, k):
            torch.testing.assert_close(t.pow(2).mean(-1).sqrt(), torch.ones(t.shape[:-1]), atol=1e-4, rtol=0)


def test_rmsnorm_matches_torch_rms_norm():
    model = tiny_model(**TINY, norm="rmsnorm")
    ln = model.transformer.h[0].ln_1
    assert isinstance(model.transformer.ln_f, torch.nn.RMSNorm)
    with torch.no_grad():
        ln.weight.normal_()
        x = torch.randn(3, 7, 32) * 5 + 2
        eps = torch.finfo(torch.float32).eps
        torch.testing.assert_close(ln(x), F.rms_norm(x, (32,), ln.weight, eps))
        torch.testing.assert_close(ln(x), x / x.pow(2).mean(-1, keepdim=True).add(eps).sqrt() * ln.weight)
    assert not any(name.endswith("bias") and "ln_" in name for name, _ in model.named_parameters())


def test_relu2_mlp():
    mlp = tiny_model(**TINY, mlp_act="relu2").transformer.h[0].mlp
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2))


def test_untied_head_is_its_own_parameter():
    model = tiny_model(**TINY, tie_embeddings=False)
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    # a lookup costs no FLOPs: wte leaves the non-embedding count, the head stays
    tied = tiny_model(**TINY)
    assert model.num_params(non_embedding=False) == tied.num_params(non_embedding=False) + 50 * 32
    assert model.num_params() == tied.num_params()
    _, loss = model(torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8)))
    loss.backward()
    assert model.transformer.wte.weight.grad is not model.lm_head.weight.grad


def test_zero_init_projections():
    model = tiny_model(**TINY, zero_init_proj=True)
    c_projs = [p for name, p in model.named_parameters() if name.endswith("c_proj.weight")]
    assert len(c_projs) == 4 and all(torch.count_nonzero(p) == 0 for p in c_projs)
    assert torch.count_nonzero(model.transformer.h[0].mlp.c_fc.weight) > 0
    # every block starts as the identity: the logits are those of the embeddings alone
    idx = torch.randint(0, 50, (1, 8))
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(8))
    torch.testing.assert_close(full_logits(model, idx), model.lm_head(model.transformer.ln_f(x)))


def test_logit_softcap_bounds_logits():
    capped = tiny_model(**TINY, logit_softcap=5.0)
    plain = tiny_model(**TINY)
    with torch.no_grad():
        plain.lm_head.weight.mul_(1000)  # logits far beyond the cap
    capped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    raw, logits = full_logits(plain, idx), full_logits(capped, idx)
    assert raw.abs().max() > 50 and logits.abs().max() <= 5.0  # float32 tanh reaches 1 exactly
    torch.testing.assert_close(logits, 5.0 * torch.tanh(raw / 5.0))


def one_switch_at_a_time():
    return [{k: v} for k, v in SWITCHES.items()] + [SWITCHES]


@pytest.mark.parametrize("switches", one_switch_at_a_time(), ids=lambda s: "+".join(s))
def test_every_switch_trains_causally_and_with_activation_checkpointing(switches):
    model = tiny_model(**TINY, dropout=0.1, **switches)
    if switches.get("zero_init_proj"):  # else the blocks are the identity and causality is trivially true
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, std=0.02)
    idx = torch.randint(0, 50, (4, 16))
    assert_checkpointing_changes_nothing(model, idx, torch.randint(0, 50, (4, 16)))
    model.eval()
    with torch.no_grad():
        before = full_logits(model, idx)
        changed = idx.clone()
        changed[:, 9] = (changed[:, 9] + 1) % 50
        after = full_logits(model, changed)
    torch.testing.assert_close(after[:, :9], before[:, :9], atol=0, rtol=0)
    assert not torch.allclose(after[:, 9], before[:, 9])


def with_weights_of(model, plain):
    """model, with plain's weights wherever it has them."""
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    return missing


def test_value_embeddings_on_every_other_layer_ending_with_the_last_and_zero_tables_change_nothing():
    plain = tiny_model(**{**TINY, "n_layer": 3})
    model = tiny_model(**{**TINY, "n_layer": 3}, value_embeddings=True)
    assert sorted(with_weights_of(model, plain)) == ["transformer.h.0.attn.ve_gate.weight",
                                                     "transformer.h.2.attn.ve_gate.weight",
                                                     "transformer.ve.0.weight", "transformer.ve.2.weight"]
    idx = torch.randint(0, 50, (2, 16))
    differ = full_logits(model, idx)
    for table in model.transformer.ve.values():
        torch.nn.init.zeros_(table.weight)
    torch.testing.assert_close(full_logits(model, idx), full_logits(plain, idx))
    assert not torch.allclose(differ, full_logits(plain, idx))
    assert model.num_params() == plain.num_params() + 2 * 2 * 32  # the gates; a table is a lookup


def test_x0_mixing_starts_as_the_plain_model_and_its_lambdas_mix_in_the_embedding():
    plain = tiny_model(**TINY)
    model = tiny_model(**TINY, x0_mixing=True)
    assert sorted(with_weights_of(model, plain)) == ["resid_lambdas", "x0_lambdas"]
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(full_logits(model, idx), full_logits(plain, idx), atol=0, rtol=0)
    with torch.no_grad():
        model.x0_lambdas[1] = 0.5
    assert not torch.allclose(full_logits(model, idx), full_logits(plain, idx))


def test_unet_skips_add_the_first_halfs_outputs_to_the_second_half_last_first():
    plain = tiny_model(**{**TINY, "n_layer": 5})
    model = tiny_model(**{**TINY, "n_layer": 5}, unet_skips=True).eval()
    assert with_weights_of(model, plain) == ["skip_weights"]
    with torch.no_grad():
        model.skip_weights.copy_(torch.tensor([0.5, -2.0]))
        idx = torch.randint(0, 50, (2, 16))
        t, h = model.transformer, model.transformer.h
        out0 = h[0](t.wte(idx) + t.wpe(torch.arange(16)))
        out1 = h[1](out0)
        x = h[3](h[2](out1) - 2.0 * out1)  # five blocks: the middle one takes no skip
        x = h[4](x + 0.5 * out0)
        torch.testing.assert_close(full_logits(model, idx), model.lm_head(t.ln_f(x)))
        model.skip_weights.zero_()
        torch.testing.assert_close(full_logits(model, idx), full_logits(plain, idx), atol=0, rtol=0)


def test_bigram_hash_adds_a_row_for_each_token_and_the_one_before_and_a_zero_table_changes_nothing():
    plain = tiny_model(**TINY)
    model = tiny_model(**TINY, bigram_hash=64).eval()
    assert with_weights_of(model, plain) == ["transformer.bigram.weight"]
    idx = torch.randint(0, 50, (2, 16))
    rows = bigram_rows(idx, None, 64)
    assert (rows[:, 0] == 63).all() and (rows[:, 1:] < 63).all()  # the first token has no token before it
    changed = idx.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 50
    differ = bigram_rows(changed, None, 2 ** 20) != bigram_rows(idx, None, 2 ** 20)  # few pairs hash alike there
    assert not differ[:, :5].any() and not differ[:, 7:].any() and differ[:, 5:7].all()
    assert len(rows.unique()) > 20  # spread over the table
    # the rest of a sequence, given the token before it, reads as it does in the whole sequence
    torch.testing.assert_close(bigram_rows(idx[:, 9:], idx[:, 8:9], 64), rows[:, 9:], atol=0, rtol=0)
    with torch.no_grad():
        differs = full_logits(model, idx)
        model.transformer.bigram.weight.zero_()
    torch.testing.assert_close(full_logits(model, idx), full_logits(plain, idx), atol=0, rtol=0)
    assert not torch.allclose(differs, full_logits(plain, idx))
    assert model.num_params() == plain.num_params()  # a lookup


@pytest.mark.parametrize("bad, message", [
    (dict(norm="batchnorm"), "norm='batchnorm': choose one of layernorm, rmsnorm"),
    (dict(mlp_act="swish"), "mlp_act='swish': choose one of gelu, relu2"),
    (dict(logit_softcap=-1.0), "logit_softcap=-1.0"),
    (dict(bigram_hash=1), "bigram_hash=1: use 0 (off) or a number of rows"),
    (dict(rope=True, n_head=32), "head size n_embd/n_head=1 must be even"),
])
def test_bad_switches(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GPTConfig(**{**TINY, **bad})


@pytest.mark.parametrize("tie_embeddings, value_embeddings", [(True, False), (False, False), (True, True)])
def test_grow_vocab_keeps_the_model_and_starts_new_tokens_as_the_average(tie_embeddings, value_embeddings):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16, tie_embeddings=tie_embeddings,
                          value_embeddings=value_embeddings))
    idx = torch.randint(0, 50, (2, 8))
    before, _ = model(idx)
    model.grow_vocab(64)
    after, _ = model(idx)
    assert model.config.vocab_size == 64 and after.shape[-1] == 64
    torch.testing.assert_close(after[..., :50], before)  # a wider matmul may round the last bit otherwise
    # each new token's logit is the mean of the old ones
    torch.testing.assert_close(after[..., 50:], before.mean(-1, keepdim=True).expand(-1, -1, 14))
    assert (model.lm_head.weight is model.transformer.wte.weight) == tie_embeddings
    assert model.transformer.wte(torch.tensor([63])).shape == (1, 16)  # the new ids are embedded
    if value_embeddings:
        assert model.transformer.ve["0"](torch.tensor([63])).shape == (1, 16)
    with pytest.raises(ValueError, match="cannot shrink"):
        model.grow_vocab(10)


def test_a_batch_whose_targets_are_all_masked_has_loss_zero_not_nan():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))
    _, loss = model(torch.randint(0, 50, (2, 8)), torch.full((2, 8), -1))
    loss.backward()
    assert loss.item() == 0.0 and all(torch.isfinite(p.grad).all() for p in model.parameters())
