#!/usr/bin/python3
"""Every code block of README.md and docs/*.md that is C++ or Python is checked, so the docs
cannot rot:

- ```cpp blocks are compiled (g++ -fsyntax-only, C++20, against include/ and the generated
  protobuf headers): each becomes the body of a function, after the public headers; its
  #include lines go to the top. What a block uses without declaring it (the channel `ch` of a
  snippet, say) is declared by an HTML comment just before the block, invisible on the page:
  `<!-- compile-with: Channel<int> ch(ChannelConfig{}); -->`; `<!-- compile-at: namespace -->`
  puts the block at namespace scope (a type, an overload).
- ```python blocks are parsed (top-level await allowed, as in the examples of an asyncio API).
- docs/relay.md's map of the code ("Where the code is") names every file of src/relay, and
  every file it links exists.

Usage: check_docs.py SOURCE_DIR GENERATED_INCLUDE_DIR [CXX]
"""
import ast
import glob
import os
import re
import subprocess
import sys
import tempfile

BLOCK = re.compile(r"(?:<!--\s*compile-(with|at):\s*(.*?)\s*-->\s*\n)?([ \t]*)```(cpp|python)\n(.*?)```",
                   re.S)
PRELUDE = """#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sluice/broadcast.hpp"
#include "sluice/buffer.hpp"
#include "sluice/channel.hpp"
#include "sluice/client/client.hpp"
#include "sluice/client/stage_worker.hpp"
#include "sluice/dispatcher.hpp"
#include "sluice/frame_gate.hpp"
#include "sluice/priority_channel.hpp"
#include "sluice/slow_consumer.hpp"
"""


def blocks(path):
    text = open(path).read()
    for m in BLOCK.finditer(text):
        kind, arg, indent, lang, body = m.groups()
        line = text.count("\n", 0, m.start(3)) + 1
        body = "\n".join(l[len(indent):] if l.startswith(indent) else l for l in body.splitlines())
        yield line, lang, kind, arg, body


def relay_map_problems(src):
    """What docs/relay.md's map of src/relay misses, or names that is not there."""
    with open(os.path.join(src, "docs", "relay.md"), encoding="utf-8") as f:
        text = f.read()
    named = set(re.findall(r"\(\.\./src/relay/([\w./-]+)\)", text))
    actual = {n for n in os.listdir(os.path.join(src, "src", "relay")) if n != "CMakeLists.txt"}
    return ([f"docs/relay.md: the map of the code does not name src/relay/{n}"
             for n in sorted(actual - named)] +
            [f"docs/relay.md: names src/relay/{n}, which does not exist"
             for n in sorted(named - actual)])


def main():
    src, gen = sys.argv[1], sys.argv[2]
    cxx = sys.argv[3] if len(sys.argv) > 3 else "g++"
    files = [os.path.join(src, "README.md")] + sorted(glob.glob(os.path.join(src, "docs", "*.md")))
    failures = relay_map_problems(src)
    checked = {"cpp": 0, "python": 0}
    for path in files:
        name = os.path.relpath(path, src)
        includes, top, functions = [], [], []
        for line, lang, kind, arg, body in blocks(path):
            checked[lang] += 1
            if lang == "python":
                try:
                    compile(body, f"{name}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                except SyntaxError as e:
                    failures.append(f"{name}:{line}: python: {e}")
                continue
            own = [l for l in body.splitlines() if l.startswith("#include")]
            includes += own
            code = "\n".join(l for l in body.splitlines() if not l.startswith("#include"))
            tag = f"// {name}:{line}\n#line {line + 1} \"{name}\"\n"
            if kind == "at" and arg == "namespace":
                top.append(tag + code)
            else:
                context = arg if kind == "with" else ""
                functions.append(f"[[maybe_unused]] void block_{line}() {{\n{context}\n{tag}{code}\n}}")
        if not top and not functions:
            continue
        unit = (PRELUDE + "\n".join(dict.fromkeys(includes)) +
                "\nusing namespace sluice;\nusing namespace std::chrono_literals;\n" +
                "\n".join(top) + "\n" + "\n".join(functions) + "\nint main() {}\n")
        with tempfile.NamedTemporaryFile("w", suffix=".cpp", delete=False) as f:
            f.write(unit)
        r = subprocess.run([cxx, "-std=c++20", "-fsyntax-only", "-Wno-unused", "-Wno-unused-result",
                            f"-I{src}/include", f"-I{gen}", f.name], capture_output=True, text=True)
        os.unlink(f.name)
        if r.returncode != 0:
            failures.append(f"{name}: C++ blocks do not compile:\n{r.stderr[:3000]}")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"docs ok: {checked['cpp']} C++ blocks compiled, {checked['python']} Python blocks parsed")


if __name__ == "__main__":
    main()
