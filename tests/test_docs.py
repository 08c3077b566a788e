"""Every command has help and is documented, and so is every option: a new one without docs fails.

After sqlite-utils' tests/test_docs.py. A command is documented by a Markdown heading in README.md
or docs/*.md that names it (`recorder jobs …`, `recorder db upgrade`); each of its options must
appear in the section under such a heading. The options of `recorder` itself belong in the
README's Commands section.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from recorder.cli import cli

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_HEADING = re.compile(r"(#+) ")


def walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every command under `group`, subcommands of subgroups included."""
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


COMMANDS = [(), *walk(cli)]


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def label(path: tuple[str, ...]) -> str:
    return " ".join(("recorder", *path))


def sections(matches: re.Pattern[str]) -> list[str]:
    """The text under each Markdown heading that `matches`, to the next heading as high."""
    found = []
    for doc in DOCS:
        lines, fenced = [], []
        for line in doc.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                fenced.append(line)
            # A `# comment` in a code block is no heading.
            lines.append((line, len(fenced) % 2 == 1 or line.startswith("```")))
        start = level = None
        for i, (line, in_code) in enumerate([*lines, ("# end", False)]):
            heading = None if in_code else _HEADING.match(line)
            if heading is None:
                continue
            if start is not None and len(heading.group(1)) <= level:
                found.append("\n".join(text for text, _ in lines[start:i]))
                start = None
            if start is None and matches.search(line):
                start, level = i, len(heading.group(1))
    return found


def documentation(path: tuple[str, ...]) -> str:
    """The sections that document a command; for `recorder` itself, the README's Commands."""
    if not path:
        return "\n".join(sections(re.compile(r"^## Commands$")))
    return "\n".join(sections(re.compile(re.escape(label(path)) + r"(?![\w-])")))


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def options(path: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Each option's names: the long ones when it has any, else the short ones."""
    names = []
    for param in command_at(path).params:
        if isinstance(param, click.Option):
            every = [*param.opts, *param.secondary_opts]
            names.append(tuple(o for o in every if o.startswith("--")) or tuple(every))
    return names


OPTIONS = [(path, names) for path in COMMANDS for names in options(path)]


def help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("path", COMMANDS, ids=label)
def test_every_command_has_help_with_its_docstring(path: tuple[str, ...]) -> None:
    command = command_at(path)
    assert command.help, f"{label(path)} has no docstring"
    summary = command.help.split("\n\n")[0]
    assert " ".join(summary.split()) in " ".join(help_text(path).split())
    if not isinstance(command, click.Group):
        assert "Example:" in command.help, f"{label(path)}'s docstring has no Example: block"


@pytest.mark.parametrize("path", COMMANDS, ids=label)
def test_every_command_is_documented(path: tuple[str, ...]) -> None:
    assert documentation(path), (
        f"no heading in README.md or docs/*.md names `{label(path)}`: "
        "add its entry to the README's Commands section"
    )


@pytest.mark.parametrize(
    ("path", "names"), OPTIONS, ids=[f"{label(p)} {'/'.join(n)}" for p, n in OPTIONS]
)
def test_every_option_is_in_help_and_documented(
    path: tuple[str, ...], names: tuple[str, ...]
) -> None:
    assert all(mentions(help_text(path), name) for name in names)
    documented = documentation(path)
    assert any(mentions(documented, name) for name in names), (
        f"{'/'.join(names)} of `{label(path)}` is not in its section of README.md or docs/*.md"
    )
