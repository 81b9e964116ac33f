"""The flag/env-var rule both entry points share: flag > env var > default, env var = UPPER_SNAKE_CASE flag name."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

import pytest

from neuroncli.flags import Flag, add_flags, env_var_name, truthy

FLAGS = (
    Flag("node-name", "from-default", "this node's name"),
    Flag("port", "8888", "listen port", int),
    Flag("standalone", "", "no API server", switch=True),
    Flag("log-level", "info", "", choices=("debug", "info")),
)


def parse(argv: Sequence[str], env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prog")
    add_flags(parser, FLAGS, env)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("flag", "var"),
    [("--node-name", "NODE_NAME"), ("node-name", "NODE_NAME"), ("--tls-cert-file", "TLS_CERT_FILE"), ("port", "PORT")],
)
def test_env_var_is_the_upper_snake_case_flag_name_without_prefix(flag: str, var: str) -> None:
    assert env_var_name(flag) == var


def test_a_flag_names_its_option_dest_and_env_var() -> None:
    flag = Flag("pod-resources-socket", "", "")
    assert flag.option == "--pod-resources-socket"
    assert flag.dest == "pod_resources_socket"
    assert flag.env_var == "POD_RESOURCES_SOCKET"


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, "from-default"),
        ([], {"NODE_NAME": "from-env"}, "from-env"),
        ([], {"NODE_NAME": ""}, ""),  # a set but empty env var still beats the default
        (["--node-name", "from-flag"], {"NODE_NAME": "from-env"}, "from-flag"),
        (["--node-name", "from-flag"], {}, "from-flag"),
    ],
)
def test_flag_beats_env_var_beats_default(argv: list[str], env: dict[str, str], expected: str) -> None:
    assert parse(argv, env).node_name == expected


def test_typed_flags_convert_env_values_and_defaults_too() -> None:
    assert parse([], {}).port == 8888
    assert parse([], {"PORT": "9001"}).port == 9001
    assert parse(["--port", "9002"], {"PORT": "9001"}).port == 9002


@pytest.mark.parametrize("env", [{"PORT": "soon"}, {}])
def test_a_bad_typed_value_is_a_usage_error_naming_the_flag(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [] if env else ["--port", "soon"]
    with pytest.raises(SystemExit) as exited:
        parse(argv, env)
    assert exited.value.code == 2
    assert "argument --port: invalid int value: 'soon'" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["1", "true", "TRUE", " yes ", "on", "On"])
def test_truthy_values_turn_a_switch_on(text: str) -> None:
    assert truthy(text)
    assert parse([], {"STANDALONE": text}).standalone is True


@pytest.mark.parametrize("text", ["", "0", "false", "No", " off "])
def test_falsy_values_leave_a_switch_off(text: str) -> None:
    assert not truthy(text)
    assert parse([], {"STANDALONE": text}).standalone is False


@pytest.mark.parametrize("text", ["maybe", "ture", "2", "y"])
def test_any_other_switch_value_is_a_usage_error_naming_the_env_var(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="not a switch value"):
        truthy(text)
    with pytest.raises(SystemExit) as exited:
        parse([], {"STANDALONE": text})
    assert exited.value.code == 2
    assert f"env STANDALONE (for --standalone): {text!r} is not a switch value" in capsys.readouterr().err


def test_a_switch_is_off_by_default_and_on_when_given_whatever_its_env_var() -> None:
    assert parse([], {}).standalone is False
    assert parse(["--standalone"], {"STANDALONE": "false"}).standalone is True


def test_a_switch_takes_no_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--standalone=yes"], {})
    assert "argument --standalone: ignored explicit argument 'yes'" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "env"), [(["--log-level", "loud"], {}), ([], {"LOG_LEVEL": "loud"})])
def test_a_choice_flag_rejects_other_values_from_flag_and_env_var(
    argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse checks choices on the command line only: an env value used to reach the program unchecked.
    assert parse([], {"LOG_LEVEL": "debug"}).log_level == "debug"
    with pytest.raises(SystemExit) as exited:
        parse(argv, env)
    assert exited.value.code == 2
    assert "argument --log-level: 'loud' is not one of debug, info" in capsys.readouterr().err


def test_help_names_the_env_var_and_the_default_of_value_flags() -> None:
    node_name, port, standalone, log_level = FLAGS
    assert node_name.help_text == "this node's name (env NODE_NAME, default 'from-default')"
    assert port.help_text == "listen port (env PORT, default '8888')"
    assert standalone.help_text == "no API server (env STANDALONE)"
    assert log_level.help_text == "env LOG_LEVEL"
    parser = argparse.ArgumentParser(prog="prog")
    add_flags(parser, FLAGS, {})
    usage = parser.format_usage()
    assert "[--node-name NODE_NAME]" in usage and "[--standalone]" in usage and "{debug,info}" in usage
