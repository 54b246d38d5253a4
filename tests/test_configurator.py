import pytest

from configurator import configure

DEFAULTS = {"batch_size": 12, "learning_rate": 6e-4, "compile": True, "out_dir": "out",
            "total_batch_size": None, "wandb_run_name": "run"}


def test_flags_and_config_files_apply_left_to_right(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("import math\nbatch_size = 32\nlearning_rate = batch_size * 1e-5\n")
    config, overrides = configure(DEFAULTS, ["--batch_size=4", str(cfg), "--compile=False"])
    assert config == {**DEFAULTS, "batch_size": 32, "learning_rate": 32e-5, "compile": False}
    assert overrides == {"batch_size": 32, "learning_rate": 32e-5, "compile": False}


def test_values_are_literals_or_plain_strings():
    config, _ = configure(DEFAULTS, ["--out_dir=out-shakespeare", "--wandb_run_name=2024", "--learning_rate=1",
                                     "--total_batch_size=524288"])
    assert config["out_dir"] == "out-shakespeare"
    assert config["wandb_run_name"] == "2024"
    assert config["learning_rate"] == 1.0 and isinstance(config["learning_rate"], float)
    assert config["total_batch_size"] == 524288


def test_a_config_file_setting_a_default_value_counts_as_set(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("batch_size = 12\n")
    _, overrides = configure(DEFAULTS, [str(cfg)])
    assert overrides == {"batch_size": 12}


def test_flags_with_a_space_as_argparse_spells_them():
    config, overrides = configure(DEFAULTS, ["--batch_size", "64", "--learning_rate", "-1e-3", "--compile=False",
                                             "--out_dir", "out-x", "--wandb_run_name", "2024"])
    assert config == {**DEFAULTS, "batch_size": 64, "learning_rate": -1e-3, "compile": False, "out_dir": "out-x",
                      "wandb_run_name": "2024"}
    assert overrides == {"batch_size": 64, "learning_rate": -1e-3, "compile": False, "out_dir": "out-x",
                         "wandb_run_name": "2024"}


def test_aliases_name_the_same_key(capsys):
    defaults = {"start": "\n", "seed": 1}
    for argv in (["--prompt", "ROMEO:"], ["--prompt=ROMEO:"], ["--start", "ROMEO:"]):
        config, overrides = configure(defaults, argv, aliases={"prompt": "start"})
        assert config == {"start": "ROMEO:", "seed": 1} and overrides == {"start": "ROMEO:"}
    with pytest.raises(SystemExit, match="unknown config key 'prompt'"):
        configure(defaults, ["--prompt=x"])
    with pytest.raises(SystemExit):
        configure(defaults, ["--help"], aliases={"prompt": "start"})
    assert "--prompt" in capsys.readouterr().out


@pytest.mark.parametrize("source, message", [
    ("batch_size = 32\nlearning_rate = (1e-3\n", "line 2: '(' was never closed"),
    ("batch_size = 32\n\nlearning_rate = batch_sise * 2\n", "line 3: NameError: name 'batch_sise' is not defined"),
])
def test_config_file_errors_name_file_and_line(tmp_path, source, message):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(source)
    with pytest.raises(SystemExit) as e:
        configure(DEFAULTS, [str(cfg)])
    assert str(e.value) == f"error: config file {cfg}, {message}"


def test_values_are_never_evaluated(tmp_path):
    flag = tmp_path / "evaluated"
    config, _ = configure(DEFAULTS, [f"--out_dir=__import__('pathlib').Path('{flag}').touch()"])
    assert not flag.exists() and config["out_dir"].startswith("__import__")


@pytest.mark.parametrize("argv, message", [
    (["--batch_size=1.5"], "batch_size must be int like its default 12, got float 1.5"),
    (["--compile=false"], "compile must be bool"),
    (["--batch_sise=4"], "unknown config key 'batch_sise' in --batch_sise=4; did you mean 'batch_size'?"),
    (["--batch_size"], "--batch_size has no value: write --batch_size=VALUE or --batch_size VALUE"),
    (["--batch_size", "--compile=False"], "--batch_size has no value"),
    (["--compile=False", "--batch_size"], "--batch_size has no value"),
    (["config/nowhere.py"], "config file config/nowhere.py not found"),
])
def test_bad_arguments_are_clear_errors(argv, message):
    with pytest.raises(SystemExit) as e:
        configure(DEFAULTS, argv)
    assert message in str(e.value)


def test_unknown_key_in_config_file(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("learning_rat = 1e-3\n")
    with pytest.raises(SystemExit, match=f"unknown config key 'learning_rat' in {cfg}; did you mean 'learning_rate'"):
        configure(DEFAULTS, [str(cfg)])


def test_files_may_set_other_keys_only_when_allowed(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("out_dir = 'elsewhere'\neval_interval = 250\nbatch_size = 64\n")
    defaults = {"batch_size": 12, "out_dir": "out"}
    config, _ = configure(defaults, [str(cfg)], files_may_set_others=True)
    assert config == {"batch_size": 64, "out_dir": "elsewhere"}
    with pytest.raises(SystemExit, match="unknown config key 'eval_interval'"):
        configure(defaults, [str(cfg)])
    with pytest.raises(SystemExit, match="unknown config key 'eval_interval'"):
        configure(defaults, ["--eval_interval=5"], files_may_set_others=True)


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        configure(DEFAULTS, ["--help"], usage="usage line")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage line" in out
    for key, value in DEFAULTS.items():
        assert f"--{key}" in out and repr(value) in out
