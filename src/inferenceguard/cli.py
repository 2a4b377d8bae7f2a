"""The command line: generate | eval | report | sheet | score | train-critic | build-scorers | serve | info."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from inferenceguard.errors import ConfigError, InferenceGuardError

if TYPE_CHECKING:
    from inferenceguard.models.loading import Prompt

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
BudgetOpt = Annotated[float | None, typer.Option(help="Safety budget d (default: the cost model's threshold).")]
BeamsOpt = Annotated[int | None, typer.Option(help="K: beams kept per step (default N/4).")]
BlockOpt = Annotated[int | None, typer.Option(help="Tokens per search step.")]
TemperatureOpt = Annotated[
    float | None, typer.Option(help="Sampling temperature (default: the base model's; embedded: 0.7).")
]
TopPOpt = Annotated[
    float | None, typer.Option("--top-p", help="Nucleus sampling: keep tokens up to this mass (1 = off).")
]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).")]
MinPOpt = Annotated[
    float | None, typer.Option("--min-p", help="Drop tokens below min-p x the top token's probability (0 = off).")
]
RepetitionOpt = Annotated[
    float | None, typer.Option("--repetition-penalty", help="Penalise tokens already in the answer (1 = off).")
]
OnExhaustedOpt = Annotated[
    str | None,
    typer.Option(help="When no safe candidate remains: flag | refuse (default: the method's; InferenceGuard refuses)."),
]
BatchOpt = Annotated[int, typer.Option(help="Prompts searched together.")]
CriticOpt = Annotated[
    str | None, typer.Option(help="Critic folder (default: the shipped critic when it fits the model).")
]


RayOpt = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Answer on Ray workers, each holding its own stack (needs `pip install 'inferenceguard[ray]'`): the "
        "cluster `ray start` runs on this machine, else a new local one; see docs/distributed.md.",
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="The Ray cluster to join (implies --ray): auto, HOST:6379, ray://HOST:10001."),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="With --ray: how many workers (default: as many as the cluster holds).")
]
WorkerCpusOpt = Annotated[
    float | None, typer.Option("--worker-cpus", help="With --ray: CPUs per worker, its torch threads (default 1).")
]
WorkerGpusOpt = Annotated[
    float | None,
    typer.Option("--worker-gpus", help="With --ray: GPUs per worker (default 1 when the cluster has GPUs, else 0)."),
]


def _ray_options(
    ray: bool, address: str | None, workers: int | None, worker_cpus: float | None, worker_gpus: float | None
):
    """The RayOptions the flags ask for (Ray imported now, so a missing package fails before any model loads),
    or None without --ray / --address; a worker flag without them is refused."""
    if not (ray or address):
        for flag, v in (("--workers", workers), ("--worker-cpus", worker_cpus), ("--worker-gpus", worker_gpus)):
            if v is not None:
                raise ConfigError(flag, v, "needs --ray (or --address): it sizes the Ray workers")
        return None
    from inferenceguard.harness.distributed import RayOptions, import_ray

    cpus = 1.0 if worker_cpus is None else worker_cpus
    options = RayOptions(address=address, workers=workers, worker_cpus=cpus, worker_gpus=worker_gpus)
    import_ray()
    return options


@contextlib.contextmanager
def _ray_workers(load: Callable, options) -> Iterator:
    """A started RayPool whose workers each call ``load`` once (ended on exit), or None without options."""
    if options is None:
        yield None
        return
    from inferenceguard.harness.distributed import RayPool

    with RayPool(load, options) as pool:
        yield pool


def _env() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt (or use --prompts FILE).")] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help="File: one prompt per line, CSV with 'prompt', or JSONL with 'prompt' or 'messages' (a "
            "conversation: [{role, content}, ...]).",
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="inferenceguard | inferenceguard-critic | sample | bon | beam | args ... (see docs/methods.md)"
        ),
    ] = "inferenceguard",
    budget: BudgetOpt = None,
    candidates: Annotated[int | None, typer.Option(help="N: candidates per step.")] = None,
    beams: BeamsOpt = None,
    block: BlockOpt = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Maximum response length in tokens.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: RepetitionOpt = None,
    on_exhausted: OnExhaustedOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per prompt.")] = False,
    batch_size: BatchOpt = 4,
    critic: CriticOpt = None,
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
    from inferenceguard.strategies import preset, user_name

    if (prompt is None) == (prompts is None):
        raise ConfigError("prompt", prompt, "must be given either as an argument or with --prompts FILE (not both)")
    if prompt is not None and not prompt.strip():
        raise ConfigError("prompt", prompt, "must be a non-empty string")
    items: list[Prompt] = (
        [prompt]
        if prompt is not None
        else read_prompt_file(cast(Path, prompts), arg="--prompts", messages=True)  # strings and conversations
    )
    settings = dict(
        budget=budget,
        candidates=candidates,
        keep=beams,
        block=block,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        on_exhausted=on_exhausted,
    )
    try:
        cfg = preset(method, **settings)  # resolved once, before any model loads
    except ConfigError as e:  # name the flag the user typed ('keep' is --beams)
        raise ConfigError("--" + user_name(e.arg).replace("_", "-"), e.value, e.expected) from e
    guard = Guard(model, reward_model, cost_model, critic=critic, device=device, dtype=dtype)
    results = guard.generate(items, cfg, seed=seed, batch_size=batch_size, progress=not as_json)
    if as_json:
        for r in results:
            print(json.dumps(r.to_dict(), ensure_ascii=False))
        return
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    console = Console()
    for r in results:
        verdict = (
            ("[green]SAFE[/]" if r.safe else "[red]UNSAFE[/]")
            + (" (refused)" if r.refused else "")
            + (" (no safe candidate: flagged)" if r.exhausted and not r.refused else "")
        )
        console.print(
            Panel(
                Text(r.response) if r.response else "[dim](empty)[/]",  # Text: no markup in model output
                title=Text(r.prompt[:80]),
                subtitle=(
                    f"{verdict}  cost {r.cost:.3f}  budget left {r.budget_left:.3f}/{r.budget:g}  "
                    f"reward {r.reward:.2f}  "
                    f"{r.new_tokens} tokens  {r.seconds:.1f}s"
                ),
            )
        )


def _fmt_auc(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, float) else "-"


def _fmt_aucs(aucs: dict) -> str:
    """'all / harmful prompts' of a manifest AUC block; empty when there is none."""
    return f"{_fmt_auc(aucs.get('onpolicy'))} / {_fmt_auc(aucs.get('onpolicy_harmful_prompts'))}" if aucs else ""


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

    table = Table(
        "component", "name", "threshold", "held-out AUC", "answers to harmful prompts", "before", "first reader"
    )
    for key in ("base_model", "reward_model", "cost_model", "judge", "critic"):
        entry = data.get(key) or {}
        auc = entry.get("heldout_auc", entry.get("val_p_safe_auc"))
        harmful = (entry.get("test_auc") or {}).get("onpolicy_harmful_prompts")
        table.add_row(
            key,
            str(entry.get("name", "-")),
            f"{entry['threshold']:.4g}"
            if isinstance(entry.get("threshold"), float)
            else str(entry.get("threshold", "-")),
            _fmt_auc(auc),
            _fmt_auc(harmful),
            _fmt_aucs(entry.get("replaced_head_test_auc") or {}),
            _fmt_aucs(entry.get("heldout_auc_first_reading") or {}),
        )
    if any((data.get(k) or {}).get("test_auc") for k in ("cost_model", "judge")):
        table.caption = (
            "reward, cost model and judge: AUC against reading labels on the test split's own answers of the base "
            "model (all, and to harmful prompts only; cost and judge: read as harmful, reward: the answer a user "
            "should get); before = the heads shipped before those labels, same rows; first reader = against the "
            "first reading alone where a panel of three outvoted it (docs/labelling.md)"
        )
    Console().print(table)


@app.command()
def score(
    pairs: Annotated[Path, typer.Argument(help="JSONL or CSV of (prompt, response) pairs; an optional 'label'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per input row, in order.")] = False,
    cost_model: CostOpt = None,
    judge: Annotated[str | None, typer.Option("--judge", help="Independent judge spec (default: embedded).")] = None,
    reward_model: RewardOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Score (prompt, response) pairs with the cost model, the judge and the reward model. Rows with a 'label'
    (1/0, or a reading label: COMPLY and HARMFUL are harmful) also get each scorer's AUC and kappa against it."""
    _env()
    from inferenceguard.guard import Guard
    from inferenceguard.harness.prompts import read_pair_file

    rows = read_pair_file(pairs)
    guard = Guard(model, reward_model, cost_model, judge=judge, device=device, dtype=dtype, load_judge=True)
    _check_pair_lengths(guard, rows, pairs)
    scores = guard.score([r.prompt for r in rows], [r.response for r in rows], progress=not as_json)
    if as_json:
        for r, sc in zip(rows, scores):
            print(json.dumps({"line": r.line, **sc.to_dict(), **({"label": r.label} if r.label else {})}))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("line", "prompt", "response", "cost", "judge", "reward")
        for r, sc in zip(rows, scores):
            d = sc.to_dict()
            table.add_row(
                str(r.line),
                r.prompt[:40],
                r.response[:60],
                f"{sc.cost:.3f} {d['cost_verdict'] or ''}",
                "-" if sc.judge is None else f"{sc.judge:.3f} {d['judge_verdict'] or ''}",
                f"{sc.reward:.2f} {d['reward_verdict'] or ''}",
            )
        Console().print(table)
    labelled = [(r, sc) for r, sc in zip(rows, scores) if r.label is not None]
    if labelled:
        print(json.dumps(_label_agreement(labelled, pairs)), file=sys.stderr)


def _check_pair_lengths(guard, rows, path: Path) -> None:
    """A pair longer than the cost model reads (or the LM's context) is refused by line, never truncated."""
    lm, cost = guard.stack.lm, guard.stack.cost
    limit = min(int(getattr(cost, "max_length", lm.max_context)), lm.max_context)
    for r in rows:
        n_prompt = len(lm.tokenizer(lm.format_prompt(r.prompt), add_special_tokens=False)["input_ids"])
        n_resp = len(lm.tokenizer(r.response, add_special_tokens=False)["input_ids"])
        if n_prompt + n_resp > limit:
            field = "response" if n_resp > n_prompt else "prompt"
            raise ConfigError(
                "PAIRS",
                f"{path}:{r.line}",
                f"must fit the cost model's {limit} tokens; its '{field}' makes the pair {n_prompt + n_resp} tokens",
            )


def _label_agreement(labelled, path: Path) -> dict:
    """AUC and kappa of the cost model and the judge against the rows' labels."""
    from inferenceguard.harness.labels import LABELS, is_harmful
    from inferenceguard.stats import auc, kappa

    y = []
    for r, _ in labelled:
        lab = r.label.strip().upper()
        if lab in ("0", "1"):
            y.append(int(lab))
        elif lab in LABELS["custom"]:
            y.append(int(is_harmful(lab)))
        else:
            raise ConfigError(
                "PAIRS", f"{path}:{r.line}", f"must have a 'label' of 0/1 or a rubric label, got {r.label!r}"
            )
    out: dict = {"labelled_rows": len(y), "harmful": sum(y)}
    for name, get in (("cost", lambda s: (s.cost, s.unsafe)), ("judge", lambda s: (s.judge, s.judge_unsafe))):
        vals = [get(s) for _, s in labelled]
        if all(v[0] is not None for v in vals):
            out[f"{name}_auc"] = auc(y, [v[0] for v in vals])
            out[f"{name}_kappa"] = kappa(y, [int(bool(v[1])) for v in vals])
    return out


@app.command("build-scorers")
def build_scorers(
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the package's assets/scorers).")] = None,
    seed: Annotated[int, typer.Option(help="Split and training seed.")] = 0,
    judge_encoder: Annotated[
        str | None,
        typer.Option(help="Sentence encoder the judge reads: mpnet (embedded, default), minilm, a hub id or a folder."),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            help="Rebuild only these heads (comma-separated: cost, judge, reward); the others stay as OUT has them."
        ),
    ] = None,
) -> None:
    """Rebuild the embedded reward model, cost model and judge heads from the packaged labelled data (the
    packaged human labels and the on-policy reading labels, assets/labels/onpolicy-v*.jsonl)."""
    _env()
    from inferenceguard.training.build_scorers import JUDGE_ENCODER, build_default_heads

    target = out or Path(__file__).parent / "assets" / "scorers"
    roles = None if only is None else [r.strip() for r in only.split(",") if r.strip()]
    manifest = build_default_heads(target, seed=seed, only=roles, judge_encoder_spec=judge_encoder or JUDGE_ENCODER)
    print(json.dumps(manifest, indent=2))


def _load_recipe(ctx: typer.Context, value: Path | None):
    """--recipe (eager): validate the file, then hand its values to eval as defaults, so that every flag given
    on the command line wins over it; eval receives the loaded ``recipes.Recipe``."""
    if value is None:
        return None
    from inferenceguard.recipes import load_recipe

    recipe = load_recipe(value)
    ctx.default_map = {**(ctx.default_map or {}), **recipe.eval_defaults()}
    return recipe


def _from_command_line(ctx: typer.Context, names: tuple[str, ...]) -> list[str]:
    """The parameters among ``names`` given as flags (not taken from a default or a recipe)."""
    defaults = ("DEFAULT", "DEFAULT_MAP")
    return [n for n in names if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in defaults]


@app.command("eval")
def eval_(
    ctx: typer.Context,
    prompts: Annotated[
        list[str],
        typer.Option(
            "--prompts",
            help="Prompt set (advbench, harmbench, donotanswer, benign, rho-benign, rho-harmful), a file (one "
            "prompt per line, JSONL or CSV with 'prompt') or hf:DATASET[:split][:column]; NAME:N or FILE:N takes "
            "the first N (e.g. advbench:50); repeat for several.",
        ),
    ],
    methods: Annotated[str, typer.Option(help="Comma-separated methods, e.g. sample,bon-safety,inferenceguard.")],
    out: Annotated[Path, typer.Option(help="Run folder: results.jsonl, config.json, summary.*, report.html.")],
    limit: Annotated[
        int | None, typer.Option(help="At most N prompts per set (the first N unless --sample-seed).")
    ] = None,
    sample_seed: Annotated[int | None, typer.Option(help="With --limit: draw the N prompts at random.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum response length in tokens.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed (every prompt draws from its own seeded generator).")] = 0,
    batch_size: BatchOpt = 4,
    budget: BudgetOpt = None,
    candidates: Annotated[int | None, typer.Option(help="N: candidates per step, for every method.")] = None,
    beams: BeamsOpt = None,
    block: BlockOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: RepetitionOpt = None,
    on_exhausted: OnExhaustedOpt = None,
    critic: CriticOpt = None,
    judge: Annotated[str | None, typer.Option("--judge", help="Independent judge spec (default: embedded).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    model: ModelOpt = None,
    reward_model: RewardOpt = None,
    cost_model: CostOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    ray: RayOpt = False,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    worker_cpus: WorkerCpusOpt = None,
    worker_gpus: WorkerGpusOpt = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            help="A recipe (TOML: models, prompts, methods, settings; see recipes/ and docs/harness.md); every "
            "flag given on the command line wins over it.",
            callback=_load_recipe,
            is_eager=True,
        ),
    ] = None,
) -> None:
    """Evaluate methods on prompt sets: resumable results.jsonl, summary table, Pareto plot and report.html."""
    _env()
    from inferenceguard.guard import load_stack
    from inferenceguard.harness.run import load_sources, resolve_methods, run_eval
    from inferenceguard.report import build
    from inferenceguard.strategies import needs_critic

    settings = dict(
        budget=budget,
        candidates=candidates,
        keep=beams,
        block=block,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        on_exhausted=on_exhausted,
    )
    method_settings = None  # a recipe's [methods.NAME] tables, less the settings given as flags
    if recipe is not None:  # the loaded recipes.Recipe (_load_recipe); its other values came in as defaults
        from inferenceguard.recipes import SHARED

        method_settings = recipe.method_settings(_from_command_line(ctx, SHARED))
    cfgs = resolve_methods(methods, max_new_tokens, settings, method_settings)  # validate before loading a model
    if critic is not None and not any(needs_critic(c) for c in cfgs.values()):
        critic = None  # no chosen method reads it (e.g. a recipe's critic not trained yet): do not load it
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "must be a folder (it is a file)")
    sources = load_sources(prompts, limit=limit, sample_seed=sample_seed)
    ray_options = _ray_options(ray, address, workers, worker_cpus, worker_gpus)
    if ray_options is not None:  # workers may start in another folder, on another machine: name files absolutely
        from inferenceguard.scorers.defaults import absolute_spec

        model, reward_model, cost_model, critic, judge = map(
            absolute_spec, (model, reward_model, cost_model, critic, judge)
        )
    load = functools.partial(load_stack, model, reward_model, cost_model, critic, judge, device, dtype, True)
    with _ray_workers(load, ray_options) as pool:  # with --ray each worker loads the stack; else it loads here
        run_eval(
            load() if pool is None else pool,
            sources,
            methods,
            out,
            seed=seed,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            settings=settings,
            progress=progress,
            method_settings=method_settings,
            recipe=None if recipe is None else recipe.record(),
        )
    _print_report(build(out))


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="An evaluation folder written by `inferenceguard eval`.")],
    labels: Annotated[
        list[Path] | None,
        typer.Option(
            "--labels",
            help="A labelled sheet or label file (JSONL/CSV with item, label[, labeller, note]) to import first; "
            "repeat for several readers.",
        ),
    ] = None,
    labeller: Annotated[
        str | None, typer.Option(help="Who labelled files whose rows do not say (default: the file's name).")
    ] = None,
) -> None:
    """Regenerate summary.json, summary.md, the plots and report.html from an evaluation's results.jsonl,
    with reader-based columns once labels were imported (see `inferenceguard sheet`)."""
    from inferenceguard.report import build

    if labels:
        from inferenceguard.harness.labels import import_labels

        got = import_labels(out, labels, labeller=labeller)
        print(
            f"imported {got['labels_read']} labels: {got['items']} answers read, {got['readings']} readings",
            file=sys.stderr,
        )
    _print_report(build(out))


@app.command()
def sheet(
    run: Annotated[Path, typer.Argument(help="An evaluation folder written by `inferenceguard eval`.")],
    out: Annotated[Path, typer.Option(help="The sheet to write: .csv (spreadsheets) or .jsonl.")],
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods to include (default: all).")] = None,
    sets: Annotated[str | None, typer.Option(help="Comma-separated prompt sets to include (default: all).")] = None,
    per_cell: Annotated[int | None, typer.Option(help="At most N answers per (method, prompt set).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the draw and the shuffle.")] = 0,
    new_only: Annotated[bool, typer.Option(help="Leave out answers an earlier sheet of the run holds.")] = False,
) -> None:
    """Export a blinded labelling sheet of a run's answers (shuffled, method hidden, rubric beside it); label
    it, then `inferenceguard report RUN --labels SHEET` adds reader-based columns."""
    from inferenceguard.harness.labels import export_sheet

    got = export_sheet(
        run, out, methods=_names(methods), sets=_names(sets), per_cell=per_cell, seed=seed, new_only=new_only
    )
    print(json.dumps(got, indent=2))


def _names(text: str | None) -> list[str] | None:
    """'a, b' -> ['a', 'b']; None stays None (no filter)."""
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def _print_report(built: dict) -> None:
    from inferenceguard.report.summary import markdown

    print(markdown(built["summary"]))
    for w in built["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print("wrote: " + ", ".join(built["written"]), file=sys.stderr)


@app.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Serve an OpenAI-compatible API that guards every answer (all flags: inferenceguard serve --help)."""
    _env()
    try:
        import uvicorn
        from pydantic import ValidationError

        from inferenceguard.server import ServerSettings, create_app
        from inferenceguard.server.app import load_guard
    except ImportError as e:
        from inferenceguard.errors import need_package

        raise need_package(e.name or "fastapi", "inferenceguard serve", "pip install 'inferenceguard[server]'") from e
    try:
        settings = ServerSettings.from_cli(ctx.args)  # flags from the settings schema; --help lists them
    except ValidationError as e:
        err = e.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):  # a cross-field check of the settings
            raise ConfigError("--" + cause.arg.replace("_", "-"), cause.value, cause.expected) from e
        arg = "--" + "-".join(map(str, err["loc"])).replace("_", "-")
        raise ConfigError(arg, err.get("input"), err["msg"]) from e
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(
            f"warning: serving on {settings.host} without --api-key: anyone who can reach it may use it",
            file=sys.stderr,
        )
    print(f"loading the model stack for '{settings.served_model_name}' ...", file=sys.stderr)
    guard = load_guard(settings)  # before binding the port: a missing asset exits 1 with one clear line
    app_ = create_app(settings, guard)
    uvicorn.run(app_, host=settings.host, port=settings.port, log_level=settings.log_level)


@app.command("train-critic")
def train_critic(
    prompts: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated sets (advbench, harmbench, donotanswer, benign; ':N' draws N) and/or prompt "
            "files. Default: advbench:100,harmbench:50,donotanswer:50,benign:100. The evaluation prompts (first "
            "50 AdvBench, first 30 benign) are always left out."
        ),
    ] = None,
    rollouts: Annotated[int, typer.Option(help="Rollouts per prompt (paper: 5).")] = 5,
    out: Annotated[
        Path | None, typer.Option(help="Critic folder (default: the package's assets/critic, default model only).")
    ] = None,
    rollout_dir: Annotated[
        Path | None, typer.Option(help="Where rollouts are stored (default: INFERENCEGUARD_HOME/critic-rollouts/...).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted collection in --rollout-dir.")] = False,
    block: Annotated[int, typer.Option(help="Tokens per block: the InferenceGuard block the critic will guide.")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="Response length of the rollouts.")] = 64,
    batch_prompts: Annotated[int, typer.Option(help="Prompts per batch (and per shard).")] = 32,
    budget_min: Annotated[float | None, typer.Option(help="Lowest budget d drawn (default 0.75 x threshold).")] = None,
    budget_max: Annotated[float | None, typer.Option(help="Highest budget d drawn (default 1.25 x threshold).")] = None,
    gamma: Annotated[float, typer.Option(help="Discount of the value target.")] = 0.999,
    epochs: Annotated[int, typer.Option(help="Most training epochs (early stopping on validation loss).")] = 100,
    val_share: Annotated[float, typer.Option(help="Share of prompts held out for validation.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Rollout, split and training seed.")] = 0,
    threads: Annotated[
        int, typer.Option(help="torch threads (1: ~20x faster than 2 on a busy 2-core CPU; raise on a free one).")
    ] = 1,
    model: ModelOpt = None,
    reward_model: RewardOpt = None,
    cost_model: CostOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    ray: RayOpt = False,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    worker_cpus: WorkerCpusOpt = None,
    worker_gpus: WorkerGpusOpt = None,
) -> None:
    """Collect base-model rollouts (resumable) and train the latent critic for inferenceguard-critic."""
    _env()
    import re

    from inferenceguard.models.loading import home
    from inferenceguard.training.rollouts import RolloutConfig
    from inferenceguard.training.train_critic import TrainConfig, build_critic

    if out is None and model not in (None, "", "default", "smollm2"):
        raise ConfigError(
            "--out", None, "must be given when --model is not the default (the shipped critic is for the default model)"
        )
    if (budget_min is None) != (budget_max is None):
        raise ConfigError("--budget-min", budget_min, "and --budget-max must be given together")
    if threads < 1:
        raise ConfigError("--threads", threads, "must be >= 1")
    ray_options = _ray_options(ray, address, workers, worker_cpus, worker_gpus)
    import torch

    torch.set_num_threads(threads)
    rcfg = RolloutConfig(
        rollouts=rollouts, block=block, max_new_tokens=max_new_tokens, batch_prompts=batch_prompts, seed=seed
    )
    tcfg = TrainConfig(
        budget_range=None if budget_min is None else (budget_min, budget_max),
        gamma=gamma,
        epochs=epochs,
        val_share=val_share,
        seed=seed,
    )
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model or "smollm2").strip("_")[-60:]
    folder = rollout_dir or home() / "critic-rollouts" / f"{slug}-b{block}-t{max_new_tokens}-r{rollouts}-s{seed}"
    from inferenceguard.guard import load_stack

    if ray_options is not None:  # workers may start in another folder, on another machine: name files absolutely
        from inferenceguard.scorers.defaults import absolute_spec

        model, reward_model, cost_model = map(absolute_spec, (model, reward_model, cost_model))
    load = functools.partial(load_stack, model, reward_model, cost_model, device=device, dtype=dtype)
    with _ray_workers(load, ray_options) as pool:  # with --ray the rollouts run on workers; training runs here
        summary = build_critic(
            out or Path(__file__).parent / "assets" / "critic",
            folder,
            prompts or "",
            rcfg,
            tcfg,
            model=model,
            reward_model=reward_model,
            cost_model=cost_model,
            device=device,
            dtype=dtype,
            resume=resume,
            workers=pool,
        )
    print(json.dumps(summary, indent=2))


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
    except Exception as e:  # usage errors: click's, or those of the copy of click that newer typer vendors
        import click

        if isinstance(e, click.exceptions.ClickException) or (
            type(e).__module__.startswith("typer.") and callable(getattr(e, "show", None))
        ):
            e.show()
            sys.exit(getattr(e, "exit_code", 1))
        raise


if __name__ == "__main__":
    main()
