"""
Attention maps: where each head of a model looks, for a prompt. One heatmap per head, the prompt's
tokens on both axes: row i is what token i attends to, and sums to 1 over tokens 0..i.

  python attention.py --out_dir=out-shakespeare-char-cpu --prompt="ROMEO:\nBut soft, what light" --out=attn.png
  python attention.py --init_from=gpt2 --prompt="The cat sat on the mat because it was" --layer=5
  python attention.py --out_dir=out-shakespeare-record-cpu --layer=0 --out=attn.svg

Char, GPT-2 BPE and learned-BPE models alike: the labels are each token's own text (a space shows
as a middle dot, a newline as \\n). Every layer is a row of the picture, every head a column;
--layer draws one. PNG, SVG or PDF by --out's extension.
"""

import math
import os
import sys

import torch
import torch.nn.functional as F

from atomic import write_atomically
from checkpoint import load_model
from configurator import configure
from model import apply_rope, rms_norm
from tokenizer import encode_prompt

DEFAULTS = dict(
    init_from="resume",  # 'resume' (a checkpoint in out_dir), 'gpt2'...'gpt2-xl', or a local HF directory
    out_dir="",  # the training run; empty: the newest run here (the last checkpoint written)
    checkpoint="ckpt.pt",  # or best.pt
    prompt="ROMEO:\nBut soft, what light through yonder window breaks?",
    layer=-1,  # draw only this layer (0 is the first); -1 draws them all
    out="attention.png",
)
FORMATS = ("png", "svg", "pdf")
PANEL = 0.09  # inches of a heatmap per token: a label's height at 6 points


def fail(message):
    raise SystemExit(f"error: {message}")


def head_weights(attn, x, rope=None, mask=None):
    """The attention probabilities (B, n_head, T, T) that model.CausalSelfAttention computes from its
    input x and does not keep (SDPA never forms them): the same queries and keys, written out."""
    B, T, C = x.size()
    q, k, _ = attn.c_attn(x).split(C, dim=2)
    q, k = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k))
    if attn.qk_norm:
        q, k = rms_norm(q), rms_norm(k)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // attn.n_head)
    allowed = mask if mask is not None else torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return F.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)


@torch.no_grad()
def attention_maps(model, idx):
    """Every head's attention over the tokens idx (1, T), as (n_layer, n_head, T, T): each layer's
    input is caught on its way into the layer's attention during one forward pass."""
    maps = []

    def catch(attn, args):
        x, rope, mask = args[0], args[1], args[2]
        maps.append(head_weights(attn, x, rope, mask)[0])

    hooks = [block.attn.register_forward_pre_hook(catch) for block in model.transformer.h]
    try:
        model(idx)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(maps)


def token_labels(tokenizer, tokens):
    """Each token's own text, its whitespace made visible. A BPE token that ends inside a character
    shows the replacement character."""
    return [tokenizer.decode([t]).replace(" ", "\u00b7").replace("\n", "\\n").replace("\t", "\\t")
            for t in tokens]


def draw(maps, labels, layers, out, title=""):
    """A figure with a row of heatmaps per layer of maps (n_layer, n_head, T, T) that layers names,
    labels on the axes of the first column and the bottom row; written to out."""
    from matplotlib.figure import Figure  # no pyplot: no display, no global state

    n_head, T = maps.size(1), maps.size(-1)
    side = max(1.6, PANEL * T)
    fig = Figure(figsize=(n_head * side + 1, len(layers) * side + 0.8), layout="constrained")
    axes = fig.subplots(len(layers), n_head, squeeze=False)
    for row, layer in enumerate(layers):
        for head in range(n_head):
            ax = axes[row][head]
            ax.imshow(maps[layer, head].float().numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(T), labels if row == len(layers) - 1 else [], rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels if head == 0 else [], fontsize=6)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fmt = os.path.splitext(out)[1][1:].lower()
    write_atomically(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150))
    return fig


def main(argv):
    c, _ = configure(DEFAULTS, argv, usage=__doc__)
    if os.path.splitext(c["out"])[1][1:].lower() not in FORMATS:
        fail(f"out={c['out']}: name a .png, .svg or .pdf file")
    if not os.path.isdir(os.path.dirname(os.path.abspath(c["out"]))):
        fail(f"out={c['out']}: its directory does not exist")
    try:
        model, tokenizer, _ = load_model(c["init_from"], c["out_dir"], c["checkpoint"])
    except (OSError, ValueError, RuntimeError) as e:
        fail(e)
    model.eval()

    try:
        tokens = encode_prompt(tokenizer, c["prompt"])
    except ValueError as e:  # characters a char-level model never saw
        fail(f"the prompt has {e}")
    block_size = model.config.block_size
    if len(tokens) > block_size:
        fail(f"the prompt is {len(tokens)} tokens, more than the model reads at once (block_size={block_size}): "
             "shorten it")
    n_layer = model.config.n_layer
    if not -1 <= c["layer"] < n_layer:
        fail(f"layer={c['layer']}: this model has layers 0 to {n_layer - 1} (-1 draws them all)")

    maps = attention_maps(model, torch.tensor([tokens]))
    layers = range(n_layer) if c["layer"] == -1 else [c["layer"]]
    name = c["init_from"] if c["init_from"] != "resume" else c["out_dir"] or "the newest run"
    draw(maps, token_labels(tokenizer, tokens), layers, c["out"], f"attention of {name}, {len(tokens)} tokens")
    print(f"wrote {c['out']}: {len(layers)} layer(s) x {model.config.n_head} heads over {len(tokens)} tokens")


if __name__ == "__main__":
    main(sys.argv[1:])
