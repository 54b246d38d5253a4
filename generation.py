"""
Text generation from a GPT: a KV cache, sampling (temperature, top-k, top-p), and beam search.
sample.py, serve.py (through engine.py) and the benchmarks drive it; the model itself only
knows how to extend its caches. checkpoint.load_model gives them a model and its tokenizer.
"""

import torch
import torch.nn.functional as F


class KVCache:
    """One attention layer's keys and values for the tokens seen so far, so that generation
    computes each new token's attention without recomputing the prefix."""

    def __init__(self, max_len):
        self.max_len, self.length = max_len, 0
        self.pos = 0  # position of the next token: above length once the window has slid
        self.k = self.v = None

    def append(self, k, v):
        if self.length and k.size(2) != 1:  # the model's attention is causal only over a whole prompt
            raise ValueError("a KV cache takes a prompt, then one token at a time")
        if self.k is None:  # allocated on first use, in whatever dtype autocast gives k and v
            B, n_head, _, head_size = k.shape
            self.k = k.new_empty(B, n_head, self.max_len, head_size)
            self.v = v.new_empty(B, n_head, self.max_len, head_size)
        end = self.length + k.size(2)
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        self.pos += k.size(2)
        return self.k[:, :, :end], self.v[:, :, :end]

    def keep_last(self, n):
        """Drop all but the newest n tokens: a sliding window. Only for relative positions (RoPE),
        where the kept keys, rotated at their own positions, stay valid."""
        if self.length > n:
            for t in (self.k, self.v):
                t[:, :, :n] = t[:, :, self.length - n:self.length].clone()
            self.length = n

    def reorder(self, index):
        """Keep the sequences at `index` of the batch (beam search)."""
        self.k, self.v = self.k[index], self.v[index]


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
             seed=None, kv_cache=True, vocab_limit=None):
    """Continue each row of idx (B, T), yielding the next tokens, shape (B,), one step at a time.
    temperature 0 is greedy. A row that has produced stop_token yields stop_token from then on,
    and generation ends when every row has. Only ids below vocab_limit are drawn: a vocabulary
    padded for speed (50304) has ids that no tokenizer knows. Call model.eval() first.

    With kv_cache the prompt is processed once and then one token per step. Once the sequence
    outgrows block_size, the context is its last block_size tokens; GPT-2's learned absolute
    positions then shift every step, so each step recomputes that window, cache or not. With
    RoPE, positions are relative: the cache slides along instead (see next_logits)."""
    generator = torch.Generator(device=idx.device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    caches = None
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits, caches = next_logits(model, idx, caches, kv_cache)
        token = sample_token(logits[:, :vocab_limit].float(), temperature, top_k, top_p, generator)
        if stop_token is not None:
            token = torch.where(done, stop_token, token)
            done |= token == stop_token
        idx = torch.cat((idx, token[:, None]), dim=1)
        yield token
        if done.all():
            return


@torch.no_grad()
def beam_search(model, idx, max_new_tokens, num_beams, stop_token=None, length_penalty=1.0, kv_cache=True,
                vocab_limit=None):
    """The num_beams most likely continuations of one prompt idx (1, T), best first, as a list of
    (score, tokens) with score = sum of log-probabilities / length ** length_penalty.
    A beam ends at stop_token (which it keeps); the search ends once num_beams have ended.
    vocab_limit as in generate()."""
    if idx.size(0) != 1:
        raise ValueError("beam search takes one prompt at a time")
    beams = idx.expand(num_beams, -1)
    scores = torch.full((num_beams,), float("-inf"), device=idx.device)
    scores[0] = 0.0  # all beams start as the same prompt: expand only one of them at first
    caches, finished = None, []
    for _ in range(max_new_tokens):
        logits, caches = next_logits(model, beams, caches, kv_cache)
        log_probs = F.log_softmax(logits[:, :vocab_limit].float(), dim=-1)
        candidates = (scores[:, None] + log_probs).view(-1)
        # twice as many as needed, so that num_beams remain after the ended ones are set aside
        top_scores, top = candidates.topk(min(2 * num_beams, candidates.numel()))
        vocab_size = log_probs.size(-1)
        keep = []
        for score, flat in zip(top_scores.tolist(), top.tolist()):
            beam, token = divmod(flat, vocab_size)
            if score == float("-inf"):
                continue  # a copy of the prompt that is not expanded on the first step
            if token == stop_token:
                length = beams.size(1) - idx.size(1) + 1
                finished.append((score / length ** length_penalty, beams[beam].tolist()[idx.size(1):] + [token]))
            elif len(keep) < num_beams:
                keep.append((score, beam, token))
        if len(finished) >= num_beams:
            break
        origin = torch.tensor([b for _, b, _ in keep], device=idx.device)
        tokens = torch.tensor([[t] for _, _, t in keep], device=idx.device)
        scores = torch.tensor([s for s, _, _ in keep], device=idx.device)
        beams = torch.cat((beams[origin], tokens), dim=1)
        for cache in caches or []:
            cache.reorder(origin)
    length = beams.size(1) - idx.size(1)
    finished += [(s / max(length, 1) ** length_penalty, b[idx.size(1):]) for s, b in zip(scores.tolist(), beams.tolist())]
    return sorted(finished, key=lambda f: f[0], reverse=True)[:num_beams]


def context_length(config):
    """How many of the last tokens the next token depends on: block_size with GPT-2's learned
    positions; with RoPE's sliding window, n_layer * (block_size - 1) + 1 (each layer reaches
    block_size - 1 further back), and one more with bigram_hash, whose oldest token is read as a pair
    with the token before it."""
    if not config.rope:
        return config.block_size
    return config.n_layer * (config.block_size - 1) + 1 + (config.bigram_hash > 0)


def next_logits(model, seq, caches, kv_cache):
    """Logits (B, V) for the token after each row of seq, and the caches for the next call.
    While seq fits in block_size, a cache means only its newest token goes through the model.

    A RoPE model reads a longer seq with sliding-window attention (model.GPT.forward), so its
    cache slides: the new token attends to the last block_size - 1 cached keys and values, which
    stay valid because they were rotated at their own positions. In n_layer layers the newest
    token then depends on the last n_layer * (block_size - 1) + 1 tokens, so without a cache
    that much is recomputed: the same result (RoPE scores depend only on distances), slower."""
    block_size = model.config.block_size
    context = context_length(model.config)
    if kv_cache and (seq.size(1) <= block_size or model.config.rope):
        if caches is None:
            prompt = seq[:, -context:]
            caches = [KVCache(max(block_size, prompt.size(1))) for _ in model.transformer.h]
            logits, _ = model(prompt, kv_caches=caches)
        else:
            for cache in caches:
                cache.keep_last(block_size - 1)
            logits, _ = model(seq[:, -1:], kv_caches=caches, prev=seq[:, -2:-1])
        return logits[:, -1, :], caches
    logits, _ = model(seq[:, -context:])
    return logits[:, -1, :], None


def top_logprobs(logprobs, token, n):
    """(token's log-probability, [(token, log-probability)] of the n most likely, most likely first)
    from logprobs (V,) of one position."""
    values, tokens = logprobs.topk(n)
    return logprobs[token].item(), list(zip(tokens.tolist(), values.tolist()))


@torch.no_grad()
def prompt_logprobs(model, tokens, n=0, vocab_limit=None):
    """What the model says of each of tokens but the first, given the tokens before it: top_logprobs'
    pair at every position, from one forward pass of all tokens but the last (the model's distribution
    over the ids below vocab_limit). A GPT-2 model scores at most block_size + 1 tokens; a RoPE model
    reads more with its sliding window, as generation does."""
    if len(tokens) < 2:
        return []
    idx = torch.tensor([tokens], dtype=torch.long, device=next(model.parameters()).device)
    logits, _ = model(idx[:, :-1], targets=idx[:, 1:])  # targets to get every position's logits
    logprobs = logits[0, :, :vocab_limit].float().log_softmax(-1)
    chosen = logprobs.gather(1, idx[0, 1:, None])[:, 0].tolist()
    values, top = logprobs.topk(n, dim=-1)
    return [(lp, list(zip(t, v))) for lp, t, v in zip(chosen, top.tolist(), values.tolist())]


def check_sampling(temperature, top_k, top_p):
    """ValueError, saying what is wrong, for settings that sample_token cannot draw with."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: it cannot be negative")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k={top_k}: it must be at least 1 (or None for no limit)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}: it must lie in (0, 1]")


def sample_token(logits, temperature, top_k, top_p, generator):
    """One token per row of logits (B, V). temperature 0 takes the argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        # exactly top_k candidates, also when several logits tie with the k-th
        values, indices = logits.topk(top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, indices, values)
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        # nucleus: the most likely tokens until their mass reaches top_p (always at least one)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs[mass_before >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
