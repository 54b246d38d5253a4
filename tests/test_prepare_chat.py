"""prepare_chat.py: conversations from JSON lines, parquet and Tiny Shakespeare into shards, masks and
starts that equal the chat template's; bad rows skipped and counted, or refused with nothing left."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data
import prepare_chat
from chat_template import render_conversation
from conftest import CHARS
from tokenizer import get_tokenizer

SHARD = 400  # tokens: the conversations below fill several shards


def conversation(i):
    """Conversation i: some with a system message, some of several turns, some not ASCII."""
    messages = [{"role": "system", "content": "Answer in one line."}] if i % 3 == 0 else []
    messages += [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f" {2 * i}."}]
    if i % 4 == 0:
        messages += [{"role": "user", "content": "Et en français ?"},
                     {"role": "assistant", "content": f"{2 * i}, été."}]
    return messages


CONVERSATIONS = [conversation(i) for i in range(45)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def prepare(*args):
    prepare_chat.main([str(a) for a in args])


def read_split(directory, split):
    """(tokens, mask, starts) of a split's shards, concatenated in order; starts as offsets into the whole."""
    tokens, masks, starts, offset = [], [], [], 0
    for shard in sorted(Path(directory).glob(f"chat_{split}_*.bin")):
        tokens.append(np.array(data.read_shard(shard)))
        masks.append(np.load(data.mask_path(shard)))
        starts.append(np.load(data.starts_path(shard)) + offset)
        offset += len(tokens[-1])
    return np.concatenate(tokens), np.concatenate(masks), np.concatenate(starts)


def expected_split(tokenizer, conversations, split):
    """What a split must hold: every 20th conversation is val, the rest train, each as the template renders it."""
    chosen = [c for k, c in enumerate(conversations) if (k % 20 == 19) == (split == "val")]
    rendered = [render_conversation(tokenizer, c) for c in chosen]
    starts = np.cumsum([0] + [len(t) for t, _ in rendered[:-1]])
    return np.concatenate([t for t, _ in rendered]), np.concatenate([m for _, m in rendered]), starts


def test_jsonl_and_parquet_give_the_template_s_tokens_and_masks(tmp_path):
    jsonl = write_jsonl(tmp_path / "chats.jsonl", [{"id": i, "messages": c} for i, c in enumerate(CONVERSATIONS)])
    parquet = tmp_path / "chats.parquet"
    pq.write_table(pa.table({"messages": CONVERSATIONS}), parquet)
    prepare("--data_files", jsonl, "--out_dir", tmp_path / "from_jsonl", "--shard_size", SHARD, "--block_size", 128)
    prepare("--data_files", parquet, "--out_dir", tmp_path / "from_parquet", "--shard_size", SHARD, "--block_size", 128)
    tokenizer = get_tokenizer({"tokenizer": "gpt2", "chat": True})
    for directory in (tmp_path / "from_jsonl", tmp_path / "from_parquet"):
        assert len(list(directory.glob("chat_train_*.bin"))) > 2
        for split in ("train", "val"):
            for got, want in zip(read_split(directory, split), expected_split(tokenizer, CONVERSATIONS, split)):
                assert np.array_equal(got, want)
        meta = data.read_meta(directory)
        assert meta["tokenizer"] == "gpt2" and meta["chat"] and meta["vocab_size"] == 50261
        assert (meta["train_conversations"], meta["val_conversations"], meta["skipped"]) == (43, 2, {})
        assert not list(tmp_path.glob("*.tmp"))
    # the loader reads it: each row starts a conversation, with <|endoftext|>
    x, y = data.ShardLoader(tmp_path / "from_jsonl", "train", 4, 32).next_batch()
    assert (x[:, 0] == 50256).all() and (y == -1).any() and (y != -1).any()


def test_bad_rows_are_skipped_and_counted(tmp_path, capsys):
    good = [{"messages": c} for c in CONVERSATIONS[:20]]
    bad = [{"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
           {"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "yo"}]},
           {"messages": [{"role": "user", "content": "hi"}]},
           {"messages": "hello"},
           {"messages": [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "yes"}]},
           {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "yo"}]}]
    bad[-1]["messages"][0]["role"] = "tool"
    jsonl = write_jsonl(tmp_path / "mixed.jsonl", good[:10] + bad + good[10:])
    prepare("--data_files", jsonl, "--out_dir", tmp_path / "out", "--block_size", 64)
    meta = data.read_meta(tmp_path / "out")
    assert meta["skipped"] == {"with a role that is not system, user or assistant": 2,
                               "with content that is not a string": 1, "without an assistant turn": 1,
                               "that are not a list of messages": 1, "longer than --block_size=64 tokens": 1}
    assert meta["train_conversations"] + meta["val_conversations"] == 20
    out = capsys.readouterr().out
    assert "skipped 6 rows: 2 with a role that is not system, user or assistant (the first: " in out
    assert f"{jsonl}:11)" in out and f"{jsonl}:15)" in out  # where the first of each kind is


def test_a_char_vocabulary_skips_what_it_cannot_spell(char_data, tmp_path):
    said = ["Speak, friend.", "What news?", "Good morrow, cousin.", "Un café ?"]  # 'é' is not Tiny Shakespeare's
    rows = [{"messages": [{"role": "user", "content": said[i % 4]}, {"role": "assistant", "content": "Ay."}]}
            for i in range(48)]
    prepare("--data_files", write_jsonl(tmp_path / "c.jsonl", rows), "--tokenizer_from", char_data, "--out_dir",
            tmp_path / "out")
    meta = data.read_meta(tmp_path / "out")
    assert meta["chars"] == CHARS and meta["vocab_size"] == len(CHARS) + 4 and meta["tokenizer"] == "char"
    assert meta["skipped"] == {"with characters that the vocabulary lacks": 12}
    tokens, _, starts = read_split(tmp_path / "out", "train")
    first = get_tokenizer(meta).decode(tokens[:starts[1]].tolist())
    assert first == "<|user|>Speak, friend.<|end|><|assistant|>Ay.<|end|>"


def test_the_offline_shakespeare_set(char_data, tmp_path):
    prepare("--shakespeare", "--tokenizer_from", char_data, "--block_size", 64, "--out_dir", tmp_path / "out")
    meta = data.read_meta(tmp_path / "out")
    assert meta["train_conversations"] + meta["val_conversations"] == 2408
    tokenizer = get_tokenizer(meta)
    tokens, mask, starts = read_split(tmp_path / "out", "train")
    ends = list(starts[1:]) + [len(tokens)]
    assert max(e - s for s, e in zip(starts, ends)) <= 64
    text = tokenizer.decode(tokens[starts[0]:ends[0]].tolist())
    # 'First Citizen:\nBefore we proceed any further, hear me speak.' then 'All:\nSpeak, speak.'
    assert text == "<|user|>Before we proceed any further, hear me speak.<|end|><|assistant|>Speak, speak.<|end|>"
    # where two speeches do not fit, the end of what was said and the start of the answer are kept
    speeches = [b.partition(":\n")[2] for b in prepare_chat.SHIPPED.read_text().split("\n\n")]
    said, answer = text_of(tokenizer, tokens[starts[5]:ends[5]])
    assert any(s.endswith(said) and a.startswith(answer) for s, a in zip(speeches, speeches[1:]))
    assert tokenizer.decode([t for t, m in zip(tokens[:ends[0]], mask) if m]) == "Speak, speak.<|end|>"


def text_of(tokenizer, tokens):
    """The user's and the assistant's text of a two-turn conversation."""
    text = tokenizer.decode(tokens.tolist())
    said, _, answer = text.removeprefix("<|user|>").removesuffix("<|end|>").partition("<|end|><|assistant|>")
    return said, answer


def test_errors_are_one_line_and_leave_nothing_behind(char_data, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"messages": c} for c in CONVERSATIONS])
    out = tmp_path / "out"
    prepare("--data_files", good, "--out_dir", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = tmp_path / "broken.jsonl"
    broken.write_text(Path(good).read_text().replace("\n", "\n{oops\n", 1))
    no_column = write_jsonl(tmp_path / "other.jsonl", [{"conversations": c} for c in CONVERSATIONS])
    for args, message in [
        (["--data_files", broken], f"{broken}:2: not JSON (Expecting property name enclosed in double quotes)"),
        (["--data_files", no_column], f"{no_column}:1: the row has no 'messages': name the column"),
        (["--data_files", tmp_path / "chats.csv"], "chats.csv is neither .jsonl (JSON lines) nor .parquet"),
        (["--data_files", good, tmp_path / "typo.jsonl"], f"--data_files: no file {tmp_path / 'typo.jsonl'}"),
        (["--data_files", write_jsonl(tmp_path / "few.jsonl", [{"messages": CONVERSATIONS[0]}] * 5)],
         "5 usable conversations: too few for a val split"),
        (["--shakespeare", "--tokenizer_from", tmp_path / "nothing"], "no prepared dataset (no meta.json) at"),
    ]:
        with pytest.raises(SystemExit) as e:
            prepare(*args, "--out_dir", out)
        assert message in str(e.value) and str(e.value).startswith("error: ") and "\n" not in str(e.value)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier dataset as it was
        assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(SystemExit, match="--out_dir .* exists and is not a chat dataset"):
        prepare("--data_files", good, "--out_dir", char_data)
