"""``scripts/system_deps.sh``: what `make` does about missing Debian packages before anything else runs."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "system_deps.sh"


def _run(*pairs: str, uid: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the script as if the user had ``uid`` (a stub ``id`` first on PATH), with no apt-get to reach."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_dir / "id").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(["bash", str(SCRIPT), *pairs], env=env, capture_output=True, text=True, timeout=30)


def test_present_commands_pass_silently(tmp_path):
    proc = _run("bash:bash", "sh:dash", uid=1000, tmp_path=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_a_missing_command_stops_a_user_with_the_install_line_naming_only_what_is_missing(tmp_path):
    proc = _run("bash:bash", "no-such-journey-cmd:journey-pkg-a", "no-such-journey-cmd2:journey-pkg-b", uid=1000,
                tmp_path=tmp_path)
    assert proc.returncode == 1
    assert "sudo apt-get install -y journey-pkg-a journey-pkg-b" in proc.stderr
    assert "bash" not in proc.stderr.split("missing system packages:")[1].splitlines()[0]
