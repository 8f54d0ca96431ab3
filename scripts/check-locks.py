#!/usr/bin/env python3
"""Compiles the core and the relay with clang's thread-safety analysis, as errors.

    scripts/check-locks.py [BUILD_DIR]   (make check-locks; run by make test)

Reads BUILD_DIR/compile_commands.json (default: build), takes each translation unit under
src/core and src/relay, and runs `clang++ -fsyntax-only -Wthread-safety -Werror` with the
flags the build uses. A member annotated SLUICE_GUARDED_BY(mu) touched without mu held, or a
SLUICE_REQUIRES(mu) function called without it, fails the check
(include/sluice/detail/thread_annotations.hpp). Runs the units in parallel; exits 1 on any
failure, printing clang's messages.
"""
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCOPES = ("src/core/", "src/relay/")
# GCC-only options in the build's flags, and what GCC tolerates that clang does not need.
DROP = {"-Wno-maybe-uninitialized", "-Wno-tsan", "-c"}


def clang_command(entry):
    args = shlex.split(entry["command"]) if "command" in entry else list(entry["arguments"])
    # The compiler (after a launcher such as ccache) is the first argument that is not one.
    while args and os.path.basename(args[0]) in ("ccache", "sccache"):
        args = args[1:]
    out, skip = [], False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a == "-o":
            skip = True
            continue
        if a in DROP or a.startswith("-fsanitize") or a == entry["file"]:
            continue
        out.append(a)
    return ["clang++", "-fsyntax-only", "-Wthread-safety", "-Werror",
            "-Wno-unknown-warning-option", *out, entry["file"]]


def check(entry):
    r = subprocess.run(clang_command(entry), cwd=entry["directory"], capture_output=True,
                       text=True)
    return entry["file"], r.returncode, r.stderr


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build")
    with open(os.path.join(build, "compile_commands.json")) as f:
        entries = [e for e in json.load(f)
                   if os.path.relpath(e["file"], ROOT).startswith(SCOPES)]
    if not entries:
        print("check-locks: no core or relay sources in", build, file=sys.stderr)
        return 1
    failed = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for path, code, err in pool.map(check, entries):
            if code != 0:
                failed += 1
                print(err, file=sys.stderr)
    print(f"check-locks: {len(entries) - failed} of {len(entries)} sources pass "
          "clang -Wthread-safety -Werror")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
