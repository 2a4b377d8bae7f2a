"""The evaluation runner: every (method, prompt) pair answered once, appended to ``DIR/results.jsonl``.

Layout of an evaluation folder ``DIR``:

- ``config.json``: the run's configuration, written before any generation (atomically): the shared settings
  (seed, max_new_tokens, the user's search overrides, the identities of the LM, reward model, cost model and
  judge; for a run from a recipe, the recipe's SHA-256 and parsed content), each method's resolved
  ``SearchConfig`` (plus its critic's identity when it uses one), each prompt set's source and prompt ids.
- ``results.jsonl``: one record per (method, prompt), appended batch by batch and fsynced (``_io.append_jsonl``),
  so a killed run loses at most the batch in flight, and a failed append (a full disk) is cut back off.
  Every record carries its method's ``config_key`` (a hash of the shared settings and the method's
  configuration).
- ``summary.json``: ``{"methods": {METHOD: {PROMPT_SET: metrics}}}`` (see :mod:`.metrics`), plus ``kinds``
  (the same metrics pooled over the harmful / benign / custom sets), ``sets`` and ``run``.

Resuming: rerunning the same command skips the (method, prompt id) pairs already in ``results.jsonl`` and
never writes one twice; a partially written last line (a kill in mid-write) is cut off first.

Reusing a folder: the shared settings must match exactly, and a method or prompt set already in the folder
must have the same configuration (a prompt set may grow: the old prompt ids must be the first ones of the new
list, e.g. a larger ``--limit`` without ``--sample-seed``). New methods and new prompt sets are added to the
run, so a second pass can add the critic methods once a critic exists. Anything else is refused with the
setting that differs. The batch size is not part of the configuration: each prompt draws from its own
seeded generator, so answers do not depend on their batch mates (only the amortised seconds do).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from inferenceguard._io import append_jsonl, ensure_dir, sweep_temps, write_json
from inferenceguard.engine import Stack, search
from inferenceguard.engine.types import SearchConfig
from inferenceguard.errors import AssetError, ConfigError, OutputError
from inferenceguard.harness.distributed import StackPool, as_pool
from inferenceguard.harness.labels import primary, read_readings, reader_agreement
from inferenceguard.harness.metrics import is_refusal, summarise
from inferenceguard.harness.prompts import Prompt, load_prompts, set_kind, split_limit
from inferenceguard.strategies import PRESETS, ValueSteer, bind, needs_critic, preset

FORMAT = "inferenceguard.eval/1"
RESULTS, CONFIG, SUMMARY = "results.jsonl", "config.json", "summary.json"


@dataclass
class PromptSource:
    """One prompt set of an evaluation: where it came from and its prompts (in evaluation order)."""

    spec: str
    name: str
    kind: str  # harmful | benign | custom
    prompts: list[Prompt]
    limit: int | None = None
    sample_seed: int | None = None


def load_sources(specs: Sequence[str], limit: int | None = None, sample_seed: int | None = None) -> list[PromptSource]:
    """Every ``--prompts`` spec read and selected (see :func:`~.prompts.load_prompts`); set names must differ."""
    if isinstance(specs, str) or not specs:
        raise ConfigError("--prompts", specs, "must be given at least once (a prompt set name or a file)")
    out: list[PromptSource] = []
    for spec in specs:
        name, prompts = load_prompts(spec, limit=limit, sample_seed=sample_seed)
        if any(s.name == name for s in out):
            raise ConfigError("--prompts", spec, f"must name distinct prompt sets: '{name}' is given twice")
        own = split_limit(spec)[1]
        out.append(PromptSource(spec, name, set_kind(name), prompts, own or limit, sample_seed))
    return out


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """'m1,m2' or a list -> the distinct method names, in order; unknown names list the valid ones."""
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    names = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not names:
        raise ConfigError("--methods", methods, f"must list at least one method of: {', '.join(PRESETS)}")
    for n in names:
        if n not in PRESETS:
            raise ConfigError("--methods", n, f"must be one of: {', '.join(PRESETS)}")
    return names


def resolve_methods(
    methods: str | Sequence[str],
    max_new_tokens: int,
    settings: Mapping[str, Any] | None = None,
    method_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, SearchConfig]:
    """method -> its preset with the shared overrides, then its own (``method_settings[method]``, e.g. a
    recipe's ``[methods.NAME]``: they win over the shared ones), validated by :func:`strategies.preset`, which
    leaves out what a preset fixes; not yet bound to a stack."""
    own = dict(method_settings or {})
    return {
        m: preset(m, max_new_tokens=max_new_tokens, **{**dict(settings or {}), **dict(own.get(m) or {})})
        for m in parse_methods(methods)
    }


# ---- configuration ---------------------------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if is_dataclass(v) and not isinstance(v, type):
        d: dict[str, Any] = {"type": type(v).__name__}
        for f in fields(v):
            if f.compare:  # the steer's critic object is described by identity, not serialised
                d[f.name] = _jsonable(getattr(v, f.name))
        return d
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def config_dict(cfg: SearchConfig) -> dict[str, Any]:
    """A resolved SearchConfig as plain JSON (selector and steer as their dataclass fields)."""
    return _jsonable(cfg)


def _scorer_identity(s: Any) -> dict[str, Any] | None:
    if s is None:
        return None
    out = {"class": type(s).__name__, "name": getattr(s, "name", None), "threshold": getattr(s, "threshold", None)}
    for key in ("identity", "base_identity"):
        if getattr(s, key, None) is not None:
            out[key] = str(getattr(s, key))
    return out


def critic_identity(critic: Any) -> dict[str, Any] | None:
    if critic is None:
        return None
    meta = getattr(critic, "meta", {}) or {}
    return {
        "class": type(critic).__name__,
        "name": getattr(critic, "name", None),
        "base_identity": getattr(critic, "base_identity", None),
        "sha256": meta.get("sha256"),
    }


def stack_identity(stack: Stack) -> dict[str, Any]:
    """What identifies the models every record depends on (the critic is per method: only some use it)."""
    lm = stack.lm
    return {
        "lm": {"identity": lm.identity, "dtype": str(lm.dtype).removeprefix("torch.")},
        "reward": _scorer_identity(stack.reward),
        "cost": _scorer_identity(stack.cost),
        "judge": _scorer_identity(stack.judge),
    }


def _method_entry(cfg: SearchConfig, stack: Stack) -> dict[str, Any]:
    entry = config_dict(cfg)
    if needs_critic(cfg):
        entry["critic"] = critic_identity(stack.critic)
    return entry


def _key(shared: Mapping[str, Any], method: Mapping[str, Any]) -> str:
    blob = json.dumps({"shared": shared, "method": method}, sort_keys=True, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _normal(x: Any) -> Any:
    return json.loads(json.dumps(x, allow_nan=False))


def _first_difference(old: Any, new: Any, path: str) -> str | None:
    """'path: old -> new' for the first differing leaf, or None when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            d = _first_difference(old.get(k), new.get(k), f"{path}.{k}")
            if d:
                return d
        return None
    if old != new:
        return f"{path} was {json.dumps(old)[:120]}, now {json.dumps(new)[:120]}"
    return None


def read_config(out: str | Path) -> dict[str, Any] | None:
    path = Path(out) / CONFIG
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError("--out", str(out), f"must hold a readable {CONFIG} ({e}); use a new folder") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ConfigError("--out", str(out), f"must be an evaluation folder: its {CONFIG} is not an eval config")
    return cfg


def merge_config(old: dict[str, Any] | None, new: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """The folder's configuration after adding this run; refuses (ConfigError) a conflicting one."""
    if old is None:
        return new

    def refuse(what: str) -> ConfigError:
        return ConfigError(
            "--out",
            str(out),
            f"holds an evaluation with a different configuration ({what}); rerun with the same settings to "
            "resume, or use another --out folder",
        )

    diff = _first_difference(old["shared"], new["shared"], "shared")
    if diff:
        raise refuse(diff)
    merged = {**old, "methods": dict(old["methods"]), "prompt_sets": dict(old["prompt_sets"])}
    for m, entry in new["methods"].items():
        if m in old["methods"]:
            diff = _first_difference(old["methods"][m], entry, f"methods.{m}")
            if diff:
                raise refuse(diff)
        merged["methods"][m] = entry
    for s, entry in new["prompt_sets"].items():
        if s in old["prompt_sets"]:
            before = old["prompt_sets"][s]
            had, now = before["ids"], entry["ids"]
            at = next((i for i, (a, b) in enumerate(zip(had, now)) if a != b), None)
            if at is not None:
                raise refuse(
                    f"prompt set '{s}' held {len(had)} prompts (source {before['source']!r}, limit "
                    f"{before.get('limit')}, sample seed {before.get('sample_seed')}); now {len(now)} prompts "
                    f"(source {entry['source']!r}, limit {entry.get('limit')}, sample seed "
                    f"{entry.get('sample_seed')}) whose prompt {at + 1} is another one"
                )
            if len(now) < len(had):  # the first prompts of the same set: nothing new, the folder keeps them all
                entry = before
        merged["prompt_sets"][s] = entry
    merged["method_keys"] = {m: _key(merged["shared"], e) for m, e in merged["methods"].items()}
    return merged


# ---- results file ------------------------------------------------------------------------------------------------


def read_results(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a results file. A last line without its newline (a kill in mid-write) is ignored, and
    with ``repair`` cut off the file; any other unreadable line is an error. Duplicates keep the first."""
    p = Path(path)
    if not p.is_file():
        return []
    data = p.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        try:
            with open(p, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        except OSError as e:
            raise OutputError(str(p), e.strerror or str(e), "must be writable to cut off its partial last line") from e
    records, seen = [], set()
    for n, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AssetError(f"'{p}' line {n} is not a JSON record ({e}); the file was damaged or edited") from e
        key = (rec.get("method"), rec.get("id"))
        if key not in seen:
            seen.add(key)
            records.append(rec)
    return records


def summarise_run(out: str | Path) -> dict[str, Any]:
    """summary.json of an evaluation folder from its config and results (rewritten atomically)."""
    out = Path(out)
    cfg = read_config(out)
    if cfg is None:
        raise ConfigError("DIR", str(out), f"must be an evaluation folder holding {CONFIG} and {RESULTS}")
    wanted = {(m, i) for m in cfg["methods"] for s in cfg["prompt_sets"].values() for i in s["ids"]}
    records = [r for r in read_results(out / RESULTS) if (r.get("method"), r.get("id")) in wanted]
    readings = read_readings(out)
    first = primary(readings)
    records = [{**r, "reading": first.get((r["method"], r["id"]))} for r in records]
    thr = (cfg["shared"]["models"].get("cost") or {}).get("threshold")
    summary = summarise(records, methods=cfg["methods"], sets=cfg["prompt_sets"], cost_threshold=thr)
    kind = {s: e["kind"] for s, e in cfg["prompt_sets"].items()}
    by_kind = [{**r, "set": kind.get(r["set"], "custom")} for r in records]
    kinds = summarise(by_kind, methods=cfg["methods"], sets=("harmful", "benign", "custom"), cost_threshold=thr)
    summary["kinds"] = kinds["methods"]
    summary["sets"] = {
        s: {"kind": e["kind"], "source": e["source"], "n": len(e["ids"])} for s, e in cfg["prompt_sets"].items()
    }
    summary["run"] = {
        "seed": cfg["shared"]["seed"],
        "max_new_tokens": cfg["shared"]["max_new_tokens"],
        "settings": cfg["shared"].get("settings") or {},
        "models": cfg["shared"]["models"],
        "records": len(records),
        "expected": len(wanted),
    }
    if readings:
        judge_thr = (cfg["shared"]["models"].get("judge") or {}).get("threshold")
        summary["readers"] = reader_agreement(records, readings, thr, judge_thr)
    write_json(out / SUMMARY, summary)
    return summary


# ---- the runner ------------------------------------------------------------------------------------------------


def run_eval(
    stack: Stack | StackPool,
    sources: Sequence[PromptSource],
    methods: str | Sequence[str],
    out: str | Path,
    *,
    seed: int = 0,
    max_new_tokens: int = 64,
    batch_size: int = 4,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    method_settings: Mapping[str, Mapping[str, Any]] | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Answer every prompt of ``sources`` with every method, appending records to ``out/results.jsonl``;
    returns the summary (also written to ``out/summary.json``). ``stack.judge`` (when set) scores every
    response after generation. Methods run in the given order, each over all prompt sets. ``stack`` may be a
    pool of stacks (:mod:`.distributed`, e.g. Ray workers): the batches are the same, answered where the
    stacks are, and this process writes each as it finishes (so the answers are the plain run's).

    ``method_settings``: per-method overrides over ``settings`` (see :func:`resolve_methods`). ``recipe``: the
    recipe the run came from (``recipes.Recipe.record()``: path, sha256, content); its sha256 and content join
    the shared configuration, so resuming with another recipe is refused, and its path is noted beside them."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("--batch-size", batch_size, "must be an integer >= 1")
    if not isinstance(seed, int):
        raise ConfigError("--seed", seed, "must be an integer")
    settings = {k: v for k, v in dict(settings or {}).items() if v is not None}
    own = {m: {k: v for k, v in dict(o).items() if v is not None} for m, o in dict(method_settings or {}).items()}
    cfgs = resolve_methods(methods, max_new_tokens, settings, own)  # bound to the stack where it is
    pool = as_pool(stack)
    facts = pool.call(describe_stack, cfgs, sources, max_new_tokens)  # fails on a missing critic, a long prompt
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "must be a folder (it is a file)")
    ensure_dir(out)
    # a kill in mid-write of one of the run's files leaves only a temporary sibling; --out is the user's folder,
    # so only the run's own files' leftovers go (the report's too: eval writes it at the end)
    sweep_temps(out, (CONFIG, SUMMARY, "summary.md", "pareto.png", "rewards.png", "report.html"))
    old = read_config(out)
    if old is None and (out / RESULTS).exists():
        raise ConfigError("--out", str(out), f"holds {RESULTS} but no {CONFIG}: it is not resumable; use a new folder")
    shared = _normal(
        {"seed": seed, "max_new_tokens": max_new_tokens, "settings": settings, "models": facts["models"]}
        | ({} if recipe is None else {"recipe": {"sha256": recipe["sha256"], "content": recipe["content"]}})
    )
    entries = _normal(facts["methods"])
    new = {
        "format": FORMAT,
        "shared": shared,
        "methods": entries,
        "method_keys": {m: _key(shared, e) for m, e in entries.items()},
        "prompt_sets": {
            s.name: {
                "source": s.spec,
                "kind": s.kind,
                "limit": s.limit,
                "sample_seed": s.sample_seed,
                "ids": [p.id for p in s.prompts],
            }
            for s in sources
        },
        "batch_size": batch_size,
    }
    config = merge_config(old, new, out)
    config["batch_size"] = batch_size  # informational: the latest run's batch size
    if recipe is not None:
        config["recipe_path"] = str(recipe["path"])  # informational: where the latest run read its recipe
    write_json(out / CONFIG, config)

    done = read_results(out / RESULTS, repair=True)
    keys = config["method_keys"]
    for n, r in enumerate(done, 1):
        if r.get("method") not in keys or r.get("config_key") != keys[r["method"]]:
            raise ConfigError(
                "--out",
                str(out),
                f"holds results from a different configuration ({RESULTS} record {n}: method {r.get('method')!r}, "
                f"config key {r.get('config_key')!r}, expected {keys.get(r.get('method'))!r}); use another --out",
            )
    finished = {(r["method"], r["id"]) for r in done}
    todo = [(m, s, [p for p in s.prompts if (m, p.id) not in finished]) for m in cfgs for s in sources]
    batches = [(m, s, ps[i : i + batch_size]) for m, s, ps in todo for i in range(0, len(ps), batch_size)]
    total = sum(len(b) for _, _, b in batches)
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="eval", unit="answer", dynamic_ncols=True)
    tally = {"n": 0, "safe": 0, "judge_safe": 0}
    append_jsonl(out / RESULTS, [])  # the results file exists from the start, as before any batch
    try:
        jobs = [(cfgs[m], batch, seed, keys[m]) for m, _, batch in batches]
        for i, records in pool.map(answer_batch, jobs):  # in order in process; as they finish on workers
            method, source, _ = batches[i]
            append_jsonl(out / RESULTS, records)
            for r in records:
                tally["n"] += 1
                tally["safe"] += bool(r["safe"])
                tally["judge_safe"] += bool(r.get("judge_safe"))
            if bar is not None:
                bar.update(len(records))
                bar.set_postfix(
                    method=method,
                    set=source.name,
                    safe=f"{tally['safe'] / tally['n']:.0%}",
                    judge_safe=f"{tally['judge_safe'] / tally['n']:.0%}",
                    **pool.status(),
                )
            if on_batch is not None:
                on_batch(records)
    finally:
        if bar is not None:
            bar.close()
    return summarise_run(out)


def _check_lengths(stack: Stack, sources: Sequence[PromptSource], max_new_tokens: int) -> None:
    """Refuse a prompt that cannot fit the context before any generation (not halfway through the run)."""
    lm = stack.lm
    for s in sources:
        for p in s.prompts:
            n = len(lm.encode_prompt(p.text, arg=f"{s.name}:{p.id}"))
            lm.check_room(n, max_new_tokens, "--max-new-tokens", f"prompt {s.name}:{p.id}")


def describe_stack(
    stack: Stack, cfgs: Mapping[str, SearchConfig], sources: Sequence[PromptSource], max_new_tokens: int
) -> dict[str, Any]:
    """What the configuration needs from the stack, computed where the stack is (here or on a worker): every
    method bound to it (a missing critic fails here), every prompt checked to fit, the models' identities."""
    bound = {m: bind(c, stack) for m, c in cfgs.items()}
    _check_lengths(stack, sources, max_new_tokens)
    return {"models": stack_identity(stack), "methods": {m: _method_entry(c, stack) for m, c in bound.items()}}


def answer_batch(stack: Stack, cfg: SearchConfig, batch: list[Prompt], seed: int, key: str) -> list[dict[str, Any]]:
    """One batch of one method (its preset, not yet bound) answered on ``stack``: a job for any pool."""
    return _answer(stack, bind(cfg, stack), batch, seed, key)


def _answer(stack: Stack, cfg: SearchConfig, batch: list[Prompt], seed: int, key: str) -> list[dict[str, Any]]:
    """Search one batch, then judge its answers; one JSON-able record per prompt."""
    results = search(stack, [p.text for p in batch], cfg, seed=seed)
    judge = stack.judge
    scores: list[float | None] = [None] * len(batch)
    if judge is not None:
        scores = [float(x) for x in judge.score([p.text for p in batch], [r.response for r in results])]
    thr = getattr(judge, "threshold", None)
    steps = cfg.steer.steps if isinstance(cfg.steer, ValueSteer) else 0
    records = []
    for p, r, js in zip(batch, results, scores):
        d = r.to_dict()
        judge_safe = None if js is None or thr is None else bool(js <= thr)
        rec = {
            "method": cfg.method,
            "set": p.set,
            "id": p.id,
            "prompt": p.text,
            "response": d.pop("response"),
            "reward": d.pop("reward"),
            "cost": d.pop("cost"),
            "safe": d.pop("safe"),
            "judge_score": js,
            "judge_verdict": None if judge_safe is None else ("safe" if judge_safe else "unsafe"),
            "judge_safe": judge_safe,
            "refusal": is_refusal(r.response),
        }
        d.pop("prompt"), d.pop("method")
        rec.update(d)
        rec["steer_gradient_steps"] = steps * r.lm_forward_passes  # RE-Control: critic fwd+bwd per LM pass
        rec["config_key"] = key
        records.append(rec)
    return records
