"""docs/cli.md and completions/ are generated from the CLI (kafka_mirrors/cli/gendocs.py);
these fail when a help text, command or option changed and they were not regenerated."""
import pytest

from kafka_mirrors.cli import gendocs

EXPECTED = gendocs.expected_files()


@pytest.mark.parametrize("rel", sorted(EXPECTED, key=str), ids=str)
def test_generated_file_is_up_to_date(rel):
    path = gendocs.ROOT / rel
    assert path.is_file(), f"{rel} is missing; run '{gendocs.REGENERATE}' and commit it"
    assert path.read_text() == EXPECTED[rel], f"{rel} is out of date; run '{gendocs.REGENERATE}' and commit it"


def test_cli_md_has_the_help_of_every_command():
    text = EXPECTED[gendocs.CLI_MD]
    for path in gendocs.command_paths():
        assert f"## `{' '.join(['kafka-mirrors', *path])}`" in text
    assert "Usage: kafka-mirrors mirror failover [OPTIONS] [TOPIC...]" in text
    assert "Usage (Confluent-style flags" in text
    assert "## `kafka-cluster-links`" in text and "Usage (Confluent's kafka-cluster-links" in text
    # rendered at the fixed width, whatever terminal the test runs in
    usage_line = next(line for line in text.splitlines() if line.startswith("  -l, --link"))
    assert len(usage_line) <= 80


def test_check_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gendocs, "ROOT", tmp_path)
    for rel, content in EXPECTED.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    assert gendocs.main(["--check"]) == 0
    (tmp_path / "completions" / "kafka-mirrors.fish").write_text("old\n")
    assert gendocs.main(["--check"]) == 1
    assert capsys.readouterr().err == "out of date: completions/kafka-mirrors.fish; run 'scripts/gen-docs'\n"
    assert gendocs.main([]) == 0
    assert gendocs.stale_files(tmp_path) == []
