"""The README's flow with real processes: `rating serve` on the embedded default, then the
documented client commands against it; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

RATING = [sys.executable, "-m", "server"]
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RATING, *args],
        cwd=cwd,
        env=_env(**extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def embedded_server(tmp_path: Path) -> object:
    port = _free_port()
    process = subprocess.Popen(
        [*RATING, "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "serving on" in line, process.stderr.read() if process.stderr else line
    yield tmp_path, f"127.0.0.1:{port}", process
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=10)  # reaps the process and closes its pipes


def test_client_commands_create_and_read_a_customer_when_server_runs_embedded(
    embedded_server: tuple[Path, str, subprocess.Popen[str]],
) -> None:
    workdir, target, process = embedded_server
    assert (workdir / "var" / "rating.db").exists()
    assert (workdir / "var" / "api-key").stat().st_mode & 0o077 == 0

    created = _run(
        [
            "customers",
            "create",
            "--name",
            "Ada Lovelace",
            "--account-number",
            "ACC-1",
            "--target",
            target,
        ],
        workdir,
    )
    assert created.returncode == 0, created.stderr
    customer = json.loads(created.stdout)
    fetched = _run(["customers", "get", customer["id"], "--target", target], workdir)
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout) == customer
    assert customer["name"] == "Ada Lovelace"

    missing = _run(
        ["customers", "get", "00000000-0000-4000-8000-000000000000", "--target", target], workdir
    )
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert '"msg": "stopped"' in stderr


def test_client_command_exits_quietly_when_the_reader_of_its_output_goes_away(
    embedded_server: tuple[Path, str, subprocess.Popen[str]],
) -> None:
    """`rating … | head`: a closed pipe is not a connection failure to report."""
    workdir, target, _ = embedded_server
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    with os.fdopen(write, "w") as closed:
        done = subprocess.run(
            [*RATING, "customers", "create", "--name", "Ada", "--account-number", "A-9",
             "--target", target],
            cwd=workdir, env=_env(), stdout=closed, stderr=subprocess.PIPE, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    assert (done.returncode, done.stderr) == (141, "")


def test_admin_commands_create_a_tenant_and_a_scoped_key_when_database_is_given(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'admin.db'}"
    migrated = _run(["migrate", "--database-url", url], tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    tenant = _run(["admin", "create-tenant", "Acme", "--database-url", url], tmp_path)
    assert tenant.returncode == 0, tenant.stderr
    tenant_id = tenant.stdout.split("tenant_id:")[1].split()[0]
    key = _run(
        [
            "admin",
            "create-key",
            "--tenant",
            tenant_id,
            "--scopes",
            "usage:read",
            "--database-url",
            url,
        ],
        tmp_path,
    )
    assert key.returncode == 0, key.stderr
    assert key.stdout.startswith("rk_")
    bad = _run(
        [
            "admin",
            "create-key",
            "--tenant",
            tenant_id,
            "--scopes",
            "usage:fly",
            "--database-url",
            url,
        ],
        tmp_path,
    )
    assert bad.returncode != 0
    assert "usage:fly" in bad.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["rebuild"],
        ["admin", "create-tenant", "A"],
        ["admin", "create-key", "--tenant", "00000000-0000-0000-0000-000000000001"],
    ],
)
def test_a_command_on_an_sqlite_file_that_is_not_there_creates_none(
    tmp_path: Path, command: list[str]
) -> None:
    result = _run([*command, "--database-url", "sqlite:///mistyped.db"], tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().endswith(
        "database: no such file mistyped.db (is it migrated? `rating migrate`)"
    ), result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["sweep", "--as-of", "garbage"], 2, "'garbage' is not an ISO 8601 instant"),
        (["sweep", "--as-of", "2026-11-21T12:00:00"], 2, "has no offset"),
        (["quarantine", "--since", "garbage"], 2, "argument --since: 'garbage' is not an ISO"),
        (
            ["quarantine", "--until", "2026-11-21"],
            2,
            "argument --until: '2026-11-21' has no offset",
        ),
        (["quarantine", "purge"], 2, "the following arguments are required: --before"),
        (["quarantine", "purge", "--before", "x"], 2, "argument --before: 'x' is not an ISO"),
        (
            ["quarantine", "--since", "2026-11-21T12:00:00Z", "--until", "2026-11-21T11:00Z"],
            1,
            "rating quarantine: --until must be later than --since",
        ),
        (
            [
                "quarantine",
                "--until",
                "2026-11-21T12:00Z",
                "purge",
                "--before",
                "2026-11-21T12:00Z",
            ],
            1,
            "rating quarantine purge: --since and --until are for listing",
        ),
        (["replay", "missing.pcap", "--secret", "s"], 1, "missing.pcap: No such file"),
        (["replay", "junk.bin", "--secret", "s"], 1, "neither a pcap or pcapng capture nor"),
        (["replay", "junk.bin", "--format", "pcap", "--secret", "s"], 1, "not a classic pcap"),
        (["replay", "junk.bin", "--batch-size", "0"], 2, "--batch-size: must be at least 1"),
        (["replay", "junk.bin", "--batch-size", "-5"], 2, "--batch-size: must be at least 1"),
        (["sessions", "--nas", ""], 2, "argument --nas: must not be empty"),
        (
            ["nas", "set", "192.0.2.1", "--stale-multiplier", "2147483648"],
            2,
            "--stale-multiplier: 2147483648 is out of range (0 to 2147483647)",
        ),
        (["sessions", "--target", "127.0.0.1:{closed}"], 1, "rating sessions: UNAVAILABLE"),
        (["nas", "list", "--key-file", "missing-key"], 1, "missing-key: No such file"),
        (["sessions", "--key-file", "two-lines"], 1, "two-lines: an API key is one word"),
        (["nas", "set", "192.0.2.1"], 1, "rating nas set: nothing to set: give --secret"),
        (["nas", "set", "192.0.2.1", "--secret", ""], 2, "--secret: must not be empty"),
        (["rebuild", "--tenant", "x"], 2, "'x' is not a tenant id"),
        (["admin", "create-tenant", "A", "--database-url", "sqlite:///e.db"], 1, "rating migrate"),
        (["migrate", "--database-url", "nonsense"], 1, "database URL"),
        (["serve", "--log-level", "LOUD"], 1, "--log-level: one of"),
    ],
)
def test_command_fails_with_one_line_when_its_input_is_bad(
    tmp_path: Path, args: list[str], status: int, message: str
) -> None:
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)))
    # A key file holding more than the key (the whole output of `create-tenant --with-key`).
    (tmp_path / "two-lines").write_text("tenant 1234\nrk_x\n")
    closed = str(_free_port())  # nothing listens there
    result = _run([a.replace("{closed}", closed) for a in args], tmp_path, RATING_API_KEY="rk_x")
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    # argparse prints its usage first; everything else is the one line.
    assert len(lines) == 1 or status == 2, result.stderr
    assert message in lines[-1]
