"""engine.py: batched generation gives each job exactly what generation.generate gives it alone."""

import queue
import threading
import time

import pytest
import torch

from conftest import tiny_model
from engine import Engine, Job, SlotCache
from generation import KVCache, context_length, generate

MODERN = dict(rope=True, norm="rmsnorm", qk_norm=True, mlp_act="relu2", tie_embeddings=False, logit_softcap=15.0,
              value_embeddings=True, x0_mixing=True, unet_skips=True, bigram_hash=64)


@pytest.fixture(scope="module", params=["gpt2", "modern"])
def model(request):
    # a RoPE model reads past block_size with a sliding window: generate() slides its cache, the
    # engine keeps a ring of the last block_size keys; both give the same tokens
    switches = MODERN if request.param == "modern" else {}
    return tiny_model(vocab_size=50, **switches).eval()


def alone(model, prompt, max_tokens, choice=0, temperature=1.0, top_k=None, top_p=1.0, seed=None, stop_token=None):
    seed = None if seed is None else seed + choice
    tokens = [t.item() for t in generate(model, torch.tensor([prompt]), max_tokens, temperature, top_k, top_p,
                                         stop_token, seed)]
    return tokens[:tokens.index(stop_token) + 1] if stop_token in tokens else tokens


class Collector:
    """Events of one job, from the engine's thread, as {choice: tokens} and {choice: finish_reason}."""

    def __init__(self):
        self.events = queue.Queue()
        self.logprobs = []  # what each event says of its token's log-probability

    def __call__(self, choice, token, finish, logprobs):
        self.events.put((choice, token, finish))
        self.logprobs.append(logprobs)

    def wait(self, n, timeout=30):
        tokens, finish = {j: [] for j in range(n)}, {}
        while len(finish) < n:
            choice, token, reason = self.events.get(timeout=timeout)
            tokens[choice].append(token)
            if reason:
                finish[choice] = reason
        return tokens, finish


SETTINGS = [  # prompt, max_tokens, settings: greedy, sampled, n=2, past block_size, a prompt longer than it,
    # a prompt longer than a RoPE model's context (2 layers x 15 + 1 tokens, and one for the bigram of the
    # oldest): its cache starts within the prompt
    ([1, 2, 3], 30, dict(temperature=0.0)),
    ([5] * 10, 12, dict(temperature=0.9, top_k=10, seed=3, n=2)),
    ([7, 8], 25, dict(temperature=1.0, top_p=0.8, seed=5)),
    (list(range(20)), 5, dict(temperature=0.0)),
    ([9], 14, dict(temperature=1.3, seed=11)),
    ([i % 50 for i in range(7, 47)], 20, dict(temperature=0.0)),
]


def test_batched_jobs_equal_each_job_alone(model):
    engine = Engine(model, max_rows=4)
    steps = []
    forward = model.forward
    # the engine's forward passes (alone() below runs the model in this thread)
    model.forward = lambda idx, **kw: (threading.current_thread() is engine.thread and steps.append(idx.shape)
                                       or forward(idx, **kw))
    try:
        collectors = [Collector() for _ in SETTINGS]
        # submitted together: 6 choices for 4 rows, so some wait and join while others run
        jobs = [engine.submit(Job(prompt, c, max_tokens=n_new, **kw))
                for c, (prompt, n_new, kw) in zip(collectors, SETTINGS)]
        for job, c, (prompt, n_new, kw) in zip(jobs, collectors, SETTINGS):
            tokens, finish = c.wait(job.n)
            for j in range(job.n):
                want = alone(model, prompt, n_new, j, **{k: v for k, v in kw.items() if k != "n"})
                assert tokens[j] == want, (prompt, j)
                assert finish[j] == "length"
        assert engine.active() == 0
    finally:
        model.forward = forward
        engine.close()
    assert max(B for B, _ in steps) == 4  # one forward pass for a full batch of rows
    if model.config.rope:  # the cache slides: a prefill per job (of up to the context), then one token a row a step
        prefills = [min(len(prompt), context_length(model.config)) for prompt, _, _ in SETTINGS]
        assert sorted(T for _, T in steps if T > 1) == sorted(T for T in prefills if T > 1)


def test_a_job_that_joins_mid_generation(model):
    """A job admitted while another runs lands in its own cache row; rows that end move the last one."""
    engine = Engine(model, max_rows=3)
    first, second, third = Collector(), Collector(), Collector()
    try:
        engine.submit(Job([4, 4, 4], first, n=2, max_tokens=11, temperature=0.8, seed=1))
        first.events.get(timeout=30)  # the first job is running
        engine.submit(Job([2], second, max_tokens=4, temperature=0.0))
        engine.submit(Job([3, 1], third, max_tokens=9, temperature=0.7, seed=2))
        got = [c.wait(n)[0] for c, n in ((second, 1), (third, 1))]
        assert got[0][0] == alone(model, [2], 4, temperature=0.0)
        assert got[1][0] == alone(model, [3, 1], 9, temperature=0.7, seed=2)
    finally:
        engine.close()


def test_each_job_ends_at_its_own_stop_token(model):
    """A completion (<|endoftext|>) and a chat reply (<|end|>) in one batch: each stops at its own token."""
    greedy = alone(model, [1, 2], 20, temperature=0.0)
    stop = greedy[3]
    engine = Engine(model, max_rows=2)
    try:
        stopped, other = Collector(), Collector()
        engine.submit(Job([1, 2], stopped, max_tokens=20, temperature=0.0, stop_token=stop))
        engine.submit(Job([1, 2], other, max_tokens=20, temperature=0.0, stop_token=50))  # an id never drawn
        tokens, finish = stopped.wait(1)
        assert tokens[0] == alone(model, [1, 2], 20, temperature=0.0, stop_token=stop) and tokens[0][-1] == stop
        assert finish[0] == "stop"
        assert other.wait(1) == ({0: greedy}, {0: "length"})
    finally:
        engine.close()


def test_logprobs_of_the_prompt_and_of_each_drawn_token(model):
    """A job that asks gets its prompt's log-probabilities (none for the first token) and each drawn token's,
    with its 3 most likely alternatives: the model's distribution at that position. max_tokens 0 only scores."""
    prompt = [1, 2, 3, 4, 5]
    engine = Engine(model, max_rows=2)
    try:
        scored, drawn = Collector(), Collector()
        only = engine.submit(Job(prompt, scored, max_tokens=0, logprobs=3, echo_logprobs=True))
        engine.submit(Job(prompt, drawn, max_tokens=6, temperature=0.0, logprobs=3))
        assert scored.wait(1) == ({0: [None]}, {0: "length"}) and scored.logprobs == [None]
        tokens, _ = drawn.wait(1)
    finally:
        engine.close()
    sequence = prompt + tokens[0]
    idx = torch.tensor([sequence])
    with torch.no_grad():
        logits, _ = model(idx[:, :-1], targets=idx[:, 1:])
    want = logits[0].log_softmax(-1)
    assert [lp for lp, _ in only.prompt_logprobs] == want[:4].gather(1, idx[0, 1:5, None])[:, 0].tolist()
    assert [t for t, _ in only.prompt_logprobs[0][1]] == want[0].topk(3).indices.tolist()
    got = [lp for lp, _ in drawn.logprobs]
    assert got == pytest.approx(want[4:].gather(1, idx[0, 5:, None])[:, 0].tolist(), abs=1e-5)
    assert all(top[0] == (token, lp) for (lp, top), token in zip(drawn.logprobs, tokens[0]))  # greedy: the top one


def test_cancel_ends_a_job_at_once(model):
    engine = Engine(model, max_rows=2)
    try:
        c = Collector()
        job = engine.submit(Job([1], c, n=2, max_tokens=10**6, temperature=1.0))
        c.events.get(timeout=30)
        job.cancel(0)  # one choice first: the other goes on
        for _ in range(50):
            c.events.get(timeout=30)
        assert engine.active() == 1
        job.cancel()
        deadline = time.monotonic() + 5
        while engine.active() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.active() == 0
        while not c.events.empty():  # what was drawn before the cancel took effect
            c.events.get()
        time.sleep(0.2)
        assert c.events.empty()
    finally:
        engine.close()


def test_rows_at_different_positions_in_one_forward(model):
    """model.forward's pos, attn_mask and prev: rows of different lengths in one batch give each row's own logits."""
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    caches = [SlotCache(len(prompts), 16) for _ in model.transformer.h]
    want = []
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            single = [KVCache(16) for _ in model.transformer.h]
            model(torch.tensor([prompt]), kv_caches=single)
            for cache, layer in zip(caches, single):
                cache.load(row, layer.k[:, :, :layer.length], layer.v[:, :, :layer.length])
            want.append(model(torch.tensor([prompt + [11]]))[0][0, -1])
        pos = torch.tensor([[len(p)] for p in prompts])
        for cache in caches:
            cache.at, cache.span = pos[:, 0], int(pos.max()) + 1
        mask = (torch.arange(int(pos.max()) + 1)[None, :] <= pos)[:, None, None, :]
        prev = torch.tensor([p[-1:] for p in prompts])  # the token before each row's new one: a bigram's first
        got, _ = model(torch.tensor([[11]] * 3), kv_caches=caches, pos=pos, attn_mask=mask, prev=prev)
    torch.testing.assert_close(got[:, -1], torch.stack(want), rtol=1e-5, atol=1e-5)


def test_every_draw_sees_the_logits_of_its_own_tokens(model):
    """Each row's logits equal a plain forward pass over its tokens, also for a row moved into a
    finished row's place in the middle of a step, after feeding that step's token and before drawing."""
    engine = Engine(model, max_rows=3)
    context = engine.context
    wrong = []
    draw = engine._draw

    def checked_draw(row, logits):
        with torch.no_grad():
            want = model(torch.tensor([row.tokens[-context:]]))[0][0, -1]
        wrong.extend([] if torch.allclose(logits[0], want, atol=1e-4) else [(row.tokens, (logits[0] - want).abs().max())])
        draw(row, logits)

    engine._draw = checked_draw
    try:
        # the short job ends first while the rows after it still have to draw: the last row moves mid-step
        jobs = [([1, 2, 3], 3), ([4, 5], 30), ([6], 30), ([7, 8, 9, 10], 5)]
        collectors = [Collector() for _ in jobs]
        for c, (prompt, n) in zip(collectors, jobs):
            engine.submit(Job(prompt, c, max_tokens=n, temperature=1.0, seed=4))
        for c in collectors:
            c.wait(1)
    finally:
        engine.close()
    assert not wrong, wrong[:3]
