"""
GPT-2 in one module: the model, its optimizer groups, its FLOPs and MFU, and the
bridge to Hugging Face's GPT-2 format in both directions.

Parameter names are GPT-2's own (transformer.wte, .wpe, .h.N.attn.c_attn, ...), so
weights map one to one; only the Conv1D matrices of the HF checkpoints are stored
transposed relative to our nn.Linear.
"""

import json
import math
import os
from dataclasses import dataclass

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


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size), the layout SDPA wants
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        causal = True
        if cache is not None:
            # a prompt into an empty cache is causal as usual; a new token attends to everything cached
            causal = cache.length == 0
            if not causal and T != 1:
                raise ValueError("a KV cache takes a prompt, then one token at a time")
            k, v = cache.append(k, v)
        # Dispatches to flash attention on GPUs; dropout_p must be 0 in eval, SDPA does not know the mode.
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


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


def gelu(x):
    """GPT-2's GELU (the tanh approximation, which it was trained with)."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return SigmoidGELU.apply(x)
    return F.gelu(x, approximate="tanh")  # one fused kernel on GPUs; bf16 keeps F.gelu's float math


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """One attention layer's keys and values for the tokens seen so far, so that generation
    computes each new token's attention without recomputing the prefix."""

    def __init__(self, max_len):
        self.max_len, self.length = max_len, 0
        self.k = self.v = None

    def append(self, k, v):
        if self.k is None:  # allocated on first use, in whatever dtype autocast gives k and v
            B, n_head, _, head_size = k.shape
            self.k = k.new_empty(B, n_head, self.max_len, head_size)
            self.v = v.new_empty(B, n_head, self.max_len, head_size)
        end = self.length + k.size(2)
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index):
        """Keep the sequences at `index` of the batch (beam search)."""
        self.k, self.v = self.k[index], self.v[index]


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        # Recompute each block's activations in backward instead of storing them: less memory, ~1/3 more compute.
        self.activation_checkpointing = False
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream, so that its
        # variance does not grow with depth: two per block, hence 2 * n_layer.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=True):
        """Parameters, counting the tied wte/lm_head once; wpe is left out by default
        because a lookup costs no FLOPs, while wte does work as the LM head."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, kv_caches=None):
        """kv_caches: one KVCache per layer, for generation; idx then continues the cached tokens."""
        B, T = idx.size()
        start = kv_caches[0].length if kv_caches else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size={self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            if kv_caches:
                x = block(x, kv_caches[i])
            elif recompute:
                # non-reentrant checkpointing restores the RNG state, so dropout masks match on recompute
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            # generation needs only the next token's distribution: skip the other T-1 (large) head matmuls
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                 seed=None, kv_cache=True, vocab_limit=None):
        """Continue each row of idx (B, T), yielding the next tokens, shape (B,), one step at a time.
        temperature 0 is greedy. A row that has produced stop_token yields stop_token from then on,
        and generation ends when every row has. Only ids below vocab_limit are drawn: a vocabulary
        padded for speed (50304) has ids that no tokenizer knows. Call model.eval() first.

        With kv_cache the prompt is processed once and then one token per step. Once the sequence
        outgrows block_size, the context is its last block_size tokens; GPT-2's learned absolute
        positions then shift every step, so each step recomputes that window, cache or not."""
        generator = torch.Generator(device=idx.device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
        caches = None
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits, caches = self._next_logits(idx, caches, kv_cache)
            token = sample_token(logits[:, :vocab_limit].float(), temperature, top_k, top_p, generator)
            if stop_token is not None:
                token = torch.where(done, stop_token, token)
                done |= token == stop_token
            idx = torch.cat((idx, token[:, None]), dim=1)
            yield token
            if done.all():
                return

    @torch.no_grad()
    def beam_search(self, idx, max_new_tokens, num_beams, stop_token=None, length_penalty=1.0, kv_cache=True,
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
            logits, caches = self._next_logits(beams, caches, kv_cache)
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

    def _next_logits(self, seq, caches, kv_cache):
        """Logits (B, V) for the token after each row of seq, and the caches for the next call.
        While seq fits in block_size, a cache means only its newest token goes through the model."""
        block_size = self.config.block_size
        if kv_cache and seq.size(1) <= block_size:
            if caches is None:
                caches = [KVCache(block_size) for _ in self.transformer.h]
                logits, _ = self(seq, kv_caches=caches)
            else:
                logits, _ = self(seq[:, -1:], kv_caches=caches)
            return logits[:, -1, :], caches
        logits, _ = self(seq[:, -block_size:])
        return logits[:, -1, :], None

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to fine-tune GPT-2 (1024) on shorter sequences."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # Decay the matrices (Linear weights, embeddings); leave biases and LayerNorm gains alone.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # the fused kernel updates each tensor in one pass instead of about ten (CPU since torch 2.4)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

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

    @classmethod
    def from_pretrained(cls, name_or_path, **overrides):
        """GPT-2 weights: a preset name (fetched from the Hugging Face hub) or a local
        directory in HF format, which is how air-gapped clusters get them.
        overrides: dropout, and block_size to crop the context."""
        unknown = set(overrides) - {"dropout", "block_size"}
        if unknown:
            raise ValueError(f"from_pretrained can override only dropout and block_size, not {sorted(unknown)}")
        if os.path.isdir(name_or_path):
            directory = name_or_path
        elif name_or_path in PRESETS:
            from huggingface_hub import snapshot_download

            directory = snapshot_download(
                f"openai-community/{name_or_path}", allow_patterns=["config.json", "model.safetensors"]
            )
        else:
            raise ValueError(
                f"'{name_or_path}' is neither a GPT-2 preset ({', '.join(PRESETS)}) "
                "nor a directory with config.json and model.safetensors or pytorch_model.bin"
            )
        config = _config_from_hf(directory, dropout=overrides.get("dropout", 0.0))
        model = cls(config)
        _load_hf_weights(model, directory)
        if overrides.get("block_size") is not None:
            model.crop_block_size(overrides["block_size"])
        return model

    def save_pretrained(self, directory):
        """Write a Hugging Face GPT-2 directory (config.json + model.safetensors) that
        transformers' GPT2LMHeadModel.from_pretrained loads."""
        from safetensors.torch import save_file

        c = self.config
        if not c.bias:
            raise ValueError("HF GPT-2 has biases everywhere: a model trained with bias=False cannot be exported")
        hf_config = {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": c.vocab_size,
            "n_positions": c.block_size,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": None,
            "activation_function": "gelu_new",
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout,
            "layer_norm_epsilon": 1e-5,
            "initializer_range": 0.02,
            "bos_token_id": GPT2_VOCAB_SIZE - 1,
            "eos_token_id": GPT2_VOCAB_SIZE - 1,
            "tie_word_embeddings": True,
        }
        # lm_head.weight is the same tensor as wte: HF ties it back on load, and safetensors refuses shared storage
        tensors = {
            name: (p.t() if name.endswith(CONV1D_WEIGHTS) else p).detach().to("cpu", torch.float32).contiguous()
            for name, p in self.state_dict().items()
            if name != "lm_head.weight"
        }
        # each file goes to a temp name first, so a failed export never leaves a half-written one
        os.makedirs(directory, exist_ok=True)
        weights = os.path.join(directory, "model.safetensors")
        save_file(tensors, weights + ".tmp", metadata={"format": "pt"})
        os.replace(weights + ".tmp", weights)
        config_path = os.path.join(directory, "config.json")
        with open(config_path + ".tmp", "w") as f:
            json.dump(hf_config, f, indent=2)
        os.replace(config_path + ".tmp", config_path)


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


# HF's GPT-2 uses Conv1D layers, which store these matrices as (in, out); nn.Linear stores (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _config_from_hf(directory, dropout):
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: an HF GPT-2 directory needs config.json")
    with open(path) as f:
        hf = json.load(f)
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{path}: model_type is '{hf['model_type']}', only GPT-2 ('gpt2') is supported")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise ValueError(f"{path}: n_inner={hf['n_inner']} but this GPT has a 4 * n_embd MLP")
    return GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=dropout, bias=True)


def _read_hf_tensors(directory):
    """All tensors of an HF checkpoint, as {name: tensor}, plus the file they came from.
    Nothing is unpickled: safetensors, or torch.load restricted to tensors."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    legacy = os.path.join(directory, "pytorch_model.bin")
    if os.path.isfile(single) or os.path.isfile(index):
        from safetensors.torch import load_file

        if os.path.isfile(single):
            return load_file(single), single
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_file(os.path.join(directory, shard)))
        return tensors, index
    if os.path.isfile(legacy):
        return torch.load(legacy, map_location="cpu", weights_only=True), legacy
    raise FileNotFoundError(f"{directory} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _load_hf_weights(model, directory):
    tensors, source = _read_hf_tensors(directory)
    # GPT2LMHeadModel saves "transformer.h.0...", GPT2Model (the hub's gpt2 files) saves "h.0..."
    tensors = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v for k, v in tensors.items()}
    # causal-mask buffers of older transformers versions, and the head that is tied to wte anyway
    tensors = {k: v for k, v in tensors.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    tensors.pop("lm_head.weight", None)

    ours = model.state_dict()
    expected = set(ours) - {"lm_head.weight"}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{source}: tensors do not match GPT-2: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name in sorted(expected):
            t = tensors[name].t() if name.endswith(CONV1D_WEIGHTS) else tensors[name]
            if t.shape != ours[name].shape:
                raise ValueError(f"{source}: {name} has shape {tuple(t.shape)}, "
                                 f"config.json implies {tuple(ours[name].shape)}")
            ours[name].copy_(t)


# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' data sheets.
# Matched in order against the device name, so the more specific names come first.
GPU_PEAK_FLOPS = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM; reports itself as "NVIDIA H100 80GB HBM3"
    ("H200", 989e12),  # GH200 too
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", None),  # AWS's A10 variant: no published figure, so no guess
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("RTX A6000", 155e12),
    ("MI300X", 1307e12),
]


def pick_device(local_rank=0):
    if torch.cuda.is_available():
        return f"cuda:{local_rank}"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device):
    """bf16 where the GPU has it natively (compute capability 8+; emulated it is slower than
    fp16), fp16 (with loss scaling) on older GPUs, fp32 elsewhere."""
    if torch.device(device).type == "cuda":
        return "bfloat16" if torch.cuda.get_device_capability(device)[0] >= 8 else "float16"
    return "float32"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def gpu_peak_flops(device_name):
    """The bf16 peak of a GPU named like torch.cuda.get_device_name(), or None if unknown."""
    for key, peak in GPU_PEAK_FLOPS:
        if key in device_name:
            return peak
    return None
