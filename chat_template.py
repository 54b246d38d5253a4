"""
The chat template: how a conversation becomes tokens for a chat model, as prepare_chat.py trains
it, chat.py and serve.py prompt it, and export.py writes it for transformers.

Each turn is its role's opening token, the content's text tokens, and <|end|>:
  [<|endoftext|>] <|system|>...<|end|> <|user|>...<|end|> <|assistant|>...<|end|> ...
(a conversation starts with the tokenizer's document token where it has one, as GPT-2's documents
do). The special tokens take the ids right after the tokenizer's own: 50257..50260 for GPT-2, rows
that the padded vocabulary (50304) of models trained here already has; a char vocabulary's come
after its characters; a trained BPE vocabulary has them from the start, after <|endoftext|>.
Content is always encoded as text, so a message that spells a special token keeps it as text.
"""

ROLES = ("system", "user", "assistant")
END = "<|end|>"
CHAT_TOKENS = (*(f"<|{role}|>" for role in ROLES), END)


def chat_token_ids(first):
    """{spelling: id} of the chat tokens, from id `first` on."""
    return {token: first + i for i, token in enumerate(CHAT_TOKENS)}


def render_conversation(tokenizer, messages):
    """A conversation as a chat model is trained on it: (tokens, mask), mask 1 where the loss counts
    the token: the assistant's text and the <|end|> that ends each of its turns. messages are
    {"role": one of ROLES, "content": str}. ValueError for a tokenizer without chat tokens, or
    characters that a char vocabulary lacks."""
    if not tokenizer.chat_tokens:
        raise ValueError("the model has no chat tokens: fine-tune it on a chat dataset first (prepare_chat.py, "
                         "then train.py)")
    tokens = [] if tokenizer.eot_token is None else [tokenizer.eot_token]
    mask = [0] * len(tokens)
    for message in messages:
        content = tokenizer.encode(message["content"])
        tokens += [tokenizer.chat_tokens[f"<|{message['role']}|>"], *content, tokenizer.chat_tokens[END]]
        mask += [0] + [int(message["role"] == "assistant")] * (len(content) + 1)
    return tokens, mask


# The same template for transformers' apply_chat_template (export.py writes it into a chat model's
# tokenizer files). Its special tokens are literals, so that apply_chat_template(...,
# sanitize_control_tokens=True) keeps their spellings in messages as text, as render_conversation
# does; {% generation %} marks what the loss counts (return_assistant_tokens_mask=True).
CHAT_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{% generation %}{{ message['content'] }}<|end|>"
    "{% endgeneration %}"
    "{% else %}{{ raise_exception('a role must be system, user or assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def render_prompt(tokenizer, messages):
    """The tokens that ask for the assistant's next turn: the conversation, then <|assistant|>.
    Generation ends at <|end|>."""
    return render_conversation(tokenizer, messages)[0] + [tokenizer.chat_tokens["<|assistant|>"]]
