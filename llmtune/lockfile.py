"""The tested set: the exact versions `make install` installs, and how the running interpreter differs from them.

The set lives in `constraints.txt` at the root of the checkout (shipped in the wheel as `llmtune/constraints.txt`):
one `name==version` line per package, written by `make lock` (`python -m llmtune.lockfile lock`) from a venv the
suite passed with. `compare_installed()` reads it against what is installed, for `llmtune env` and run_info.json.

Stdlib only and cheap to import: nothing here touches torch or transformers.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

# importlib.metadata, platform and subprocess are imported where used: importing this module stays cheap.

FILENAME = "constraints.txt"
# Never part of the tested set: llmtune itself and pip's own tooling (pip freeze leaves the last three out).
NOT_PINNED = frozenset({"llmtune", "pip", "setuptools", "wheel"})
# what `make install` installs (the Makefile's `-e ".[test,bench]"`): what the tested set is made of
INSTALLED = "llmtune[test,bench]"
SHOWN = 5  # differences spelled out in the one-line summary; the dict has them all

HEADER = """\
# The tested set: the exact version of every package `make install` puts into .venv (llmtune itself aside),
# the set the test suite last passed with. `make install` installs with `-c constraints.txt`, so a fresh machine
# gets these versions, not whatever is newest that day; `make install-latest` installs without this file.
#
# Made by `make lock` (= python -m llmtune.lockfile lock): `pip freeze --exclude-editable` of .venv, kept to what
# installing llmtune[test,bench] and the weight packages pulled (llmtune itself and anything installed by hand
# left out), torch at the Makefile's TORCH_VERSION. The Makefile installs torch itself (that CPU build, or the
# newest CUDA build where a GPU is present) and leaves the torch line out when it hands this file to pip.
#
# To move to newer versions, deliberately:
#   make install-latest   # rebuilds .venv from scratch with the newest of everything
#   make lock             # rewrites this file from that .venv
#   make lint test        # the suite must pass; commit this file saying why
#
# Shipped in the wheel as llmtune/constraints.txt; llmtune.lockfile.compare_installed() checks a venv against it.
"""


def normalize(name: str) -> str:
    """PEP 503 name: `PyYAML`, `pyyaml`, `huggingface_hub` and `huggingface-hub` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


class Pin(NamedTuple):
    name: str  # normalized
    version: str
    marker: str | None = None  # the text after `;`, if any
    line: int = 0


_PIN_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*"
    r"===?\s*(?P<version>[^\s;,]+)\s*(?:;\s*(?P<marker>.+?))?\s*$"
)


def parse_constraints(text: str, source: str = FILENAME) -> list[Pin]:
    """Every `name==version` line, with its marker. Comments, blank lines and pip options (`-c`, `--index-url`)
    are skipped; any other requirement (a range, a URL) is an error naming the line: a tested set is exact."""
    pins = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i]
        while line.endswith("\\") and i + 1 < len(lines):  # a continued line
            i += 1
            line = line[:-1] + lines[i]
        i += 1
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line or line.startswith("-"):
            continue
        m = _PIN_RE.match(line)
        if not m:
            raise ValueError(f"{source}:{number}: not an exact pin (name==version): {line!r}")
        pins.append(Pin(normalize(m["name"]), m["version"], m["marker"], number))
    return pins


def constraints_path() -> Path | None:
    """The constraints file: inside the installed package (a wheel), else at the root of the checkout."""
    here = Path(__file__).resolve().parent
    for path in (here / FILENAME, here.parent / FILENAME):
        if path.is_file():
            return path
    return None


def tested_set(path: Path | str | None = None) -> dict[str, str]:
    """{normalized name: version} of the tested set, pins whose marker does not hold here left out."""
    path = Path(path) if path is not None else constraints_path()
    if path is None:
        raise FileNotFoundError(f"no {FILENAME} next to the llmtune package")
    found: dict[str, str] = {}
    for pin in parse_constraints(path.read_text(encoding="utf-8"), str(path)):
        if pin.marker is None or marker_holds(pin.marker):
            found.setdefault(pin.name, pin.version)
    return found


def installed_versions() -> dict[str, str]:
    """{normalized name: version} of what this interpreter imports; the first of duplicates on sys.path wins."""
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name, version = _name_version(dist)
        if name:
            found.setdefault(normalize(name), version)
    return found


def _name_version(dist: Any) -> tuple[str | None, str]:
    """Name and Version from the metadata file's headers, read with a regex: the email parser behind
    `dist.metadata` takes ~4 ms a package, 0.35 s for a venv like ours."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    head = re.split(r"\r?\n\r?\n", text, maxsplit=1)[0]
    name = re.search(r"(?mi)^Name:[ \t]*(\S.*?)\s*$", head)
    version = re.search(r"(?mi)^Version:[ \t]*(\S.*?)\s*$", head)
    if name and version:
        return name[1], version[1]
    return dist.metadata["Name"], dist.version


def same_version(installed: str, tested: str) -> bool:
    """PEP 440 `==` for the versions pip writes: trailing `.0`s do not count, nor the installed local label
    (`2.13.0+cpu` is `2.13.0`) unless the tested version has one."""

    def key(v: str, drop_local: bool) -> tuple[tuple[int, ...], str]:
        v = v.strip().lower().removeprefix("v")
        if drop_local:
            v = v.split("+", 1)[0]
        m = re.match(r"^(\d+(?:\.\d+)*)(.*)$", v)
        if not m:
            return (), v
        release = tuple(int(p) for p in m[1].split("."))
        while len(release) > 1 and release[-1] == 0:
            release = release[:-1]
        return release, m[2]

    return key(installed, "+" not in tested) == key(tested, False)


def compare_installed(path: Path | str | None = None, installed: dict[str, str] | None = None) -> dict[str, Any]:
    """How the installed packages differ from the tested set. Never raises: a missing or unreadable
    constraints file is said in the summary.

    Returns {"constraints": path, "tested": n, "matches": bool, "differ": [{"name", "installed", "tested"}, ...],
    "extra": [{"name", "installed"}, ...] (installed, not in the tested set; not a difference), "summary": str}.
    `installed` is None where the package is missing.
    """
    path = Path(path) if path is not None else constraints_path()
    result: dict[str, Any] = {"constraints": str(path) if path else None, "tested": 0, "matches": False,
                              "differ": [], "extra": []}
    try:
        tested = tested_set(path) if path is not None else None
    except (OSError, ValueError) as e:
        result["summary"] = f"tested set unreadable ({e})"
        return result
    if tested is None:
        result["summary"] = f"no tested set ({FILENAME} not found next to the llmtune package)"
        return result
    have = installed_versions() if installed is None else {normalize(k): v for k, v in installed.items()}
    differ = [{"name": name, "installed": have.get(name), "tested": version}
              for name, version in sorted(tested.items())
              if name not in have or not same_version(have[name], version)]
    extra = [{"name": name, "installed": version} for name, version in sorted(have.items())
             if name not in tested and name not in NOT_PINNED]
    result.update(tested=len(tested), matches=not differ, differ=differ, extra=extra)
    if not differ:
        result["summary"] = f"matches the tested set ({len(tested)} packages)"
    else:
        shown = ", ".join(f"{d['name']} {d['installed'] or 'not installed'} (tested {d['tested']})"
                          for d in differ[:SHOWN])
        more = f", and {len(differ) - SHOWN} more" if len(differ) > SHOWN else ""
        n = len(differ)
        result["summary"] = (f"{n} package{'s' if n != 1 else ''} differ{'s' if n == 1 else ''} "
                             f"from the tested set: {shown}{more}")
    return result


# --- markers: enough of PEP 508 for the lines a constraints file carries -------------------------------------

_MARKER_TOKEN = re.compile(
    r"\s*(?:(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>===|==|!=|<=|>=|~=|<|>|not\s+in\b|in\b)|(?P<bool>and\b|or\b)"
    r"|(?P<paren>[()])|(?P<var>[A-Za-z_][A-Za-z0-9_.]*))"
)


def _marker_env() -> dict[str, str]:
    import platform

    impl = sys.implementation
    iv = impl.version
    impl_version = f"{iv.major}.{iv.minor}.{iv.micro}" + ("" if iv.releaselevel == "final"
                                                          else f"{iv.releaselevel[0]}{iv.serial}")
    return {
        "os_name": os.name,
        "sys_platform": sys.platform,
        "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "python_full_version": platform.python_version(),
        "implementation_name": impl.name,
        "implementation_version": impl_version,
        "extra": "",
    }


def _compare(left: str, op: str, right: str) -> bool:
    op = re.sub(r"\s+", " ", op)
    if op == "in":
        return left in right
    if op == "not in":
        return left not in right
    if op == "===" or not (_is_release(left) and _is_release(right)):
        return {"==": left == right, "===": left == right, "!=": left != right, "<": left < right,
                "<=": left <= right, ">": left > right, ">=": left >= right, "~=": left == right}[op]
    lp, rp = [int(x) for x in left.split(".")], [int(x) for x in right.split(".")]
    if op == "~=":  # ~=3.11: >=3.11 and 3.*
        prefix = max(len(rp) - 1, 1)
        return _compare(left, ">=", right) and (lp + [0] * prefix)[:prefix] == rp[:prefix]
    width = max(len(lp), len(rp))
    lv, rv = tuple(lp + [0] * (width - len(lp))), tuple(rp + [0] * (width - len(rp)))
    return {"==": lv == rv, "!=": lv != rv, "<": lv < rv, "<=": lv <= rv, ">": lv > rv, ">=": lv >= rv}[op]


def _is_release(v: str) -> bool:
    return re.fullmatch(r"\d+(?:\.\d+)*", v) is not None


def marker_holds(marker: str, env: dict[str, str] | None = None) -> bool:
    """Evaluate a PEP 508 marker (`python_version < "3.12" and sys_platform == 'linux'`). A marker this cannot
    read counts as holding: the pin is kept, and a difference is shown rather than hidden."""
    env = _marker_env() if env is None else env
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = marker.strip()
    while pos < len(text):
        m = _MARKER_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            return True
        kind = m.lastgroup or ""
        tokens.append((kind, m[kind]))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1

    def value(i: int) -> tuple[str, int]:
        kind, tok = tokens[i]
        if kind == "str":
            return tok[1:-1], i + 1
        if kind == "var" and tok in env:
            return env[tok], i + 1
        raise ValueError(tok)

    def atom(i: int) -> tuple[bool, int]:
        if tokens[i] == ("paren", "("):
            result, i = either(i + 1)
            if tokens[i] != ("paren", ")"):
                raise ValueError(")")
            return result, i + 1
        left, i = value(i)
        if tokens[i][0] != "op":
            raise ValueError(tokens[i][1])
        op = tokens[i][1]
        right, i = value(i + 1)
        return _compare(left, op, right), i

    def both(i: int) -> tuple[bool, int]:
        result, i = atom(i)
        while i < len(tokens) and tokens[i] == ("bool", "and"):
            other, i = atom(i + 1)
            result = result and other
        return result, i

    def either(i: int) -> tuple[bool, int]:
        result, i = both(i)
        while i < len(tokens) and tokens[i] == ("bool", "or"):
            other, i = both(i + 1)
            result = result or other
        return result, i

    try:
        result, end = either(0)
    except (ValueError, IndexError, KeyError, TypeError):
        return True
    return result if end == len(tokens) else True


# --- writing the file: `make lock` ----------------------------------------------------------------------------


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[([^\]]*)\])?")


def checkout_requires() -> list[str] | None:
    """llmtune's requirements as pyproject.toml in the checkout declares them now (an editable install's metadata
    is as old as its last `pip install -e`), in the form of `Distribution.requires`; None outside a checkout."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return None
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, ValueError):
        return None
    if normalize(project.get("name", "")) != "llmtune":
        return None
    requires = list(project.get("dependencies", []))
    for extra, reqs in project.get("optional-dependencies", {}).items():
        requires += [f"{r.split(';')[0].strip()}; extra == \"{extra}\"" for r in reqs]
    return requires


def _walk(roots: tuple[str, ...], no_deps: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(installed names that installing `roots` pulls, names llmtune requires here that are not installed)."""
    from importlib import metadata

    dists = {}
    for dist in metadata.distributions():
        name, _ = _name_version(dist)
        if name:
            dists.setdefault(normalize(name), dist)
    env = _marker_env()
    found = {normalize(n) for n in no_deps if normalize(n) in dists}
    missing: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = []
    for root in roots:
        m = _REQ_NAME.match(root)
        if m:
            todo.append((normalize(m[1]), frozenset(normalize(e) for e in (m[2] or "").split(",") if e.strip())))
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in dists:
            continue
        seen.add((name, extras))
        found.add(name)
        requires = (checkout_requires() if name == "llmtune" else None) or dists[name].requires or []
        for req in requires:
            spec, _, marker = req.partition(";")
            m = _REQ_NAME.match(spec)
            if not m:
                continue
            if marker.strip() and not any(marker_holds(marker, {**env, "extra": e}) for e in (extras or {""})):
                continue
            dep = normalize(m[1])
            if name == "llmtune" and dep not in dists:
                missing.add(dep)
            todo.append((dep, frozenset(normalize(e) for e in (m[2] or "").split(",") if e.strip())))
    return found, missing


def pulled_by_install(roots: tuple[str, ...] = (INSTALLED,), no_deps: tuple[str, ...] = ()) -> set[str]:
    """Normalized names of what installing `roots` pulls in this interpreter (their installed dependencies,
    markers and extras followed; llmtune's from pyproject.toml in a checkout), plus `no_deps` (installed with
    --no-deps). A package installed by hand is not in it, so `make lock` does not pin it."""
    return _walk(roots, no_deps)[0]


def render(freeze: str, torch_version: str | None = None, keep: set[str] | None = None) -> str:
    """The constraints file for `pip freeze` output: llmtune and pip's tooling left out (and, with `keep`, every
    package not in it), torch at `torch_version` (the Makefile's pin) when given, sorted by name, under HEADER."""
    pins: dict[str, str] = {}
    for pin in parse_constraints(freeze, "pip freeze"):  # raises on `name @ url`: a URL is not a tested version
        if pin.name not in NOT_PINNED and (keep is None or pin.name in keep):
            pins[pin.name] = pin.version
    raw_names = {normalize(m[1]): m[1] for m in re.finditer(r"(?m)^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==", freeze)}
    if torch_version:
        pins["torch"] = torch_version
        raw_names.setdefault("torch", "torch")
    lines = [f"{raw_names.get(name, name)}=={version}" for name, version in sorted(pins.items())]
    return HEADER + "\n" + "\n".join(lines) + "\n"


def lock(output: Path | str = FILENAME, torch_version: str | None = None, no_deps: tuple[str, ...] = ()) -> str:
    """Rewrite `output` from what installing llmtune[test,bench] (and the `no_deps` packages) pulled into this
    interpreter; returns what it did, naming the installed packages it left out as not pulled by the install."""
    import subprocess

    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout
    keep, missing = _walk((INSTALLED,), no_deps)
    if "llmtune" not in keep:
        raise RuntimeError("llmtune is not installed in this interpreter: run `make install-latest` first")
    if missing:
        raise RuntimeError(f"llmtune requires {', '.join(sorted(missing))}, not installed here: a tested set "
                           "comes from a complete install (`make install-latest`, then the suite)")
    text = render(freeze, torch_version, keep)
    Path(output).write_text(text, encoding="utf-8")
    notes = []
    left_out = sorted({p.name for p in parse_constraints(freeze, "pip freeze")} - keep - NOT_PINNED)
    if left_out:
        notes.append(f"left out, not pulled by the install: {', '.join(left_out)}")
    have = installed_versions().get("torch")
    if torch_version and have and not same_version(have, torch_version):
        notes.append(f"torch {have} installed here, pinned at TORCH_VERSION {torch_version}")
    return f"wrote {output}: {len(parse_constraints(text))} packages" + "".join(f"; {n}" for n in notes)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llmtune.lockfile", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("check", help="say how the installed packages differ from the tested set (the default)")
    p = sub.add_parser("lock", help="rewrite the constraints file from this interpreter's packages")
    p.add_argument("--output", default=FILENAME)
    p.add_argument("--torch-version", default=None, help="pin torch at this version (the Makefile's TORCH_VERSION)")
    p.add_argument("--no-deps", nargs="*", default=[], help="packages `make install` installs with --no-deps")
    args = parser.parse_args(argv)
    if args.command == "lock":
        sys.stdout.write(f"{lock(args.output, args.torch_version, tuple(args.no_deps))}\n")
        return 0
    result = compare_installed()
    sys.stdout.write(result["summary"] + "\n")
    return 0 if result["matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
