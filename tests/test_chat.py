"""chat.py as users run it: a conversation through stdin, one message with --prompt, and its errors;
and README's chat commands, as written. Its errors run in-process, one of them also as users see it."""

import shlex

import pytest
import torch

import chat
from conftest import CHARS, CHAT_META, REPO, chat_reply, run, save_run, tiny_model, main_error


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A char chat model of context 32, with random (untied, so not repetitive) weights."""
    model = tiny_model(n_layer=1, vocab_size=69, block_size=32, tie_embeddings=False)
    return save_run(tmp_path_factory.mktemp("chat") / "out-chat", model, CHAT_META)


def chat_py(*args, **kwargs):
    return run("chat.py", "--device=cpu", "--temperature=0", "--max_new_tokens=10", *args, **kwargs)


def user(text):
    return {"role": "user", "content": text}


def test_a_conversation_keeps_its_history_within_the_context(chat_run):
    """Answers of 4 tokens leave 28 of the 32 tokens of context to the prompt: the second message is
    answered with the first exchange before it, the third (13 characters) only with the second."""
    said = ["Hail!", "Ay.", "Who art thou?", "/new", "Hail!", "Un café ?", "O" * 40, "Ay."]
    result = chat_py(f"--out_dir={chat_run}", "--max_new_tokens=4", input="".join(s + "\n" for s in said))
    first = chat_reply(chat_run, [user("Hail!")], 4)
    second = chat_reply(chat_run, [user("Hail!"), {"role": "assistant", "content": first}, user("Ay.")], 4)
    third = chat_reply(chat_run, [user("Ay."), {"role": "assistant", "content": second}, user("Who art thou?")], 4)
    assert result.stdout == (f"you> model> {first}\nyou> model> {second}\nyou> model> {third}\n"
                             f"you> (a new conversation)\nyou> model> {first}\n"
                             # what it cannot answer is said, and the conversation goes on without it
                             "you> model> \nerror: characters not in the vocabulary: 'é'\n"
                             "you> model> \nerror: the message makes a prompt of 43 tokens, more than the model's "
                             "context of 32: say it in fewer words\n"
                             f"you> model> {second}\nyou> \n")
    assert "a conversation with a model of 32 tokens of context: /new starts over" in result.stderr


def test_prompt_answers_one_message(chat_run):
    out = chat_py(f"--out_dir={chat_run}", "--prompt=Hail!", "--system=Be brief.").stdout
    assert out == chat_reply(chat_run, [{"role": "system", "content": "Be brief."}, user("Hail!")], 10) + "\n"


def test_errors_are_one_line(chat_run, tmp_path):
    for args, message in [
        ([f"--out_dir={chat_run}", "--prompt=" + "O" * 40], "error: the message makes a prompt of 43 tokens"),
        ([f"--out_dir={chat_run}", "--top_p=0"], "error: top_p=0.0: it must lie in (0, 1]"),
        ([f"--out_dir={tmp_path / 'none'}"], "error: no checkpoint at"),
    ]:
        assert main_error(chat.main, "--device=cpu", "--temperature=0", "--max_new_tokens=10", *args).startswith(message)
    # and as a user sees it
    base = save_run(tmp_path / "base", tiny_model(), {"tokenizer": "char", "chars": CHARS})
    result = chat_py(f"--out_dir={base}", "--prompt=Hail!", check=False)
    assert result.returncode == 1 and result.stderr.startswith(
        "error: this model has no chat tokens: fine-tune it on a chat dataset first (prepare_chat.py, then train.py)")
    assert result.stderr.count("\n") == 1


def test_help_lists_the_settings_and_nothing_else(capsys):
    with pytest.raises(SystemExit) as e:
        chat.main(["--help"])
    assert e.value.code == 0
    flags = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  --")]
    assert flags == [f"--{key}" for key in chat.DEFAULTS]  # not chat_template's END, which chat.py imports


def readme_block(name):
    """The lines of README's ```bash block after its "<!-- name:" marker, as .ci/run reads them."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"<!-- {name}:"))
    assert lines[start + 1] == "```bash"
    return lines[start + 2:lines.index("```", start + 2)]


@pytest.mark.slow
def test_readme_chat_commands_run_as_written(tmp_path):
    """The quick start, then README's chat block, in a directory as a user's clone has it; training
    shortened by flags."""
    (tmp_path / "config").symlink_to(REPO / "config")
    commands = [shlex.split(line, comments=True) for line in readme_block("quickstart") + readme_block("chat")]
    for _, script, *args in (c for c in commands if c[0] == "python"):
        if script == "train.py":
            args += ["--max_iters=20", "--eval_interval=10", "--eval_iters=2"]
        result = run(script, *args, cwd=tmp_path)
    assert result.stdout.endswith("\n")  # chat.py's answer
    ckpt = torch.load(tmp_path / "out-shakespeare-chat" / "ckpt.pt", weights_only=True)
    assert ckpt["meta"]["chat"] and ckpt["config"]["init_from"] == "out-shakespeare-char-cpu"
