"""
Export a training run's checkpoint as a Hugging Face directory that other tools load as it is.

  python export.py --out_dir=out-shakespeare --to=shakespeare-gpt2
  python export.py --out_dir=out-gpt2 --checkpoint=best.pt --to=my-gpt2

The directory holds config.json and model.safetensors and, for BPE models, the tokenizer files
(GPT-2's, or tokenizer.json for a vocabulary learned here), so that
transformers.pipeline("text-generation", model=DIR) works with nothing else; a chat model's have
its chat tokens and chat template, so that the pipeline takes a list of messages and answers as
serve.py does. A character-level model has no Hugging Face tokenizer: its directory gets
char_vocab.json (token id i is character i, then a chat model's chat tokens) and a README.md that
says how to encode. The export is written beside DIR and renamed into place: a failed export
leaves DIR as it was.
"""

import os
import shutil
import sys

from atomic import write_json
from chat_template import END
from checkpoint import find_run, load_checkpoint, model_from_checkpoint
from configurator import configure
from hf import save_bpe_tokenizer, save_gpt2_tokenizer, save_pretrained
from tokenizer import get_tokenizer

DEFAULTS = dict(
    out_dir="",  # the training run; empty: the newest run here (the last checkpoint written)
    checkpoint="ckpt.pt",  # or best.pt
    to="",  # the directory to write; an earlier export there is replaced
)


def fail(message):
    raise SystemExit(f"error: {message}")


CHAR_README = """# A character-level model

This model was trained by reading one character per token. Hugging Face has no tokenizer of
this kind, so `transformers.pipeline` cannot take it; encode and decode with the list in
`char_vocab.json`, where token id i is the character at index i:

```python
import json, torch
from transformers import GPT2LMHeadModel

chars = json.load(open("DIR/char_vocab.json"))
model = GPT2LMHeadModel.from_pretrained("DIR")
ids = torch.tensor([[chars.index(c) for c in "ROMEO:"]])
out = model.generate(ids, max_new_tokens=100, do_sample=False)
print("".join(chars[i] for i in out[0]))
```

Or sample it where it was trained: `python sample.py --out_dir=RUN`.
"""


CHAT_README = """
## A chat model

The last four entries of `char_vocab.json` are its chat tokens, each one token: a conversation is
`<|user|>` + the user's text + `<|end|>`, and so on for `<|system|>` and `<|assistant|>`, and the
model answers what follows `<|assistant|>` until it writes `<|end|>` (eos_token_id in config.json).
Or chat with it where it was trained: `python chat.py --out_dir=RUN`.
"""


def export(ckpt, directory, name):
    """Write ckpt's model and tokenizer files to directory; name is what the char README calls it."""
    model = model_from_checkpoint(ckpt)
    tokenizer = get_tokenizer(ckpt["meta"])
    # generation ends at a chat model's <|end|>, else at <|endoftext|> (none for a char model)
    end = tokenizer.chat_tokens.get(END, tokenizer.eot_token)
    save_pretrained(model, directory, eos_token_id=end, bos_token_id=tokenizer.eot_token,
                    vocab_size=tokenizer.vocab_size)
    if tokenizer.kind == "gpt2":
        save_gpt2_tokenizer(directory, tokenizer, model.config.block_size)
    elif tokenizer.kind == "bpe":
        save_bpe_tokenizer(directory, tokenizer, model.config.block_size)
    else:
        write_json(os.path.join(directory, "char_vocab.json"), tokenizer.texts)
        with open(os.path.join(directory, "README.md"), "w") as f:
            readme = CHAR_README + (CHAT_README if tokenizer.chat_tokens else "")
            f.write(readme.replace("DIR", name))
    return tokenizer


def export_in_place(ckpt, to):
    """Build the whole export beside its destination, then swap it in: an earlier export is replaced
    only by a complete one. Returns the tokenizer exported."""
    tmp, old = os.path.normpath(to) + ".tmp", os.path.normpath(to) + ".old"
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed export left
    try:
        tokenizer = export(ckpt, tmp, os.path.basename(os.path.normpath(to)))
        if os.path.exists(to):
            os.replace(to, old)
        os.replace(tmp, to)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return tokenizer


def main(argv):
    c, _ = configure(DEFAULTS, argv, usage=__doc__)
    to, checkpoint = c["to"], c["checkpoint"]
    if not to:
        fail("say where to write the export: --to=DIR")
    if os.path.exists(to) and not os.path.isfile(os.path.join(to, "config.json")):
        fail(f"{to} exists and is not an earlier export (no config.json): choose another --to, or remove it")
    try:
        out_dir = find_run(c["out_dir"], checkpoint)
        ckpt = load_checkpoint(os.path.join(out_dir, checkpoint))
    except (OSError, ValueError) as e:
        fail(e)
    try:
        tokenizer = export_in_place(ckpt, to)
    except (OSError, ValueError) as e:
        fail(f"cannot export {out_dir}/{checkpoint}: {e}")

    print(f"exported {out_dir}/{checkpoint} (iter {ckpt['iter_num']}) to {to}/ with its {tokenizer.kind} tokenizer"
          + (" and its chat tokens" if tokenizer.chat_tokens else ""))
    if tokenizer.kind == "char":
        print(f"note: a character-level model: transformers has no tokenizer for it; {to}/README.md says how to "
              f"encode with {to}/char_vocab.json")


if __name__ == "__main__":
    main(sys.argv[1:])
