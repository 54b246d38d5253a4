"""
Score a model on EleutherAI's lm-evaluation-harness tasks (HellaSwag, ARC, PIQA, Winogrande, LAMBADA,
MMLU, ...: the numbers papers and model cards report), in this process, on one GPU or the CPU. Any
model here: GPT-2 BPE, a vocabulary learned here or characters, with any of the modern switches.

  python harness.py --tasks=hellaswag,arc_easy,piqa                # the newest run here
  python harness.py --out_dir=out-gpt2 --tasks=hellaswag --limit=500
  python harness.py --init_from=gpt2 --tasks=lambada_openai,wikitext
  python harness.py --tasks=my_task --include_path=my_tasks/        # a task of your own, in YAML

The harness downloads each task's data from the Hugging Face hub the first time. The results, as the
harness reports them, go to the run's folder as harness.json (or --out_file), and a table to stdout.
Each (context, continuation) is scored by its own forward pass (generation.prompt_logprobs), the
numbers that serve.py's /v1/completions gives the harness's local-completions model.
"""

import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from lm_eval import simple_evaluate
from lm_eval.api.model import TemplateLM
from lm_eval.tasks import TaskManager
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, make_table
from tqdm import tqdm

from atomic import write_json
from checkpoint import load_model
from configurator import configure
from device import autocast_for, resolve_device
from generation import generate, prompt_logprobs
from tokenizer import encode_prompt


class HarnessLM(TemplateLM):
    """A model here as the harness's language model: the log-likelihoods of continuations, of whole
    texts in windows of the model's context, and greedy generation up to stop strings. Call
    model.eval() and put it on its device first."""

    def __init__(self, model, tokenizer, autocast=None, max_gen_toks=256):
        super().__init__()
        self.model, self.tokenizer, self.max_gen_toks = model, tokenizer, max_gen_toks
        self.autocast = autocast or nullcontext()
        # what one forward pass reads: learned positions stop at block_size (a RoPE model reads on, but its
        # windows of attention are that long too)
        self.max_length = model.config.block_size

    @property
    def eot_token_id(self):
        # what precedes a continuation with no context: a document's start, as for an empty prompt in serve.py
        return encode_prompt(self.tokenizer, "")[0]

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        try:
            return self.tokenizer.encode(string)
        except ValueError as e:
            raise ValueError(f"{e}: a character model scores only text made of the characters it was trained on")

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        """(sum of the continuation's log-probabilities, whether each of its tokens is the most likely) for
        every (_, context tokens, continuation tokens); context cut from the left to the model's window."""
        results = []
        for _, context, continuation in tqdm(requests, disable=disable_tqdm, desc="scoring"):
            tokens = (context + continuation)[-(self.max_length + 1):]
            with self.autocast:
                scores = prompt_logprobs(self.model, tokens, 1, self.tokenizer.vocab_size)
            scores = scores[len(scores) - len(continuation):]  # an empty continuation scores nothing
            results.append((sum(lp for lp, _ in scores),
                            all(top[0][0] == token for (_, top), token in zip(scores, continuation))))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """Each text's log-likelihood (perplexity tasks): its tokens in windows of max_length, each scored
        once, the first after prefix_token_id."""
        results = []
        for (text,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="rolling"):
            windows = get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length, 1)
            pairs = [(None, *make_disjoint_window(window)) for window in windows]
            results.append(sum(lp for lp, _ in self._loglikelihood_tokens(pairs, disable_tqdm=True)))
        return results

    def generate_until(self, requests, disable_tqdm=False):
        """Each context's greedy continuation (the task's temperature if it samples), up to the first
        of its stop strings (left out), <|endoftext|>, or max_gen_toks tokens."""
        results = []
        for context, settings in tqdm([r.args for r in requests], disable=disable_tqdm, desc="generating"):
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else until
            temperature = settings.get("temperature", 0.0) if settings.get("do_sample") else 0.0
            idx = torch.tensor([encode_prompt(self.tokenizer, context)], device=next(self.model.parameters()).device)
            decode, text = self.tokenizer.stream_decoder(), ""
            with self.autocast:
                for token in generate(self.model, idx, settings.get("max_gen_toks", self.max_gen_toks), temperature,
                                      stop_token=self.tokenizer.eot_token, vocab_limit=self.tokenizer.vocab_size):
                    if token.item() == self.tokenizer.eot_token:
                        break
                    text += decode(token.item())
                    if any(s in text for s in until):
                        break
            text += decode(None)
            results.append(min((text[:text.find(s)] for s in until if s in text), key=len, default=text))
        return results


def task_manager(names, include_path="", flag="--include_path"):
    """The harness's index of tasks that holds names, with the tasks of include_path (a folder of
    YAML files, given by flag); a ValueError names a task it does not know."""
    if include_path and not Path(include_path).is_dir():
        raise ValueError(f"{flag[2:]}={include_path}: no such folder")
    # indexing the harness's thousands of tasks takes seconds: only when the names are not all one's own
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if not manager or any(name not in manager.all_tasks for name in names):
        manager = TaskManager(include_path=include_path or None)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}: `python -m lm_eval ls tasks` lists the harness's; "
                         f"a task of your own needs {flag}")
    return manager


def score(model, tokenizer, names, manager, autocast=None, num_fewshot=None, limit=None, max_gen_toks=256):
    """(the harness's results, the report that harness.json holds) of model on the tasks names.
    Characters a char model never saw are a ValueError."""
    lm = HarnessLM(model, tokenizer, autocast, max_gen_toks)
    results = simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                              log_samples=False)
    return results, {key: results[key] for key in ("results", "versions", "n-shot", "n-samples", "higher_is_better")}


# -----------------------------------------------------------------------------
# the script

DEFAULTS = dict(
    init_from="resume",  # 'resume' (a checkpoint in out_dir), 'gpt2'...'gpt2-xl', or a local HF directory
    out_dir="",  # the training run; empty: the newest run here (the last checkpoint written)
    checkpoint="ckpt.pt",  # or best.pt
    tasks="",  # the harness's task names, comma-separated: hellaswag,arc_easy,piqa
    include_path="",  # a folder of task YAML files of your own, besides the harness's
    num_fewshot=-1,  # examples before each question; -1: each task's own default
    limit=0,  # score only the first this many items of each task; 0: all of them
    max_gen_toks=256,  # the most tokens a generation task's answer may take, unless the task says
    device="auto",
    dtype="auto",
    out_file="",  # empty: harness.json in the run's folder (the working directory for a hub model)
)


def fail(message):
    raise SystemExit(f"error: {message}")


def main(argv):
    c, _ = configure(DEFAULTS, argv, usage=__doc__)
    names = [name for name in c["tasks"].split(",") if name]
    if not names:
        fail("name the tasks to score with --tasks, e.g. --tasks=hellaswag,arc_easy,piqa")
    try:
        manager = task_manager(names, c["include_path"])
    except ValueError as e:
        fail(e)
    try:
        device, dtype = resolve_device(c["device"], c["dtype"])
        model, tokenizer, trained = load_model(c["init_from"], c["out_dir"], c["checkpoint"])
    except (OSError, ValueError, RuntimeError) as e:
        fail(e)
    model.eval().to(device)
    try:
        results, report = score(model, tokenizer, names, manager, autocast_for(device, dtype),
                                None if c["num_fewshot"] < 0 else c["num_fewshot"], c["limit"] or None,
                                c["max_gen_toks"])
    except ValueError as e:  # characters a char model never saw, ...
        fail(e)
    print(make_table(results))
    out_file = c["out_file"] or str(Path(trained["out_dir"] or ".") / "harness.json")
    report["model"] = trained["out_dir"] or c["init_from"]
    try:
        write_json(out_file, report)
    except OSError as e:
        fail(f"cannot write {out_file}: {e.strerror}")
    print(f"results in {out_file}")


if __name__ == "__main__":
    main(sys.argv[1:])
