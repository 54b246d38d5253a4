"""
Files written whole or not at all: each is written to a temporary name beside its place, then
renamed over it. A crash or a full disk mid-write never destroys the previous file, and leaves
no half-written one behind. Shards, meta.json, checkpoints, Hugging Face files, plots, samples
and n-gram baselines are written through it.
"""

import json
import os
from pathlib import Path


def write_atomically(path, write):
    """write(tmp), then rename tmp to path; on any failure, remove tmp and leave path as it was."""
    tmp = f"{path}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, value):
    write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n",
                                                            encoding="utf-8"))
