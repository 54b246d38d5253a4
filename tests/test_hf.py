import json
import os
import random

import pytest
import torch

from bpe import train_bpe
from chat_template import CHAT_TOKENS
from conftest import REPO, UNICODE, VARIED_TEXTS, random_text, tiny_model
from hf import from_pretrained, save_bpe_tokenizer, save_pretrained
from model import GPT, GPTConfig

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
    ours = from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, cfg["vocab_size"], (3, cfg["block_size"]))
    with torch.no_grad():
        torch.testing.assert_close(full_logits(ours, idx), hf(idx).logits, atol=1e-5, rtol=0)


def test_loads_hub_layout_and_pickle_free_bin(tmp_path):
    # The hub's gpt2 files come from GPT2Model (no "transformer." prefix); older ones are pytorch_model.bin.
    cfg = SMALL_CONFIGS[1]
    hf = hf_model(**cfg)
    hf.config.to_json_file(tmp_path / "config.json")
    torch.save(hf.transformer.state_dict(), tmp_path / "pytorch_model.bin")
    ours = from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, cfg["vocab_size"], (2, cfg["block_size"]))
    with torch.no_grad():
        torch.testing.assert_close(full_logits(ours, idx), hf(idx).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg", SMALL_CONFIGS[1:])
def test_export_loads_in_transformers(tmp_path, cfg):
    ours = tiny_model(seed=1, **cfg).eval()
    save_pretrained(ours, str(tmp_path))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, cfg["vocab_size"], (2, cfg["block_size"]))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, full_logits(ours, idx), atol=1e-5, rtol=0)
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_from_pretrained_overrides(tmp_path):
    hf_model(**SMALL_CONFIGS[1]).save_pretrained(tmp_path)
    model = from_pretrained(str(tmp_path), dropout=0.2, block_size=8)
    assert model.config.dropout == 0.2 and model.config.block_size == 8
    assert model.transformer.wpe.weight.shape == (8, 32)
    with pytest.raises(ValueError, match="only dropout and block_size"):
        from_pretrained(str(tmp_path), n_layer=3)


def test_bad_pretrained_inputs(tmp_path):
    with pytest.raises(ValueError, match="neither a GPT-2 preset"):
        from_pretrained("gpt3")
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(str(tmp_path))
    hf = hf_model(**SMALL_CONFIGS[1])
    hf.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_pretrained(str(tmp_path))
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vocab_size"] += 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model.safetensors: transformer.wte.weight has shape"):
        from_pretrained(str(tmp_path))


def test_export_refuses_a_model_beyond_gpt2(tmp_path):
    model = GPT(GPTConfig(**SMALL_CONFIGS[1], rope=True, mlp_act="relu2"))
    with pytest.raises(ValueError, match=r"this model sets rope=True, mlp_act='relu2', so it cannot be exported"):
        save_pretrained(model, str(tmp_path))
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_a_trained_vocabulary_encodes_in_transformers_as_ours(tmp_path, pattern):
    text = (REPO / "assets" / "tinyshakespeare.txt").read_text()[:300_000]
    bpe = train_bpe([text, UNICODE * 20], 800, pattern)
    save_bpe_tokenizer(tmp_path, bpe, model_max_length=64)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    rng = random.Random(0)
    # "<|endoftext|>" in text is that token to transformers, as in GPT-2's tokenizer; never to us
    for x in [t for t in VARIED_TEXTS if "<|" not in t] + [text[-3000:]] + [random_text(rng, 50) for _ in range(300)]:
        assert theirs(x)["input_ids"] == bpe.encode(x), x
        assert theirs.decode(bpe.encode(x)) == x
    assert theirs.convert_tokens_to_ids(["<|endoftext|>", *CHAT_TOKENS]) == list(range(795, 800))
    assert (theirs.eos_token, theirs.model_max_length) == ("<|endoftext|>", 64)
