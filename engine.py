"""
The batching engine behind serve.py: requests that arrive at any time are generated together,
one forward pass per step for all of them, in a thread of its own.

Each request's prompt goes through the model alone (the prefill); its keys and values are then
copied into a row of a batched cache, and from then on every step feeds the newest token of each
row at that row's own position, with a mask that hides the unused tail of shorter rows. Rows are
kept packed (row i of the batch is row i of the cache), so a finished row's place is taken by the
last one. Past block_size, a RoPE model attends to the last block_size tokens (a sliding window):
its rows stay in the cache, which holds position p in slot p % block_size, as a ring. GPT-2's
learned positions shift under a sliding window instead, so a GPT-2 sequence that outgrows
block_size is recomputed each step over its last block_size tokens, as generation.generate does;
such sequences go through forward passes of their own.

Every choice samples with its own torch.Generator and sample_token, so a request's tokens are the
ones generation.generate gives for the same prompt, settings and seed, batched or not. A job may
also ask for log-probabilities: of each drawn token, and of its prompt's own tokens, which take a
forward pass of the prompt alone, so that they are the same batched or not.
"""

import threading
import traceback
from contextlib import nullcontext

import torch

from generation import context_length, next_logits, prompt_logprobs, sample_token, top_logprobs


class SlotCache:
    """One layer's keys and values for up to max_rows sequences of different lengths, position p in
    slot p % max_len. Before each batched step the engine sets `at`, each row's slot for the new
    token (B,), and `span`, the slots attended to."""

    def __init__(self, max_rows, max_len):
        self.max_rows, self.max_len = max_rows, max_len
        self.k = self.v = None
        self.at, self.span = None, 0

    def allocate(self, like):
        # zeros, not empty: masked keys still go through the matmul, and garbage could be NaN
        if self.k is None:
            _, n_head, _, head_size = like.shape
            self.k = like.new_zeros(self.max_rows, n_head, self.max_len, head_size)
            self.v = like.new_zeros(self.max_rows, n_head, self.max_len, head_size)

    def load(self, row, k, v):
        """Put one prefilled sequence (1, n_head, T, head_size) in `row`: its last max_len positions,
        all that the next tokens can see (the oldest of them is overwritten by the next token)."""
        self.allocate(k)
        T = k.size(2)
        n = min(T, self.max_len)
        slots = torch.arange(T - n, T, device=k.device) % self.max_len
        self.k[row][:, slots] = k[0, :, -n:]
        self.v[row][:, slots] = v[0, :, -n:]

    def move(self, src, dst, length):
        length = min(length, self.max_len)
        self.k[dst, :, :length] = self.k[src, :, :length]
        self.v[dst, :, :length] = self.v[src, :, :length]

    def append(self, k, v):
        """The new token (B, n_head, 1, head_size) of rows 0..B-1, each written at its own position."""
        rows = torch.arange(k.size(0), device=k.device)
        self.k[rows, :, self.at] = k[:, :, 0]
        self.v[rows, :, self.at] = v[:, :, 0]
        return self.k[:k.size(0), :, :self.span], self.v[:k.size(0), :, :self.span]


class Job:
    """One prompt with n choices. on_event(choice, token, finish_reason, logprobs) is called from the
    engine's thread for every token drawn, finish_reason being None, "stop" (token is stop_token: a
    completion's <|endoftext|>, a chat reply's <|end|>) or "length"; or (choice, None, "error", None)
    if the step failed; max_tokens 0 draws nothing: (choice, None, "length", None).
    With logprobs=N, logprobs is the drawn token's (logprob, [(token, logprob)] of the N most likely),
    of the model's own distribution (before temperature, top-k and top-p); else None. With
    echo_logprobs too, the engine sets prompt_logprobs before the first event: the same pair for every
    prompt token but the first (generation.prompt_logprobs)."""

    def __init__(self, prompt, on_event, n=1, max_tokens=16, temperature=1.0, top_k=None, top_p=1.0, seed=None,
                 stop_token=None, logprobs=None, echo_logprobs=False):
        self.prompt, self.on_event, self.n, self.max_tokens = list(prompt), on_event, n, max_tokens
        self.temperature, self.top_k, self.top_p, self.seed = temperature, top_k, top_p, seed
        self.stop_token, self.logprobs, self.echo_logprobs = stop_token, logprobs, echo_logprobs
        self.prompt_logprobs = None
        self.cancelled = set()  # choices to end
        self.engine = None

    def cancel(self, choice=None):
        """End one choice, or all, before the next step."""
        self.cancelled.update(range(self.n) if choice is None else [choice])
        self.engine.wake()

    def is_cancelled(self):
        return len(self.cancelled) == self.n


class Row:
    """One choice being generated: its tokens so far (prompt included) and its own generator.
    start is the token at position 0 of its cache: the prefill reads no more of a long prompt
    than the next token depends on (generation.context_length)."""

    def __init__(self, job, choice, generator, start):
        self.job, self.choice, self.generator, self.start = job, choice, generator, start
        self.tokens, self.drawn = list(job.prompt), 0


class Engine:
    def __init__(self, model, max_rows=8, vocab_limit=None, autocast=None):
        self.model, self.max_rows, self.vocab_limit = model, max_rows, vocab_limit
        self.autocast = autocast or nullcontext()
        self.device = next(model.parameters()).device
        self.block_size = model.config.block_size
        self.context = context_length(model.config)
        self.slides = model.config.rope  # whether the cache slides past block_size (a ring), or rows leave it
        self.caches = [SlotCache(max_rows, self.block_size) for _ in model.transformer.h]
        self.cached = []  # rows in the batched cache: cached[i] is cache row i
        self.windowed = []  # GPT-2's rows past block_size, recomputed over their last block_size tokens
        self.waiting = []
        self.closed = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.thread.start()

    def submit(self, job):
        if not 1 <= job.n <= self.max_rows:
            raise ValueError(f"n={job.n}: this engine runs at most {self.max_rows} rows at once")
        job.engine = self
        with self.changed:
            self.waiting.append(job)
            self.changed.notify()
        return job

    def wake(self):
        with self.changed:
            self.changed.notify()

    def close(self):
        with self.changed:
            self.closed = True
            self.changed.notify()
        self.thread.join()

    def active(self):
        """Jobs submitted and not yet finished or cancelled (waiting ones included)."""
        with self.changed:
            running = {id(r.job) for r in self.cached + self.windowed}
            return len(running) + len(self.waiting)

    def _run(self):
        # grad mode and autocast are per thread: set them in the thread that runs the model
        with torch.no_grad(), self.autocast:
            while True:
                with self.changed:
                    while not (self.closed or self.waiting or self.cached or self.windowed):
                        self.changed.wait()
                    if self.closed:
                        return
                try:
                    self._drop_cancelled()
                    self._admit()
                    self._step()
                except Exception:  # a failed step (out of memory, ...) fails the jobs in flight, not the server
                    traceback.print_exc()
                    with self.changed:
                        failed = [(row.job, row.choice) for row in self.cached + self.windowed]
                        failed += [(job, j) for job in self.waiting for j in range(job.n)]
                        self.cached, self.windowed, self.waiting = [], [], []
                    for job, choice in failed:
                        job.on_event(choice, None, "error", None)

    def _drop_cancelled(self):
        with self.changed:
            self.waiting = [job for job in self.waiting if not job.is_cancelled()]
        for i in reversed(range(len(self.cached))):
            if self.cached[i].choice in self.cached[i].job.cancelled:
                self._remove_cached(i)
        self.windowed = [row for row in self.windowed if row.choice not in row.job.cancelled]

    def _remove_cached(self, i):
        """Keep the batch packed: the last row moves into row i's place."""
        last = self.cached[-1]
        if last is not self.cached[i]:
            # all its slots, to its newest token's: when a row ends mid-step, the last row may have fed
            # this step's token but not yet drawn the next one
            for cache in self.caches:
                cache.move(len(self.cached) - 1, i, len(last.tokens) - last.start)
            self.cached[i] = last
        self.cached.pop()

    def _admit(self):
        """Prefill waiting jobs, oldest first, while their choices fit in the batch."""
        while self.waiting and len(self.cached) + self.waiting[0].n <= self.max_rows:
            job = self.waiting[0]  # only this thread takes from waiting: it stays first
            if job.echo_logprobs:
                job.prompt_logprobs = prompt_logprobs(self.model, job.prompt, job.logprobs, self.vocab_limit)
            if job.max_tokens == 0:  # scored, nothing to draw
                with self.changed:
                    self.waiting.pop(0)
                for j in range(job.n):
                    job.on_event(j, None, "length", None)
                continue
            prompt = torch.tensor([job.prompt], dtype=torch.long, device=self.device)
            logits, prefill = next_logits(self.model, prompt, None, kv_cache=True)
            start = max(0, len(job.prompt) - self.context)
            rows = [Row(job, j, self._generator(job, j), start) for j in range(job.n)]
            cached = self.slides or len(job.prompt) <= self.block_size
            if cached:  # its choices join the batched cache
                for i in range(len(self.cached), len(self.cached) + len(rows)):
                    for cache, layer in zip(self.caches, prefill):
                        cache.load(i, layer.k[:, :, :layer.length], layer.v[:, :, :layer.length])
            with self.changed:
                self.waiting.pop(0)
                (self.cached if cached else self.windowed).extend(rows)
            for row in rows:
                self._draw(row, logits)

    def _generator(self, job, choice):
        # choice j draws as generate() with seed + j does: sample.py's j-th sample for the same --seed
        generator = torch.Generator(device=self.device)
        generator.manual_seed(job.seed + choice) if job.seed is not None else generator.seed()
        return generator

    def _step(self):
        if not self.slides:  # a GPT-2 row whose next token would sit past block_size leaves the cache
            for i in reversed(range(len(self.cached))):
                if len(self.cached[i].tokens) > self.block_size:
                    self.windowed.append(self.cached[i])
                    self._remove_cached(i)
        batch, window = list(self.cached), list(self.windowed)
        if batch:
            idx = torch.tensor([[r.tokens[-1]] for r in batch], dtype=torch.long, device=self.device)
            pos = torch.tensor([[len(r.tokens) - 1 - r.start] for r in batch], dtype=torch.long, device=self.device)
            span = min(int(pos.max()) + 1, self.block_size)
            # (B, span): each row's own keys; past block_size every slot holds one of the last block_size
            mask = torch.arange(span, device=self.device)[None, :] <= pos
            for cache in self.caches:
                cache.at, cache.span = pos[:, 0] % self.block_size, span
            prev = torch.tensor([[r.tokens[-2]] for r in batch], dtype=torch.long, device=self.device)
            logits, _ = self.model(idx, kv_caches=self.caches, pos=pos, attn_mask=mask[:, None, None, :], prev=prev)
            for i, row in enumerate(batch):
                self._draw(row, logits[i:i + 1, -1])
        # GPT-2's rows past the context, as generate() reads them: their last block_size tokens
        if window:
            seqs = torch.tensor([r.tokens[-self.block_size:] for r in window], dtype=torch.long, device=self.device)
            logits, _ = self.model(seqs)
            for i, row in enumerate(window):
                self._draw(row, logits[i:i + 1, -1])

    def _draw(self, row, logits):
        """Sample row's next token from logits (1, V), report it, and retire the row if it is done."""
        r = row.job
        logits = logits[:, :self.vocab_limit].float()
        token = sample_token(logits, r.temperature, r.top_k, r.top_p, row.generator).item()
        logprobs = None if r.logprobs is None else top_logprobs(logits[0].log_softmax(-1), token, r.logprobs)
        row.tokens.append(token)
        row.drawn += 1
        finish = "stop" if token == r.stop_token else "length" if row.drawn >= r.max_tokens else None
        if finish:
            if row in self.windowed:
                self.windowed.remove(row)
            else:
                self._remove_cached(self.cached.index(row))
        r.on_event(row.choice, token, finish, logprobs)
