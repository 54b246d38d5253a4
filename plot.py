"""
Loss curves of training runs, drawn from their out_dir/log.jsonl.

  python plot.py out-shakespeare-char-cpu                       # -> curves.png
  python plot.py out-a out-b --x=tokens --out=curves.svg        # runs of different batch sizes
  python plot.py out-gpt2 --ref "GPT-2 124M=3.29"               # a reference line on the val panel
  python plot.py out-char out-bpe --bits                        # losses in bits per character or byte
  python plot.py out-shakespeare-char-cpu --baselines out-ngram-shakespeare-char   # ngram.py's lines
  python plot.py out-shakespeare-record-cpu --bits --baselines out-ngram-shakespeare-char --ymax=3   # char n-grams

Panels: train loss (smoothed, the raw values faint), val loss, and where a log has them
HellaSwag accuracy, learning rate and tokens/s; one colour per run, labelled by its directory.
--baselines NGRAM_DIR adds to the val panel the n-gram baselines that ngram.py recorded in its
out_dir; without it, those in ngram.py's default out_dir for the runs' dataset (out-ngram-<dataset>
here), if there are any. --x=tokens counts the tokens trained on instead of steps; --bits draws the losses (and
the baselines) in bits per character for char datasets or per UTF-8 byte for BPE ones, the scale
on which runs of different tokenizers compare: in nats per token only the n-grams of the runs' own
dataset are drawn, with --bits those of any dataset of the same text, e.g. the character n-grams
beside a BPE run (for ASCII text such as Tiny Shakespeare a character is a byte). PNG, SVG or PDF
by --out's extension.
A log that a run is still writing, a resumed run's log and a DDP run's log all read as they are.
train.py redraws out_dir/loss.png with this at every evaluation when matplotlib is installed.
"""

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np

from atomic import write_atomically
from ngram import BASELINES_FILE, default_out_dir, read_baselines

FORMATS = ("png", "svg", "pdf")
WIDTH, ROW_HEIGHT, DPI = 12, 3.5, 100  # inches, and pixels per inch: a PNG is 1200 px wide, 350 px a row
PANELS = [  # title, the log fields it draws
    ("train loss", ["train_loss"]),
    ("val loss", ["val_loss"]),
    ("HellaSwag accuracy (solid: acc_norm, dashed: acc)", ["hellaswag_acc_norm", "hellaswag_acc"]),
    ("learning rate", ["lr"]),
    ("tokens/s", ["tokens_per_sec"]),
]
BITS_PANELS = [("train loss, bits per character or byte", ["train_bits"]),
               ("val loss, bits per character or byte", ["val_bits"])]
TRAIN, VAL = {False: "train_loss", True: "train_bits"}, {False: "val_loss", True: "val_bits"}


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def read_log(run):
    """A run's log as {field: {iter: value}}, and the dataset it names (None if it names none).
    A later record of the same iteration replaces an earlier one, as when a run redoes steps."""
    path = os.path.join(run, "log.jsonl")
    if not os.path.isdir(run):
        raise ValueError(f"{run} is not a directory: give training runs' out_dirs")
    if not os.path.exists(path):
        raise ValueError(f"{run} has no log.jsonl: is it a training run's out_dir?")
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    lines.pop()  # what follows the last newline: nothing, or the line the run is writing now
    series, dataset = {}, None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            it = record["iter"]
            if not isinstance(it, int):
                raise TypeError
        except (ValueError, KeyError, TypeError, IndexError):
            warn(f"{path}, line {number}: not a log record; skipped")
            continue
        dataset = record.get("dataset", dataset)
        for key, value in record.items():
            if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, {})[it] = value
    if not series:
        raise ValueError(f"{path} has no records yet")
    return series, dataset


def tokens_at(series, iters, run):
    """Tokens trained on before each of iters. A step record gives its tokens per step exactly
    (train.py logs tokens_per_sec = tokens per step / step time, and the step time in ms), and
    that holds until the next step record, so runs resumed with another batch size count right."""
    steps = sorted(series.get("tokens_per_sec", {}).keys() & series.get("ms", {}).keys())
    if not steps:
        raise ValueError(f"{run} logs no training steps, so no tokens per step: plot it with --x=steps")
    r = np.array(steps)
    per_step = np.array([round(series["tokens_per_sec"][i] * series["ms"][i] / 1000) for i in steps])
    at = r[0] * per_step[0] + np.concatenate([[0], np.cumsum(np.diff(r) * per_step[:-1])])
    m = np.maximum(np.searchsorted(r, iters, side="right") - 1, 0)
    return at[m] + (np.asarray(iters) - r[m]) * per_step[m]


def smoothed(y, fraction):
    """A centred moving average over that fraction of the points; near the ends the window shrinks
    and stays centred, so the curve neither lags nor bends towards the ends."""
    n = len(y)
    i = np.arange(n)
    half = np.minimum(int(fraction * n) // 2, np.minimum(i, n - 1 - i))
    cumulative = np.concatenate([[0.0], np.cumsum(y)])
    return (cumulative[i + half + 1] - cumulative[i - half]) / (2 * half + 1)


def reference_lines(logs, refs, bits=False, ngram_dirs=()):
    """(label, value) of each line on the val panel: the n-gram baselines that ngram.py recorded in
    ngram_dirs (--baselines), in nats per token or with bits in bits, then refs. Another dataset's
    n-grams may count other tokens than the runs', so their lines are drawn only in bits."""
    datasets = {dataset for _, dataset in logs}
    if not ngram_dirs:  # ngram.py's own out_dir for the runs' dataset, where it writes by default
        ngram_dirs = [d for d in map(default_out_dir, sorted(filter(None, datasets)))
                      if os.path.isfile(os.path.join(d, BASELINES_FILE)) and read_baselines(d)[0] in datasets]
    lines = []
    for directory in ngram_dirs:
        recorded = read_baselines(directory)
        if recorded is None:
            raise ValueError(f"--baselines {directory}: no n-gram baselines ({BASELINES_FILE}) there; run "
                             f"python ngram.py --dataset=DATASET --order=7 --out_dir={directory} first")
        dataset, baselines = recorded
        if not bits and dataset not in datasets:
            raise ValueError(f"--baselines {directory}: the n-grams of another dataset ({dataset}) compare with "
                             "a run's losses only in bits per character or byte; add --bits")
        name = "" if dataset in datasets else f" ({os.path.basename(dataset)})"
        lines += [(f"{order}-gram KN{name}", b[VAL[bits]]) for order, b in baselines.items()]
    return lines + list(refs)


def draw(runs, out, x="steps", refs=(), smooth=0.02, bits=False, ngram_dirs=(), ymax=None):
    """Draws runs (their out_dirs) into out, a .png, .svg or .pdf file, written whole or not at all,
    and returns the figure; with bits, the losses in bits per character or byte rather than nats per
    token; ngram_dirs names ngram.py's out_dirs, whose n-gram baselines are drawn as lines; ymax caps
    the loss panels' axes."""
    fmt = out.rsplit(".", 1)[-1].lower()
    if fmt not in FORMATS:
        raise ValueError(f"cannot write {out}: name a .png, .svg or .pdf file")
    try:
        from matplotlib.figure import Figure  # no pyplot: no display, no global state
    except ImportError:
        raise ValueError("plot.py needs matplotlib: pip install matplotlib") from None

    logs = [read_log(run) for run in runs]
    lines = reference_lines(logs, refs, bits, ngram_dirs)
    panels = [(title, fields) for title, fields in (BITS_PANELS + PANELS[2:] if bits else PANELS)
              if any(f in series for series, _ in logs for f in fields) or (fields == [VAL[bits]] and lines)]
    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(WIDTH, ROW_HEIGHT * rows), dpi=DPI, layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax, (title, fields) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("tokens" if x == "tokens" else "step")
        ax.grid(alpha=0.3)
        for i, (run, (series, _)) in enumerate(zip(runs, logs)):
            label, color = os.path.normpath(run), f"C{i % 10}"
            for field, style in zip(fields, ["-", "--"]):
                if field not in series:
                    continue
                iters = np.array(sorted(series[field]))
                y = np.array([series[field][it] for it in iters], dtype=float)
                xs = tokens_at(series, iters, run) if x == "tokens" else iters
                if field == TRAIN[bits]:
                    ax.plot(xs, y, color=color, alpha=0.25, lw=0.8)
                    ax.plot(xs, smoothed(y, smooth), color=color, lw=1.5, label=label)
                else:
                    ax.plot(xs, y, style, color=color, lw=1.5, marker="o" if field == VAL[bits] else None,
                            ms=3, label=label if style == "-" else None)
        if fields == [VAL[bits]]:
            for name, value in lines:
                ax.axhline(value, color="0.4", lw=0.8, ls="--")
        if ymax is not None and fields in ([TRAIN[bits]], [VAL[bits]]):
            ax.set_ylim(top=ymax)  # the first steps' loss, far above, would squeeze the rest
        if fields == [VAL[bits]]:
            # labels at the left end, where a falling loss curve leaves room, moved up where they would overlap
            low, high = ax.get_ylim()
            y = -math.inf
            for name, value in sorted((line for line in lines if line[1] <= high), key=lambda line: line[1]):
                y = max(value, y + 0.065 * (high - low))
                ax.annotate(f"{name} {value:.3f}", (0, y), xycoords=("axes fraction", "data"), xytext=(4, 1),
                            textcoords="offset points", ha="left", va="bottom", fontsize=8, color="0.25",
                            annotation_clip=False, bbox=dict(fc="white", ec="none", alpha=0.8, pad=0.5))
        if fields in (["lr"], ["tokens_per_sec"]):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    for ax in axes[len(panels):]:  # an odd panel count leaves the last cell empty
        ax.set_visible(False)

    write_atomically(out, lambda tmp: fig.savefig(tmp, format=fmt))
    return fig


def parse_ref(text):
    name, _, value = text.rpartition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise ValueError(f"--ref {text!r}: write NAME=VALUE, e.g. --ref \"GPT-2 124M=3.29\"") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a training run's out_dir")
    parser.add_argument("--out", default="curves.png", help="a .png, .svg or .pdf file (default: curves.png)")
    parser.add_argument("--x", choices=["steps", "tokens"], default="steps", help="the x axis")
    parser.add_argument("--ref", action="append", default=[], metavar="NAME=VALUE",
                        help="a horizontal line on the val loss panel; repeat for more")
    parser.add_argument("--smooth", type=float, default=0.02,
                        help="train loss: moving average over this fraction of a run's points (default 0.02)")
    parser.add_argument("--bits", action="store_true",
                        help="losses in bits per character (char data) or UTF-8 byte (BPE) instead of nats per token")
    parser.add_argument("--ymax", type=float, help="the top of the loss panels' axes, e.g. to leave the first "
                        "steps' high loss out of view")
    parser.add_argument("--baselines", action="append", default=[], metavar="NGRAM_DIR",
                        help="draw the n-gram baselines that ngram.py recorded in this out_dir: of the runs' "
                             "dataset, or with --bits of any (e.g. out-ngram-shakespeare-char beside a BPE run); "
                             "repeat for more")
    args = parser.parse_args(argv)
    try:
        if not 0 <= args.smooth <= 1:
            raise ValueError(f"--smooth={args.smooth}: it must lie in [0, 1]")
        if args.ymax is not None and args.ymax <= 0:
            raise ValueError(f"--ymax={args.ymax}: a loss axis's top must be above 0")
        draw(args.runs, args.out, args.x, [parse_ref(r) for r in args.ref], args.smooth, args.bits,
             args.baselines, args.ymax)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


# -----------------------------------------------------------------------------
# train.py's hook

# The child first lowers its priority. nice alone is not enough: on 2 cores, a drawing that takes
# one core from the step's 2 threads made that step 10x slower. Linux's SCHED_IDLE runs it only on
# a core that training leaves idle; elsewhere it gets the lowest nice.
CHILD = ("import os, sys; sys.path.insert(0, {!r}); "
         "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)) if hasattr(os, 'SCHED_IDLE') else os.nice(19); "
         "import plot; plot.main()")


class BackgroundPlot:
    """Redraws out_dir/loss.png in a child process each time it is called (only when final, unless
    live). The caller never waits, but for a final drawing while one is under way: otherwise such
    calls do nothing. Whatever goes wrong (no matplotlib, a failed drawing) costs at most one
    warning, never the run."""

    def __init__(self, out_dir, live=True):
        self.out_dir, self.live = out_dir, live
        self.enabled = importlib.util.find_spec("matplotlib") is not None
        self.child = None

    def __call__(self, final=False):
        try:
            if not self.enabled or not (self.live or final):
                return
            if final and self.child is not None:
                self.child.wait()  # the run is over: the last drawing must show its end
            if self.child is not None and self.child.poll() is None:
                return
            if self.child is not None and self.child.returncode != 0:
                self.enabled = False
                warn(f"loss.png could not be drawn; `python plot.py {self.out_dir}` says why. No more redraws in "
                     "this run")
                return
            png = os.path.join(self.out_dir, "loss.png")  # relative paths: the child has train.py's cwd
            code = CHILD.format(os.path.dirname(os.path.abspath(__file__)))
            # a session of its own: a Ctrl-C meant for training does not cut a drawing short
            self.child = subprocess.Popen([sys.executable, "-c", code, self.out_dir, f"--out={png}"],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True)
        except Exception as e:  # plotting must never end a run
            self.enabled = False
            warn(f"loss.png is not redrawn in this run: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
