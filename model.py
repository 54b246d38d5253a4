"""
GPT-2: the model, and its FLOPs and MFU. GPTConfig's switches beyond GPT-2 (RoPE, RMSNorm, ...)
are opt-in; off, it is GPT-2 exactly. Its optimizer lives in optim.py, generation in
generation.py, the Hugging Face bridge in hf.py.

It reads top to bottom as notebooks/gpt_from_scratch.ipynb builds it: the config, attention, the
MLP, the block, the GPT. What only the options beyond GPT-2 and CPU speed need sits below the
line at the end.

Parameter names are GPT-2's own (transformer.wte, .wpe, .h.N.attn.c_attn, ...), so
weights map one to one with OpenAI's checkpoints.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64: faster matmuls on GPUs
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; False is a little faster and no worse
    # Beyond GPT-2 (modded-nanogpt's and nanochat's recipe), each off by default, in any combination:
    rope: bool = False  # rotary position embeddings in attention instead of the learned wpe
    norm: str = "layernorm"  # or "rmsnorm": no mean and no bias, only a gain
    qk_norm: bool = False  # RMS-normalise each head's queries and keys
    mlp_act: str = "gelu"  # or "relu2": relu(x)^2
    tie_embeddings: bool = True  # False: lm_head is its own matrix, not wte
    zero_init_proj: bool = False  # the projections into the residual stream (c_proj) start at zero
    logit_softcap: float = 0.0  # above 0: logits = cap * tanh(logits / cap)
    value_embeddings: bool = False  # every other layer, the last included, adds a token embedding to the values
    x0_mixing: bool = False  # each block reads a learned mix of the residual stream and the embedding x0
    unet_skips: bool = False  # the second half's blocks each add a learned share of a first-half block's output
    bigram_hash: int = 0  # above 0: rows of a table of (previous, current) token pairs, hashed, added to the input

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: choose one of {', '.join(NORMS)}")
        if self.mlp_act not in ACTIVATIONS:
            raise ValueError(f"mlp_act={self.mlp_act!r}: choose one of {', '.join(ACTIVATIONS)}")
        if self.logit_softcap < 0:
            raise ValueError(f"logit_softcap={self.logit_softcap}: use 0 (off) or a positive cap such as 15")
        if self.bigram_hash < 0 or self.bigram_hash == 1:
            raise ValueError(f"bigram_hash={self.bigram_hash}: use 0 (off) or a number of rows, e.g. 5 * vocab_size")
        if self.rope and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rope rotates pairs of channels: head size n_embd/n_head={self.n_embd // self.n_head} "
                             "must be even")

    def modern_switches(self):
        """The switches set away from GPT-2, as {name: value}."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in MODERN_SWITCHES and getattr(self, f.name) != f.default}

    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
GPT2_VOCAB_SIZE = 50257
# the fields that depart from GPT-2 when set away from their defaults, which are GPT-2 as it was
MODERN_SWITCHES = ("rope", "norm", "qk_norm", "mlp_act", "tie_embeddings", "zero_init_proj", "logit_softcap",
                   "value_embeddings", "x0_mixing", "unet_skips", "bigram_hash")


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer=0):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # how much of its value embedding each head takes, read from the token: 2 sigmoid(0) = 1 at first
        self.ve_channels = min(VE_GATE_CHANNELS, config.n_embd)
        self.ve_gate = nn.Linear(self.ve_channels, config.n_head, bias=False) if has_value_embedding(
            layer, config) else None

    def forward(self, x, rope=None, mask=None, cache=None, ve=None):
        """rope: (cos, sin) of the tokens' positions, for a model with rotary embeddings.
        mask: True where a query may attend, broadcastable to (B, n_head, T, keys): a sliding window
        (a RoPE model reading past block_size) or rows at positions of their own (serve.py's
        engine). Without one, attention is causal. cache: the keys and values of the tokens
        before x (generation.KVCache), which x's are appended to. ve: this layer's value embedding
        of the tokens (B, T, C), for a model with value_embeddings."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_channels]))  # (B, T, n_head)
            v = v + (gate[..., None] * ve.view(B, T, self.n_head, C // self.n_head)).view(B, T, C).to(v.dtype)
        # (B, T, C) -> (B, n_head, T, head_size), the layout SDPA wants
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if rope is not None:  # cached keys are stored rotated, at their own positions
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.append(k, v)
        # Causal when the queries are all the keys. A new token after cached ones sees every key, and
        # SDPA's causal mask would not do for it: it aligns the diagonal to the first key, not the last.
        causal = mask is None and k.size(2) == T
        # Dispatches to flash attention on GPUs; dropout_p must be 0 in eval, SDPA does not know the mode.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def gelu(x):
    """GPT-2's GELU (the tanh approximation, which it was trained with). On CPUs in float32 it is
    SigmoidGELU, at the end of this file: the same function, faster."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return SigmoidGELU.apply(x)
    return F.gelu(x, approximate="tanh")  # one fused kernel on GPUs; bf16 keeps F.gelu's float math


def relu2(x):
    """ReLU squared (Primer, So et al. 2021): cheaper than GELU, and trains faster in modded-nanogpt."""
    return F.relu(x).square()


ACTIVATIONS = {"gelu": gelu, "relu2": relu2}


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.act = ACTIVATIONS[config.mlp_act]
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


NORMS = ("layernorm", "rmsnorm")


def norm(config):
    """GPT-2's LayerNorm, or RMSNorm: x / rms(x) * gain, no mean subtracted and no bias."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class Block(nn.Module):
    def __init__(self, config, layer=0):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, mask=None, cache=None, ve=None):
        x = x + self.attn(self.ln_1(x), rope, mask, cache, ve)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        # Recompute each block's activations in backward instead of storing them: less memory, ~1/3 more compute.
        self.activation_checkpointing = False
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=None if config.rope else nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=norm(config),
        ))
        if config.bigram_hash:  # zero at first: the model starts as it would without it
            self.transformer.bigram = nn.Embedding(config.bigram_hash, config.n_embd)
        if config.value_embeddings:  # a table per layer that has one, keyed by the layer's number
            self.transformer.ve = nn.ModuleDict({str(i): nn.Embedding(config.vocab_size, config.n_embd)
                                                 for i in range(config.n_layer) if has_value_embedding(i, config)})
        if config.x0_mixing:  # block i reads resid_lambdas[i] * x + x0_lambdas[i] * x0: at first x alone
            self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        if config.unet_skips:  # as modded-nanogpt: each skip starts at full weight
            self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream, so that its
        # variance does not grow with depth: two per block, hence 2 * n_layer.
        # zero_init_proj starts them at zero instead: each block begins as the identity.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
            if name.endswith(("ve_gate.weight", "bigram.weight")):
                nn.init.zeros_(p)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=True):
        """Parameters, counting the tied wte/lm_head once; wpe is left out by default
        because a lookup costs no FLOPs, while wte does work as the LM head (untied, it does not)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.transformer.wpe is not None:
            n -= self.transformer.wpe.weight.numel()
        if non_embedding and self.config.value_embeddings:
            n -= sum(p.numel() for p in self.transformer.ve.parameters())
        if non_embedding and self.config.bigram_hash:
            n -= self.transformer.bigram.weight.numel()
        if non_embedding and not self.config.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        return n

    def forward(self, idx, targets=None, kv_caches=None, pos=None, attn_mask=None, reduction="mean", prev=None):
        """reduction="none" gives the loss of every position (B, T) rather than their mean.
        kv_caches: one KVCache per layer, for generation; idx then continues the cached tokens.
        pos (B, T) and attn_mask (B, 1, T, keys), True where a query may look: for a batch whose rows
        sit at different positions (serve.py's engine); by default every row continues its cache.
        A RoPE model reads sequences of any length: past block_size each token attends, in every
        layer, to the block_size tokens that end at it (sliding-window attention).
        prev (B, 1): the token before each row of idx, which a bigram_hash model pairs with idx's
        first when it continues a cache; without it the first token is paired with none."""
        B, T = idx.size()
        if pos is None:
            start = kv_caches[0].pos if kv_caches else 0
            if start + T > self.config.block_size and not self.config.rope:
                raise ValueError(f"sequence of length {start + T} is longer than block_size={self.config.block_size}")
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx)
        if self.config.bigram_hash:
            x = x + self.transformer.bigram(bigram_rows(idx, prev, self.config.bigram_hash))
        rope = None
        if self.config.rope:
            rope = rope_angles(pos, self.config.n_embd // self.config.n_head)
            if attn_mask is None and T > self.config.block_size:
                attn_mask = sliding_window_mask(T, self.config.block_size, idx.device)
        else:
            x = x + self.transformer.wpe(pos)
        x = x0 = self.transformer.drop(x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        half = self.config.n_layer // 2
        skips = []  # unet_skips: the outputs of the first half's blocks; the second half's take them back, last first
        for i, block in enumerate(self.transformer.h):
            if self.config.unet_skips and i >= self.config.n_layer - half:
                x = x + self.skip_weights[len(skips) - 1] * skips.pop()
            if self.config.x0_mixing:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.transformer.ve[str(i)](idx) if block.attn.ve_gate is not None else None
            if kv_caches:
                x = block(x, rope, attn_mask, kv_caches[i], ve)
            elif recompute:
                # non-reentrant checkpointing restores the RNG state, so dropout masks match on recompute
                x = checkpoint(block, x, rope, attn_mask, None, ve, use_reentrant=False)
            else:
                x = block(x, rope, attn_mask, ve=ve)
            if self.config.unet_skips and i < half:
                skips.append(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            # generation needs only the next token's distribution: skip the other T-1 (large) head matmuls
            return self.head(x[:, [-1], :]), None
        logits = self.head(x)
        # a target of -1 is not counted (a chat dataset's prompts): the mean is over the others, and 0
        # where there are none, rather than NaN; for the rest it is bit for bit F.cross_entropy's mean
        losses = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1,
                                 reduction="none" if reduction == "none" else "sum")
        if reduction == "none":
            return logits, losses.view(targets.shape)
        return logits, losses / (targets != -1).sum().clamp(min=1)

    def head(self, x):
        """Logits; with logit_softcap, squashed smoothly into (-cap, cap), which keeps them from
        growing without bound (Gemma 2, modded-nanogpt)."""
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to fine-tune GPT-2 (1024) on shorter sequences."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        if self.transformer.wpe is not None:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def grow_vocab(self, vocab_size):
        """Rows for more token ids, e.g. a chat model's special tokens. The new rows of wte (and of
        lm_head when it is a matrix of its own) start as the mean of the old: each new token begins as
        an average token, whose logit is the average logit, so the model predicts as before."""
        old = self.config.vocab_size
        if vocab_size < old:
            raise ValueError(f"cannot shrink the vocabulary from {old} to {vocab_size}")

        def grown(weight):
            weight = weight.detach()
            return nn.Parameter(torch.cat([weight, weight.mean(0, keepdim=True).expand(vocab_size - old, -1)]))

        self.transformer.wte.weight = grown(self.transformer.wte.weight)
        self.lm_head.weight = self.transformer.wte.weight if self.config.tie_embeddings else grown(self.lm_head.weight)
        self.transformer.wte.num_embeddings = self.lm_head.out_features = self.config.vocab_size = vocab_size
        for table in self.transformer.ve.values() if self.config.value_embeddings else ():
            table.weight = grown(table.weight)
            table.num_embeddings = vocab_size

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B:
        6 per parameter per token for the matmuls, plus 12 * n_layer * n_embd * T for attention."""
        T = seq_len or self.config.block_size
        return 6 * self.num_params() + 12 * self.config.n_layer * self.config.n_embd * T

    def estimate_mfu(self, tokens_per_sec, peak_flops, seq_len=None):
        """Model FLOPs utilisation in [0, 1], or None when the device's peak is unknown."""
        if not peak_flops:
            return None
        return self.flops_per_token(seq_len) * tokens_per_sec / peak_flops


# ----------------------------------------------------------------------------------------------
# Below this line nothing that GPT-2 computes: the options beyond it (RoPE, QK-norm, a sliding
# window) and a faster way to compute GPT-2's GELU on CPUs.

ROPE_BASE = 10000.0


def rope_angles(pos, head_size):
    """cos and sin of RoPE's angles pos * ROPE_BASE^(-2i/head_size): (T, head_size/2) for positions
    (T,) shared by the batch, (B, 1, T, head_size/2) for each row's own positions (B, T)."""
    inv_freq = ROPE_BASE ** -(torch.arange(0, head_size, 2, device=pos.device, dtype=torch.float32) / head_size)
    angles = pos.float()[..., None] * inv_freq
    if pos.dim() == 2:
        angles = angles[:, None]  # the heads of a row share its positions
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate the channel pairs (i, i + head_size/2) of x (B, n_head, T, head_size) by their
    position's angles. A query at m and a key at n then score by m - n alone: positions are relative."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# Value embeddings (modded-nanogpt; nanochat's layout and gate): a layer's values get a token
# embedding of their own added, scaled per head by a gate read from the first channels of its input.
VE_GATE_CHANNELS = 32


def has_value_embedding(layer, config):
    """Every other layer, counted back from the last, which always has one."""
    return config.value_embeddings and layer % 2 == (config.n_layer - 1) % 2


# Bigram hash embeddings (modded-nanogpt): each (previous, current) pair of tokens has a row of a
# table, shared by the pairs that hash alike, so that the first layer sees the pair, not the token alone.
BIGRAM_MULTIPLIERS = (36313, 27191)  # large and odd: spread the token ids over the bits before the xor


def bigram_rows(idx, prev, rows):
    """The table row of each token of idx (B, T) and the token before it (prev, (B, 1), before the
    first): a hash into rows - 1 rows; a first token with no token before it takes the last row."""
    before = torch.cat((prev, idx[:, :-1]), 1) if prev is not None else F.pad(idx[:, :-1], (1, 0), value=-1)
    hashed = torch.bitwise_xor(BIGRAM_MULTIPLIERS[0] * idx, BIGRAM_MULTIPLIERS[1] * before) % (rows - 1)
    return torch.where(before < 0, rows - 1, hashed)


def sliding_window_mask(T, block_size, device):
    """(T, T), True where a query may attend: itself and the block_size - 1 tokens before it."""
    distance = torch.arange(T, device=device)[:, None] - torch.arange(T, device=device)
    return (distance >= 0) & (distance < block_size)


def rms_norm(x):
    """Unit RMS over the last dimension, no gain (QK-norm). Autocast may compute it in float32:
    cast back, since SDPA wants q, k and v in one dtype."""
    return F.rms_norm(x, (x.size(-1),)).to(x.dtype)


# GPT-2's GELU is 0.5 x (1 + tanh(z)), z = sqrt(2/pi) (x + 0.044715 x^3); 2z = x (C1 + C3 x^2)
GELU_C1 = math.sqrt(8 / math.pi)
GELU_C3 = GELU_C1 * 0.044715


class SigmoidGELU(torch.autograd.Function):
    """GPT-2's GELU as x * sigmoid(2z): the same function, since 0.5 (1 + tanh(z)) = sigmoid(2z).
    PyTorch's CPU tanh is slow: on a 2-core AVX2 machine this forward and backward together take a
    third of the time of F.gelu(approximate="tanh"). It keeps the sigmoid for backward, which costs
    one more saved activation of the MLP's width."""

    @staticmethod
    def forward(ctx, x):
        s = (x * x).mul_(GELU_C3).add_(GELU_C1).mul_(x).sigmoid_()
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    @torch.autograd.function.once_differentiable  # s was computed outside autograd: no second derivative
    def backward(ctx, grad):
        # s = sigmoid(u), u = 2z = x (C1 + C3 x^2): d(x s)/dx = s (1 + (1 - s) t), t = x du/dx = x (C1 + 3 C3 x^2)
        x, s = ctx.saved_tensors
        t = (x * x).mul_(3 * GELU_C3).add_(GELU_C1).mul_(x)
        t.addcmul_(t, s, value=-1.0)  # t * (1 - s) without another temporary
        return t.add_(1.0).mul_(s).mul_(grad)
