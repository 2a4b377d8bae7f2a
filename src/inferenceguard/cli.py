"""The command line: generate | eval | train-critic | build-scorers | serve | info."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from inferenceguard.errors import ConfigError, InferenceGuardError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="InferenceGuard: almost-surely safe LLM answers at inference time.",
)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Base LM: hub id, folder or .gguf (default: embedded SmolLM2-135M-Instruct)."),
]
RewardOpt = Annotated[str | None, typer.Option("--reward-model", help="Reward model spec (default: embedded).")]
CostOpt = Annotated[str | None, typer.Option("--cost-model", help="Cost model spec (default: embedded probe).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="auto | float32 | bfloat16 | float16")]


def _env() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt (or use --prompts FILE).")] = None,
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="File: one prompt per line, JSONL or CSV with 'prompt'.")
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="inferenceguard | inferenceguard-critic | sample | bon | beam | args ... (see docs/methods.md)"
        ),
    ] = "inferenceguard",
    budget: Annotated[float | None, typer.Option(help="Safety budget d (default: the cost model's threshold).")] = None,
    candidates: Annotated[int | None, typer.Option(help="N: candidates per step.")] = None,
    beams: Annotated[int | None, typer.Option(help="K: beams kept per step (default N/4).")] = None,
    block: Annotated[int | None, typer.Option(help="Tokens per search step.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Maximum response length in tokens.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    on_exhausted: Annotated[str | None, typer.Option(help="When no safe candidate remains: flag | refuse.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per prompt.")] = False,
    batch_size: Annotated[int, typer.Option(help="Prompts searched together.")] = 4,
    critic: Annotated[
        str | None, typer.Option(help="Critic file (default: the shipped critic when it fits the model).")
    ] = None,
    model: ModelOpt = None,
    reward_model: RewardOpt = None,
    cost_model: CostOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Answer prompts safely with InferenceGuard (or a baseline)."""
    _env()
    from inferenceguard.guard import Guard
    from inferenceguard.harness.prompts import read_prompt_file
    from inferenceguard.strategies import preset

    if (prompt is None) == (prompts is None):
        raise ConfigError("prompt", prompt, "must be given either as an argument or with --prompts FILE (not both)")
    items = [prompt] if prompt is not None else read_prompt_file(prompts, arg="--prompts")  # type: ignore[arg-type]
    settings = dict(
        budget=budget,
        candidates=candidates,
        keep=beams,
        block=block,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        on_exhausted=on_exhausted,
    )
    preset(method, **settings)  # validate before loading models
    guard = Guard(model, reward_model, cost_model, critic=critic, device=device, dtype=dtype)
    results = guard.generate(items, method, seed=seed, batch_size=batch_size, progress=not as_json, **settings)
    if as_json:
        for r in results:
            print(json.dumps(r.to_dict(), ensure_ascii=False))
        return
    from rich.console import Console
    from rich.panel import Panel

    console = Console()
    for r in results:
        verdict = (
            ("[green]SAFE[/]" if r.safe else "[red]UNSAFE[/]")
            + (" (refused)" if r.refused else "")
            + (" (no safe candidate: flagged)" if r.exhausted and not r.refused else "")
        )
        console.print(
            Panel(
                r.response or "[dim](empty)[/]",
                title=r.prompt[:80],
                subtitle=(
                    f"{verdict}  cost {r.cost:.3f}  budget left {r.budget_left:.3f}/{r.budget:g}  reward {r.reward:.2f}  "
                    f"{r.new_tokens} tokens  {r.seconds:.1f}s"
                ),
            )
        )


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Describe the embedded default stack (models, thresholds, held-out AUCs)."""
    from inferenceguard.guard import stack_info

    data = stack_info()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("component", "name", "threshold", "held-out AUC")
    for key in ("base_model", "reward_model", "cost_model", "judge", "critic"):
        entry = data.get(key) or {}
        auc = entry.get("heldout_auc", entry.get("val_p_safe_auc"))
        table.add_row(
            key,
            str(entry.get("name", "-")),
            str(entry.get("threshold", "-")),
            f"{auc:.3f}" if isinstance(auc, float) else "-",
        )
    Console().print(table)


@app.command("build-scorers")
def build_scorers(
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the package's assets/scorers).")] = None,
    seed: Annotated[int, typer.Option(help="Split and training seed.")] = 0,
) -> None:
    """Rebuild the embedded reward model, cost model and judge heads from the packaged labelled data."""
    _env()
    from inferenceguard.training.heads import build_default_heads

    target = out or Path(__file__).parent / "assets" / "scorers"
    manifest = build_default_heads(target, seed=seed)
    print(json.dumps(manifest, indent=2))


def main() -> None:
    """Entry point: usage errors exit 2 with one clear line; asset problems exit 1."""
    try:
        app(standalone_mode=False)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except InferenceGuardError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
