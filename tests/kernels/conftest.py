"""Shared by the Triton kernel tests: Triton's interpreter must be on before triton is first imported, so each
file runs its `interpreted` tests in a subprocess with TRITON_INTERPRET=1."""
import os
import subprocess
import sys

import pytest

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture
def run_interpreted():
    def run(test_file: str) -> None:
        if INTERPRETING:
            pytest.skip("this is the interpreter subprocess itself")
        env = dict(os.environ, TRITON_INTERPRET="1")
        command = [sys.executable, "-m", "pytest", test_file, "-q", "-k", "interpreted", "-p", "no:cacheprovider"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        report = done.stdout[-8000:] + done.stderr[-2000:]
        assert done.returncode == 0, report
        assert " passed" in report and " skipped" not in report, report
    return run
