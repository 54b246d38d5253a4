import pytest
import torch

import attention
from bpe import train_bpe
from conftest import CHARS, REPO, main_error, run_main, save_run, tiny_model
from tokenizer import CharTokenizer, get_tokenizer

CHAR_META = {"tokenizer": "char", "chars": CHARS, "vocab_size": len(CHARS)}


@pytest.mark.parametrize("switches", [{}, dict(rope=True, qk_norm=True)], ids=["gpt2", "modern"])
def test_maps_are_the_attention_the_model_computes(switches):
    # weighting the values by the maps and projecting must give the attention's own output, in every layer
    model = tiny_model(n_layer=2, n_head=4, **switches).eval()
    idx = torch.randint(0, model.config.vocab_size, (1, 16))
    seen = []
    hooks = [b.attn.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
             for b in model.transformer.h]
    maps = attention.attention_maps(model, idx)
    for hook in hooks:
        hook.remove()
    assert maps.shape == (2, 4, 16, 16)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, 16))
    assert (maps.triu(1) == 0).all()  # no token looks ahead
    with torch.no_grad():
        for layer, (attn, x, out) in enumerate(seen):
            v = attn.c_attn(x).split(32, dim=2)[2].view(1, 16, 4, 8).transpose(1, 2)
            y = (maps[layer] @ v).transpose(1, 2).reshape(1, 16, 32)
            torch.testing.assert_close(attn.c_proj(y), out, atol=1e-5, rtol=0)


TOKENIZERS = {
    "char": lambda: CharTokenizer(CHARS),
    "gpt2": lambda: get_tokenizer({"tokenizer": "gpt2"}),
    "bpe": lambda: train_bpe([(REPO / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]], 300),
}


@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_picture_has_a_heatmap_per_head_and_the_tokens_on_its_axes(kind, tmp_path):
    tokenizer = TOKENIZERS[kind]()
    model = tiny_model(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2).eval()
    tokens = tokenizer.encode("ROMEO:\nBut soft")
    labels = attention.token_labels(tokenizer, tokens)
    assert "".join(labels) == "ROMEO:\\nBut\u00b7soft"  # whitespace made visible, nothing else changed
    maps = attention.attention_maps(model, torch.tensor([tokens]))
    fig = attention.draw(maps, labels, range(2), str(tmp_path / "attn.png"))
    axes = fig.get_axes()
    assert len(axes) == 4  # 2 layers x 2 heads
    for ax in axes:
        assert ax.get_images()[0].get_array().shape == (len(tokens), len(tokens))
    bottom_left = axes[2]
    assert [t.get_text() for t in bottom_left.get_xticklabels()] == labels
    assert [t.get_text() for t in bottom_left.get_yticklabels()] == labels
    assert (tmp_path / "attn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_script_draws_one_layer_of_a_run(tmp_path):
    run = save_run(tmp_path / "run", tiny_model(n_layer=2, n_head=2), CHAR_META)
    out = tmp_path / "attn.svg"
    result = run_main(attention.main, f"--out_dir={run}", "--prompt=ROMEO:", "--layer=1", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out}: 1 layer(s) x 2 heads over 6 tokens\n"
    svg = out.read_text()
    assert "layer 1, head 1" in svg and "layer 0" not in svg


def test_bad_input_gets_one_line(tmp_path):
    run = save_run(tmp_path / "run", tiny_model(n_layer=2, n_head=2), CHAR_META)
    out = f"--out={tmp_path / 'attn.png'}"
    assert main_error(attention.main, f"--out_dir={run}", "--prompt=caf\u00e9", out) == \
        "error: the prompt has characters not in the vocabulary: '\u00e9'"
    assert main_error(attention.main, f"--out_dir={run}", "--prompt=" + "a" * 17, out) == \
        "error: the prompt is 17 tokens, more than the model reads at once (block_size=16): shorten it"
    assert main_error(attention.main, f"--out_dir={run}", "--layer=2", "--prompt=a", out) == \
        "error: layer=2: this model has layers 0 to 1 (-1 draws them all)"
    assert main_error(attention.main, f"--out_dir={run}", f"--out={tmp_path / 'attn.jpg'}") == \
        f"error: out={tmp_path / 'attn.jpg'}: name a .png, .svg or .pdf file"
    assert not (tmp_path / "attn.png").exists()
