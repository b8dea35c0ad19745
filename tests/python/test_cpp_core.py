"""Builds the C++ core's own unit tests under each sanitizer and runs them.

The core has no Python in it, so its tests are plain executables (see
tests/cpp); this module only drives CMake and CTest so that the one test
command of the README runs them too. Build trees are kept under build/ and
reused, so a second run only re-runs the tests.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SANITIZERS = ["thread", "address"]


def _tool(name: str) -> str | None:
    # The test extras install cmake and ninja into the environment's bin/.
    local = pathlib.Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )


@pytest.mark.skipif(not (ROOT / "tests" / "cpp").is_dir(), reason="no C++ tests")
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("sanitizer", SANITIZERS)
def test_core_unit_tests_pass_under_sanitizer(sanitizer: str) -> None:
    cmake, ninja = _tool("cmake"), _tool("ninja")
    if cmake is None or shutil.which("c++") is None:
        pytest.fail("the C++ tests need cmake and a C++ compiler on PATH")
    build = ROOT / "build" / f"cpp-{sanitizer}"
    env = dict(os.environ)
    # Fail on the first report rather than carrying on with corrupted state.
    env["TSAN_OPTIONS"] = "halt_on_error=1 second_deadlock_stack=1"
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=1"
    configure = [
        cmake, "-S", str(ROOT), "-B", str(build),
        "-DMP_BUILD_PYTHON=OFF", "-DMP_BUILD_TESTS=ON", "-DMP_WERROR=ON",
        f"-DMP_SANITIZE={sanitizer}", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
    ]
    if ninja is not None:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    steps = [
        configure,
        [cmake, "--build", str(build), "--parallel", "2"],
        [_tool("ctest") or "ctest", "--test-dir", str(build), "--output-on-failure"],
    ]
    for cmd in steps:
        done = _run(cmd, env)
        assert done.returncode == 0, (
            f"{' '.join(cmd)} failed ({done.returncode}):\n"
            f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
        )
