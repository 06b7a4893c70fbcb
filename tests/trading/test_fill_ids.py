"""Fill ids are version-4 UUIDs, never repeated: not in one process, not in a forked child
(the generator is reseeded there), not in a new process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from engines_app.runtime.broker import fill_id


def test_ids_are_version_4_uuids_and_distinct():
    ids = [fill_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(hex=i).version == 4 for i in ids[:100])


def test_a_forked_child_does_not_repeat_its_parents_ids():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(fill_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    ours = {fill_id() for _ in range(10)}
    with os.fdopen(read) as pipe:
        theirs = set(pipe.read().split())
    os.waitpid(pid, 0)
    assert len(theirs) == 10 and not ours & theirs


def test_another_process_does_not_repeat_them():
    code = "from engines_app.runtime.broker import fill_id; print(fill_id())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() != fill_id()
