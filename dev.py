#!/usr/bin/env python3
"""Set LeviPanel up and run it, or run its tests. Needs only Python 3.11.

python3 dev.py run     # venv + install + migrate + demo login, then web, runner, tasks
python3 dev.py test    # venv + install, then every test (extra pytest args pass through)
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
REQUIREMENTS = ROOT / "requirements.txt"
STAMP = VENV / ".requirements.sha256"


def setup() -> None:
    """Create the virtualenv and install the pinned requirements when they changed."""
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"LeviPanel needs Python 3.11 (this is {sys.version.split()[0]}).")
    if not PYTHON.exists():
        print("Creating the virtualenv in .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != digest:
        print("Installing the pinned requirements ...", flush=True)
        pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
        STAMP.write_text(digest)


def manage(*args: str) -> None:
    subprocess.run([str(PYTHON), "manage.py", *args], check=True, cwd=ROOT)


def run() -> int:
    setup()
    manage("migrate", "--no-input", "-v", "0")
    manage("collectstatic", "--no-input", "-v", "0")
    manage("demo_login")
    print("LeviPanel: http://127.0.0.1:8000/  (admin: http://127.0.0.1:8000/admin/)", flush=True)
    print("Ctrl-C stops the web server, the runner and the task cluster.", flush=True)
    honcho = [str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)]
    try:
        return subprocess.run(honcho, cwd=ROOT, env=_env()).returncode
    except KeyboardInterrupt:
        return 0


def test(args: list[str]) -> int:
    setup()
    return subprocess.run([str(PYTHON), "-m", "pytest", *args], cwd=ROOT, env=_env()).returncode


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "setup"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "run":
        return run()
    if command == "test":
        return test(rest)
    setup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
