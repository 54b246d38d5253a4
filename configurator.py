"""
Configuration for the scripts: plain defaults, changed by config files and --key=value flags.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

Arguments apply left to right. A config file is Python (nanoGPT's own configs run unchanged);
a flag's value is read with ast.literal_eval, never eval, and falls back to a plain string.
Every value must keep its default's type (an int may stand for a float), and every key must
already exist, so that a typo is an error rather than a silently ignored setting.
"""

import ast
import difflib
import sys
import types


def configure(defaults, argv, usage="", files_may_set_others=False):
    """Returns (config, overrides): the full config, and the keys that argv set, with their values.
    files_may_set_others: config files may set keys this script does not have (a benchmark reading
    train.py's configs for the model shape); flags never may."""
    config, overrides = dict(defaults), {}
    for arg in argv:
        if arg in ("-h", "--help"):
            print_help(defaults, usage)
            sys.exit(0)
        if arg.startswith("--"):
            key, value = parse_flag(arg, config)
            overrides[key] = value
        else:
            overrides.update(run_config_file(arg, config, files_may_set_others))
        config.update(overrides)
    return config, overrides


def parse_flag(arg, config):
    if "=" not in arg:
        raise SystemExit(f"error: {arg} has no value: write {arg}=VALUE")
    key, text = arg[2:].split("=", 1)
    check_key(key, config, where=arg)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare word such as --out_dir=out-shakespeare
    if isinstance(config[key], str):
        value = value if isinstance(value, str) else text  # --wandb_run_name=2024 stays a string
    return key, checked(key, value, config[key], where=arg)


def run_config_file(path, config, may_set_others):
    try:
        with open(path) as f:
            source = f.read()
    except OSError:
        raise SystemExit(f"error: config file {path} not found (an argument without -- names a config file)")
    # Earlier values are readable as globals (e.g. batch_size * 2, as in nanoGPT's exec-based
    # configs), while the file's own assignments land in `assigned`: exactly what it set.
    assigned = {}
    exec(compile(source, path, "exec"), dict(config), assigned)
    changed = {}
    for key, value in assigned.items():
        if key.startswith("_") or isinstance(value, types.ModuleType):
            continue  # modules the file imported
        if may_set_others and key not in config:
            continue
        check_key(key, config, where=path)
        changed[key] = checked(key, value, config[key], where=path)
    return changed


def check_key(key, config, where):
    if key not in config:
        close = difflib.get_close_matches(key, config, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "; --help lists the keys"
        raise SystemExit(f"error: unknown config key '{key}' in {where}{hint}")


def checked(key, value, default, where):
    if default is None or value is None or type(value) is type(default):
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)
    raise SystemExit(f"error: {where}: {key} must be {type(default).__name__} like its default "
                     f"{default!r}, got {type(value).__name__} {value!r}")


def print_help(defaults, usage):
    if usage:
        print(usage.strip() + "\n")
    width = max(map(len, defaults))
    for key, value in defaults.items():
        print(f"  --{key.ljust(width)} = {value!r}")
