"""The long jobs on tiny stacks, each with the check of a killed-and-resumed run against an uninterrupted one.

Every ``*_campaign`` runs the job once uninterrupted (the reference), then in a second folder under
:func:`~tests.reliability.faults.run_killed` with the same seeds, checking the folder after every kill, and
returns what it found: kills, records lost and duplicated, and which files equal the reference's. Byte-equal
is asked of every file the job writes deterministically; files holding wall-clock facts (``seconds``,
creation dates) are compared without those keys.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferenceguard.engine import Stack
from tests.reliability.faults import jsonl_rows, lost_and_duplicated, run_killed, temp_files, timed, tree, untimed

PROMPTS = [
    "hello there",
    "write a poem about the sea",
    "what is x",
    "tell me a story",
    "zip zap",
    "why is the sky blue",
    "count to ten",
    "name three birds",
]
EVAL_METHODS = "sample,bon,beam-safety,inferenceguard"


def _campaign(
    root: Path,
    job: Callable[[Path], Callable[[], Any]],
    check: Callable[[Path, Path], dict[str, Any]],
    invariant: Callable[[Path], None],
    seed: int,
    max_kills: int,
    slow_io: float = 0.0,
) -> dict[str, Any]:
    ref, got, horizon = root / "reference", root / f"killed-{seed}", root / "horizon.seconds"
    if not ref.exists():
        horizon.write_text(str(timed(job(ref))))
    rng = random.Random(seed)
    states: Counter[str] = Counter()

    def after_kill() -> None:
        invariant(got)
        states.update(left_by_kill(got))

    for _ in range(3):
        seconds = float(horizon.read_text())
        c = run_killed(job(got), rng, seconds, max_kills, after_kill=after_kill, slow_io=slow_io)
        if c.kills or not max_kills:
            break
        # the run ended before the first kill: the reference paid one-time costs (imports, caches) that a
        # forked child does not, so aim inside the child's own length and start again on a fresh folder
        horizon.write_text(str(0.9 * c.seconds))
        shutil.rmtree(got)
    facts = {"seed": seed, "kills": c.kills, "kill_delays": c.delays, "horizon_seconds": round(seconds, 2)}
    facts["left_by_kills"] = dict(states)
    return facts | check(ref, got)


def left_by_kill(folder: Path) -> list[str]:
    """What a kill left for the resume to repair: an atomic write's temporary file (killed in mid-write), a
    partial last line of results.jsonl (killed in mid-append), a shard the index does not list yet."""
    out = ["temporary file"] if temp_files(folder) else []
    for log in folder.rglob("results.jsonl"):
        if log.read_bytes() and not log.read_bytes().endswith(b"\n"):
            out.append("partial results line")
    for index in folder.rglob("index.jsonl"):
        if len(list(index.parent.glob("shard-*.safetensors"))) > len(jsonl_rows(index)):
            out.append("shard not yet indexed")
    return out


# ---- eval --------------------------------------------------------------------------------------------------------


def _eval_job(stack: Stack, prompts: Path) -> Callable[[Path], Callable[[], Any]]:
    from inferenceguard.harness.run import load_sources, run_eval

    def job(out: Path) -> Callable[[], Any]:
        return lambda: run_eval(
            stack,
            load_sources([str(prompts)]),
            EVAL_METHODS,
            out,
            seed=0,
            max_new_tokens=6,
            batch_size=3,
            settings={"candidates": 4, "block": 3},
            progress=False,
        )

    return job


def _eval_invariant(out: Path) -> None:
    """After a kill: config.json is whole JSON, every complete results line is a record, none twice."""
    from inferenceguard.harness.run import CONFIG, RESULTS

    if (out / CONFIG).exists():
        json.loads((out / CONFIG).read_text())
    keys = [(r["method"], r["id"]) for r in jsonl_rows(out / RESULTS)]
    assert len(keys) == len(set(keys)), "a record was written twice"


def _eval_check(ref: Path, got: Path) -> dict[str, Any]:
    from inferenceguard.harness.run import CONFIG, RESULTS, SUMMARY

    want, have = jsonl_rows(ref / RESULTS), jsonl_rows(got / RESULTS)
    lost, dup = lost_and_duplicated([(r["method"], r["id"]) for r in want], [(r["method"], r["id"]) for r in have])
    return {
        "records": len(have),
        "lost": lost,
        "duplicated": dup,
        "partial_line": not (got / RESULTS).read_bytes().endswith(b"\n"),
        "equal": {
            CONFIG: (ref / CONFIG).read_bytes() == (got / CONFIG).read_bytes(),
            f"{RESULTS} (without seconds)": untimed(want) == untimed(have),
            f"{SUMMARY} (without seconds)": untimed(json.loads((ref / SUMMARY).read_text()))
            == untimed(json.loads((got / SUMMARY).read_text())),
        },
        "temp_files": temp_files(got),
    }


def eval_campaign(root: Path, stack: Stack, seed: int, max_kills: int = 3, slow_io: float = 0.0) -> dict[str, Any]:
    """``eval`` (harness.run.run_eval: 4 methods x 8 prompts, batches of 3) killed and resumed."""
    prompts = root / "prompts.txt"
    if not prompts.exists():
        root.mkdir(parents=True, exist_ok=True)
        prompts.write_text("\n".join(PROMPTS) + "\n")
    job = _eval_job(stack, prompts)
    return {"job": "eval"} | _campaign(root, job, _eval_check, _eval_invariant, seed, max_kills, slow_io)


# ---- rollouts and train-critic -----------------------------------------------------------------------------------


def rollout_config() -> Any:
    from inferenceguard.training.rollouts import RolloutConfig

    return RolloutConfig(rollouts=2, block=4, max_new_tokens=10, batch_prompts=2, seed=3)


def _rollouts_invariant(folder: Path) -> None:
    """After a kill: the index is whole and every shard it lists loads."""
    from inferenceguard.training.rollouts import INDEX, META, load_rollouts

    if (folder / META).exists():
        json.loads((folder / META).read_text())
    if jsonl_rows(folder / INDEX):
        load_rollouts(folder)


def _rollouts_check(ref: Path, got: Path) -> dict[str, Any]:
    from inferenceguard.training.rollouts import INDEX

    want, have = jsonl_rows(ref / INDEX), jsonl_rows(got / INDEX)
    keys = [[p["key"] for b in rows for p in b["prompts"]] for rows in (want, have)]
    lost, dup = lost_and_duplicated(*keys)
    a, b = tree(ref), tree(got)
    return {
        "records": len(keys[1]),
        "lost": lost,
        "duplicated": dup,
        "equal": {
            "files (all but the index), bytes": {k: v for k, v in a.items() if k != INDEX}
            == {k: v for k, v in b.items() if k != INDEX},
            f"{INDEX} (without seconds)": untimed(want) == untimed(have),
        },
        "temp_files": temp_files(got),
    }


def rollouts_campaign(root: Path, stack: Stack, seed: int, max_kills: int = 3, slow_io: float = 0.0) -> dict[str, Any]:
    """``train-critic``'s collection (training.rollouts.collect_rollouts: 8 prompts x 2 rollouts, shards of 2)."""
    from inferenceguard.training.rollouts import collect_rollouts

    def job(out: Path) -> Callable[[], Any]:
        return lambda: collect_rollouts(stack, PROMPTS, out, rollout_config(), resume=True, progress=False)

    return {"job": "rollouts"} | _campaign(root, job, _rollouts_check, _rollouts_invariant, seed, max_kills, slow_io)


def _critic_invariant(out: Path) -> None:
    """After a kill: the rollouts are whole, and so is each critic file that exists."""
    from safetensors.torch import load_file

    _rollouts_invariant(out / "rollouts")
    if (out / "critic" / "critic.json").exists():
        json.loads((out / "critic" / "critic.json").read_text())
    if (out / "critic" / "critic.safetensors").exists():
        load_file(str(out / "critic" / "critic.safetensors"))


def _critic_check(ref: Path, got: Path) -> dict[str, Any]:
    out = _rollouts_check(ref / "rollouts", got / "rollouts")
    a, b = ref / "critic", got / "critic"
    out["equal"] |= {
        "critic.safetensors, bytes": (a / "critic.safetensors").read_bytes() == (b / "critic.safetensors").read_bytes(),
        "critic.json (without seconds, date)": untimed(json.loads((a / "critic.json").read_text()))
        == untimed(json.loads((b / "critic.json").read_text())),
    }
    out["temp_files"] = temp_files(got)
    return out


def train_critic_campaign(
    root: Path, stack: Stack, seed: int, max_kills: int = 3, slow_io: float = 0.0
) -> dict[str, Any]:
    """The whole ``train-critic`` pipeline (training.train_critic.build_critic: rollouts, training, save)."""
    from inferenceguard.training.rollouts import training_prompts
    from inferenceguard.training.train_critic import TrainConfig, build_critic

    prompts = root / "train-prompts.txt"
    if not prompts.exists():
        root.mkdir(parents=True, exist_ok=True)
        prompts.write_text("\n".join(f"{p} please" for p in PROMPTS) + "\n")
    training_prompts(str(prompts))  # load the evaluation prompts it holds out once, before the timed reference

    def job(out: Path) -> Callable[[], Any]:
        return lambda: build_critic(
            out / "critic",
            out / "rollouts",
            prompts=str(prompts),
            rollout_cfg=rollout_config(),
            train_cfg=TrainConfig(epochs=10, patience=10, val_share=0.25),
            workers=stack,
            resume=True,
            progress=False,
        )

    return {"job": "train-critic"} | _campaign(root, job, _critic_check, _critic_invariant, seed, max_kills, slow_io)


# ---- build-scorers -----------------------------------------------------------------------------------------------


def _heads_invariant(out: Path) -> None:
    """After a kill: every file of the heads folder is whole (JSON parses, safetensors load)."""
    from safetensors.torch import load_file

    for p in out.glob("*") if out.exists() else ():
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".safetensors":
            load_file(str(p))


def _heads_check(ref: Path, got: Path) -> dict[str, Any]:
    a, b = tree(ref), tree(got)
    manifest = [untimed(json.loads(x["manifest.json"])) for x in (a, b)]
    heads = {k for k in a if k != "manifest.json"}
    return {
        "records": len(b),
        "lost": len(set(a) - set(b)),
        "duplicated": 0,
        "equal": {
            "head files, bytes": {k: a[k] for k in heads} == {k: b.get(k) for k in heads},
            "manifest.json (without seconds, dates)": manifest[0] == manifest[1],
        },
        "temp_files": temp_files(got),
    }


def build_scorers_campaign(
    root: Path, lm: Any, encoder: Any, seed: int, max_kills: int = 3, slow_io: float = 0.0
) -> dict[str, Any]:
    """``build-scorers`` (training.build_scorers.build_default_heads) on the tiny models and rows its tests use."""
    from tests.training.test_build_scorers import tiny_heads

    def job(out: Path) -> Callable[[], Any]:
        return lambda: tiny_heads(out, lm, encoder)

    return {"job": "build-scorers"} | _campaign(root, job, _heads_check, _heads_invariant, seed, max_kills, slow_io)


def failures(report: dict[str, Any]) -> list[str]:
    """What a campaign's report says went wrong (empty: 0 lost, 0 duplicated, files equal, no temp files)."""
    out = [f"{k} = {report[k]}" for k in ("lost", "duplicated") if report[k]]
    out += [f"{name} differs from the uninterrupted run's" for name, same in report["equal"].items() if not same]
    out += [f"temporary file left: {t}" for t in report["temp_files"]]
    out += ["a partial last line was left"] if report.get("partial_line") else []
    return out
