"""The run folder on disk: what a finished run and a complete checkpoint look like, written atomically.

A checkpoint or the final output is written into a `.tmp-*` folder and renamed into place with a marker file
only when complete, so a SIGKILL at any moment leaves at worst a temporary folder that resume ignores.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune.errors import LlmtuneError

if TYPE_CHECKING:
    from llmtune.tasks import LoadedRun

MARKER = "COMPLETE"  # in a checkpoint folder, and in the run folder once the final outputs are in place
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
OWN_FILES = {"recipe.yaml", "log.jsonl", "run_info.json"}
INFO_FILE = "llmtune_info.json"


def is_finished(output_dir: Path) -> bool:
    return (output_dir / MARKER).exists()


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. Folders without the marker are partial and ignored."""
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / MARKER).exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def clean_partial(output_dir: Path) -> None:
    if output_dir.is_dir():
        for p in output_dir.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def commit_dir(tmp: Path, final: Path) -> None:
    """Mark `tmp` complete and move it to `final` (replacing an older folder of that name)."""
    (tmp / MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def rotate_checkpoints(output_dir: Path, limit: int | None, keep_step: int | None) -> None:
    if limit is None:
        return
    ckpts = checkpoints(output_dir)
    removable = [(s, p) for s, p in ckpts if s != keep_step]
    excess = len(ckpts) - limit
    for _, p in removable[: max(0, excess)]:
        shutil.rmtree(p, ignore_errors=True)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def git_hash() -> str | None:
    """The llmtune checkout's commit (with -dirty), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("llmtune", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_info(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from llmtune.lockfile import compare_installed

    return {
        "command": " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)),
        "git_hash": git_hash(),
        "versions": versions(),
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # whether this venv is the set of versions the test suite last passed with (constraints.txt)
        "installed_set": compare_installed()["summary"],
        **(extra or {}),
    }


def plot_loss(log_rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in log_rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log_rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_card(recipe_yaml: str, results: dict[str, Any], info: dict[str, Any], task: str, model_name: str,
               adapter: bool = False) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items())
    load = ("a PEFT adapter: load it with `PeftModel.from_pretrained(base, this_folder)`, or merge it with "
            "`llmtune merge`" if adapter else "load it with `from_pretrained` on this folder")
    return f"""---
library_name: {"peft" if adapter else "transformers"}
tags: [llmtune, {task}]
base_model: {model_name}
---

# {model_name} fine-tuned with llmtune ({task})

Trained with `{info.get("command", "llmtune finetune")}`.
llmtune commit `{info.get("git_hash")}`; versions: {", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())}.

## Results

| metric | value |
|---|---|
{rows}

## Recipe

```yaml
{recipe_yaml}```

This is {load}; `llmtune predict` and `llmtune eval --model` take the folder as it is.
"""


# ---- the output folder: what llmtune may touch there ------------------------------------------------------

MANIFEST = "llmtune_files.json"  # the names write_final moved into the run folder
LOCK = ".llmtune.lock"
# what a run folder written before the manifest existed holds besides OWN_FILES: the final files and the folders
# llmtune's own commands write into it
LEGACY_FINAL = re.compile(r"^(model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|adapter_model\.safetensors|"
                          r"adapter_config\.json|config\.json|generation_config\.json|tokenizer(_config)?\.json|"
                          r"special_tokens_map\.json|vocab\.(txt|json)|merges\.txt|spiece\.model|sentencepiece\.bpe\.model|"
                          r"source\.spm|target\.spm|added_tokens\.json|chat_template\.(jinja|json)|"
                          r"(train|eval|all)_results\.json|predictions\.jsonl|llmtune_info\.json|loss\.png|"
                          r"README\.md|COMPLETE|logs|mlruns|eval-[\w.-]+)$")


def _written_by_llmtune(output_dir: Path) -> set[str]:
    names = set(OWN_FILES) | {MARKER, MANIFEST, LOCK}
    manifest = output_dir / MANIFEST
    if manifest.is_file():
        try:
            names |= set(json.loads(manifest.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError):
            pass
    return names


def foreign_entries(output_dir: Path) -> list[str]:
    """Entries of an llmtune run folder that llmtune did not write there (a user's notes, data, a recipe)."""
    ours = _written_by_llmtune(output_dir)
    legacy = not (output_dir / MANIFEST).is_file()
    out = []
    for p in sorted(output_dir.iterdir()):
        n = p.name
        if n in ours or CHECKPOINT_RE.match(n) or n.startswith(".tmp-") or (legacy and LEGACY_FINAL.match(n)):
            continue
        out.append(n)
    return out


def refuse_special_output(path_text: str | None, recipe_source: str | None, key: str = "train.output_dir") -> None:
    """Folders no run may be written into (and so never emptied): '', '.', '/', the home folder, the folder
    the recipe itself is in, and any folder the current directory lies inside."""
    if path_text is not None and not str(path_text).strip():
        raise LlmtuneError(f"{key}: is empty; name a folder for the run (e.g. runs/my-run)")
    if path_text is None:
        return
    p = Path(path_text).expanduser().resolve()
    cwd = Path.cwd().resolve()
    special = {Path("/"): "the root folder", Path.home().resolve(): "your home folder"}
    if p in special:
        raise LlmtuneError(f"{key} {path_text}: is {special[p]}; a run needs a folder of its own (e.g. runs/my-run)")
    if p == cwd or p in cwd.parents:
        raise LlmtuneError(f"{key} {path_text}: is the current folder (or holds it); a run needs a folder of its "
                           "own (e.g. runs/my-run)")
    if recipe_source and Path(recipe_source).is_file() and p == Path(recipe_source).resolve().parent:
        raise LlmtuneError(f"{key} {path_text}: is the folder the recipe is in; a run needs a folder of its own "
                           "(e.g. runs/my-run)")


def check_output_dir(output_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a finished run (unless overwriting) and a folder holding anything llmtune did not write. Writes
    and removes nothing: clearing for an overwrite happens later (clear_previous_run), once the new run's recipe,
    model and data have all been validated."""
    if output_dir.exists() and not output_dir.is_dir():
        raise LlmtuneError(f"train.output_dir {output_dir}: exists and is a file")
    if not output_dir.exists():
        return
    entries = list(output_dir.iterdir())
    if not entries:
        return
    marks = OWN_FILES | {LOCK, MANIFEST, MARKER}
    ours = any(p.name in marks or CHECKPOINT_RE.match(p.name) or p.name.startswith(".tmp-") for p in entries)
    if not ours:
        raise LlmtuneError(f"train.output_dir {output_dir}: the folder is not empty and holds no llmtune run; "
                           "choose another output_dir")
    if is_finished(output_dir) and not overwrite:
        raise LlmtuneError(f"train.output_dir {output_dir}: already holds a finished run; set "
                           "train.overwrite_output_dir=true to replace it, or choose another train.output_dir")
    if overwrite and not resume:
        foreign = foreign_entries(output_dir)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise LlmtuneError(f"train.output_dir {output_dir}: holds files llmtune did not write ({shown}); "
                               "train.overwrite_output_dir removes only a previous run's files, so move them or "
                               "choose another output_dir")


def clear_previous_run(output_dir: Path) -> None:
    """Remove what a previous llmtune run wrote in `output_dir` (check_output_dir has refused anything else)."""
    if not output_dir.is_dir():
        return
    foreign = set(foreign_entries(output_dir))
    for p in output_dir.iterdir():
        if p.name in foreign or p.name == LOCK:
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _run_file(path: Path) -> bool:
    """Whether `path` is a file of a finished (or started) llmtune run: never a command's output."""
    folder = path.parent
    if not ((folder / MARKER).is_file() or (folder / INFO_FILE).is_file() or (folder / "run_info.json").is_file()):
        return False
    return path.name in _written_by_llmtune(folder) or bool(LEGACY_FINAL.match(path.name))


def check_output_file(output: Path | None, inputs: list[Path | None], what: str = "--output") -> None:
    """Refuse an output file that is a folder, one of the command's own inputs, or a file of a run folder,
    before anything is computed; its missing parent folders are made when it is written."""
    if output is None:
        return
    if output.is_dir():
        raise LlmtuneError(f"{what} {output}: is a folder; give a file name")
    target = output.expanduser().resolve()
    for p in inputs:
        if p is not None and Path(p).expanduser().exists() and Path(p).expanduser().resolve() == target:
            raise LlmtuneError(f"{what} {output}: is one of this command's input files; write elsewhere")
    if output.exists() and _run_file(target):
        raise LlmtuneError(f"{what} {output}: is a file of the run in {output.parent}; write elsewhere")
    if output.parent.exists() and not output.parent.is_dir():
        raise LlmtuneError(f"{what} {output}: {output.parent} is a file, not a folder")


def check_output_folder(folder: Path, what: str = "--output-dir") -> None:
    """An evaluation's own folder: never a run folder itself (its predictions.jsonl is the run's)."""
    if folder.exists() and not folder.is_dir():
        raise LlmtuneError(f"{what} {folder}: exists and is a file")
    if folder.is_dir() and ((folder / MARKER).is_file() or (folder / INFO_FILE).is_file()):
        raise LlmtuneError(f"{what} {folder}: is a run folder; its predictions.jsonl would be replaced. Leave "
                           f"{what} out (results go to RUN/eval-SPLIT) or choose another folder")


class OutputLock:
    """One writer per output folder: a lock file holding the owner's pid and host. A second run exits 2 naming
    the first; a lock left by a killed process (same host, pid gone) is taken over. The folders created to hold
    the lock are removed again if the run fails before writing anything else."""

    def __init__(self, output_dir: Path) -> None:
        self.dir = output_dir
        self.path = output_dir / LOCK
        self.created: list[Path] = []
        self.held = False

    def acquire(self) -> None:
        import socket

        missing = []
        p = self.dir
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LlmtuneError(f"train.output_dir {self.dir}: cannot create it ({e.strerror or e})") from None
        self.created = missing
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and self._alive(owner, me["host"]):
                    self.release()
                    raise LlmtuneError(f"train.output_dir {self.dir}: in use by another llmtune run (pid "
                                       f"{owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}); "
                                       "wait for it to finish or choose another output_dir") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as e:
                self.release()
                raise LlmtuneError(f"train.output_dir {self.dir}: cannot write there ({e.strerror or e})") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        self.release()
        raise LlmtuneError(f"train.output_dir {self.dir}: could not take the lock {self.path}")

    def _owner(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path.read_text(encoding="utf-8"))
            return value if isinstance(value, dict) else None
        except (OSError, json.JSONDecodeError):
            return None  # half-written or unreadable: treated as stale

    @staticmethod
    def _alive(owner: dict[str, Any], host: str) -> bool:
        if owner.get("host") != host:
            return True  # another machine's process: cannot tell, so never steal it
        try:
            os.kill(int(owner.get("pid", -1)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, TypeError, OverflowError):
            return True
        return True

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        for p in self.created:  # only folders this run created, and only while they are still empty
            try:
                p.rmdir()
            except OSError:
                break
        self.created = []


# ---- loading a run folder ---------------------------------------------------------------------------------


def _read_json_file(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        raise LlmtuneError(f"{path}: unreadable {what} ({type(e).__name__}); the folder is damaged") from None
    if not isinstance(value, dict):
        raise LlmtuneError(f"{path}: unreadable {what} (not a JSON object); the folder is damaged")
    return value


def run_task(path: Path) -> tuple[str, dict[str, Any]]:
    """(task, saved info) of a run folder from llmtune_info.json; for a plain model folder (a merged model,
    any from_pretrained folder) the task whose model its config.json describes, and no info."""
    from llmtune import tasks

    if not path.is_dir():
        raise LlmtuneError(f"{path}: not a folder; expected a run folder written by llmtune finetune")
    if (path / INFO_FILE).is_file():
        saved = _read_json_file(path / INFO_FILE, "run information")
        task = saved.get("task")
        if task not in tasks.TASKS:
            raise LlmtuneError(f"{path / INFO_FILE}: task {task!r} is not one this llmtune knows "
                               f"({', '.join(tasks.TASKS)}); the run needs another llmtune version")
        return str(task), saved
    if (path / "adapter_config.json").is_file():
        adapter = _read_json_file(path / "adapter_config.json", "adapter config")
        for name in tasks.TASKS:
            if tasks.get(name).PEFT_TASK_TYPE == adapter.get("task_type"):
                return name, {}
        raise LlmtuneError(f"{path}: a PEFT adapter of type {adapter.get('task_type')!r}, which no llmtune task trains")
    if not (path / "config.json").is_file():
        raise LlmtuneError(f"{path}: not a run or model folder (no {INFO_FILE} or config.json)")
    task = tasks.recognize_folder(path) or tasks.recognize(_read_json_file(path / "config.json", "model config"))
    if task is None:
        raise LlmtuneError(f"{path}: config.json describes no model an llmtune task uses")
    return task, {}


def default_eval_dir(model: str, name: str) -> Path:
    """Where `llmtune eval --model M` writes without --output-dir: inside M when M is an llmtune run folder
    (RUN/eval-SPLIT, beside the run's own eval), else runs/NAME. A model folder llmtune did not write (a download,
    the user's own export) gets nothing added to it."""
    p = Path(model).expanduser()
    if p.is_dir() and any((p / f).is_file() for f in (INFO_FILE, MANIFEST, "run_info.json")):
        return p / name
    return Path("runs") / name


def load_run(path: Path | str, overrides: list[str] | None = None, recipe: Any = None) -> LoadedRun:
    """A run folder (or a plain model folder) ready to use: task, resolved recipe (with `section.key=value`
    overrides, or the `recipe` given), the task's info, model (eval mode, loaded on first use) and tokenizer.
    The one loader that predict, eval, generate and merge use."""
    from llmtune import tasks
    from llmtune.recipe import load_recipe

    path = Path(path).expanduser()
    task, saved = run_task(path)
    module = tasks.get(task)
    if recipe is None and (path / "recipe.yaml").is_file():
        recipe = load_recipe(path / "recipe.yaml", list(overrides or []))
    info = module.Info.from_json(saved) if saved else None  # type: ignore[attr-defined]
    if info is None and hasattr(module, "info_from_config") and (path / "config.json").is_file():
        info = module.info_from_config(_read_json_file(path / "config.json", "model config"), str(path))

    def load() -> tuple[Any, Any]:
        try:
            model, tokenizer = module.load_trained(path, recipe, info)
        except LlmtuneError:
            raise
        except Exception as e:  # transformers/peft/safetensors raise many types for a folder they cannot read
            from llmtune.models import damaged_weights

            damaged = damaged_weights(path, e)
            if damaged is not None:
                raise damaged from e
            raise LlmtuneError(f"{path}: could not load the model: {str(e).strip().splitlines()[0][:200]}") from e
        model.eval()
        return model, tokenizer

    return tasks.LoadedRun(path=path, task=task, recipe=recipe, info=info,
                           adapter=(path / "adapter_config.json").is_file(), load=load)
