#!/usr/bin/env python3
"""Set LeviPanel up and run it, or run its tests. Needs only Python 3.11.

python3 dev.py run     # venv + install + migrate + demo login, then web, runner, tasks
python3 dev.py test    # venv + install, then every test (extra pytest args pass through)
python3 dev.py serve   # like run, with the current Python and no install step

LEVIPANEL_PORT (default 8000) and LEVIPANEL_HOST (default 127.0.0.1) choose where the web
server listens; every other setting is read from the environment by the panel itself.
"""

import hashlib
import os
import signal
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


def manage(python: Path, *args: str) -> None:
    """Run a manage.py step; when it fails, its own message is the error (no traceback)."""
    done = subprocess.run([str(python), "manage.py", *args], cwd=ROOT)
    if done.returncode:
        sys.exit(f"manage.py {args[0]} failed (exit code {done.returncode}): see above.")


def run() -> int:
    setup()
    return serve(BIN)


def serve(bin_dir: Path) -> int:
    """Migrate, print the URL and the demo login, then run the Procfile in the foreground.

    honcho runs in its own session, so Ctrl-C reaches it once, through us: it stops all
    three processes (SIGTERM, then SIGKILL after a few seconds) and we wait for it."""
    python = bin_dir / PYTHON.name
    manage(python, "migrate", "--no-input", "-v", "0")
    manage(python, "collectstatic", "--no-input", "-v", "0")
    manage(python, "demo_login")
    host = os.environ.get("LEVIPANEL_HOST", "127.0.0.1")
    url = f"http://{host}:{os.environ.get('LEVIPANEL_PORT', '8000')}"
    print(f"LeviPanel: {url}/  (admin: {url}/admin/)", flush=True)
    print("Ctrl-C stops the web server, the runner and the task cluster.", flush=True)
    honcho = [str(python), "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)]
    process = subprocess.Popen(honcho, cwd=ROOT, env=_env(bin_dir), start_new_session=True)
    stopping = []

    def stop(signum: int, frame: object) -> None:
        if not stopping:
            stopping.append(signum)
            process.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = process.wait()
    return 0 if stopping else code


def test(args: list[str]) -> int:
    setup()
    return subprocess.run([str(PYTHON), "-m", "pytest", *args], cwd=ROOT, env=_env(BIN)).returncode


def _env(bin_dir: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "serve", "test", "setup"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "run":
        return run()
    if command == "serve":
        return serve(Path(sys.executable).parent)
    if command == "test":
        return test(rest)
    setup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
