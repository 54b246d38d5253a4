"""
Serve a model on a web page and OpenAI's completions and chat completions APIs.

  python serve.py --out_dir=out-shakespeare-char-cpu             # out_dir/ckpt.pt, on 127.0.0.1:8000
  python serve.py --out_dir=out-shakespeare --checkpoint=best.pt --port=8080
  python serve.py --init_from=gpt2                                # or a local Hugging Face directory

Open the printed address for the page (a chat for a chat model); programs POST to /v1/completions,
and for a chat model to /v1/chat/completions, as to OpenAI's API (streamed as server-sent events
with "stream": true), and GET /v1/models and /health; /tokenizer_info, /tokenize and /detokenize
give the model's tokenizer (vLLM's endpoints, which lm-evaluation-harness uses). Concurrent
requests, of both kinds, are generated together by engine.py, one forward pass per step.
The same --key=value flags and config files as sample.py.
"""

import asyncio
import json
import socket
import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import List, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from chat import fit_context
from chat_template import CHAT_TEMPLATE, END, ROLES, render_prompt
from checkpoint import load_model
from configurator import configure
from device import autocast_for, resolve_device
from engine import Engine, Job
from tokenizer import encode_prompt

# the --key=value flags; only these, so that no other name of the module becomes one
DEFAULTS = dict(
    init_from="resume",  # 'resume' (a checkpoint in out_dir), 'gpt2'...'gpt2-xl', or a local HF directory
    out_dir="",  # the training run; empty: the newest run here (the last checkpoint written)
    checkpoint="ckpt.pt",  # or best.pt
    host="127.0.0.1",  # loopback: reachable from this machine only; 0.0.0.0 opens it to the network
    port=8000,  # 0 picks a free port
    device="auto",  # auto: a GPU (cuda, else mps) if there is one, else cpu; or name one: cpu, cuda:1, ...
    dtype="auto",  # auto: bfloat16 on a GPU that has it, float16 on older ones, float32 elsewhere
    # limits, so that one client cannot take the server down
    max_prompt_tokens=2048,  # tokens of one prompt (a chat's: and at most the model's context)
    max_tokens=1024,  # the most tokens a choice may ask for
    max_n=4,  # choices in one request (prompts x n)
    max_batch=8,  # rows generated together in one forward pass; more wait their turn
    max_concurrent=32,  # requests in flight, waiting ones included; more are refused with 429
)
PAGE = Path(__file__).resolve().parent / "assets" / "serve.html"
MAX_LOGPROBS = 20  # the most alternatives a token's top_logprobs may list, as vLLM's default
DISCONNECT_POLL = 0.5  # seconds between checks that a waiting client is still there


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)
    include_usage: bool = False


class Sampling(BaseModel):
    """What OpenAI's completions and chat completions requests share; strict, so that "0.5" for a
    number is an error, not a guess."""
    model_config = ConfigDict(strict=True)
    model: Optional[str] = None
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=1)  # not OpenAI's: an extension, as in vLLM
    n: int = Field(1, ge=1)
    stop: Union[str, List[str], None] = None
    seed: Optional[int] = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    # OpenAI's that this server does not do: accepted only at their "off" values
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict] = None


class CompletionRequest(Sampling):
    # text, several texts, or tokens (a list of ids, or a list of such lists), one choice per prompt
    prompt: Union[str, List[str], List[int], List[List[int]]] = ""
    max_tokens: int = Field(16, ge=0)  # OpenAI's default; 0 with echo scores the prompt only
    echo: bool = False  # the choice's text starts with the prompt, and its logprobs with the prompt's
    logprobs: Optional[int] = None  # the N most likely tokens at each position
    suffix: Optional[str] = None
    best_of: Optional[int] = None


class Message(BaseModel):
    model_config = ConfigDict(strict=True)
    # "developer" is OpenAI's newer name for the system message, which its SDKs send for newer models:
    # the model knows it as system
    role: Literal[(*ROLES, "developer")]
    content: Union[str, List[dict]]  # a string, or parts {"type": "text", "text": ...}, checked by message_text
    name: Optional[str] = None


class ChatRequest(Sampling):
    messages: List[Message]
    max_completion_tokens: Optional[int] = Field(None, ge=1)  # unset: up to the server's --max_tokens
    max_tokens: Optional[int] = Field(None, ge=1)  # what OpenAI called it first
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    # not OpenAI's: when the conversation does not fit, leave out its oldest turns (the system message
    # kept), as chat.py does, rather than refuse it; the response says how many (trimmed_messages)
    trim_history: bool = False


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True)
    model: Optional[str] = None
    prompt: str
    add_special_tokens: bool = False  # no tokenizer here adds any


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True)
    model: Optional[str] = None
    tokens: List[int]


class ApiError(Exception):
    def __init__(self, status, message, kind="invalid_request_error"):
        self.status, self.message, self.kind = status, message, kind


def error_response(status, message, kind="invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


def validation_message(errors):
    """One readable line for pydantic's errors: the first field that is wrong and why."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"the body is not valid JSON: {first['ctx']['error']}"
    loc = [str(part) for part in first["loc"] if part != "body"]
    if not loc:
        return "the body must be a JSON object of settings, e.g. {\"prompt\": \"Hello\"}"
    # the two unions fail once per alternative: one message says what either may be
    if loc[0] == "prompt":
        return (f"prompt: Input should be a string, a list of strings, a list of token ids or a list of such "
                f"lists, got {json.dumps(first['input'])[:60]}")
    if loc[0] == "messages" and loc[2:3] == ["content"] and first["type"] != "missing":
        return (f"{'.'.join(loc[:3])}: Input should be a string or a list of parts {{\"type\": \"text\", "
                f"\"text\": ...}}, got {json.dumps(first['input'])[:60]}")
    if loc[0] == "stop":
        return f"stop: Input should be a string or a list of strings, got {json.dumps(first['input'])[:60]}"
    return f"{'.'.join(loc)}: {first['msg']}, got {json.dumps(first['input'])[:60]}"


async def api_error(request, e):
    return error_response(e.status, e.message, e.kind)


async def invalid_body(request, e):
    return error_response(400, validation_message(e.errors()))


async def http_error(request, e):
    return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}")


async def crashed(request, e):  # logged by uvicorn; the client gets no stack trace
    return error_response(500, "the server failed on this request; its log says why", "server_error")


# every error, ours, pydantic's and Starlette's alike, goes to the client as OpenAI's JSON error
ERROR_HANDLERS = {ApiError: api_error, RequestValidationError: invalid_body, HTTPException: http_error,
                  Exception: crashed}


class Choice:
    """One choice's text as it streams: whole characters only, and nothing past a stop string. A chat
    reply leaves special tokens out of its text, as transformers' pipeline does."""

    def __init__(self, tokenizer, stop, stop_token, chat):
        self.decode, self.stop, self.stop_token = tokenizer.stream_decoder(skip_special=chat), stop, stop_token
        self.text, self.sent, self.tokens, self.finish_reason = "", 0, 0, None
        self.logprobs = []  # (token, where its text starts, the engine's logprobs) of each token, if asked
        self.cut = False  # whether a stop string ended the text

    def add(self, token, finish, logprobs=None):
        """Take the engine's event; returns the text that may go to the client now."""
        if token is not None:
            self.tokens += 1
            if logprobs is not None:
                self.logprobs.append((token, len(self.text), logprobs))
            if token != self.stop_token:
                self.text += self.decode(token)
        if finish:
            self.text += self.decode(None)  # bytes of a character that max_tokens cut in two
        hits = [i for i in (self.text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stop) if i >= 0]
        if hits:
            self.text, finish, self.cut = self.text[:min(hits)], "stop", True
        safe = len(self.text)
        if not finish:
            # hold back a tail that may be the start of a stop string
            safe -= max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        piece, self.sent = self.text[self.sent:safe], max(self.sent, safe)
        self.finish_reason = finish
        return piece

    def kept_logprobs(self):
        """The logprobs of the tokens whose text the choice kept: a stop string's tokens are left out."""
        return [entry for entry in self.logprobs if not self.cut or entry[1] < len(self.text)]


class Generation:
    """One request's choices as the engine generates them: submitted when made, read by run()."""

    def __init__(self, engine, tokenizer, prompts, body, max_tokens, stop, stop_token, chat, logprobs=None,
                 echo_logprobs=False):
        loop, self.events, self.n = asyncio.get_running_loop(), asyncio.Queue(), body.n
        self.jobs = []
        for p, tokens in enumerate(prompts):
            def on_event(choice, token, finish, logprobs, first=p * body.n):  # called from the engine's thread
                loop.call_soon_threadsafe(self.events.put_nowait, (first + choice, token, finish, logprobs))
            self.jobs.append(engine.submit(Job(tokens, on_event, body.n, max_tokens, body.temperature, body.top_k,
                                               body.top_p, body.seed, stop_token, logprobs, echo_logprobs)))
        self.choices = [Choice(tokenizer, stop, stop_token, chat) for _ in range(len(prompts) * body.n)]
        self.usage = {"prompt_tokens": sum(map(len, prompts))}

    async def run(self, request):
        """(index, text) as the choices grow, until all have finished or the client has left."""
        try:
            async for index, token, finish, logprobs in engine_events(self.events, request):
                choice = self.choices[index]
                if choice.finish_reason:
                    continue  # tokens drawn in the step that a stop string ended it
                if finish == "error":
                    raise ApiError(500, "generation failed; the server's log says why", "server_error")
                text = choice.add(token, finish, logprobs)
                if choice.finish_reason:  # a stop string ends the text while the engine's row goes on
                    self.jobs[index // self.n].cancel(index % self.n)
                yield index, text
                if all(c.finish_reason for c in self.choices):
                    break
        finally:  # the client left, or a stop string ended choices that the engine still runs
            for job in self.jobs:
                job.cancel()
        if not all(c.finish_reason for c in self.choices):
            return  # the client left
        self.usage["completion_tokens"] = sum(c.tokens for c in self.choices)
        self.usage["total_tokens"] = self.usage["prompt_tokens"] + self.usage["completion_tokens"]

    def stream(self, request, body, head, chunks):
        """The server-sent events of a streamed response: chunks(index, text) gives the chunks of each
        step (and chunks(None, None) those that open the stream), then usage if asked, then [DONE]."""
        async def events():
            try:
                for chunk in chunks(None, None):
                    yield f"data: {json.dumps(chunk)}\n\n"
                async for index, text in self.run(request):
                    for chunk in chunks(index, text):
                        yield f"data: {json.dumps(chunk)}\n\n"
            except ApiError as e:
                yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.kind}})}\n\n"
            if "completion_tokens" in self.usage and body.stream_options and body.stream_options.include_usage:
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': self.usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def model_info(model, tokenizer, trained, name, device, dtype):
    # "gpt2 (BPE, 50257)", "char (65)", "bpe (4096)" (a vocabulary trained on the model's data)
    tok = f"{tokenizer.kind} ({'BPE, ' if tokenizer.kind == 'gpt2' else ''}{tokenizer.vocab_size})"
    return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "local",
            "parameters": model.num_params(non_embedding=False), "tokenizer": tok, "chat": bool(tokenizer.chat_tokens),
            "block_size": model.config.block_size, "rope": model.config.rope, "iter_num": trained["iter_num"],
            "best_val_loss": trained["best_val_loss"], "device": device, "dtype": dtype}


def create_app(model, tokenizer, info, limits=DEFAULTS, autocast=None):
    """The FastAPI app for a model in eval mode on its device; info as model_info gives it."""
    engine = None

    @asynccontextmanager
    async def lifespan(app):
        nonlocal engine
        engine = Engine(model, limits["max_batch"], tokenizer.vocab_size, autocast)
        app.state.engine = engine
        yield
        engine.close()

    app = FastAPI(title="gpt", lifespan=lifespan, docs_url=None, redoc_url=None, exception_handlers=ERROR_HANDLERS)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        return {"status": "ok", "active_requests": engine.active()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [info]}

    def start(prompts, body, max_tokens, stop, stop_token, chat, logprobs=None, echo_logprobs=False):
        if engine.active() + len(prompts) > limits["max_concurrent"]:
            raise ApiError(429, f"the server is busy: {limits['max_concurrent']} requests in flight "
                                f"(--max_concurrent); try again shortly", "rate_limit_error")
        return Generation(engine, tokenizer, prompts, body, max_tokens, stop, stop_token, chat, logprobs,
                          echo_logprobs)

    # vLLM's tokenizer endpoints, which lm-evaluation-harness's local-completions model finds and uses
    # (tokenizer_backend=remote): so it scores any model here, a character model too, with no export.
    # Like transformers' and vLLM's tokenizers, /tokenize reads special tokens' spellings as those tokens.
    @app.get("/tokenizer_info")
    async def tokenizer_info():
        start = encode_prompt(tokenizer, "")  # what a document starts with: <|endoftext|>, or a char model's "\n"
        eos = None if tokenizer.eot_token is None else tokenizer.decode([tokenizer.eot_token])
        return {"tokenizer_class": tokenizer.kind, "bos_token": tokenizer.decode(start), "eos_token": eos,
                "pad_token": None, "model_max_length": info["block_size"], "vocab_size": tokenizer.vocab_size,
                **({"chat_template": CHAT_TEMPLATE} if tokenizer.chat_tokens else {})}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        try:
            if tokenizer.kind == "char":
                tokens = tokenizer.encode(body.prompt)
            else:
                tokens = tokenizer.enc.encode(body.prompt, allowed_special="all")
        except ValueError as e:  # characters a char-level model never saw
            raise ApiError(400, f"prompt: {e}; this model knows only the characters it was trained on") from None
        return {"tokens": tokens, "count": len(tokens), "max_model_len": info["block_size"]}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        bad = [t for t in body.tokens if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise ApiError(400, f"tokens: token id {bad[0]} is not in this model's vocabulary (ids 0 to "
                                f"{tokenizer.vocab_size - 1})")
        return {"prompt": tokenizer.decode(body.tokens)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts, stop = check_completion_request(body, tokenizer, info, limits)  # token lists, stop strings
        generation = start(prompts, body, body.max_tokens, stop, tokenizer.eot_token, False, body.logprobs,
                           body.echo and body.logprobs is not None)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": info["id"]}

        def choice(index, text):
            return {"text": text, "index": index, "logprobs": None,
                    "finish_reason": generation.choices[index].finish_reason}

        if not body.stream:
            async for _ in generation.run(request):
                pass
            choices = [choice(i, c.text) for i, c in enumerate(generation.choices)]
            if body.echo or body.logprobs is not None:
                for i, c in enumerate(choices):
                    job = generation.jobs[i // body.n]
                    c["text"], c["logprobs"] = completion_logprobs(tokenizer, job, generation.choices[i], body.echo)
            return {**head, "choices": choices, "usage": generation.usage}
        return generation.stream(request, body, head, lambda index, text: [] if index is None
                                 else [{**head, "choices": [choice(index, text)]}])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        prompt, max_tokens, stop, trimmed = check_chat_request(body, tokenizer, info, limits)
        end = tokenizer.chat_tokens[END]
        generation = start([prompt], body, max_tokens, stop, end, True,
                           (body.top_logprobs or 0) if body.logprobs else None)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": info["id"], **({"trimmed_messages": trimmed} if body.trim_history else {})}
        if not body.stream:
            async for _ in generation.run(request):
                pass
            return {**head, "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                                         "logprobs": chat_logprobs(tokenizer, c, end) if body.logprobs else None,
                                         "finish_reason": c.finish_reason}
                                        for i, c in enumerate(generation.choices)], "usage": generation.usage}

        head["object"] = "chat.completion.chunk"  # every chunk's, the usage chunk's too

        def delta(index, content, finish_reason=None):
            return {**head, "choices": [{"index": index, "delta": content, "logprobs": None,
                                         "finish_reason": finish_reason}]}

        def chunks(index, text):
            """Each choice's role first, then its text as it grows, then why it ended."""
            if index is None:
                return [delta(i, {"role": "assistant", "content": ""}) for i in range(body.n)]
            finish = generation.choices[index].finish_reason
            return [delta(index, {"content": text})] * bool(text) + [delta(index, {}, finish)] * bool(finish)

        return generation.stream(request, body, head, chunks)

    return app


def completion_logprobs(tokenizer, job, choice, echo):
    """A completion choice's text and its logprobs in OpenAI's legacy shape (None unless the job asked
    for them): tokens, token_logprobs, top_logprobs and text_offset, the prompt's first (echo) with
    null for its first token, which nothing precedes. Each top_logprobs lists the job's N most likely
    tokens and the token itself, as OpenAI's and vLLM's do; tokens that spell the same text (pieces of
    one character) share a key."""
    decode, prompt_text, offsets = tokenizer.stream_decoder(), "", []
    for token in job.prompt if echo else []:
        offsets.append(len(prompt_text))
        prompt_text += decode(token)
    prompt_text += decode(None)
    text = prompt_text + choice.text
    if job.logprobs is None:
        return text, None
    entries = list(zip(job.prompt, offsets, [None] + job.prompt_logprobs)) if echo else []
    entries += [(token, len(prompt_text) + offset, scores) for token, offset, scores in choice.kept_logprobs()]

    def name(token):
        return tokenizer.decode([token])

    def top(token, scores):
        return None if scores is None else {**{name(t): lp for t, lp in scores[1]}, name(token): scores[0]}

    return text, {"tokens": [name(t) for t, _, _ in entries],
                  "token_logprobs": [None if s is None else s[0] for _, _, s in entries],
                  "top_logprobs": [top(t, s) for t, _, s in entries],
                  "text_offset": [offset for _, offset, _ in entries]}


def chat_logprobs(tokenizer, choice, end):
    """A chat choice's logprobs in OpenAI's shape: each token of the reply (<|end|> is none of it) with
    its bytes, and the top_logprobs asked for."""
    def entry(token, logprob):
        # byte-level BPE tokens are bytes, maybe part of a character; a character model's are characters
        char = tokenizer.kind == "char"
        raw = tokenizer.decode([token]).encode() if char else tokenizer.enc.decode_single_token_bytes(token)
        return {"token": raw.decode(errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {"content": [{**entry(token, logprob), "top_logprobs": [entry(t, lp) for t, lp in top]}
                        for token, _, (logprob, top) in choice.kept_logprobs() if token != end], "refusal": None}


def check_shared_settings(body, max_tokens, info, limits):
    """The stop strings, or an ApiError for what both kinds of request may get wrong."""
    if body.model not in (None, info["id"]):
        raise ApiError(404, f"model '{body.model}' is not served here; this server serves '{info['id']}'")
    unsupported = {"presence_penalty": 0.0, "frequency_penalty": 0.0}
    for key, off in unsupported.items():
        if getattr(body, key) != off:
            raise ApiError(400, f"{key}: not supported by this server; leave it out")
    if body.logit_bias:
        raise ApiError(400, "logit_bias: not supported by this server; leave it out")
    if max_tokens > limits["max_tokens"]:
        raise ApiError(400, f"max_tokens: {max_tokens} is above this server's limit of "
                            f"{limits['max_tokens']} (--max_tokens)")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stop) > 4 or not all(stop):
        raise ApiError(400, "stop: up to 4 strings, none of them empty")
    return stop


def check_completion_request(body, tokenizer, info, limits):
    """The prompts' tokens and the stop strings, or an ApiError that says what is wrong."""
    stop = check_shared_settings(body, body.max_tokens, info, limits)
    if body.suffix is not None:
        raise ApiError(400, "suffix: not supported by this server; leave it out")
    if body.best_of not in (None, body.n):
        raise ApiError(400, "best_of: not supported by this server; leave it out")
    check_logprobs("logprobs", body.logprobs)
    if body.stream and (body.echo or body.logprobs is not None):
        raise ApiError(400, "echo and logprobs: not supported with stream; leave stream out to get them")
    prompt = body.prompt
    # one prompt (a string, or a list of token ids), or a list of them
    prompts = [prompt] if isinstance(prompt, str) or prompt and isinstance(prompt[0], int) else prompt
    if not prompts:
        raise ApiError(400, "prompt: an empty list; give a string, a list of strings or a list of token ids")
    check_choice_count(len(prompts), body.n, limits)
    tokens = []
    for p in prompts:
        if isinstance(p, str):
            try:
                tokens.append(encode_prompt(tokenizer, p))
            except ValueError as e:  # characters a char-level model never saw
                raise ApiError(400, f"prompt: {e}; this model knows only the characters it was trained on") from None
        else:
            bad = [t for t in p if not 0 <= t < tokenizer.vocab_size]
            if not p:
                raise ApiError(400, "prompt: an empty list of token ids; give at least one")
            if bad:
                raise ApiError(400, f"prompt: token id {bad[0]} is not in this model's vocabulary (ids 0 to "
                                    f"{tokenizer.vocab_size - 1})")
            tokens.append(p)
        if len(tokens[-1]) > limits["max_prompt_tokens"]:
            raise ApiError(400, f"prompt: {len(tokens[-1])} tokens is above this server's limit of "
                                f"{limits['max_prompt_tokens']} (--max_prompt_tokens)")
        # scored in one forward pass of all its tokens but the last
        if body.echo and body.logprobs is not None and not info["rope"] and len(tokens[-1]) > info["block_size"] + 1:
            raise ApiError(400, f"prompt: {len(tokens[-1])} tokens, more than the {info['block_size'] + 1} that this "
                                "model's learned positions score at once (echo with logprobs); shorten it")
    return tokens, stop


def check_logprobs(key, n):
    if n is not None and not 0 <= n <= MAX_LOGPROBS:
        raise ApiError(400, f"{key}: {n}; it may be 0 to {MAX_LOGPROBS}, the most tokens this server lists at "
                            "each position")


def message_text(i, content):
    """A message's text: its content, or the text of its parts, one after the other as OpenAI reads them."""
    if isinstance(content, str):
        return content
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = f"of type {json.dumps(part['type'])}" if isinstance(part.get("type"), str) else "without a type"
            raise ApiError(400, f"messages.{i}.content.{j}: a part {kind}; this model reads text only: "
                                'give a string, or parts {"type": "text", "text": "..."}')
    return "".join(part["text"] for part in content)


def check_chat_request(body, tokenizer, info, limits):
    """The prompt's tokens, the most tokens a choice may take, the stop strings and how many of the
    oldest messages trim_history left out; or an ApiError."""
    if not tokenizer.chat_tokens:
        raise ApiError(400, f"{info['id']} is not a chat model (its tokenizer has no chat tokens): fine-tune it "
                            "on a chat dataset (prepare_chat.py, then train.py), or use /v1/completions")
    if None not in (body.max_tokens, body.max_completion_tokens) and body.max_tokens != body.max_completion_tokens:
        raise ApiError(400, "max_tokens and max_completion_tokens differ: give one of them")
    max_tokens = body.max_completion_tokens or body.max_tokens or limits["max_tokens"]
    stop = check_shared_settings(body, max_tokens, info, limits)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs: it needs logprobs: true")
    check_logprobs("top_logprobs", body.top_logprobs)
    if body.stream and body.logprobs:
        raise ApiError(400, "logprobs: not supported with stream; leave stream out to get them")
    if not body.messages:
        raise ApiError(400, "messages: an empty list; give at least one message")
    check_choice_count(1, body.n, limits)
    messages = []
    for i, message in enumerate(body.messages):
        text = message_text(i, message.content)
        try:
            tokenizer.encode(text)
        except ValueError as e:  # characters a char-level model never saw
            raise ApiError(400, f"messages.{i}.content: {e}; this model knows only the characters it was "
                                "trained on") from None
        messages.append({"role": "system" if message.role == "developer" else message.role, "content": text})
    limit = min(limits["max_prompt_tokens"], info["block_size"])
    if body.trim_history:
        try:  # room for the reply, as chat.py leaves it
            messages = fit_context(tokenizer, messages, limit, min(max_tokens, limit // 2))
        except ValueError as e:
            raise ApiError(400, f"messages: {e}") from None
    prompt = render_prompt(tokenizer, messages)
    if len(prompt) > limit:
        raise ApiError(400, f"messages: {len(prompt)} tokens, more than the {limit} this server takes (the "
                            "model's context, and --max_prompt_tokens); send fewer or shorter messages, or "
                            "trim_history: true to leave out the oldest")
    return prompt, max_tokens, stop, len(body.messages) - len(messages)


def check_choice_count(prompts, n, limits):
    if prompts * n > limits["max_n"]:
        raise ApiError(400, f"n: {prompts} prompt(s) x n={n} choices is above this server's "
                            f"limit of {limits['max_n']} (--max_n)")


async def engine_events(events, request):
    """The engine's events for this request, until the client disconnects. Starlette cancels a
    stream whose client left, but not a plain request: that one is checked on every poll."""
    checked = time.monotonic()
    while True:
        try:
            yield await asyncio.wait_for(events.get(), DISCONNECT_POLL)
        except asyncio.TimeoutError:
            pass
        if time.monotonic() - checked >= DISCONNECT_POLL:
            if await request.is_disconnected():
                return
            checked = time.monotonic()


def main(argv):
    config, _ = configure(DEFAULTS, argv, usage=__doc__)

    def fail(message):
        raise SystemExit(f"error: {message}")

    for key in ("max_prompt_tokens", "max_tokens", "max_n", "max_batch", "max_concurrent"):
        if config[key] < 1:
            fail(f"{key}={config[key]}: it must be at least 1")
    if config["max_n"] > config["max_batch"]:
        fail(f"max_n={config['max_n']} is above max_batch={config['max_batch']}: a request's choices run together")
    try:
        device, dtype = resolve_device(config["device"], config["dtype"])
    except ValueError as e:
        fail(e)
    autocast = autocast_for(device, dtype)
    try:
        model, tokenizer, trained = load_model(config["init_from"], config["out_dir"], config["checkpoint"])
    except (OSError, ValueError, RuntimeError) as e:
        fail(e)
    model.eval().to(device)
    name = Path(trained["out_dir"] or config["init_from"]).name
    info = model_info(model, tokenizer, trained, name, device, dtype)
    app = create_app(model, tokenizer, info, config, autocast)

    import uvicorn

    # our own socket, so that --port=0 can print the port it got
    sock = socket.socket(socket.AF_INET6 if ":" in config["host"] else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config["host"], config["port"]))
        sock.listen(128)  # connections made from here on wait for uvicorn rather than being refused
    except OSError as e:
        fail(f"cannot listen on {config['host']}:{config['port']}: {e.strerror}; pick another --port")
    address = f"http://{config['host']}:{sock.getsockname()[1]}"
    print(f"serving {name} ({info['parameters'] / 1e6:.2f}M parameters, {info['tokenizer']} tokenizer, "
          f"{device} {dtype}) on {address}", flush=True)
    # a stream left open does not hold up Ctrl-C for long
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3)).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
