"""serve.py: its API's behaviour in-process through FastAPI's TestClient, its request checks called
directly, a few requests to a real uvicorn server on a free port (a plain HTTP client and OpenAI's
own), and its page in headless Chromium."""

import json
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

import serve
from bpe import train_bpe
from chat_template import render_prompt
from checkpoint import load_model
from conftest import CHARS, CHAT_META, REPO, UNICODE, chat_reply, run, save_run, tiny_model
from hf import save_pretrained
from model import GPT, GPTConfig
from tokenizer import encode_prompt, get_tokenizer

LONG = 100_000  # max_tokens of requests that only a disconnect or Stop ends


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A char-level checkpoint with random weights; context 16, so 40 tokens slide past it."""
    return save_run(tmp_path_factory.mktemp("serve") / "out-tiny", tiny_model(n_layer=1),
                    {"tokenizer": "char", "chars": CHARS}, best_val_loss=4.125)


LIMITS = {**serve.DEFAULTS, "max_tokens": LONG}  # serve.py's limits in these tests


def load_served(init_from, out_dir=""):
    """The model in eval mode, its tokenizer, and the info that serve.py gives about it."""
    model, tokenizer, trained = load_model(init_from, str(out_dir))
    name = Path(out_dir if init_from == "resume" else init_from).name
    return model.eval(), tokenizer, serve.model_info(model, tokenizer, trained, name, "cpu", "float32")


@pytest.fixture(scope="module")
def char_served(char_run):
    return load_served("resume", char_run)


def app_for(init_from, out_dir="", **limits):
    model, tokenizer, info = load_served(init_from, out_dir)
    return serve.create_app(model, tokenizer, info, {**LIMITS, **limits}), model


def serve_py(out_dir, tmp_path_factory, says=""):
    """A module fixture's body: python serve.py on port 0, as a user starts it; yields the address that
    it prints (in a line that says `says`), then stops it."""
    log = tmp_path_factory.mktemp("server") / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), f"--out_dir={out_dir}", "--port=0",
                                 "--device=cpu", f"--max_tokens={LONG}"], stdout=subprocess.PIPE, stderr=stderr,
                                text=True)
    line = proc.stdout.readline()
    address = re.search(r" on (http://127\.0\.0\.1:\d+)$", line.strip())
    if not address:
        proc.kill()
        pytest.fail(f"serve.py printed {line!r}; stderr: {log.read_text()[-3000:]}")
    assert says in line
    yield address.group(1)
    proc.terminate()  # uvicorn shuts down cleanly on SIGTERM, then exits by the same signal
    assert proc.wait(timeout=30) in (0, -15), log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def server(char_run, tmp_path_factory):
    yield from serve_py(char_run, tmp_path_factory,
                        says="out-tiny (0.02M parameters, char (65) tokenizer, cpu float32)")


@pytest.fixture(scope="module")
def api(char_run):
    """The char model's app in-process: every API behaviour is checked here, the real server's
    tests below check that uvicorn serves the same."""
    with TestClient(app_for("resume", char_run)[0]) as client:
        yield client


@lru_cache(maxsize=None)
def sample_py(*args):
    """sample.py's samples (prompt + text each) for these flags."""
    return run("sample.py", "--device=cpu", *args).stdout.split("\n---------------\n")[:-1]


def complete(client, **body):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stream(client, **body):
    """The texts of a streamed completion's chunks, per choice, and its final chunk(s)."""
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    return chunks


def test_greedy_text_equals_sample_py(api, char_run):
    want = sample_py(f"--out_dir={char_run}", "--start=ROMEO:", "--temperature=0", "--num_samples=1",
                     "--max_new_tokens=40")
    got = complete(api, prompt="ROMEO:", max_tokens=40, temperature=0)
    assert ["ROMEO:" + got["choices"][0]["text"]] == want
    assert got["choices"][0]["finish_reason"] == "length"
    assert got["usage"] == {"prompt_tokens": 6, "completion_tokens": 40, "total_tokens": 46}
    chunks = stream(api, prompt="ROMEO:", max_tokens=40, temperature=0)
    assert len(chunks) == 40 and "ROMEO:" + "".join(c["choices"][0]["text"] for c in chunks) == want[0]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 39 + ["length"]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)


def test_seeded_choices_equal_sample_py_samples(api, char_run):
    """With seed s, choice j draws what sample.py --seed=s draws for its j-th sample."""
    settings = dict(temperature=0.9, top_k=20, top_p=0.95)
    want = sample_py(f"--out_dir={char_run}", "--start=JULIET:", "--seed=7", "--num_samples=2",
                     "--max_new_tokens=30", *(f"--{k}={v}" for k, v in settings.items()))
    got = complete(api, prompt="JULIET:", max_tokens=30, n=2, seed=7, **settings)
    assert ["JULIET:" + c["text"] for c in got["choices"]] == want
    chunks = stream(api, prompt="JULIET:", max_tokens=30, n=2, seed=7, stream_options={"include_usage": True},
                    **settings)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 60
    for j in range(2):
        assert "JULIET:" + "".join(c["choices"][0]["text"] for c in chunks if c["choices"]
                                   and c["choices"][0]["index"] == j) == want[j]


def test_concurrent_requests_never_mix(api):
    requests = [dict(prompt=p, max_tokens=25 + 3 * i, temperature=0.0 if i % 3 == 0 else 1.0, seed=i, top_k=10 * i + 5)
                for i, p in enumerate(["ROMEO:", "JULIET:", "Away!", "O", "KING", "What,", "\n", "Fie"])]
    alone = [complete(api, **r)["choices"][0]["text"] for r in requests]

    def one(i):  # half of them streamed
        if i % 2:
            return "".join(c["choices"][0]["text"] for c in stream(api, **requests[i]))
        return complete(api, **requests[i])["choices"][0]["text"]

    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(one, range(len(requests))))
    assert together == alone
    assert api.get("/health").json() == {"status": "ok", "active_requests": 0}


def test_concurrent_streams_share_forward_passes(char_run):
    app, model = app_for("resume", char_run)
    steps, forward = [], model.forward

    def slow_forward(idx, **kw):  # slow enough that the four requests surely overlap
        steps.append((idx.shape, "kv_caches" in kw))
        time.sleep(0.02)
        return forward(idx, **kw)

    model.forward = slow_forward
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: stream(client, prompt="ROMEO:", max_tokens=30, seed=i), range(4)))
    # 4 rows in the cache up to block_size (16), then 4 windows of 16 tokens each
    assert (torch.Size([4, 1]), True) in steps and (torch.Size([4, 16]), False) in steps


def test_stop_strings(api):
    text = complete(api, prompt="ROMEO:", max_tokens=60, temperature=1.0, seed=3)["choices"][0]["text"]
    stop = [text[20:23], "not there"]
    want = text[:text.find(stop[0])]
    got = complete(api, prompt="ROMEO:", max_tokens=60, temperature=1.0, seed=3, stop=stop)["choices"][0]
    assert (got["text"], got["finish_reason"]) == (want, "stop")
    # streamed, the start of a stop string is held back until it is clear that it is not one
    chunks = stream(api, prompt="ROMEO:", max_tokens=60, temperature=1.0, seed=3, stop=stop[0])
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_gpt2_tokenizer_greedy_equals_sample_py(tmp_path):
    """BPE: characters split over tokens come out whole; <|endoftext|> ends with finish_reason stop."""
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)), tmp_path)
    prompt = "Un café, s'il vous plaît"
    want = sample_py(f"--init_from={tmp_path}", f"--start={prompt}", "--temperature=0", "--num_samples=1",
                     "--max_new_tokens=20")
    app, model = app_for(str(tmp_path))
    with TestClient(app) as client:
        got = complete(client, prompt=prompt, max_tokens=20, temperature=0)
        assert [prompt + got["choices"][0]["text"]] == want
        assert got["usage"]["prompt_tokens"] == len(get_tokenizer({"tokenizer": "gpt2"}).encode(prompt))
        chunks = stream(client, prompt=prompt, max_tokens=20, temperature=0)
        assert prompt + "".join(c["choices"][0]["text"] for c in chunks) == want[0]
        # a model whose every token is <|endoftext|> stops at once
        with torch.no_grad():  # the last hidden state all ones; only <|endoftext|>'s row sums to much
            model.transformer.ln_f.weight.zero_(), model.transformer.ln_f.bias.fill_(1.0)
            model.lm_head.weight[50256] = 1.0
        got = complete(client, prompt="", max_tokens=20, temperature=0)["choices"][0]
        assert (got["text"], got["finish_reason"]) == ("", "stop")


def test_a_vocabulary_learned_here_greedy_equals_sample_py(tmp_path):
    bpe = train_bpe([UNICODE * 20], 300)  # merges within multi-byte characters
    run_dir = save_run(tmp_path / "out-bpe", tiny_model(n_layer=1, vocab_size=300), bpe.meta())
    prompt = "naïve 日本"
    want = sample_py(f"--out_dir={run_dir}", f"--start={prompt}", "--temperature=0", "--num_samples=1",
                     "--max_new_tokens=30")
    with TestClient(app_for("resume", run_dir)[0]) as client:
        assert client.get("/v1/models").json()["data"][0]["tokenizer"] == "bpe (300)"
        got = complete(client, prompt=prompt, max_tokens=30, temperature=0)
        assert [prompt + got["choices"][0]["text"]] == want
        assert got["usage"]["prompt_tokens"] == len(bpe.encode(prompt))
        chunks = stream(client, prompt=prompt, max_tokens=30, temperature=0)
        assert prompt + "".join(c["choices"][0]["text"] for c in chunks) == want[0]


@pytest.mark.parametrize("body, status, message", [
    (b'{"prompt": "ROMEO:", ', 400, "the body is not valid JSON"),
    (b'["ROMEO:"]', 400, "the body must be a JSON object"),
    (b'{"max_tokens": "ten"}', 400, 'max_tokens: Input should be a valid integer, got "ten"'),
    (b'{"prompt": 5}', 400, "prompt: Input should be a string, a list of strings, a list of token ids or a list of "
                            "such lists, got 5"),
    (b'{"prompt": [3, "a"]}', 400, "prompt: Input should be a string, a list of strings"),
    (b'{"prompt": [3, 65]}', 400, "prompt: token id 65 is not in this model's vocabulary (ids 0 to 64)"),
    (b'{"stream": "yes"}', 400, "stream: Input should be a valid boolean"),
    (b'{"temperature": -0.5}', 400, "temperature: Input should be greater than or equal to 0, got -0.5"),
    (b'{"top_p": 0}', 400, "top_p: Input should be greater than 0, got 0"),
    (b'{"top_p": 1.5}', 400, "top_p: Input should be less than or equal to 1, got 1.5"),
    (b'{"top_k": 0}', 400, "top_k: Input should be greater than or equal to 1"),
    (f'{{"max_tokens": {LONG + 1}}}'.encode(), 400, f"max_tokens: {LONG + 1} is above this server's limit of {LONG}"),
    (b'{"n": 5}', 400, "above this server's limit of 4 (--max_n)"),
    ('{"prompt": "ROMEO: \u00e9t\u00e9 \u4e16"}'.encode(), 400, "prompt: characters not in the vocabulary: '\u00e9\u4e16'"),
    (b'{"prompt": "' + b"a" * 2049 + b'"}', 400, "prompt: 2049 tokens is above this server's limit of 2048"),
    (b'{"stop": ["", "x"]}', 400, "stop: up to 4 strings, none of them empty"),
    (b'{"logprobs": 21}', 400, "logprobs: 21; it may be 0 to 20"),
    (b'{"echo": true, "stream": true}', 400, "echo and logprobs: not supported with stream"),
    (b'{"model": "gpt-4"}', 404, "model 'gpt-4' is not served here; this server serves 'out-tiny'"),
])
def test_bad_input_is_a_clear_4xx(api, body, status, message):
    r = api.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and message in r.json()["error"]["message"], r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert complete(api, prompt="ROMEO:", max_tokens=2)["choices"][0]["finish_reason"] == "length"


def refusal(check, body, *args):
    """What check(body, *args) refuses body with: (status, message) of its ApiError."""
    with pytest.raises(serve.ApiError) as e:
        check(body, *args)
    assert e.value.kind == "invalid_request_error"
    return e.value.status, e.value.message


NOT_SUPPORTED = "not supported by this server; leave it out"


@pytest.mark.parametrize("body, status, message", [
    ({"model": "gpt-4"}, 404, "model 'gpt-4' is not served here; this server serves 'out-tiny'"),
    ({"presence_penalty": 0.5}, 400, f"presence_penalty: {NOT_SUPPORTED}"),
    ({"frequency_penalty": -1.0}, 400, f"frequency_penalty: {NOT_SUPPORTED}"),
    ({"logit_bias": {"50": 1}}, 400, f"logit_bias: {NOT_SUPPORTED}"),
    ({"max_tokens": LONG + 1}, 400, f"max_tokens: {LONG + 1} is above this server's limit of {LONG} (--max_tokens)"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop: up to 4 strings, none of them empty"),
    ({"stop": ""}, 400, "stop: up to 4 strings, none of them empty"),
    ({"logprobs": -1}, 400, "logprobs: -1; it may be 0 to 20, the most tokens this server lists at each position"),
    ({"logprobs": 1, "stream": True}, 400,
     "echo and logprobs: not supported with stream; leave stream out to get them"),
    ({"prompt": [[1, 2], []]}, 400, "prompt: an empty list of token ids; give at least one"),
    ({"prompt": [-1]}, 400, "prompt: token id -1 is not in this model's vocabulary (ids 0 to 64)"),
    ({"prompt": "a" * 18, "echo": True, "logprobs": 0}, 400, "prompt: 18 tokens, more than the 17 that this "
     "model's learned positions score at once (echo with logprobs); shorten it"),
    ({"suffix": "!"}, 400, f"suffix: {NOT_SUPPORTED}"),
    ({"best_of": 2}, 400, f"best_of: {NOT_SUPPORTED}"),
    ({"prompt": []}, 400, "prompt: an empty list; give a string, a list of strings or a list of token ids"),
    ({"prompt": ["O", "Ay"], "n": 3}, 400, "n: 2 prompt(s) x n=3 choices is above this server's limit of 4 (--max_n)"),
    ({"prompt": ["O", "\u00e9t\u00e9"]}, 400,
     "prompt: characters not in the vocabulary: '\u00e9'; this model knows only the characters it was trained on"),
    ({"prompt": "a" * 2049}, 400, "prompt: 2049 tokens is above this server's limit of 2048 (--max_prompt_tokens)"),
])
def test_check_completion_request_refuses(char_served, body, status, message):
    _, tokenizer, info = char_served
    got = refusal(serve.check_completion_request, serve.CompletionRequest(**body), tokenizer, info, LIMITS)
    assert got == (status, message)


def test_check_completion_request_gives_tokens_and_stop_strings(char_served):
    _, tokenizer, info = char_served
    body = serve.CompletionRequest(model="out-tiny", prompt=["ROMEO:", ""], n=2, best_of=2, stop="\n")
    tokens, stop = serve.check_completion_request(body, tokenizer, info, LIMITS)
    assert tokens == [encode_prompt(tokenizer, "ROMEO:"), encode_prompt(tokenizer, "")] and stop == ["\n"]
    body = serve.CompletionRequest(prompt="O", stop=["a", "b", "c", "d"], max_tokens=LONG)
    assert serve.check_completion_request(body, tokenizer, info, LIMITS)[1] == ["a", "b", "c", "d"]


def model_logprobs(model, tokens, vocab_size=None):
    """log-softmax of the model's logits (T-1, V) at each position of tokens but the last, over the ids
    of the vocabulary (a grown model has rows past it): a direct forward pass, what the server's logprobs
    must equal."""
    idx = torch.tensor([tokens])
    with torch.no_grad():
        logits, _ = model(idx[:, :-1], targets=idx[:, 1:])
    return logits[0, :, :vocab_size].float().log_softmax(-1)


def test_a_prompt_of_block_size_plus_one_tokens_is_scored(api, char_served):
    """The last token is only predicted: learned positions score block_size + 1 tokens in one pass."""
    model, tokenizer, _ = char_served
    prompt = "ROMEO: But, soft!"  # 17 tokens
    lp = complete(api, prompt=prompt, echo=True, logprobs=0, max_tokens=0)["choices"][0]["logprobs"]
    tokens = tokenizer.encode(prompt)
    want = model_logprobs(model, tokens).gather(1, torch.tensor(tokens[1:])[:, None])[:, 0]
    assert len(lp["tokens"]) == 17 and lp["token_logprobs"][1:] == want.tolist()


def test_echoed_logprobs_are_the_models_own(api, char_served):
    """A prompt scored (echo, max_tokens 0) as text or as token ids, alone or with others: the numbers of
    a forward pass of the model, the first token's null."""
    model, tokenizer, _ = char_served
    prompts = ["ROMEO: Ay, me!", "O", "What light"]
    tokens = [tokenizer.encode(p) for p in prompts]
    got = complete(api, prompt=prompts[0], echo=True, logprobs=3, max_tokens=0)
    (choice,) = got["choices"]
    assert (choice["text"], choice["finish_reason"], got["usage"]["completion_tokens"]) == (prompts[0], "length", 0)
    lp = choice["logprobs"]
    want = model_logprobs(model, tokens[0])
    assert lp["tokens"] == list(prompts[0]) and lp["text_offset"] == list(range(len(prompts[0])))
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == want.gather(1, torch.tensor(tokens[0][1:])[:, None])[:, 0].tolist()
    for row, top, token in zip(want, lp["top_logprobs"][1:], prompts[0][1:]):
        values, ids = row.topk(3)
        assert top == {**{tokenizer.decode([i]): v for i, v in zip(ids.tolist(), values.tolist())},
                       token: row[tokenizer.stoi[token]].item()}
    # the same as token ids; and each prompt of a list (scored together) as alone
    assert complete(api, prompt=tokens[0], echo=True, logprobs=3, max_tokens=0)["choices"][0] == choice
    together = complete(api, prompt=tokens, echo=True, logprobs=3, max_tokens=0)["choices"]
    assert [c["index"] for c in together] == [0, 1, 2] and together[0] == choice
    for c, p in zip(together, prompts):
        assert c == {**complete(api, prompt=p, echo=True, logprobs=3, max_tokens=0)["choices"][0], "index": c["index"]}
    assert together[1]["logprobs"]["token_logprobs"] == [None]  # one token: nothing scores it


def test_generated_tokens_logprobs(api, char_served):
    """The drawn tokens' logprobs, after the echoed prompt's: the model's own distribution (before
    temperature), a greedy token the most likely of its top_logprobs; text_offset into the echoed text."""
    model, tokenizer, _ = char_served
    got = complete(api, prompt="KING:", echo=True, logprobs=2, max_tokens=8, temperature=0)["choices"][0]
    lp = got["logprobs"]
    assert "".join(lp["tokens"]) == got["text"] and got["text"].startswith("KING:") and len(lp["tokens"]) == 13
    assert lp["text_offset"] == list(range(13))
    want = model_logprobs(model, tokenizer.encode(got["text"]))
    chosen = want.gather(1, torch.tensor(tokenizer.encode(got["text"])[1:])[:, None])[:, 0].tolist()
    assert lp["token_logprobs"][1:] == pytest.approx(chosen, abs=1e-5)  # generation reads its KV cache
    assert all(lp["token_logprobs"][i] == max(lp["top_logprobs"][i].values()) for i in range(5, 13))
    # without echo: the generated tokens only, offsets into the completion's text
    plain = complete(api, prompt="KING:", logprobs=2, max_tokens=8, temperature=0)["choices"][0]
    assert plain["text"] == got["text"][5:] and plain["logprobs"]["text_offset"] == list(range(8))
    assert plain["logprobs"]["token_logprobs"] == lp["token_logprobs"][5:]
    # sampled at temperature 2, the logprobs are still the model's, and a stop string leaves out its tokens
    hot = complete(api, prompt="KING:", logprobs=0, max_tokens=8, temperature=2.0, seed=1)["choices"][0]
    assert hot["logprobs"]["token_logprobs"] == pytest.approx(
        model_logprobs(model, tokenizer.encode("KING:" + hot["text"]))[4:].gather(
            1, torch.tensor(tokenizer.encode(hot["text"]))[:, None])[:, 0].tolist(), abs=1e-5)
    cut = complete(api, prompt="KING:", logprobs=0, max_tokens=8, temperature=2.0, seed=1, stop=hot["text"][3])
    assert cut["choices"][0]["logprobs"]["tokens"] == list(hot["text"][:hot["text"].index(hot["text"][3])])


def test_scores_served_with_generations_are_as_alone(api):
    """Scoring requests among generating ones: the prompts' numbers as alone, bit for bit (each prompt
    is scored by a forward pass of its own); the drawn tokens the same, their numbers to float rounding
    (they come out of batched forward passes of other shapes)."""
    requests = [dict(prompt=p, echo=True, logprobs=1, max_tokens=m, temperature=0)
                for p, m in [("ROMEO:", 0), ("JULIET: O", 5), ("Away!", 0), ("Fie", 12)] * 2]
    alone = [complete(api, **r)["choices"][0] for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: complete(api, **r)["choices"][0], requests))
    for got, want, r in zip(together, alone, requests):
        n = len(r["prompt"])
        assert got["text"] == want["text"] and got["logprobs"]["tokens"] == want["logprobs"]["tokens"]
        assert got["logprobs"]["token_logprobs"][:n] == want["logprobs"]["token_logprobs"][:n]
        assert got["logprobs"]["top_logprobs"][:n] == want["logprobs"]["top_logprobs"][:n]
        assert got["logprobs"]["token_logprobs"][n:] == pytest.approx(want["logprobs"]["token_logprobs"][n:], abs=1e-5)


def test_a_rope_model_scores_past_its_context(tmp_path):
    """Learned positions stop at block_size (a 400 above); RoPE reads on with its sliding window, as its
    forward pass does."""
    model = tiny_model(n_layer=1, rope=True, norm="rmsnorm", qk_norm=True, tie_embeddings=False)
    app, model = app_for("resume", save_run(tmp_path / "rope", model, {"tokenizer": "char", "chars": CHARS}))
    prompt = "ROMEO: But, soft! what light through yonder window breaks?"
    with TestClient(app) as client:
        got = complete(client, prompt=prompt, echo=True, logprobs=0, max_tokens=0)["choices"][0]["logprobs"]
    tokens = [CHARS.index(c) for c in prompt]
    want = model_logprobs(model, tokens).gather(1, torch.tensor(tokens[1:])[:, None])[:, 0]
    assert len(tokens) > 16 and got["token_logprobs"][1:] == want.tolist()


def test_tokenizer_endpoints(api, chat_api, tmp_path):
    """vLLM's /tokenizer_info, /tokenize and /detokenize, which lm-evaluation-harness uses: the model's own
    tokens; special tokens' spellings read as those tokens, as transformers' tokenizers read them."""
    info = api.get("/tokenizer_info").json()
    assert (info["bos_token"], info["eos_token"], info["model_max_length"]) == ("\n", None, 16)
    assert api.post("/tokenize", json={"prompt": "ROMEO:"}).json()["tokens"] == [CHARS.index(c) for c in "ROMEO:"]
    assert api.post("/detokenize", json={"tokens": [CHARS.index(c) for c in "Ay"]}).json() == {"prompt": "Ay"}
    r = api.post("/tokenize", json={"prompt": "caf\u00e9"})
    assert r.status_code == 400 and "prompt: characters not in the vocabulary: '\u00e9'" in r.json()["error"]["message"]
    r = api.post("/detokenize", json={"tokens": [1, 65]})
    assert r.status_code == 400
    assert "tokens: token id 65 is not in this model's vocabulary" in r.json()["error"]["message"]
    assert "<|assistant|>" in chat_api.get("/tokenizer_info").json()["chat_template"]
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)), tmp_path)
    with TestClient(app_for(str(tmp_path))[0]) as client:
        info = client.get("/tokenizer_info").json()
        assert info["bos_token"] == info["eos_token"] == "<|endoftext|>"
        got = client.post("/tokenize", json={"prompt": "<|endoftext|>Un café"}).json()["tokens"]
        assert got == [50256] + get_tokenizer({"tokenizer": "gpt2"}).encode("Un café")


def test_unknown_paths_and_methods(api):
    assert api.get("/v2/nothing").status_code == 404
    r = api.get("/v1/completions")
    assert r.status_code == 405 and "GET /v1/completions" in r.json()["error"]["message"]


def test_models_health_and_page(api):
    (model,) = api.get("/v1/models").json()["data"]
    assert (model["id"], model["iter_num"], model["best_val_loss"], model["tokenizer"]) == ("out-tiny", 7, 4.125, "char (65)")
    assert model["parameters"] == 16 * 32 + 65 * 32 + 1 * (4 * 32 * 32 + 4 * 32 + 8 * 32 * 32 + 5 * 32 + 4 * 32) + 2 * 32
    assert api.get("/health").json()["status"] == "ok"
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<meta name="viewport"' in page.text
    assert not re.search(r"(src|href)=\"https?:|@import|https?://", page.text)  # nothing from a CDN


def test_busy_server_says_so(char_run):
    app, _ = app_for("resume", char_run, max_concurrent=0)
    with TestClient(app) as client:
        r = client.post("/v1/completions", json={"prompt": "ROMEO:"})
        assert r.status_code == 429 and "requests in flight (--max_concurrent)" in r.json()["error"]["message"]


def test_a_failing_model_is_a_500_json_and_the_server_goes_on(char_run, capsys):
    app, model = app_for("resume", char_run)
    forward = model.forward

    def broken(idx, **kw):
        if idx.size(1) == 4:  # the prompt "FAIL"
            raise RuntimeError("simulated failure")
        return forward(idx, **kw)

    model.forward = broken
    with TestClient(app) as client:
        r = client.post("/v1/completions", json={"prompt": "FAIL"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "Traceback" not in r.text
        chunks = client.post("/v1/completions", json={"prompt": "FAIL", "stream": True}).text
        assert '"type": "server_error"' in chunks and chunks.endswith("data: [DONE]\n\n")
        assert complete(client, prompt="ROMEO:", max_tokens=3)["choices"][0]["finish_reason"] == "length"
    assert "simulated failure" in capsys.readouterr().err  # the server's log says why


def test_command_line_errors_are_one_line(char_run):
    for args, message in [([f"--out_dir={char_run / 'nothing'}"], "no checkpoint at"),
                          (["--max_n=9"], "max_n=9 is above max_batch=8")]:
        with pytest.raises(SystemExit) as exit:
            serve.main([f"--out_dir={char_run}", "--device=cpu", *args])
        assert exit.value.code.startswith("error: ") and message in exit.value.code and "\n" not in exit.value.code


@pytest.mark.slow
def test_a_port_in_use_is_a_one_line_error(char_run, server):
    port = server.rsplit(":", 1)[1]
    result = run("serve.py", f"--out_dir={char_run}", "--device=cpu", f"--port={port}", check=False, timeout=120)
    assert result.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_help_lists_the_settings_and_nothing_else(capsys):
    with pytest.raises(SystemExit) as exit:
        serve.main(["--help"])
    assert exit.value.code == 0
    flags = re.findall(r"^  --(\w+) *= ", capsys.readouterr().out, re.MULTILINE)
    assert flags == ["init_from", "out_dir", "checkpoint", "host", "port", "device", "dtype", "max_prompt_tokens",
                     "max_tokens", "max_n", "max_batch", "max_concurrent"]


def wait_idle(client, seconds=3.0):
    """How long until the server reports no active request (fails after `seconds`)."""
    t0 = time.monotonic()
    while client.get("/health").json()["active_requests"]:
        assert time.monotonic() - t0 < seconds, "the generation did not end after the client left"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_a_client_that_disconnects_ends_its_generation(server):
    with httpx.Client(base_url=server, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json={"prompt": "ROMEO:", "max_tokens": LONG, "stream": True}) as r:
            lines = r.iter_lines()
            assert [next(lines) for _ in range(6)].count("") == 3  # three events, then hang up
        assert client.get("/health").json()["active_requests"] <= 1
        wait_idle(client)
        # a request that is not streamed ends too when its client gives up
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": LONG}, timeout=1.0)
        wait_idle(client)
        assert complete(client, prompt="ROMEO:", max_tokens=5)["usage"]["completion_tokens"] == 5


def test_the_official_openai_client(server, char_run):
    import openai  # requirements-test.txt

    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    want = sample_py(f"--out_dir={char_run}", "--start=ROMEO:", "--temperature=0", "--num_samples=1",
                     "--max_new_tokens=40")
    got = client.completions.create(model="out-tiny", prompt="ROMEO:", max_tokens=40, temperature=0)
    assert "ROMEO:" + got.choices[0].text == want[0] and got.usage.completion_tokens == 40
    pieces = client.completions.create(model="out-tiny", prompt="ROMEO:", max_tokens=40, temperature=0, stream=True)
    assert "ROMEO:" + "".join(p.choices[0].text for p in pieces) == want[0]
    assert [m.id for m in client.models.list()] == ["out-tiny"]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="out-tiny", prompt="ROMEO:", temperature=-1)


def test_the_real_server_answers_each_endpoint(server):
    """uvicorn serves what the app does in-process: the page, each endpoint, a stream, errors as JSON."""
    with httpx.Client(base_url=server, timeout=60) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/v1/models").json()["data"][0]["id"] == "out-tiny"
        got = complete(client, prompt="ROMEO:", max_tokens=20, temperature=0)["choices"][0]["text"]
        assert "".join(c["choices"][0]["text"] for c in stream(client, prompt="ROMEO:", max_tokens=20,
                                                                 temperature=0)) == got
        r = client.post("/v1/completions", content=b'{"prompt": ', headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("the body is not valid JSON")
        r = client.post("/v1/chat/completions", json={"messages": HELLO})
        assert r.status_code == 400 and "out-tiny is not a chat model" in r.json()["error"]["message"]
        r = client.get("/v1/completions")
        assert r.status_code == 405 and "GET /v1/completions" in r.json()["error"]["message"]


def chromium():
    """Debian's headless Chromium and its driver, driven by Selenium without its download manager."""
    missing = [p for p in ("/usr/bin/chromium", "/usr/bin/chromedriver") if not shutil.which(p)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the page test needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=390,844"):
        options.add_argument(arg)  # the size of a phone
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


@pytest.mark.browser
def test_the_page_in_a_browser(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium()
    try:
        wait = WebDriverWait(browser, 20)
        browser.get(server + "/")
        info = browser.find_element(By.ID, "info")
        wait.until(lambda _: "parameters" in info.text)
        assert "0.02M parameters, char (65) tokenizer, context 16, step 7, best val loss 4.1250" in info.text
        # usable at phone width: nothing wider than the screen
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        browser.find_element(By.ID, "prompt").send_keys("ROMEO:")
        browser.find_element(By.ID, "max_tokens").clear()
        browser.find_element(By.ID, "max_tokens").send_keys(str(LONG))
        browser.find_element(By.ID, "generate").click()
        completion = browser.find_element(By.CSS_SELECTOR, "#output .completion")
        wait.until(lambda _: len(completion.text) > 20)
        first = len(completion.text)
        wait.until(lambda _: len(completion.text) > first + 20)  # it grows as it streams
        assert "tokens/s" in browser.find_element(By.ID, "stats").text
        browser.find_element(By.ID, "stop").click()
        stats = browser.find_element(By.ID, "stats")
        wait.until(lambda _: "stopped" in stats.text)
        assert browser.find_element(By.ID, "generate").is_enabled()
        assert browser.find_element(By.CSS_SELECTOR, "#output .prompt").text == "ROMEO:"
        with httpx.Client(base_url=server) as client:
            wait_idle(client)  # Stop ended the generation on the server
        stopped = completion.text
        time.sleep(0.3)
        assert completion.text == stopped
        # a bad setting shows the server's message
        browser.find_element(By.ID, "temperature").clear()
        browser.find_element(By.ID, "temperature").send_keys("-1")
        browser.find_element(By.ID, "generate").click()
        error = browser.find_element(By.ID, "error")
        wait.until(lambda _: "temperature" in error.text)
    finally:
        browser.quit()


# -----------------------------------------------------------------------------
# chat: /v1/chat/completions of a chat model, and the page's chat view

HELLO = [{"role": "system", "content": "Speak as a king."}, {"role": "user", "content": "Good morrow, my lord."}]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A char chat model with random weights, rows to 128 as a grown model has (ids 69..127 are never drawn).
    Untied: random tied embeddings make greedy decoding repeat the last token; this one's greedy reply to
    HELLO is 13 characters, a <|system|> among them, and then <|end|>."""
    model = tiny_model(n_layer=1, vocab_size=128, block_size=64, tie_embeddings=False)
    return save_run(tmp_path_factory.mktemp("serve") / "out-chat", model, CHAT_META)


@pytest.fixture(scope="module")
def chat_served(chat_run):
    return load_served("resume", chat_run)


@pytest.fixture(scope="module")
def chat_api(chat_run):
    with TestClient(app_for("resume", chat_run)[0]) as client:
        yield client


@pytest.fixture(scope="module")
def chat_server(chat_run, tmp_path_factory):
    yield from serve_py(chat_run, tmp_path_factory)


def chat_py(*args):
    """chat.py's answer to one message (without the newline that ends it)."""
    return run("chat.py", "--device=cpu", *args).stdout.removesuffix("\n")


def chat(client, **body):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_the_openai_client_chats_streamed_and_not(chat_server, chat_run):
    import openai

    client = openai.OpenAI(base_url=chat_server + "/v1", api_key="unused")
    want = chat_py(f"--out_dir={chat_run}", "--system=Speak as a king.", "--prompt=Good morrow, my lord.",
                   "--temperature=0", "--max_new_tokens=40")
    got = client.chat.completions.create(model="out-chat", messages=HELLO, max_completion_tokens=40, temperature=0)
    assert got.object == "chat.completion" and got.choices[0].message.role == "assistant"
    # the special token that the reply drew is left out of its text, and <|end|> ends it
    assert got.choices[0].message.content == want and len(want) == 13 and "<|" not in want
    assert got.choices[0].finish_reason == "stop"
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (1 + 16 + 2 + 21 + 2, 15)
    chunks = list(client.chat.completions.create(model="out-chat", messages=HELLO, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 15
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    # n choices with a seed: choice j is what generate() draws with seed + j, as for completions
    settings = dict(temperature=0.9, top_p=0.95)
    got = client.chat.completions.create(model="out-chat", messages=HELLO, max_tokens=20, n=2, seed=5,
                                         extra_body={"top_k": 30}, **settings)
    want = [chat_reply(chat_run, HELLO, 20, top_k=30, seed=5 + j, **settings) for j in range(2)]
    assert [c.message.content for c in got.choices] == want
    with pytest.raises(openai.BadRequestError, match="messages.1.role"):
        client.chat.completions.create(model="out-chat", messages=[HELLO[0], {"role": "tool", "content": "x"}])


def test_concurrent_chats_and_completions_never_mix(chat_api, chat_run):
    said = ["Hail!", "Who goes there?", "Peace, ho!", "O Romeo,", "Fie!", "Ay."]
    chats = [dict(messages=[{"role": "user", "content": text}], max_tokens=15 + 2 * i,
                  temperature=0.0 if i % 2 else 1.0, seed=i) for i, text in enumerate(said)]
    completions = [dict(prompt=p, max_tokens=20, temperature=0.0) for p in ("ROMEO:", "KING:")]
    solo = [chat(chat_api, **c)["choices"][0]["message"]["content"] for c in chats]
    solo_completions = [complete(chat_api, **c)["choices"][0]["text"] for c in completions]

    def one(i):  # chats, half of them streamed, beside completions in the same batch
        if i >= len(chats):
            return complete(chat_api, **completions[i - len(chats)])["choices"][0]["text"]
        if i % 2:
            return chat(chat_api, **chats[i])["choices"][0]["message"]["content"]
        return "".join(c["choices"][0]["delta"].get("content", "") for c in stream_chat(chat_api, **chats[i])
                       if c["choices"])

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(len(chats) + len(completions))))
    assert together == solo + solo_completions
    assert solo == [chat_reply(chat_run, c["messages"], c["max_tokens"], c["temperature"], seed=c["seed"])
                    for c in chats]


def stream_chat(client, **body):
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[6:]) for e in events[:-1]]


def test_text_parts_and_the_developer_role(chat_api):
    """Content as a list of text parts (OpenAI's newer SDKs, LangChain) reads as the string of their texts;
    a developer message, OpenAI's newer name for system, as the system message."""
    want = chat(chat_api, messages=HELLO, max_tokens=12, temperature=0)
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Speak as a king."}]},
             {"role": "user", "content": [{"type": "text", "text": "Good morrow, "},
                                          {"type": "text", "text": "my lord."}]}]
    got = chat(chat_api, messages=parts, max_tokens=12, temperature=0)
    assert got["choices"] == want["choices"] and got["usage"] == want["usage"]


def test_chat_logprobs_are_the_models_own(chat_api, chat_served):
    model, tokenizer, _ = chat_served
    got = chat(chat_api, messages=HELLO, max_tokens=40, temperature=0, logprobs=True, top_logprobs=2)
    (choice,) = got["choices"]
    content = choice["logprobs"]["content"]
    assert choice["finish_reason"] == "stop" and len(content) == got["usage"]["completion_tokens"] - 1  # not <|end|>
    reply = [tokenizer.texts.index(c["token"]) for c in content]
    tokens = render_prompt(tokenizer, HELLO) + reply
    want = model_logprobs(model, tokens, tokenizer.vocab_size)[-len(reply):]
    want = want.gather(1, torch.tensor(reply)[:, None])[:, 0]
    assert [c["logprob"] for c in content] == pytest.approx(want.tolist(), abs=1e-5)
    assert all(c["bytes"] == list(c["token"].encode()) and len(c["top_logprobs"]) == 2 for c in content)
    assert all(c["logprob"] == c["top_logprobs"][0]["logprob"] for c in content)  # greedy: the most likely
    assert chat(chat_api, messages=HELLO, max_tokens=5)["choices"][0]["logprobs"] is None


def test_trim_history_leaves_out_the_oldest_turns(chat_api, chat_run):
    """A conversation longer than the context is refused, unless trim_history asks to leave out its
    oldest exchanges, as chat.py does: the system message stays."""
    said = ["Hail!", "Who goes there?", "Peace, ho!", "A friend.", "Stand and unfold yourself."]
    long = [HELLO[0]] + [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(said)]
    r = chat_api.post("/v1/chat/completions", json={"messages": long, "max_tokens": 8})
    assert r.status_code == 400 and "or trim_history: true to leave out the oldest" in r.json()["error"]["message"]
    got = chat(chat_api, messages=long, max_tokens=8, temperature=0, trim_history=True)
    kept = [long[0], *long[1 + got["trimmed_messages"]:]]
    assert got["trimmed_messages"] == 4 and kept[1:] == long[5:]
    assert got["choices"][0]["message"]["content"] == chat_reply(chat_run, kept, 8)
    assert chat(chat_api, messages=HELLO, max_tokens=2, trim_history=True)["trimmed_messages"] == 0


def test_a_reply_ends_at_end_of_turn(tmp_path):
    """A model whose every token is <|end|> answers with nothing, finish_reason stop."""
    model = tiny_model(n_layer=1, vocab_size=69, block_size=64)
    with torch.no_grad():  # the last hidden state all ones; only <|end|>'s row sums to much
        model.transformer.ln_f.weight.zero_(), model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[68] = 1.0
    app, _ = app_for("resume", save_run(tmp_path / "run", model, CHAT_META))
    with TestClient(app) as client:
        got = chat(client, messages=HELLO, max_tokens=10)["choices"][0]
        assert (got["message"]["content"], got["finish_reason"]) == ("", "stop")
        chunks = stream_chat(client, messages=HELLO, max_tokens=10)
        assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}, {}]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, message", [
    ({"messages": []}, "messages: an empty list; give at least one message"),
    ({"messages": [{"role": "tool", "content": "x"}]},
     "messages.0.role: Input should be 'system', 'user', 'assistant' or 'developer', got \"tool\""),
    ({"messages": [{"role": "user", "content": 5}]},
     'messages.0.content: Input should be a string or a list of parts {"type": "text", "text": ...}, got 5'),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url"}]}]},
     'messages.0.content.1: a part of type "image_url"; this model reads text only: give a string, or parts '
     '{"type": "text", "text": "..."}'),
    ({"messages": [{"role": "user", "content": ["Hi"]}]}, "messages.0.content: Input should be a string or a list"),
    ({"messages": [{"role": "user"}]}, "messages.0.content: Field required"),
    ({"messages": "Hi"}, 'messages: Input should be a valid list, got "Hi"'),
    ({"messages": [{"role": "user", "content": "O" * 62}]},
     "messages: 65 tokens, more than the 64 this server takes (the model's context, and --max_prompt_tokens)"),
    ({"messages": [{"role": "user", "content": "Un café ?"}]},
     "messages.0.content: characters not in the vocabulary: 'é'"),
    ({"messages": HELLO, "max_tokens": 5, "max_completion_tokens": 6}, "max_tokens and max_completion_tokens differ"),
    ({"messages": HELLO, "max_completion_tokens": LONG + 1}, f"max_tokens: {LONG + 1} is above this server's limit"),
    ({"messages": HELLO, "n": 5}, "above this server's limit of 4 (--max_n)"),
    ({"messages": HELLO, "logprobs": True, "top_logprobs": 21}, "top_logprobs: 21; it may be 0 to 20"),
    ({"messages": HELLO, "logprobs": True, "stream": True}, "logprobs: not supported with stream"),
    ({"messages": HELLO, "temperature": -1}, "temperature: Input should be greater than or equal to 0"),
])
def test_bad_chat_requests_are_a_clear_400(chat_api, body, message):
    r = chat_api.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert chat(chat_api, messages=HELLO, max_tokens=2, temperature=0)["choices"][0]["finish_reason"] == "length"


CHARACTERS_UNSEEN = "this model knows only the characters it was trained on"


@pytest.mark.parametrize("body, message", [
    ({"messages": HELLO, "max_tokens": 5, "max_completion_tokens": 6},
     "max_tokens and max_completion_tokens differ: give one of them"),
    ({"messages": HELLO, "max_completion_tokens": LONG + 1},
     f"max_tokens: {LONG + 1} is above this server's limit of {LONG} (--max_tokens)"),
    ({"messages": HELLO, "presence_penalty": 1.0}, f"presence_penalty: {NOT_SUPPORTED}"),
    ({"messages": HELLO, "stop": ["", "x"]}, "stop: up to 4 strings, none of them empty"),
    ({"messages": HELLO, "top_logprobs": 2}, "top_logprobs: it needs logprobs: true"),
    ({"messages": HELLO, "logprobs": True, "top_logprobs": -1},
     "top_logprobs: -1; it may be 0 to 20, the most tokens this server lists at each position"),
    ({"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}, "messages.0.content.0: a part without a type; "
     'this model reads text only: give a string, or parts {"type": "text", "text": "..."}'),
    ({"messages": [{"role": "user", "content": "O" * 62}], "trim_history": True},
     "messages: the message makes a prompt of 65 tokens, more than the model's context of 64: say it in fewer words"),
    ({"messages": []}, "messages: an empty list; give at least one message"),
    ({"messages": HELLO, "n": 5}, "n: 1 prompt(s) x n=5 choices is above this server's limit of 4 (--max_n)"),
    ({"messages": [HELLO[0], {"role": "user", "content": "Un caf\u00e9 ?"}]},
     f"messages.1.content: characters not in the vocabulary: '\u00e9'; {CHARACTERS_UNSEEN}"),
    ({"messages": [{"role": "user", "content": "O" * 62}]}, "messages: 65 tokens, more than the 64 this server "
     "takes (the model's context, and --max_prompt_tokens); send fewer or shorter messages, or trim_history: true "
     "to leave out the oldest"),
])
def test_check_chat_request_refuses(chat_served, body, message):
    _, tokenizer, info = chat_served
    assert refusal(serve.check_chat_request, serve.ChatRequest(**body), tokenizer, info, LIMITS) == (400, message)


def test_check_chat_request_gives_the_prompt_max_tokens_and_stop_strings(chat_served, char_served):
    _, tokenizer, info = chat_served
    check = serve.check_chat_request
    # the most tokens a reply may take: either name of it, else the server's limit
    assert check(serve.ChatRequest(messages=HELLO, stop="x"), tokenizer, info, LIMITS) == (
        render_prompt(tokenizer, HELLO), LONG, ["x"], 0)
    assert check(serve.ChatRequest(messages=HELLO, max_tokens=5), tokenizer, info, LIMITS)[1] == 5
    assert check(serve.ChatRequest(messages=HELLO, max_completion_tokens=6, max_tokens=6), tokenizer, info,
                 LIMITS)[1] == 6
    # the prompt's limit is the smaller of --max_prompt_tokens and the model's context
    assert refusal(check, serve.ChatRequest(messages=HELLO), tokenizer, info, {**LIMITS, "max_prompt_tokens": 40}) == (
        400, "messages: 42 tokens, more than the 40 this server takes (the model's context, and --max_prompt_tokens); "
        "send fewer or shorter messages, or trim_history: true to leave out the oldest")
    _, tokenizer, info = char_served
    status, message = refusal(check, serve.ChatRequest(messages=HELLO), tokenizer, info, LIMITS)
    assert status == 400 and message.startswith("out-tiny is not a chat model (its tokenizer has no chat tokens)")


def test_a_base_model_refuses_chat_and_keeps_completing(api):
    r = api.post("/v1/chat/completions", json={"messages": HELLO})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("out-tiny is not a chat model (its tokenizer has no chat tokens)")
    assert complete(api, prompt="ROMEO:", max_tokens=2)["choices"][0]["finish_reason"] == "length"
    assert api.get("/v1/models").json()["data"][0]["chat"] is False


@pytest.fixture(scope="module")
def endless_chat_server(tmp_path_factory):
    """A chat model whose greedy replies never end: every logit large but <|end|>'s, which is 0."""
    model = tiny_model(n_layer=1, vocab_size=69, block_size=64, tie_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        model.lm_head.weight[68] = 0.0
    yield from serve_py(save_run(tmp_path_factory.mktemp("serve") / "out-endless", model, CHAT_META), tmp_path_factory)


@pytest.mark.browser
def test_the_chat_page_in_a_browser(endless_chat_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def set_field(name, value):
        browser.find_element(By.ID, name).clear()
        browser.find_element(By.ID, name).send_keys(value)

    browser = chromium()
    try:
        wait = WebDriverWait(browser, 20)
        browser.get(endless_chat_server + "/")
        wait.until(lambda _: "a chat model" in browser.find_element(By.ID, "info").text)
        assert browser.find_element(By.ID, "message").is_displayed()
        assert not browser.find_element(By.ID, "prompt").is_displayed()  # the completion view is hidden
        set_field("temperature", "0")
        stats = browser.find_element(By.ID, "stats")
        said = ["Good morrow, my lord.", "Who goes there?"]
        for text, max_tokens in zip(said, ("12", "9")):
            set_field("max_tokens", max_tokens)
            browser.find_element(By.ID, "message").send_keys(text + Keys.ENTER)  # Enter sends
            wait.until(lambda _: stats.text.startswith(f"{max_tokens} tokens") and "(max tokens)" in stats.text)
        turns = browser.find_elements(By.CSS_SELECTOR, "#messages .turn")
        assert [t.get_attribute("class") for t in turns] == ["turn user", "turn assistant"] * 2
        assert all(t.is_displayed() for t in turns) and [turns[0].text, turns[2].text] == said
        # each reply is the API's to the conversation so far: the page sends the history
        history = []
        with httpx.Client(base_url=endless_chat_server) as client:
            for i, max_tokens in enumerate((12, 9)):
                history.append({"role": "user", "content": said[i]})
                want = chat(client, messages=history, max_tokens=max_tokens, temperature=0)["choices"][0]
                assert turns[2 * i + 1].get_attribute("textContent") == want["message"]["content"]
                history.append(want["message"])
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        # a third message makes a prompt longer than the context: the oldest turns are left out (greyed,
        # and said so), and the reply is the API's to what is left, as trim_history gives it
        browser.find_element(By.ID, "message").send_keys("And then?" + Keys.ENTER)
        wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#messages .turn")) == 6
                   and stats.text.startswith("9 tokens"))
        with httpx.Client(base_url=endless_chat_server) as client:
            want = chat(client, messages=[*history, {"role": "user", "content": "And then?"}], max_tokens=9,
                        temperature=0, trim_history=True)
        turns = browser.find_elements(By.CSS_SELECTOR, "#messages .turn")
        assert want["trimmed_messages"] == 2 and not browser.find_element(By.ID, "error").text
        assert [("left-out" in t.get_attribute("class")) for t in turns] == [True] * 2 + [False] * 4
        assert turns[5].get_attribute("textContent") == want["choices"][0]["message"]["content"]
        assert "The 2 oldest messages (greyed) no longer fit" in browser.find_element(By.ID, "trimmed").text
        # a message that alone does not fit is refused: the server's message is shown, and the message goes
        # back to its box
        browser.find_element(By.ID, "message").send_keys("O" * 70 + Keys.ENTER)
        wait.until(lambda _: "more than the model's context of 64" in browser.find_element(By.ID, "error").text)
        assert browser.find_element(By.ID, "message").get_attribute("value") == "O" * 70
        assert len(browser.find_elements(By.CSS_SELECTOR, "#messages .turn")) == 6
        browser.find_element(By.ID, "new").click()
        assert browser.find_elements(By.CSS_SELECTOR, "#messages .turn") == []
        assert not browser.find_element(By.ID, "trimmed").text
        set_field("message", "And then?")
        # Stop ends a reply that would go on, and keeps what it had
        set_field("max_tokens", str(LONG))
        browser.find_element(By.ID, "message").send_keys(Keys.ENTER)
        reply = browser.find_elements(By.CSS_SELECTOR, "#messages .turn")[-1]
        wait.until(lambda _: len(reply.get_attribute("textContent")) > 20)
        browser.find_element(By.ID, "stop").click()
        wait.until(lambda _: "stopped" in stats.text)
        with httpx.Client(base_url=endless_chat_server) as client:
            wait_idle(client)  # Stop ended the generation on the server
        stopped = reply.get_attribute("textContent")
        time.sleep(0.3)
        assert reply.get_attribute("textContent") == stopped and browser.find_element(By.ID, "send").is_enabled()
        assert [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#messages .turn")][0] == "And then?"
    finally:
        browser.quit()
