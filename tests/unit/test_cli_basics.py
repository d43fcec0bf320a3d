from kafka_mirrors import __version__


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0
    assert r.stdout == f"kafka-mirrors {__version__}\n"


def test_help_lists_commands_and_exit_codes(cli):
    r = cli("--help")
    assert r.exit_code == 0
    assert "link" in r.stdout
    assert "Exit codes" in r.stdout


def test_unknown_command_is_a_usage_error(cli):
    r = cli("no-such-command")
    assert r.exit_code == 2
    assert "No such command" in r.stderr
    assert r.stdout == ""
