"""
Configuration for the scripts: plain defaults, changed by config files and --key=value flags.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False
    python train.py config/train_shakespeare_char.py --batch_size 32 --compile False

Arguments apply left to right. A config file is Python (nanoGPT's own configs run unchanged);
a flag is --key=value or --key value (argparse's spelling, which users of other repos type);
its value is read with ast.literal_eval, never eval, and falls back to a plain string.
Every value must keep its default's type (an int may stand for a float), and every key must
already exist, so that a typo is an error rather than a silently ignored setting.
"""

import ast
import difflib
import sys
import traceback
import types


def configure(defaults, argv, usage="", files_may_set_others=False, aliases=None):
    """Returns (config, overrides): the full config, and the keys that argv set, with their values.
    files_may_set_others: config files may set keys this script does not have (a benchmark reading
    train.py's configs for the model shape); flags never may.
    aliases: other names for keys, as other repositories spell them ({"prompt": "start"})."""
    config, overrides = dict(defaults), {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print_help(defaults, usage, aliases)
            sys.exit(0)
        if arg.startswith("--"):
            if "=" not in arg:  # --key value: the value is the next argument
                if not args or args[0].startswith("--"):
                    raise SystemExit(f"error: {arg} has no value: write {arg}=VALUE or {arg} VALUE")
                arg = f"{arg}={args.pop(0)}"
            key, value = parse_flag(arg, config, aliases or {})
            overrides[key] = value
        else:
            overrides.update(run_config_file(arg, config, files_may_set_others))
        config.update(overrides)
    return config, overrides


def parse_flag(arg, config, aliases):
    key, text = arg[2:].split("=", 1)
    key = aliases.get(key, key)
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
    try:
        exec(compile(source, path, "exec"), dict(config), assigned)
    except SyntaxError as e:
        raise SystemExit(f"error: config file {path}, line {e.lineno}: {e.msg}") from None
    except Exception as e:  # a config file is a program: name where it failed, not our traceback
        line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == path), "?")
        raise SystemExit(f"error: config file {path}, line {line}: {type(e).__name__}: {e}") from None
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


def print_help(defaults, usage, aliases=None):
    if usage:
        print(usage.strip() + "\n")
    width = max(map(len, defaults))
    for key, value in defaults.items():
        print(f"  --{key.ljust(width)} = {value!r}")
    for alias, key in (aliases or {}).items():
        print(f"  --{alias.ljust(width)}   same as --{key}")
