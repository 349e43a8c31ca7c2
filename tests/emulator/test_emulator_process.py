"""The command line, the child-process wrapper and the state file."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from tests.emulator.support import expect_problem, make_client, put
from worker.emulator.cli import emulator as emulator_command
from worker.emulator.process import LISTENING_RE, EmulatorProcess


def test_command_help() -> None:
    result = CliRunner().invoke(emulator_command, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--latency-ms",
        "--list",
        "--double-optin-list",
        "--api-key",
        "--state-file",
        "--fault",
        "--sign-webhooks",
    ):
        assert option in result.output


def test_default_audience_and_flags() -> None:
    with EmulatorProcess() as emu:
        assert len(emu.list_ids) == 1 and len(emu.list_id) == 10
        assert emu.base_url.startswith("http://127.0.0.1:") and emu.base_url.endswith("/3.0")
        assert "server" not in emu.base_url
    with EmulatorProcess(lists=("one",), double_optin_lists=("two",)) as emu:
        client = make_client(emu)
        assert emu.list_ids == ["one", "two"]
        assert client.lists.get_list("one")["double_optin"] is False
        assert client.lists.get_list("two")["double_optin"] is True


def test_stop_leaves_no_process() -> None:
    emu = EmulatorProcess()
    pid = emu.pid
    assert emu.alive() and pid is not None
    emu.stop()
    assert not emu.alive()
    emu.stop()  # idempotent


def test_state_file_survives_a_restart(tmp_path) -> None:
    path = tmp_path / "state.json"
    with EmulatorProcess("--state-file", str(path), lists=("keep",)) as emu:
        put(
            make_client(emu),
            "keep",
            "stay@gmail.com",
            status_if_new="subscribed",
            merge_fields={"FNAME": "S"},
        )
        emu.seed_member("gone@gmail.com", "forgotten")
    assert path.exists()
    with EmulatorProcess("--state-file", str(path)) as emu:
        assert emu.list_ids == ["keep"]
        assert emu.member("stay@gmail.com")["merge_fields"] == {"FNAME": "S"}
        assert emu.member("gone@gmail.com")["status"] == "forgotten"


def test_fault_flags_on_the_command_line() -> None:
    with EmulatorProcess("--fault", "500=1.0", "--latency-ms", "5") as emu:
        faults = emu.faults()
        assert faults["rates"] == {"500": 1.0} and faults["latency_ms"] == 5.0
        expect_problem(500, "Internal Server Error", make_client(emu).ping.get)
        emu.reset_faults()  # back to the command-line configuration, not to zero
        assert emu.faults()["rates"] == {"500": 1.0}


def test_module_entry_point_prints_the_listening_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.emulator", "--port", "0", "--list", "abc"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = LISTENING_RE.search(line)
        assert match is not None and match[2] == "abc"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
