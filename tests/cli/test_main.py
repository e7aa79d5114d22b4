"""``brio`` starts fast: a command imports only what it uses (issue 9, item 6)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from brio.cli.main import COMMANDS, main

# What a CLI call must not load unless its command uses it: the server, the config model,
# gRPC and the generated protobuf code, the HTTP client, certificates, tables.
HEAVY = (
    "brio.node",
    "brio.config",
    "brio.mesh",
    "pydantic",
    "trio",
    "grpclib",
    "betterproto2",
    "httpx",
    "cryptography",
    "rich",
)


def loaded_after(*args: str) -> set[str]:
    """The heavy top-level modules in ``sys.modules`` after ``brio ARGS`` in a fresh process."""
    probe = (
        "import sys\n"
        "from brio.cli.main import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = {HEAVY!r}\n"
        "print('loaded:', *sorted(h for h in heavy if h in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    last = done.stdout.splitlines()[-1]  # after the help or version text
    assert last.startswith("loaded:"), done.stdout
    return set(last.split()[1:])


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["tasks", "list", "--help"],
        ["mesh", "status", "--help"],
        ["config", "show", "--help"],
    ],
)
def test_help_and_version_load_nothing_heavy(args: list[str]) -> None:
    assert loaded_after(*args) == set()


def test_certs_help_loads_only_the_certificates() -> None:
    # its defaults (the validity in days) are brio.certs constants
    assert loaded_after("certs", "init", "--help") == {"cryptography"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: brio {command} ")
    assert COMMANDS[command] in out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command, text in COMMANDS.items():
        assert f"    {command}" in out and text in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("usage: brio ")


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["nope"])
    assert exit_.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from brio import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"brio {__version__}\n"
