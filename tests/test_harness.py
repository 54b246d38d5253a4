"""harness.py: our models as lm-evaluation-harness's language model. Its numbers are each model's own,
for every tokenizer and the modern switches; on a multiple-choice task of ours with local data, the
harness gets the same per-item log-likelihoods in-process, through serve.py (its local-completions
model) and from transformers on the export (its hf model)."""

import json

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

import export
import harness
import train
from bpe import train_bpe
from checkpoint import load_model
from conftest import CHARS, REPO, TINY_RUN, main_error, run_main, save_run, tiny_model
from generation import generate
from test_serve import serve_py

MODERN = dict(rope=True, norm="rmsnorm", qk_norm=True, mlp_act="relu2", tie_embeddings=False, logit_softcap=15.0)
# questions and answers in Tiny Shakespeare's characters, so that a char model reads them
ITEMS = [("Who loves Juliet?", ["Romeo", "Tybalt", "Paris"], 0),
         ("Where is Romeo banished to?", ["Verona", "Mantua", "Rome"], 1),
         ("What does Juliet drink?", ["a potion", "wine", "water", "nothing at all"], 0),
         ("Who kills Tybalt?", ["Mercutio", "Romeo"], 1)]
TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A multiple-choice task of ours: its YAML and its JSON lines data, as a user writes them."""
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "tiny_choice.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": a}) + "\n" for q, c, a in ITEMS))
    (folder / "tiny_choice.yaml").write_text(TASK.format(data=data))
    return folder


def char_meta():
    return {"tokenizer": "char", "chars": CHARS}


def bpe_meta():
    return train_bpe([(REPO / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]], 300).meta()


MODELS = {  # name: (model config, tokenizer meta)
    "char": (dict(n_layer=1), char_meta),
    "char-modern": (dict(n_layer=1, **MODERN), char_meta),
    "bpe": (dict(n_layer=1, vocab_size=300), bpe_meta),
    "gpt2": (dict(n_layer=1, vocab_size=50257, n_embd=16), lambda: {"tokenizer": "gpt2"}),
}


@pytest.fixture(scope="module", params=list(MODELS))
def lm(request, tmp_path_factory):
    config, meta = MODELS[request.param]
    run_dir = save_run(tmp_path_factory.mktemp("harness") / request.param, tiny_model(**config), meta())
    model, tokenizer, _ = load_model("resume", str(run_dir))
    return harness.HarnessLM(model.eval(), tokenizer, max_gen_toks=20)


def direct(lm, tokens):
    """log p(token | the tokens before it) for tokens[1:]: a forward pass of our model, float64 sums."""
    idx = torch.tensor([tokens])
    with torch.no_grad():
        logits, _ = lm.model(idx[:, :-1], targets=idx[:, 1:])
    return logits[0, :, :lm.tokenizer.vocab_size].double().log_softmax(-1).gather(1, idx[0, 1:, None])[:, 0]


def requests(kind, *args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihoods_are_the_models_own(lm):
    pairs = [("Q: Who loves Juliet?\nA:", " Romeo"), ("A:", " Mercutio"), ("", "Romeo"),
             ("ROMEO, " * 6 + "ROMEO:", " Ay")]
    got = lm.loglikelihood(requests("loglikelihood", *pairs))
    for (context, continuation), (loglikelihood, greedy) in zip(pairs, got):
        start = lm.tokenizer.encode(context) if context else [lm.prefix_token_id]
        scored = lm.tokenizer.encode(continuation)
        # a context longer than the model reads is cut from the left, as transformers' models are
        tokens = (start + scored)[-(lm.max_length + 1):]
        scores = direct(lm, tokens)[-len(scored):]
        assert loglikelihood == pytest.approx(scores.sum().item(), abs=1e-4)
        assert isinstance(greedy, bool)


def test_rolling_loglikelihood_of_a_short_text(lm):
    text = "Romeo!"
    (got,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (text,)))
    assert got == pytest.approx(direct(lm, [lm.prefix_token_id] + lm.tokenizer.encode(text)).sum().item(), abs=1e-4)


def test_generation_stops_at_the_first_stop_string(lm):
    context = "Q: Who loves Juliet?\nA:"
    idx = torch.tensor([lm.tokenizer.encode(context)])
    tokens = [t.item() for t in generate(lm.model, idx, 20, temperature=0.0, vocab_limit=lm.tokenizer.vocab_size)]
    greedy = lm.tokenizer.decode(tokens)
    (plain,) = lm.generate_until(requests("generate_until", (context, {"until": [], "max_gen_toks": 20})))
    stops = [greedy[8:10], greedy[4]]
    (cut,) = lm.generate_until(requests("generate_until", (context, {"until": stops, "max_gen_toks": 20})))
    assert plain == greedy and cut == greedy[:min(greedy.find(s) for s in stops)]


def per_item(results):
    """The log-likelihood of each choice of each item, as the harness logged them."""
    samples = sorted(results["samples"]["tiny_choice"], key=lambda s: s["doc_id"])
    return [[resp[0][0] for resp in s["resps"]] for s in samples]


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    """A tiny GPT-2 BPE run and its export (export.py) with GPT-2's tokenizer files."""
    folder = tmp_path_factory.mktemp("export")
    run_dir = save_run(folder / "out-gpt2", tiny_model(n_layer=1, vocab_size=50257, n_embd=16, block_size=64),
                       {"tokenizer": "gpt2"})
    assert run_main(export.main, f"--out_dir={run_dir}", f"--to={folder / 'hf'}").returncode == 0
    return run_dir, folder / "hf"


@pytest.mark.slow
def test_the_harness_scores_alike_in_process_through_the_server_and_on_the_export(gpt2_export, task_dir,
                                                                                   tmp_path_factory):
    run_dir, hf_dir = gpt2_export
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)

    def evaluate(lm, **model_args):
        return simple_evaluate(model=lm, model_args=model_args or None, tasks=["tiny_choice"], task_manager=manager,
                               bootstrap_iters=0)

    model, tokenizer, _ = load_model("resume", str(run_dir))
    in_process = evaluate(harness.HarnessLM(model.eval(), tokenizer))
    want = per_item(in_process)
    assert [len(w) for w in want] == [len(c) for _, c, _ in ITEMS]
    for address in serve_py(run_dir, tmp_path_factory):
        served = evaluate("local-completions", base_url=f"{address}/v1/completions", model="out-gpt2",
                          tokenizer_backend="huggingface", tokenizer=str(hf_dir), max_retries=1)
        assert per_item(served) == want  # the same forward passes: bit for bit
    on_export = evaluate("hf", pretrained=str(hf_dir), device="cpu", dtype="float32")
    assert per_item(on_export) == [pytest.approx(w, abs=1e-4) for w in want]
    accuracy = sum(max(range(len(w)), key=w.__getitem__) == a for w, (_, _, a) in zip(want, ITEMS)) / len(ITEMS)
    assert (in_process["results"]["tiny_choice"]["acc,none"] == on_export["results"]["tiny_choice"]["acc,none"]
            == accuracy)


@pytest.mark.slow
@pytest.mark.slow
def test_a_char_model_through_the_server_with_its_own_tokenizer(task_dir, tmp_path_factory):
    """With no export (a character model has no transformers tokenizer), the harness finds serve.py's
    tokenizer endpoints and scores as in-process. max_length block_size + 2 cuts long contexts where
    in-process does: the harness keeps one of it for the token that it asks to generate."""
    run_dir = save_run(tmp_path_factory.mktemp("served") / "out-char", tiny_model(n_layer=1), char_meta())
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    model, tokenizer, _ = load_model("resume", str(run_dir))
    lm = harness.HarnessLM(model.eval(), tokenizer)
    want = per_item(simple_evaluate(model=lm, tasks=["tiny_choice"], task_manager=manager, bootstrap_iters=0))
    for address in serve_py(run_dir, tmp_path_factory):
        served = simple_evaluate(model="local-completions", tasks=["tiny_choice"], task_manager=manager,
                                 bootstrap_iters=0, model_args={"base_url": f"{address}/v1/completions",
                                                                "model": "out-char", "max_length": lm.max_length + 2})
        assert per_item(served) == want


@pytest.mark.slow
def test_main_writes_the_results_to_the_run(task_dir, tmp_path):
    run_dir = save_run(tmp_path / "out-char", tiny_model(n_layer=1), char_meta())
    result = run_main(harness.main, f"--out_dir={run_dir}", "--tasks=tiny_choice", f"--include_path={task_dir}",
                      "--device=cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir / "harness.json").read_text())
    assert report["n-samples"]["tiny_choice"]["effective"] == len(ITEMS) and report["model"] == str(run_dir)
    assert 0 <= report["results"]["tiny_choice"]["acc,none"] <= 1 and "tiny_choice" in result.stdout


def test_bad_input_is_one_line(task_dir, tmp_path):
    run_dir = save_run(tmp_path / "out-char", tiny_model(n_layer=1), char_meta())
    assert "name the tasks to score with --tasks" in main_error(harness.main, f"--out_dir={run_dir}")
    assert "include_path=nowhere: no such folder" in main_error(harness.main, f"--out_dir={run_dir}",
                                                                "--tasks=tiny_choice", "--include_path=nowhere")
    # characters a char model never saw
    (tmp_path / "tasks").mkdir()
    data = tmp_path / "tasks" / "accents.jsonl"
    data.write_text(json.dumps({"question": "Où est Roméo?", "choices": ["Vérone", "Mantoue"], "label": 0}) + "\n")
    (tmp_path / "tasks" / "accents.yaml").write_text(TASK.format(data=data).replace("tiny_choice", "accents"))
    with pytest.raises(SystemExit) as e:  # one line, after the harness's progress bars
        harness.main([f"--out_dir={run_dir}", "--tasks=accents", f"--include_path={tmp_path / 'tasks'}",
                      "--device=cpu"])
    assert e.value.code == ("error: characters not in the vocabulary: 'éù': a character model scores only text made "
                            "of the characters it was trained on")


@pytest.mark.slow  # the harness indexes its thousands of tasks to say that a name is none of them
def test_an_unknown_task_is_one_line(task_dir, tmp_path):
    run_dir = save_run(tmp_path / "out-char", tiny_model(n_layer=1), char_meta())
    message = main_error(harness.main, f"--out_dir={run_dir}", "--tasks=tiny_choice,hellaswagg",
                         f"--include_path={task_dir}")
    assert message == ("error: unknown task 'hellaswagg': `python -m lm_eval ls tasks` lists the harness's; a task "
                       "of your own needs --include_path")


HELLASWAG_SAMPLE = REPO / "tests" / "fixtures" / "hellaswag_val_sample.jsonl"  # 40 validation examples
HELLASWAG = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
doc_to_text: "{text}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.mark.slow
def test_hellaswag_py_and_the_harness_on_the_same_items(tmp_path):
    """hellaswag.py's context is the harness's without the activity label, and its acc_norm divides by
    tokens where the harness's divides by characters: with hellaswag.py's context the harness gets its
    very log-likelihoods, so the same acc; each acc_norm is its own normalisation of them. (A random
    tiny GPT-2: the mechanism, not a model's score; docs/evaluation.md has the numbers.)"""
    import hellaswag

    data = tmp_path / "sample.jsonl"
    data.write_text("".join(HELLASWAG_SAMPLE.read_text().splitlines(keepends=True)[:12]))
    model = tiny_model(n_layer=1, vocab_size=50257, n_embd=16, block_size=256).eval()
    tokenizer = load_model("resume", str(save_run(tmp_path / "run", model, {"tokenizer": "gpt2"})))[1]
    tokenized = hellaswag.tokenize(hellaswag.load_examples(data), tokenizer, 256)
    losses, counts = hellaswag.ending_losses(model, tokenized, 8, "cpu")
    labels = torch.tensor([label for _, _, label in tokenized])
    (tmp_path / "hellaswag_ctx.yaml").write_text(HELLASWAG.format(name="hellaswag_ctx", data=data, text="{{ctx}}"))
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    results = simple_evaluate(model=harness.HarnessLM(model, tokenizer), tasks=["hellaswag_ctx"], task_manager=manager,
                              bootstrap_iters=0)
    samples = sorted(results["samples"]["hellaswag_ctx"], key=lambda s: s["doc_id"])
    lls = torch.tensor([[resp[0][0] for resp in s["resps"]] for s in samples], dtype=torch.float64)
    assert lls.shape == (12, 4) and torch.allclose(lls, -losses.double(), atol=1e-4)
    got = results["results"]["hellaswag_ctx"]
    assert got["acc,none"] == (losses.argmin(1) == labels).double().mean().item()
    chars = torch.tensor([[len(e) for e in s["doc"]["endings"]] for s in samples], dtype=torch.float64)
    assert got["acc_norm,none"] == ((lls / chars).argmax(1) == labels).double().mean().item()


def test_train_py_scores_the_tasks_at_its_end(task_dir, char_data, tmp_path):
    out = tmp_path / "out"
    args = [*TINY_RUN, f"--dataset={char_data}", f"--out_dir={out}", "--max_iters=2", "--harness_tasks=tiny_choice",
            f"--harness_include_path={task_dir}"]
    result = run_main(train.main, *args)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "harness.json").read_text())
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged[-1] == {"iter": 2, "harness": report["results"]}
    assert report["n-samples"]["tiny_choice"]["effective"] == len(ITEMS)
    assert f"iter 2: tiny_choice acc {report['results']['tiny_choice']['acc,none']:.4f}" in result.stdout
    # an unknown task is said before anything trains
    message = main_error(train.main, *args[:-2], f"--out_dir={tmp_path / 'other'}", "--harness_tasks=tiny_choise",
                         f"--harness_include_path={task_dir}")
    assert message.startswith("error: unknown task 'tiny_choise'") and not (tmp_path / "other").exists()
