"""The `llmtune` command line: a thin dispatch table. Each command parses, loads the recipe, calls one function."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmtune.benchmark import WORKLOADS as BENCH_WORKLOADS  # a tuple of names: imports nothing heavy
from llmtune.errors import LlmtuneError

app = typer.Typer(
    help="Fine-tune and evaluate Hugging Face models from a YAML recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipes_app = typer.Typer(help="List, show and copy the built-in recipes.", invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")

console = Console()
err_console = Console(stderr=True)
DEBUG = {"on": False}

Overrides = Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.learning_rate=3e-5")]


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if DEBUG["on"]:
        return
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("transformers", "datasets", "accelerate", "peft", "torch", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        import huggingface_hub

        # offline, each hub request logs "Retrying in 1s [Retry 1/5]" before llmtune's one-line message
        huggingface_hub.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        # datasets logs a parser's failure before raising it; llmtune reports it once, on one line
        datasets.utils.logging.set_verbosity(logging.CRITICAL)
        datasets.disable_progress_bars()
        # the GGUF reader draws its own tqdm bar ("Converting and de-quantizing GGUF tensors") in the middle of
        # llmtune's output, not through transformers' progress-bar switch
        import functools

        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        if not isinstance(gguf_utils.tqdm, functools.partial):
            gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
    except ImportError:
        pass


def handle_errors(fn: Any) -> Any:
    """User errors become one red line and exit code 2; --debug shows the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _quiet_libraries()
            return fn(*args, **kwargs)
        except LlmtuneError as e:
            if DEBUG["on"]:
                raise
            from llmtune.errors import Interrupted

            if os.environ.get("RANK", "0") != "0":  # under a launcher the main process says it, once
                raise typer.Exit(130 if isinstance(e, Interrupted) else 2) from None
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(130 if isinstance(e, Interrupted) else 2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:
            if DEBUG["on"]:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            if os.environ.get("RANK", "0") != "0":  # the main process (or, if it was first, the launcher) says it
                raise typer.Exit(1) from None
            err_console.print(f"[bold red]internal error:[/] {type(e).__name__}: {escape(first)} "
                              "(run with --debug for the traceback)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and library logs.")] = False) -> None:
    DEBUG["on"] = debug


def _load(recipe: str, overrides: list[str] | None) -> Any:
    from llmtune.recipe import find_recipe, load_recipe

    return load_recipe(find_recipe(recipe), overrides or [])


@app.command()
@handle_errors
def finetune(
    recipe: Annotated[str, typer.Argument(help="Recipe file, or the name of a built-in recipe (llmtune recipes).")],
    overrides: Overrides = None,
    num_processes: Annotated[int, typer.Option("--num-processes", help="Launch N processes with accelerate.")] = 1,
) -> None:
    """Train a model from a recipe, evaluate during and after training, and write the run folder."""
    if num_processes < 1:
        raise LlmtuneError(f"--num-processes must be at least 1, got {num_processes}")
    if num_processes > 1 and "LOCAL_RANK" not in os.environ:
        from llmtune.launch import launch
        from llmtune.validate import check_data

        check_data(_load(recipe, overrides))  # a bad recipe or data row is said once, here, not by every process

        raise typer.Exit(launch(["finetune", recipe, *(overrides or [])], num_processes, debug=DEBUG["on"]))
    if "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1":
        from llmtune.launch import processes_asked_of_launcher

        asked = processes_asked_of_launcher()
        if asked is not None and asked > 1:
            raise LlmtuneError(f"accelerate launch was asked for {asked} processes but started 1 (without GPUs it "
                               f"starts one); use llmtune finetune {recipe} --num-processes {asked}")
    r = _load(recipe, overrides)
    from llmtune.train import finetune as run

    results = run(r, report=lambda message: console.print(message, markup=False, highlight=False))
    if "LOCAL_RANK" not in os.environ or os.environ.get("LOCAL_RANK") == "0":
        _print_results(results, title=f"{r.task} — {r.train.output_dir}")
        console.print(f"run folder: [bold]{r.train.output_dir}[/]")


def _print_results(results: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in results.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)


@app.command()
@handle_errors
def validate(
    recipe: Annotated[str, typer.Argument(help="Recipe file or built-in recipe name.")],
    overrides: Overrides = None,
) -> None:
    """Check a recipe and its data columns without training; print the resolved recipe."""
    r = _load(recipe, overrides)
    from llmtune.validate import check_data

    summary = check_data(r)
    from rich.syntax import Syntax

    console.print(Syntax(r.to_yaml(), "yaml", theme="ansi_dark", background_color="default"))
    for line in summary:
        console.print(f"[green]ok[/] {line}")


@recipes_app.callback()
def recipes_list(ctx: typer.Context) -> None:
    """List the built-in recipes with one-line descriptions."""
    if ctx.invoked_subcommand is not None:
        return
    from llmtune.recipe import builtin_recipes, describe_recipe

    table = Table(title="built-in recipes (llmtune recipes show NAME / copy NAME DEST)")
    table.add_column("name")
    table.add_column("description")
    for path in builtin_recipes():
        table.add_row(path.stem, describe_recipe(path))
    console.print(table)


@recipes_app.command("show")
@handle_errors
def recipes_show(name: Annotated[str, typer.Argument(help="Built-in recipe name.")]) -> None:
    """Print a built-in recipe."""
    from llmtune.recipe import builtin_recipe

    sys.stdout.write(builtin_recipe(name).read_text(encoding="utf-8"))


@recipes_app.command("copy")
@handle_errors
def recipes_copy(
    name: Annotated[str, typer.Argument(help="Built-in recipe name.")],
    dest: Annotated[Path, typer.Argument(help="Destination file or folder.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Copy a built-in recipe to edit it."""
    from llmtune.recipe import builtin_recipe

    src = builtin_recipe(name)
    target = dest / src.name if dest.is_dir() else dest
    if target.exists() and not force:
        raise LlmtuneError(f"{target}: already exists; use --force to overwrite it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    except OSError as e:
        raise LlmtuneError(f"{target}: cannot write it ({e.strerror or e})") from e
    console.print(f"copied {name} to {target}")


@app.command()
@handle_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder (or a model folder).")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Texts: .txt (one per line), .jsonl, .json, .csv, .tsv")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write JSONL here instead of stdout.")] = None,
    field: Annotated[str | None, typer.Option("--field", help="Text field/column of the input file.")] = None,
    pair_field: Annotated[str | None, typer.Option("--pair-field", help="Second text field for sentence pairs.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="generation.key=value, repeatable")] = None,
) -> None:
    """Predict labels (with probabilities) or generate outputs for new inputs with a trained run."""
    from llmtune.inference import predict_file
    from llmtune.runs import check_output_file

    check_output_file(output, [input])

    rows = predict_file(run_dir, input, field=field, pair_field=pair_field, batch_size=batch_size,
                        overrides=overrides or [])
    _emit_jsonl(rows, output, "predictions")


def _emit_jsonl(rows: list[dict[str, Any]], output: Path | None, what: str) -> None:
    """JSON lines to a file (with a note on the console) or to stdout, for piping."""
    import json

    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("\n".join(lines) + "\n", encoding="utf-8")
        console.print(f"wrote {len(rows)} {what} to {output}")
    else:
        sys.stdout.write("\n".join(lines) + "\n")


@app.command()
@handle_errors
def env() -> None:
    """Versions of Python, torch, transformers, peft, accelerate, datasets, and the device."""
    from llmtune import hardware
    from llmtune.runs import git_hash, versions

    table = Table(title="llmtune environment", show_header=False)
    table.add_column("")
    table.add_column("")
    for k, v in versions().items():
        table.add_row(k, v)
    table.add_row("device", hardware.device_description())
    table.add_row("native bf16", hardware.native_bf16() or "no (mixed_precision auto trains in fp32)")
    table.add_row("CPU allocator", hardware.cpu_allocator())
    table.add_row("git", str(git_hash()))
    from llmtune.lockfile import compare_installed

    table.add_row("installed set", compare_installed()["summary"])
    console.print(table)


@app.command("eval")
@handle_errors
def eval_(
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="rouge, bleu, chrf, ter, accuracy, f1, "
                                                     "exact_match, seqeval, squad, perplexity; repeat or comma-separate")] = None,
    predictions: Annotated[Path | None, typer.Option("--predictions", "-p", help="Predictions file to score.")] = None,
    references: Annotated[list[Path] | None, typer.Option("--references", "-r", help="References file(s); repeat "
                                                          "for parallel reference files")] = None,
    prediction_field: Annotated[str | None, typer.Option("--prediction-field")] = None,
    reference_field: Annotated[str | None, typer.Option("--reference-field")] = None,
    compare: Annotated[Path | None, typer.Option("--compare", help="Second predictions file: paired bootstrap "
                                                 "test against --predictions")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON results here.")] = None,
    no_stemmer: Annotated[bool, typer.Option("--no-stemmer", help="ROUGE without Porter stemming.")] = False,
    tokenize: Annotated[str | None, typer.Option("--tokenize", help="sacreBLEU tokenizer: 13a, intl, zh, char, "
                                                 "none, ...")] = None,
    ignore_case: Annotated[bool, typer.Option("--ignore-case", help="exact_match: ignore case.")] = False,
    ignore_punctuation: Annotated[bool, typer.Option("--ignore-punctuation", help="exact_match: ignore "
                                                     "punctuation.")] = False,
    scheme: Annotated[str | None, typer.Option("--scheme", help="seqeval: strict mode with this tagging scheme "
                                               "(IOB2, IOBES, ...); default: seqeval's lenient mode")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for 95% intervals "
                                           "(0: none).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap and of few-shot draws.")] = 0,
    model: Annotated[str | None, typer.Option("--model", help="A run folder, model folder or decoder to "
                                              "evaluate on a dataset.")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="Recipe (file, built-in name or run folder) "
                                               "giving the task and data; default: the run's own.")] = None,
    split: Annotated[str, typer.Option("--split", help="eval (validation), test or train.")] = "eval",
    shots: Annotated[str | None, typer.Option("--shots", help="Prompt --model (a decoder) with K examples; "
                                              "several: 0,1,5")] = None,
    prompt_format: Annotated[str | None, typer.Option("--prompt-format", help="plain or chat. --shots: chat when "
                                                      "the model has a chat template; --task: plain, as "
                                                      "lm-eval")] = None,
    finetuned: Annotated[list[str] | None, typer.Option("--finetuned", help="Also evaluate this fine-tuned run "
                                                        "on the same split, side by side; repeatable")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Where results.json and "
                                                    "predictions.jsonl go (model evaluation).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Recipe override section.key=value, "
                                                        "repeatable")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    task: Annotated[list[Path] | None, typer.Option("--task", help="An lm-eval multiple-choice task YAML (paths "
                                                    "in it are relative to its folder): acc, acc_norm as "
                                                    "lm-eval 0.4; repeatable")] = None,
    num_fewshot: Annotated[int | None, typer.Option("--num-fewshot", help="--task: few-shot examples (default: "
                                                    "the task file's num_fewshot)")] = None,
    log_samples: Annotated[bool, typer.Option("--log-samples", help="--task: also write samples_<task>.jsonl "
                                              "(prompts, log-likelihoods, is_greedy, acc)")] = False,
    text: Annotated[Path | None, typer.Option("--text", help="--metric perplexity: a .txt file (one document) or "
                                              ".jsonl/.json/.csv/.parquet (a document per row)")] = None,
    text_field: Annotated[str | None, typer.Option("--text-field", help="--text: the column holding the "
                                                   "documents (default: text)")] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="--text: score each window's last N new tokens "
                                               "(default: --max-length, lm-eval's disjoint windows)")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="--text: window length in tokens "
                                                   "(default: the model's maximum)")] = None,
) -> None:
    """Score prediction files against references, or evaluate a model (fine-tuned, or zero/few-shot) on a dataset."""
    names = [m.strip() for item in (metric or []) for m in item.split(",") if m.strip()]
    from llmtune import evaluation

    if task or text is not None:
        if predictions is not None:
            raise LlmtuneError("--task and --text score a --model, not a --predictions file: give one or the other")
        if shots or recipe:
            raise LlmtuneError(f"{'--shots' if shots else '--recipe'} evaluates a recipe's data; --task and --text "
                               "bring their own (leave it out)")
        if text is not None and prompt_format is not None:
            raise LlmtuneError(f"--prompt-format {prompt_format}: applies to --task and --shots prompts, not to "
                               "--text")
        _eval_lm(model, names, task or [], text, text_field, stride, max_length, num_fewshot, prompt_format,
                 finetuned or [], log_samples, batch_size, bootstrap, seed, output_dir, output)
        return
    if log_samples:
        raise LlmtuneError("--log-samples writes the per-sample records of --task multiple-choice scoring; "
                           "predictions.jsonl already holds them for this evaluation")
    if predictions is not None:
        if model is not None:
            raise LlmtuneError("give either --predictions/--references (score files) or --model (evaluate a model)")
        if not references:
            raise LlmtuneError("--predictions needs --references")
        if not names:
            raise LlmtuneError("name at least one --metric (rouge, bleu, chrf, ter, accuracy, f1, exact_match, "
                               "seqeval, squad)")
        if "perplexity" in names:
            raise LlmtuneError("--metric perplexity needs a model: use --model RUN --recipe RECIPE")
        options: dict[str, dict[str, Any]] = {}
        if no_stemmer and "rouge" in names:
            options["rouge"] = {"use_stemmer": False}
        if tokenize and "bleu" in names:
            options["bleu"] = {"tokenize": tokenize}
        if (ignore_case or ignore_punctuation) and "exact_match" in names:
            options["exact_match"] = {"ignore_case": ignore_case, "ignore_punctuation": ignore_punctuation}
        if scheme and "seqeval" in names:
            options["seqeval"] = {"scheme": scheme.upper()}
        from llmtune.runs import check_output_file

        check_output_file(output, [predictions, *references, compare])
        res = evaluation.score_prediction_files(predictions, references, names, prediction_field, reference_field,
                                                options, bootstrap, seed, compare, output)
        _print_scores(res["results"], title=f"{predictions} ({res['n_samples']} examples)")
        for name, sig in res["signatures"].items():
            if name in ("bleu", "chrf", "ter"):
                console.print(f"[dim]{name} signature: {sig}[/]", highlight=False)
        if res["comparison"]:
            _print_comparison(res["comparison"], str(predictions), str(compare))
        if output:
            console.print(f"wrote {output}")
        return
    if model is None:
        raise LlmtuneError("give --predictions and --references to score files, or --model to evaluate a model")
    shot_list = None
    if shots:
        try:
            shot_list = [int(x) for x in shots.split(",") if x.strip()]
        except ValueError:
            raise LlmtuneError(f"--shots {shots}: expected integers such as 0,1,5") from None
        if any(k < 0 for k in shot_list):
            raise LlmtuneError(f"--shots {shots}: the number of examples cannot be negative")
    from llmtune.runs import check_output_file, check_output_folder

    check_output_file(output, [Path(model), *(Path(f) for f in finetuned or [])])
    if output_dir is not None:
        check_output_folder(output_dir)
    res = evaluation.run_eval(model, recipe, overrides or [], split, names or None, shot_list, finetuned or [],
                              bootstrap, seed, output_dir, batch_size, prompt_format=prompt_format)
    _print_settings(res["results"], title=f"{res['config']['task']} on the {split} split ({res['n_samples']} examples)")
    console.print(f"wrote {res['output_dir']}/results.json and predictions.jsonl")
    if output:  # -o works for a model too: a copy of results.json where the user asked for it
        from llmtune import runs

        output.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(output, {k: v for k, v in res.items() if k != "output_dir"})
        console.print(f"wrote {output}")


def _eval_lm(model: str | None, names: list[str], task_files: list[Path], text: Path | None, text_field: str | None,
             stride: int | None, max_length: int | None, num_fewshot: int | None, prompt_format: str | None,
             finetuned: list[str], log_samples: bool, batch_size: int, bootstrap: int, seed: int,
             output_dir: Path | None, output: Path | None) -> None:
    """--task (multiple choice) and --metric perplexity --text, as lm-evaluation-harness computes them."""
    from llmtune import lmeval_cmd, runs

    if model is None:
        raise LlmtuneError("--task and --text need --model (an alias, a model folder or a run)")
    if task_files and text is not None:
        raise LlmtuneError("give --task (multiple choice) or --metric perplexity --text, not both")
    if text is not None and names not in ([], ["perplexity"]):
        raise LlmtuneError("--text is scored with --metric perplexity (and no other metric)")
    if task_files and names:
        raise LlmtuneError("--task computes the task file's metric_list (acc, acc_norm); leave --metric out")
    runs.check_output_file(output, [Path(model), *task_files, *([text] if text else []), *map(Path, finetuned)])
    if output_dir is not None:
        runs.check_output_folder(output_dir)
    if text is not None:
        if finetuned:
            raise LlmtuneError("--finetuned goes with --task; score each model's perplexity with its own --model")
        res = lmeval_cmd.run_perplexity(model, text, text_field, stride, max_length, batch_size, bootstrap, seed,
                                        output_dir)
        cfg = res["config"]
        what = "pseudo-perplexity" if cfg["masked_lm"] else "perplexity"
        _print_scores(res["perplexity"], title=f"{what} of {text} ({res['totals']['tokens']} tokens, "
                      f"{len(res['documents'])} documents; max length {cfg['max_length']}, "
                      f"stride {cfg['stride'] or cfg['max_length']})")
    else:
        res = lmeval_cmd.run_tasks(model, task_files, finetuned, num_fewshot, prompt_format, batch_size, bootstrap,
                                   seed, output_dir, log_samples)
        _print_tasks(res)
    console.print(f"wrote {res['output_dir']}/results.json")
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(output, {k: v for k, v in res.items() if k not in ("output_dir", "written")})
        console.print(f"wrote {output}")


def _print_tasks(res: dict[str, Any]) -> None:
    cfg = res["config"]
    table = Table(title=f"multiple choice, {cfg['prompt_format']} prompts (value ± stderr [95% CI])")
    table.add_column("task")
    table.add_column("n", justify="right")
    table.add_column("shots", justify="right")
    settings = res["settings"]
    metrics = list(dict.fromkeys(k for s in settings.values() for t in s.values() for k in t))
    for s in settings:
        for m in metrics:
            table.add_column(f"{m} {s}", justify="right")
    for name in res["results"]:
        cells = []
        for s in settings:
            for m in metrics:
                r = settings[s][name].get(m)
                if r is None:
                    cells.append("")
                    continue
                cell = _fmt(r["value"]) + (f" ± {_fmt(r['stderr'])}" if r["stderr"] is not None else "")
                if r.get("ci_low") is not None:
                    cell += f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
                cells.append(cell)
        table.add_row(name, str(res["n-samples"][name]["effective"]), str(res["n-shot"][name]), *cells)
    console.print(table)


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.4f}"


def _print_scores(results: dict[str, dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for col in ("metric", "value", "95% CI", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, r in results.items():
        ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if r.get("ci_low") is not None else "—"
        table.add_row(key, _fmt(r["value"]), ci, str(r["n"]))
    console.print(table)


def _print_comparison(comparison: dict[str, dict[str, Any]], a: str, b: str) -> None:
    table = Table(title=f"paired bootstrap: {b} vs {a}")
    for col in ("metric", "a", "b", "b - a", "p-value"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, r in comparison.items():
        table.add_row(key, _fmt(r["a"]), _fmt(r["b"]), _fmt(r["diff"]), _fmt(r["p_value"]))
    console.print(table)


def _print_settings(results: dict[str, dict[str, dict[str, Any]]], title: str) -> None:
    settings = list(results)
    keys = list(dict.fromkeys(k for s in settings for k in results[s]))
    table = Table(title=title)
    table.add_column("metric")
    for s in settings:
        table.add_column(s, justify="right")
    for key in keys:
        cells = []
        for s in settings:
            r = results[s].get(key)
            if r is None:
                cells.append("")
            elif r.get("ci_low") is not None:
                cells.append(f"{_fmt(r['value'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]")
            else:
                cells.append(_fmt(r["value"]))
        table.add_row(key, *cells)
    console.print(table)


def run() -> None:
    """The console script. `--debug` is accepted anywhere on the line (it belongs before the command); a usage
    error (unknown option, a value of the wrong type) is one line and exit code 2, like every other user error."""
    try:  # typer >= 0.20 carries its own copy of click; older ones use click itself
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors

    from llmtune.hardware import tune_cpu_allocator

    tune_cpu_allocator()  # before anything imports torch
    argv = sys.argv[1:]
    if "--debug" in argv[1:]:
        argv = ["--debug", *[a for a in argv if a != "--debug"]]
    try:
        code = app(args=argv, prog_name="llmtune", standalone_mode=False)
    except click_errors.UsageError as e:
        no_args = getattr(click_errors, "NoArgsIsHelpError", None)
        if no_args is not None and isinstance(e, no_args):  # `llmtune` alone: the help, as before
            e.show()
            sys.exit(0)
        hint = f" (see llmtune {e.ctx.command_path.split(' ', 1)[-1]} --help)" if e.ctx and " " in e.ctx.command_path \
            else " (see llmtune --help)"
        err_console.print(f"[bold red]error:[/] {escape(e.format_message())}{hint}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click_errors.Abort:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


@app.command()
@handle_errors
def merge(
    run_dir: Annotated[Path, typer.Argument(help="A finished LoRA run folder (adapter_config.json + recipe.yaml).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the merged from_pretrained model.")],
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --output folder.")] = False,
) -> None:
    """Merge a LoRA adapter into its base model and save a plain from_pretrained folder (safetensors)."""
    from llmtune.inference import merge_run

    out = merge_run(run_dir, output, force=force)
    console.print(f"merged model written to [bold]{out}[/]")


@app.command()
@handle_errors
def generate(
    model: Annotated[str, typer.Argument(help="A run folder, a model folder, a .gguf file, a hub id or an alias.")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="One prompt; streamed to the terminal.")] = None,
    input: Annotated[Path | None, typer.Option("--input", "-i", help="Prompts: .txt (one per line), .jsonl, "
                                               ".json, .csv, .tsv")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write JSONL here instead of stdout.")] = None,
    field: Annotated[str | None, typer.Option("--field", help="Prompt field of the input file.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1)] = None,
    sample: Annotated[bool | None, typer.Option("--sample/--greedy", help="Sample, or decode greedily.")] = None,
    num_beams: Annotated[int | None, typer.Option("--num-beams", min=1, help="Beam search with N beams.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.0, help="Implies --sample.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=0, help="Implies --sample.")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0, help="Implies --sample.")] = None,
    repetition_penalty: Annotated[float | None, typer.Option("--repetition-penalty", min=0.0)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for sampling: same seed, same text.")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System message for chat models.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Give the prompt as is, without the chat template.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Stream a single prompt.")] = True,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="generation.key=value, repeatable")] = None,
) -> None:
    """Generate text with a run, a merged model or a base model, for one prompt or a file of prompts."""
    if (prompt is None) == (input is None):
        raise LlmtuneError("give either --prompt TEXT or --input FILE")
    from llmtune.generate_cmd import generate_rows, read_prompts
    from llmtune.runs import check_output_file

    check_output_file(output, [input])
    prompts = [(prompt, None)] if prompt is not None else read_prompts(input, field)  # type: ignore[arg-type]
    options = {"max_new_tokens": max_new_tokens, "do_sample": sample, "num_beams": num_beams,
               "temperature": temperature, "top_k": top_k, "top_p": top_p,
               "repetition_penalty": repetition_penalty, "seed": seed}
    streaming = stream and prompt is not None and output is None
    rows = generate_rows(model, prompts, overrides=overrides or [], options=options, batch_size=batch_size,
                         stream=streaming, raw=raw, system=system)
    if streaming:
        return
    if prompt is not None and output is None:
        sys.stdout.write(rows[0]["generation"] + "\n")
        return
    _emit_jsonl(rows, output, "generations")


@app.command()
@handle_errors
def benchmark(
    workloads: Annotated[list[str] | None, typer.Option("--workloads", "-w", help=f"{', '.join(BENCH_WORKLOADS)}; "
                                                        "repeat or comma-separate (default: all)")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Local copies of the datasets (../shared/data's "
                                                  "layout: sst2, scitldr, gsm8k, multi30k, wnut17, squad, stsb, "
                                                  "pd_books, hh_rlhf; else the hub, else llmtune's bundled data).")] = None,
    scale: Annotated[str, typer.Option("--scale", help="tiny (a smoke test), small (under 30 min on 2 CPU cores) "
                                       "or full.")] = "small",
    repeats: Annotated[int | None, typer.Option("--repeats", min=1, help="Runs per side (default 3; 1 at tiny scale).")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Results go to OUTPUT_DIR/<date>-<host>/.")] = Path(
        "benchmarks/results"),
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Threads for both sides (default: all CPUs).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps of each training "
                                                  "workload instead of the scale's (both sides; rows = steps x "
                                                  "batch), e.g. --scale full --max-steps 250 for a mid-size run.")] = None,
) -> None:
    """Run each workload with llmtune and with the Hugging Face reference scripts; write a report."""
    from llmtune.benchmark.runner import run_benchmark

    out = run_benchmark(workloads=workloads, data_dir=data_dir, scale=scale, repeats=repeats, output_root=output_dir,
                        threads=threads, console=console, max_steps=max_steps)
    console.print((out / "results.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"results: [bold]{out}[/] (results.json, results.md, throughput_ratio.png, loss_curves.png)")
