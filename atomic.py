"""
Files written whole or not at all: each is written to a temporary name beside its place, then
renamed over it. A crash or a full disk mid-write never destroys the previous file, and leaves
no half-written one behind. Shards, meta.json, checkpoints, Hugging Face files, plots, samples
and n-gram baselines are written through it; a directory (a sharded checkpoint) through
replace_dir.
"""

import json
import os
import shutil
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


def replace_dir(tmp, path):
    """Put the whole directory tmp in path's place. Between its two renames the previous one is
    path.old, which readers take where path is missing (live_dir); no moment has neither."""
    old = f"{path}.old"
    if os.path.isdir(path):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def live_dir(path):
    """path, or the previous directory that a replace_dir cut short left at path.old; None if neither."""
    return next((d for d in (path, f"{path}.old") if os.path.isdir(d)), None)
