"""
The bridge to Hugging Face's GPT-2 format, both ways: load OpenAI's GPT-2 (a hub preset or a
local directory) into our GPT, and write our GPT as a directory that transformers loads.

Parameter names are GPT-2's own on both sides; only the Conv1D matrices of the HF checkpoints
are stored transposed relative to our nn.Linear.
"""

import json
import os
from pathlib import Path

import torch
from tiktoken_ext.openai_public import ENDOFTEXT

from atomic import write_atomically, write_json
from chat_template import CHAT_TEMPLATE, END
from model import GPT, GPT2_VOCAB_SIZE, PRESETS, GPTConfig


def from_pretrained(name_or_path, **overrides):
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

        try:
            directory = snapshot_download(
                f"openai-community/{name_or_path}", allow_patterns=["config.json", "model.safetensors"]
            )
        except Exception as e:  # offline, a proxy, the hub down: its message runs over several lines
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OSError(f"cannot download {name_or_path} from the Hugging Face hub ({reason}): download it once "
                          f"where the network is and pass its directory (docs/training.md, 'Offline use')") from None
    else:
        raise ValueError(
            f"'{name_or_path}' is neither a GPT-2 preset ({', '.join(PRESETS)}) "
            "nor a directory with config.json and model.safetensors or pytorch_model.bin"
        )
    config = _config_from_hf(directory, dropout=overrides.get("dropout", 0.0))
    model = GPT(config)
    _load_hf_weights(model, directory)
    if overrides.get("block_size") is not None:
        model.crop_block_size(overrides["block_size"])
    return model


def save_pretrained(model, directory, eos_token_id=GPT2_VOCAB_SIZE - 1, bos_token_id=GPT2_VOCAB_SIZE - 1,
                    vocab_size=None):
    """Write a Hugging Face GPT-2 directory (config.json + model.safetensors) that
    transformers' GPT2LMHeadModel.from_pretrained loads. eos_token_id: where generation stops,
    GPT-2's <|endoftext|> (a chat model's <|end|>); bos_token_id: the token documents start with,
    GPT-2's <|endoftext|> too; None for a tokenizer without one. vocab_size: the tokenizer's; the
    rows past it, which pad the vocabulary to a multiple of 64, are left out, so that no
    generator can draw an id that no tokenizer knows."""
    from safetensors.torch import save_file

    c = model.config
    switches = c.modern_switches()
    if switches:
        raise ValueError("HF GPT-2 is GPT-2's architecture only: this model sets "
                         + ", ".join(f"{k}={v!r}" for k, v in switches.items()) + ", so it cannot be exported")
    if not c.bias:
        raise ValueError("HF GPT-2 has biases everywhere: a model trained with bias=False cannot be exported")
    vocab_size = vocab_size or c.vocab_size
    hf_config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocab_size,
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
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "tie_word_embeddings": True,
    }
    # lm_head.weight is the same tensor as wte: HF ties it back on load, and safetensors refuses shared storage
    tensors = {
        name: (p.t() if name.endswith(CONV1D_WEIGHTS) else p).detach().to("cpu", torch.float32).contiguous()
        for name, p in model.state_dict().items()
        if name != "lm_head.weight"
    }
    tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"][:vocab_size].contiguous()
    # each file goes to a temp name first, so a failed export never leaves a half-written one
    os.makedirs(directory, exist_ok=True)
    write_atomically(os.path.join(directory, "model.safetensors"),
                     lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_json(os.path.join(directory, "config.json"), hf_config)


def added_token(token):
    """A special token as Hugging Face's tokenizer files describe it: matched whole, as written."""
    return {"content": token, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
            "special": True}


def save_gpt2_tokenizer(directory, tokenizer, model_max_length):
    """GPT-2's tokenizer files (vocab.json, merges.txt, tokenizer_config.json), made from the
    tiktoken ranks that data.py loads offline, so that transformers' AutoTokenizer and pipeline
    load an exported directory with nothing else; for a chat model (tokenizer.GPT2Tokenizer with
    chat tokens) also its chat tokens and the chat template, so that apply_chat_template gives
    the prompts that the model was trained on, and generation ends at <|end|>."""
    enc = tokenizer.enc
    vocab, merges = byte_level_vocab(enc._mergeable_ranks)
    specials = {ENDOFTEXT: enc.eot_token, **tokenizer.chat_tokens}
    vocab.update(specials)
    special = {"bos_token": ENDOFTEXT, "eos_token": END if tokenizer.chat_tokens else ENDOFTEXT,
               "unk_token": ENDOFTEXT}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length, "add_prefix_space": False,
              **special}
    if tokenizer.chat_tokens:  # tokens of their own, split out of the text before BPE
        special["additional_special_tokens"] = list(tokenizer.chat_tokens)
        config["added_tokens_decoder"] = {str(i): added_token(token) for token, i in specials.items()}
        config.update(special, chat_template=CHAT_TEMPLATE)
    write_json(os.path.join(directory, "vocab.json"), vocab)
    write_atomically(os.path.join(directory, "merges.txt"),
                     lambda tmp: Path(tmp).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                                      encoding="utf-8"))
    write_json(os.path.join(directory, "tokenizer_config.json"), config)
    write_json(os.path.join(directory, "special_tokens_map.json"), special)


def save_bpe_tokenizer(directory, tokenizer, model_max_length):
    """A trained vocabulary (tokenizer.BPETokenizer) as tokenizer.json, the format of Hugging Face's
    tokenizers library that AutoTokenizer loads, and tokenizer_config.json (with the chat template for
    a chat model). It splits text with our pattern, maps bytes to GPT-2's printable characters, and
    merges as tiktoken does: a piece that is a token as a whole is that token (ignore_merges), the
    others merge in rank order. Special tokens: in text given to transformers they are matched, as in
    GPT-2's tokenizer; ours never match text."""
    enc = tokenizer.enc
    vocab, merges = byte_level_vocab(enc._mergeable_ranks)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    write_json(os.path.join(directory, "tokenizer.json"), {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, **added_token(token)} for token, i in enc._special_tokens.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": enc._pat_str}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": None,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    })
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "clean_up_tokenization_spaces": False}
    if tokenizer.chat_tokens:
        config.update(eos_token=END, chat_template=CHAT_TEMPLATE)
    write_json(os.path.join(directory, "tokenizer_config.json"), config)


def byte_level_vocab(ranks):
    """tiktoken's ranks in Hugging Face's terms: {token: id} and the merges in rank order, as pairs,
    each token written as GPT-2 writes token bytes, one printable character a byte.

    tiktoken keeps only each token's rank; Hugging Face's format wants the merges. The merge
    that made a token is found by running BPE on its bytes with only the lower ranks: what is
    left are the two parts that the token's own rank joins."""
    byte_to_char = gpt2_byte_chars()

    def text(token):
        return "".join(byte_to_char[b] for b in token)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = bpe_parts(ranks, token, rank)
            merges.append((text(left), text(right)))
    return {text(token): rank for token, rank in ranks.items()}, merges


def bpe_parts(ranks, token, max_rank):
    """The parts that byte-level BPE leaves of token when only merges ranked below max_rank exist."""
    parts = [bytes([b]) for b in token]
    while True:
        pairs = [(ranks.get(a + b, max_rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs, default=(max_rank, -1))
        if rank >= max_rank:
            return parts
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def gpt2_byte_chars():
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes stand for
    themselves, the others (control bytes, space, ...) are moved to code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


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
