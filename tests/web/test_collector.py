"""The web process's start-up is out of the cyclic collector's sight: a full collection
walks only what requests allocated since."""

from __future__ import annotations

import os
import subprocess
import sys

from engines_app.testing import ROOT

# A fresh interpreter, as daphne's: import the ASGI module, then time full collections
# with the start-up frozen and, as the baseline, with it back in the collector's sight.
SCRIPT = """
import gc, time
import levipanel.asgi
frozen = gc.get_freeze_count()
def full():
    started = time.perf_counter()
    gc.collect()
    return time.perf_counter() - started
quick = min(full() for _ in range(5))
gc.unfreeze()
slow = min(full() for _ in range(5))
print(frozen, quick, slow)
"""


def test_a_full_collection_in_the_web_process_skips_what_start_up_loaded(tmp_path):
    env = {**os.environ, "LEVIPANEL_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    frozen, quick, slow = done.stdout.split()
    assert int(frozen) > 100_000, frozen  # Django, the apps, the API and its schemas
    assert float(quick) * 4 < float(slow), (quick, slow)
