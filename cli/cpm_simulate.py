"""`knexa-cpm simulate`: compare matchmaking policies on the synthetic federation.

A thin shell around :func:`knexa_cpm.runner.simulate`: parses options, shows
a progress bar, prints a table (or ``--json``), optionally writes a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from knexa_cli.common import JsonOption, fail, print_json
from knexa_cli.lazy import load
from knexa_cpm.policies import POLICY_NAMES, PolicyError
from knexa_cpm.runner import simulate as run_simulation
from knexa_cpm.sim import HETEROGENEITY, SETTINGS, SimError


def _fmt(stat: dict, scale: float = 1.0, digits: int = 2, sign: bool = False) -> str:
    mean, half = stat["mean"] * scale, stat["ci95"] * scale
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


def simulate(
    clients: int = typer.Option(32, "--clients", min=2, max=100_000, help="Number of agents."),
    rounds: int = typer.Option(100, "--rounds", min=1, max=100_000, help="Rounds per run."),
    seeds: int = typer.Option(5, "--seeds", min=1, max=1_000, help="Independent federations (for confidence intervals)."),
    heterogeneity: str = typer.Option("high", "--heterogeneity", help="low | high."),
    policies: str = typer.Option("random,heuristic,linucb,knexa,oracle", "--policies",
                                 help=f"Comma-separated, from: {', '.join(POLICY_NAMES)}. random and oracle always run."),
    setting: str = typer.Option("nonadditive", "--setting", help="nonadditive (pairwise synergy) | linear (the paper's)."),
    budget: int = typer.Option(0, "--budget", min=0, help="Pairs per round (0: min(N/2, 10))."),
    malicious: int = typer.Option(0, "--malicious", min=0, help="Number of malicious teachers."),
    as_json: bool = JsonOption,
    plot: Path = typer.Option(None, "--plot", help="Write learning curves and regret to this PNG file."),
) -> None:
    """Simulate a federation and compare matchmaking policies (Pass@1-proxy, gain, regret, speed)."""
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if heterogeneity not in HETEROGENEITY:
        fail(f"--heterogeneity must be one of {', '.join(HETEROGENEITY)}")
    if setting not in SETTINGS:
        fail(f"--setting must be one of {', '.join(SETTINGS)}")
    if malicious >= clients:
        fail("--malicious must be smaller than --clients")
    if plot is not None and plot.suffix.lower() != ".png":
        fail("--plot needs a .png file name")
    console = Console(stderr=True)
    try:
        with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, disable=as_json, transient=True) as bar:
            task = bar.add_task("rounds", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            results = run_simulation(clients=clients, rounds=rounds, seeds=seeds, heterogeneity=heterogeneity,
                                     policies=names, setting=setting, budget=budget or None, malicious=malicious,
                                     progress=progress)
    except (PolicyError, SimError) as exc:
        fail(str(exc))
    if plot is not None:
        try:
            load("knexa_cpm.plot").plot_results(results, plot)  # matplotlib: only when a plot is asked for
        except OSError as exc:
            fail(f"cannot write {plot}: {exc}")
    if as_json:
        print_json(results)
        return
    config = results["config"]
    table = Table(title=f"{config['clients']} clients, {config['rounds']} rounds, {config['seeds']} seeds, "
                        f"{config['setting']}, {config['heterogeneity']} heterogeneity, {config['budget']} pairs/round")
    for column in ("policy", "Pass@1 %", "vs random %", "gap closed", "regret pp", "JS",
                   "fb/s", "ms/round"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, s in results["policies"].items():
        table.add_row(name, _fmt(s["final_pass"], 100.0), _fmt(s["gain_over_random"], 100.0, 1, sign=True),
                      _fmt(s["oracle_gap_closed"]), _fmt(s["cumulative_regret"], digits=0), _fmt(s["mean_js"], digits=3),
                      f"{s['feedback_per_s']:,.0f}", f"{s['matchmaking_ms']:.2f}")
    Console().print(table)
    if plot is not None:
        console.print(f"plot written to {plot}")
