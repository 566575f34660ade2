"""The `shine` command line: the lazy command registry, help, errors, and `shine convert`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from importlib.metadata import version

import pytest

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from cli_checks import one_line_error
from reference_impl import build_reference_checkpoint, save_reference_checkpoint
from typer.testing import CliRunner

import shine_hf.cli
from shine_hf import ShineForCausalLM
from shine_hf.cli import COMMANDS, CommandEntry, app
from shine_hf.testing import tiny_backbone

runner = CliRunner()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A saved tiny Qwen3 backbone, a hidden-64 one, a narrower-MLP one, and a reference checkpoint for the first."""
    root = tmp_path_factory.mktemp("cli")
    backbone = tiny_backbone("qwen3", seed=0)
    backbone.save_pretrained(root / "backbone")
    tiny_backbone("qwen3", seed=0, hidden_size=64).save_pretrained(root / "wide")
    tiny_backbone("qwen3", seed=0, intermediate_size=48).save_pretrained(root / "narrow")
    save_reference_checkpoint(build_reference_checkpoint(backbone, 2, 3, 2, seed=1), root / "reference")
    return root


def test_convert(paths, tmp_path):
    out = tmp_path / "shine"
    result = runner.invoke(app, ["convert", str(paths / "reference"), str(out), "--backbone",
                                 str(paths / "backbone"), "--lora-scale", "0.01", "--m2p-num-heads", "2"])
    assert result.exit_code == 0, result.output
    assert "Converted" in result.stdout and str(out) in result.stdout
    config = ShineForCausalLM.from_pretrained(out).config
    assert (config.lora_scale, config.m2p_num_heads, config.lora_rank, config.metalora_rank) == (0.01, 2, 2, 5)
    assert config.backbone_name_or_path == str(paths / "backbone")


def test_mismatched_backbone_is_one_clean_line(paths, tmp_path):
    result = runner.invoke(app, ["convert", str(paths / "reference"), str(tmp_path / "out"), "--backbone",
                                 str(paths / "wide")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "mem_tokens" in lines[0] and "(32, 32)" in lines[0] and "(32, 64)" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bracketed_tensor_names_are_printed_verbatim(paths, tmp_path):
    """Rich must not read `[0]['mlp']` in a message as markup."""
    result = runner.invoke(app, ["convert", str(paths / "reference"), str(tmp_path / "out"), "--backbone",
                                 str(paths / "narrow")])
    assert result.exit_code == 1
    assert "metalora.pth[0]['mlp']['gate']['B'] has shape (1, 5, 64), the backbone needs (1, 5, 48)" in result.stderr


def test_missing_source(paths, tmp_path):
    result = runner.invoke(app, ["convert", str(tmp_path / "nowhere" / "x"), str(tmp_path / "out"), "--backbone",
                                 str(paths / "backbone")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "not a directory" in result.stderr
    assert "Traceback" not in result.output


def test_backbone_is_required(paths, tmp_path):
    result = runner.invoke(app, ["convert", str(paths / "reference"), str(tmp_path / "out")])
    assert result.exit_code != 0 and "--backbone" in result.output


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "shine_hf.cli", "convert", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--backbone", "--m2p-num-heads", "--lora-scale", "--revision"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (["--lora-scale", "-1"], ["--lora-scale", "> 0"]),
        (["--lora-scale", "0"], ["--lora-scale", "> 0"]),
        (["--lora-scale", "nan"], ["--lora-scale", "> 0"]),
        (["--lora-scale", "inf"], ["--lora-scale", "> 0"]),
        (["--lora-scale", "abc"], ["--lora-scale"]),
        (["--m2p-num-heads", "0"], ["--m2p-num-heads", ">= 1"]),
        (["--m2p-num-heads", "-4"], ["--m2p-num-heads", ">= 1"]),
        (["--no-such-option"], ["--no-such-option", "shine convert --help"]),
    ],
)
def test_impossible_values_are_one_clean_line(paths, tmp_path, arguments, fragments):
    out = tmp_path / "out"
    result = runner.invoke(app, ["convert", str(paths / "reference"), str(out), "--backbone", str(paths / "backbone"),
                                 *arguments])
    one_line_error(result, *fragments)
    assert not out.exists()


def test_out_dir_that_is_a_file_is_one_clean_line(paths, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    result = runner.invoke(app, ["convert", str(paths / "reference"), str(target), "--backbone",
                                 str(paths / "backbone")])
    one_line_error(result, "OUT_DIR", "is a file")
    assert target.read_text() == "keep me"


def test_missing_arguments_and_unknown_commands_are_one_clean_line(paths, tmp_path):
    one_line_error(runner.invoke(app, ["convert", "--backbone", str(paths / "backbone")]), "Missing argument 'SRC'")
    one_line_error(runner.invoke(app, ["convert", str(paths / "reference"), str(tmp_path / "out")]),
                    "Missing option '--backbone'")
    one_line_error(runner.invoke(app, ["no-such-command"]), "no-such-command", "shine --help")


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"shine-hf {version('shine-hf')}" == f"shine-hf {shine_hf.__version__}"


def test_help_lists_every_command_with_its_registry_line():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name, entry in COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(entry.help)}$", result.stdout, re.MULTILINE), (name, result.stdout)
    assert "--version" in result.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_is_readable_on_80_columns(command):
    """Nothing is cut or wider than the terminal, no rich markup eats "[...]" and flags show no type."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "…" not in result.stdout and "<bool>" not in result.stdout
    words = " ".join(result.stdout.split())
    for param in shine_hf.cli.load_command(command).params:
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("-"):
                assert name in words, name
        for bracketed in re.findall(r"\[[^\]]*\]", param.help or "") if hasattr(param, "help") else []:
            assert " ".join(bracketed.split()) in words, bracketed


def _run_python(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


HEAVY_MODULES = ("torch", "transformers", "datasets", "shine_hf.modeling")


def test_help_imports_no_heavy_module_and_no_command():
    """What keeps `shine --help` fast: the `shine` package and its help import neither torch nor
    transformers, nor any command module (measured: about 0.1 s, against 5 s before)."""
    loaded = _run_python(f"""
        import json, sys
        from typer.testing import CliRunner
        from shine_hf.cli import app
        result = CliRunner().invoke(app, ["--help"])
        assert result.exit_code == 0, result.output
        print(json.dumps(sorted(m for m in sys.modules
                                if m in {HEAVY_MODULES!r} or m.startswith("shine_hf.cli."))))
    """)
    assert loaded == ["shine_hf.cli._common"]


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"train"}))  # train's options come from transformers
def test_command_help_imports_no_heavy_module(command):
    loaded = _run_python(f"""
        import json, sys
        from typer.testing import CliRunner
        from shine_hf.cli import app
        result = CliRunner().invoke(app, [{command!r}, "--help"])
        assert result.exit_code == 0, result.output
        print(json.dumps(sorted(m for m in sys.modules if m in {HEAVY_MODULES!r})))
    """)
    assert loaded == []


def test_a_command_whose_packages_are_missing_is_one_clean_line(monkeypatch, tmp_path):
    """A registry entry whose module needs an uninstalled package: the error names it and the extra."""
    (tmp_path / "needs_missing.py").write_text("import shine_hf_no_such_package\n\ndef run() -> None:\n    pass\n")
    monkeypatch.setattr(shine_hf.cli, "__path__", [*shine_hf.cli.__path__, str(tmp_path)])
    monkeypatch.setitem(COMMANDS, "ghost", CommandEntry("needs_missing:run", "A command.", extra="ghost"))
    assert "ghost" in runner.invoke(app, ["--help"]).stdout
    one_line_error(runner.invoke(app, ["ghost"]), "'shine ghost' needs", "shine_hf_no_such_package",
                    "shine-hf[ghost]")


@pytest.mark.parametrize("command", ["", *sorted(COMMANDS)])
def test_every_help_ends_with_examples_of_that_command(command):
    result = runner.invoke(app, [command, "--help"] if command else ["--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.rstrip().splitlines()
    heading = max(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    examples = [line.strip() for line in lines[heading + 1:] if line.strip()]
    assert examples, result.stdout
    prefix = f"shine {command}".rstrip()
    commands = [line for line in examples if not line.startswith("--")]  # continuation lines start with --
    assert all(line.startswith(prefix) for line in commands), examples


# One spelling per meaning (shine_hf/cli/_options.py): an older or longer name is only ever an alias.
CANONICAL_NAMES = {"--output": "--out", "--output-dir": "--out", "--backbone-dtype": "--dtype", "--from": "--model"}
SHARED_OPTIONS = {"model": "--model", "backbone": "--backbone", "revision": "--revision", "device": "--device",
                  "dtype": "--dtype", "batch_size": "--batch-size", "max_new_tokens": "--max-new-tokens",
                  "seed": "--seed", "compose": "--compose", "out": "--out", "output": "--out",
                  "output_dir": "--out", "from_checkpoint": "--model", "backbone_dtype": "--dtype"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_shared_options_are_spelled_alike(command):
    for param in shine_hf.cli.load_command(command).params:
        names = [*param.opts, *param.secondary_opts]
        for old, new in CANONICAL_NAMES.items():
            if old in names:
                assert new in names, (command, param.name, names)
        if param.name in SHARED_OPTIONS and param.param_type_name == "option":
            assert SHARED_OPTIONS[param.name] in names, (command, param.name, names)
    if command in ("internalize", "chat", "eval", "demo"):
        assert "--model" in {name for param in shine_hf.cli.load_command(command).params for name in param.opts}


@pytest.mark.parametrize("command", ["internalize", "chat", "eval", "demo"])
def test_an_unknown_dtype_is_the_same_one_line_everywhere(command, tmp_path):
    result = runner.invoke(app, [command, "--dtype", "float8", "--model", str(tmp_path)])
    one_line_error(result, "Invalid value for '--dtype': Unknown dtype 'float8': use auto, bfloat16, float16 or "
                            "float32.")


def _ghost_command(monkeypatch, tmp_path, module: str, body: str) -> None:
    """Register `shine ghost`, whose function (in a new module named `module`) runs `body`."""
    (tmp_path / f"{module}.py").write_text(f"import typer\n\n\ndef run() -> None:\n    {body}\n")
    monkeypatch.setattr(shine_hf.cli, "__path__", [*shine_hf.cli.__path__, str(tmp_path)])
    monkeypatch.setitem(COMMANDS, "ghost", CommandEntry(f"{module}:run", "A command."))


def test_an_abort_is_one_clean_line(monkeypatch, tmp_path):
    _ghost_command(monkeypatch, tmp_path, "aborting_command", "raise typer.Abort()")
    result = runner.invoke(app, ["ghost"])
    assert result.exit_code == 1 and result.stderr == "Error: Aborted.\n"


def test_a_bug_keeps_its_own_traceback(monkeypatch, tmp_path):
    """Anything that is not a user error propagates as itself (it used to become an AttributeError)."""
    _ghost_command(monkeypatch, tmp_path, "buggy_command", "raise LookupError('a bug')")
    with pytest.raises(LookupError, match="a bug"):
        app(["ghost"], prog_name="shine")
