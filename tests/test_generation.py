import itertools

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from generation import KVCache, beam_search, generate, next_logits, sample_token


def generated(model, idx, n, **kwargs):
    return torch.stack(list(generate(model, idx, n, **kwargs)), dim=1)


@pytest.mark.parametrize("bigram_hash", [0, 64])  # 64: the cached steps pair each token with the one before
@pytest.mark.parametrize("prompt_len", [1, 5, 20])  # 20: the prompt alone is longer than block_size 16
def test_cache_matches_no_cache_past_block_size(prompt_len, bigram_hash):
    model = tiny_model(bigram_hash=bigram_hash).eval()
    assert_cache_matches_no_cache(model, torch.randint(0, 65, (3, prompt_len)))


def assert_cache_matches_no_cache(model, idx):
    for kwargs in (dict(temperature=0), dict(temperature=1.0, seed=3), dict(temperature=0.7, top_k=5, top_p=0.9, seed=5)):
        with_cache = generated(model, idx, 40, kv_cache=True, **kwargs)
        without = generated(model, idx, 40, kv_cache=False, **kwargs)
        assert torch.equal(with_cache, without), kwargs


def test_cache_refuses_several_tokens_after_the_prompt():
    # the model's attention would not be causal among them: one clear error instead of wrong logits
    model = tiny_model(vocab_size=20).eval()
    caches = [KVCache(16) for _ in model.transformer.h]
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), kv_caches=caches)
        with pytest.raises(ValueError, match="a KV cache takes a prompt, then one token at a time"):
            model(torch.tensor([[4, 5]]), kv_caches=caches)


def test_greedy_without_cache_is_argmax_of_the_last_block():
    # the reference: each step feeds the last block_size tokens through the whole model
    model = tiny_model(block_size=8).eval()
    idx = torch.randint(0, 65, (1, 3))
    tokens = generated(model, idx, 12, temperature=0)
    seq = idx
    for t in range(12):
        logits, _ = model(seq[:, -8:])
        seq = torch.cat((seq, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(tokens, seq[:, 3:])


def test_seed_and_batch():
    model = tiny_model().eval()
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
    model = tiny_model(vocab_size=100).eval()
    idx = torch.randint(0, 100, (4, 3))
    assert generated(model, idx, 50, temperature=5.0, seed=0, vocab_limit=10).max() < 10
    assert generated(model, idx, 50, temperature=5.0, seed=0).max() >= 10  # without it they do appear
    assert all(max(tokens) < 10 for _, tokens in beam_search(model, idx[:1], 5, num_beams=3, vocab_limit=10))


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
    model = tiny_model().eval()
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
    model = tiny_model(vocab_size=5).eval()
    idx = torch.tensor([[1, 2]])
    best = max(itertools.product(range(5), repeat=3), key=lambda seq: sequence_logprob(model, idx, seq))
    (score, tokens), *_ = beam_search(model, idx, 3, num_beams=25)
    assert tuple(tokens) == best
    assert score == pytest.approx(sequence_logprob(model, idx, best) / 3, abs=1e-5)
    assert beam_search(model, idx, 3, num_beams=25, kv_cache=False)[0][1] == tokens


def test_beam_search_with_cache_past_block_size_and_stop():
    assert_beams_match_no_cache(tiny_model(block_size=8).eval(), torch.randint(0, 65, (1, 5)))


def assert_beams_match_no_cache(model, idx):
    for stop in (None, 7):
        a = beam_search(model, idx, 12, num_beams=3, stop_token=stop)
        b = beam_search(model, idx, 12, num_beams=3, stop_token=stop, kv_cache=False)
        assert [t for _, t in a] == [t for _, t in b]
        assert [s for s, _ in a] == pytest.approx([s for s, _ in b], abs=1e-5)


def sequence_logprob(model, idx, seq):
    full = torch.cat((idx, torch.tensor([seq])), dim=1)
    logits, _ = model(full[:, :-1], torch.zeros_like(full[:, :-1]))
    logprobs = F.log_softmax(logits[0, idx.size(1) - 1:], dim=-1)
    return sum(logprobs[i, t].item() for i, t in enumerate(seq))


# ----------------------------------------------------------------------------- beyond GPT-2
# every switch but zero_init_proj, whose blocks would start as the identity and test nothing
MODERN = dict(rope=True, norm="rmsnorm", qk_norm=True, mlp_act="relu2", tie_embeddings=False, logit_softcap=15.0,
              value_embeddings=True, x0_mixing=True, unet_skips=True, bigram_hash=64)


def modern_model():
    return tiny_model(block_size=8, n_layer=3, **MODERN).eval()


@pytest.mark.parametrize("prompt_len", [1, 5, 30])  # 30: past block_size 8, and past the 3 layers' reach of 22
def test_modern_cache_matches_no_cache_past_block_size(prompt_len):
    assert_cache_matches_no_cache(modern_model(), torch.randint(0, 65, (3, prompt_len)))


def test_modern_sliding_cache_is_sliding_window_attention():
    # The reference is the whole sequence in one forward, each token attending to the 8 tokens that
    # end at it: the sliding cache computes the same logits, 30 tokens past block_size.
    model = modern_model()
    seq = torch.randint(0, 65, (2, 3))
    caches = None
    for _ in range(35):
        logits, caches = next_logits(model, seq, caches, kv_cache=True)
        assert caches[0].length <= 8
        reference, _ = model(seq, torch.zeros_like(seq))
        torch.testing.assert_close(logits, reference[:, -1], atol=2e-5, rtol=0)
        seq = torch.cat((seq, logits.argmax(-1, keepdim=True)), dim=1)


def test_modern_beam_search_with_cache_past_block_size():
    assert_beams_match_no_cache(modern_model(), torch.randint(0, 65, (1, 5)))


def test_modern_generation_under_bfloat16_autocast():
    # QK-norm may come out of autocast in float32 while v is bfloat16: SDPA needs them to agree
    model = modern_model()
    idx = torch.randint(0, 65, (2, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = generated(model, idx, 12, temperature=0)
    assert tokens.shape == (2, 12)
