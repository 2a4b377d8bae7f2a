"""Critic training data (method.md §4): R rollouts per prompt from the base model, with the hidden state and
the safety state at every block boundary, labelled by the final reward and the final safety outcome.

Rollouts use the engine's ``sample`` strategy with ``record_hidden=True`` and the block size of the
InferenceGuard search the critic will guide, so h_k is exactly the vector the search hands the critic.

Budgets (the Sauté trick, choice): the engine tracks z from one starting budget d0 with gamma = 1, and
sampling never looks at z, so a rollout is the same for every budget. We store the cumulative safety charge
C_k = d0 - z_k(d0) after each block; for any budget d, z_k(d) = d - C_k and the trajectory is safe iff
C_final <= d. The trainer draws d from a range per state and epoch, so one rollout serves every budget.

Storage: ``<out>/meta.json`` (what was rolled out, checked on resume), then per batch of prompts one
``shard-NNNNN.safetensors`` (tensors) and ``shard-NNNNN.jsonl`` (responses, for reading), then the batch is
added to ``index.jsonl``, which is rewritten atomically (tmp file, then rename). A prompt counts as done only
once it is in the index, so a crash anywhere loses at most the batch in flight, and ``resume=True`` neither
redoes nor duplicates a finished prompt (an orphan shard of the lost batch is overwritten).

Workers: ``collect_rollouts`` also takes a pool of stacks (:mod:`inferenceguard.harness.distributed`, e.g. Ray
actors). The batches are the same; each is rolled out where a stack is, and this process writes the shards
and the index in batch order, so the folder is the one a plain run writes (only the seconds differ).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from inferenceguard._io import ensure_dir, jsonl, sweep_temps, write_atomic, write_text
from inferenceguard.engine import Stack, sampling, search
from inferenceguard.errors import AssetError, ConfigError
from inferenceguard.harness.distributed import StackPool, as_pool
from inferenceguard.scorers.base import resolve_budget
from inferenceguard.strategies import BLOCK, preset

FORMAT = "inferenceguard.rollouts/1"
META, INDEX = "meta.json", "index.jsonl"
SETS = ("advbench", "harmbench", "donotanswer", "benign")
DEFAULT_PROMPTS = "advbench:100,harmbench:50,donotanswer:50,benign:100"
_FINGERPRINT = (
    "base_identity",
    "lm_dtype",
    "hidden_size",
    "reward",
    "cost",
    "rollouts",
    "block",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "budget",
    "seed",
)


@dataclass(frozen=True)
class RolloutConfig:
    """How rollouts are drawn. ``block`` must be the block of the search the critic will guide."""

    rollouts: int = 5  # R per prompt (paper: 5)
    block: int = BLOCK
    max_new_tokens: int = 64
    temperature: float | None = None  # None: the base model's sampling defaults (top_p etc. always are)
    budget: float | None = None  # d0 the engine tracks z from (any value works, see above); None = cost threshold
    batch_prompts: int = 32  # prompts per shard; all their rollouts are written together
    seed: int = 0

    def __post_init__(self) -> None:
        for name, lo in (("rollouts", 1), ("block", 1), ("max_new_tokens", 1), ("batch_prompts", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < lo:
                raise ConfigError(name, v, f"must be an integer >= {lo}")
        if self.rollouts > 1000:
            raise ConfigError("rollouts", self.rollouts, "must be <= 1000")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError("temperature", self.temperature, "must be > 0")
        if self.budget is not None and not self.budget > 0:
            raise ConfigError("budget", self.budget, "must be > 0")


@dataclass
class RolloutData:
    """Every stored rollout, flattened: M states (one per block boundary) of n rollouts of P prompts."""

    h: torch.Tensor  # (M, H) float32 last-layer hidden state of the last token after block k
    charge: torch.Tensor  # (M,) float32 cumulative safety charge C_k after block k
    step: torch.Tensor  # (M,) long k
    rollout: torch.Tensor  # (M,) long index into the per-rollout tensors
    prompt: torch.Tensor  # (n,) long index into ``prompts``
    reward: torch.Tensor  # (n,) float32 reward model on the final response
    final_charge: torch.Tensor  # (n,) float32 C at the end: safe under budget d iff final_charge <= d
    steps: torch.Tensor  # (n,) long number of blocks S
    prompts: list[str]
    sources: list[str]
    meta: dict[str, Any]

    @property
    def hidden_size(self) -> int:
        return int(self.h.shape[1])


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:20]


def _seed(seed: int, r: int) -> int:
    """Rollout r of every prompt uses this engine seed (the engine seeds each prompt's own generator with it,
    so a prompt's rollouts do not depend on which prompts share its batch)."""
    return seed * 1000 + r


# ---- training prompts ----------------------------------------------------------------------------------------


def _set_pool(name: str) -> list[str]:
    from inferenceguard import datasets

    if name == "advbench":
        return datasets.advbench()[datasets.EVAL_ADVBENCH :]
    if name == "benign":
        return datasets.benign_prompts()[datasets.EVAL_BENIGN :]
    return getattr(datasets, name)()


def training_prompts(spec: str | Sequence[str] = DEFAULT_PROMPTS, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, source) pairs from a spec: comma-separated items, each a packaged set name with an optional
    count (``advbench:100``; sets: advbench, harmbench, donotanswer, benign) or a prompt file. A count draws
    a seeded random subset, kept in file order. The evaluation prompts and near copies of them
    (:func:`~inferenceguard.datasets.near_eval`) and the prompts of the on-policy labels' test split
    (:func:`~inferenceguard.datasets.split_of`) are always removed, from files too, and duplicates dropped."""
    from inferenceguard.datasets import near_eval, normalise, split_of
    from inferenceguard.harness.prompts import is_file, read_prompt_file

    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ConfigError("prompts", spec, "must name at least one prompt set or file")
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for item in items:
        name, _, count = item.partition(":")
        if name in SETS:
            pool, source = _set_pool(name), name
        elif is_file(item):  # a name too long for the system is no file (not an OSError)
            pool, source, count = read_prompt_file(Path(item).expanduser(), arg="--prompts"), Path(item).name, ""
        else:
            raise ConfigError("prompts", item, f"must be a set ({', '.join(SETS)}, optionally ':N') or a file")
        reserved = near_eval(pool)  # evaluation prompts and near copies; nor the labelled test split's prompts
        pool = [p for p in pool if normalise(p) not in reserved and split_of(p) != "test"]
        if count:
            if not count.isdigit() or int(count) < 1:
                raise ConfigError("prompts", item, "must give a positive integer count after ':'")
            keep = sorted(random.Random(f"{seed}:{name}").sample(range(len(pool)), min(int(count), len(pool))))
            pool = [pool[i] for i in keep]
        for p in pool:
            if normalise(p) not in seen:
                seen.add(normalise(p))
                out.append((p, source))
    if not out:
        raise ConfigError("prompts", spec, "holds no usable training prompt (after removing evaluation prompts)")
    return out


# ---- collection ----------------------------------------------------------------------------------------------


def _meta(stack: Stack, cfg: RolloutConfig) -> dict[str, Any]:
    d0 = resolve_budget(cfg.budget, stack.cost)
    return {
        "format": FORMAT,
        "base_identity": stack.lm.identity,
        "hidden_size": stack.lm.hidden_size,
        "lm_dtype": str(stack.lm.dtype).replace("torch.", ""),
        "layer": "last",
        "reward": getattr(stack.reward, "name", type(stack.reward).__name__),
        "cost": getattr(stack.cost, "name", type(stack.cost).__name__),
        "cost_threshold": getattr(stack.cost, "threshold", None),
        **asdict(cfg),
        **_sampling(stack, cfg),
        "budget": float(d0),
        "gamma": 1.0,
    }


def _sampling(stack: Stack, cfg: RolloutConfig) -> dict[str, Any]:
    """The sampling the rollouts really use (the base model's defaults, the temperature if given)."""
    scfg = sampling.resolve(preset("sample", temperature=cfg.temperature), stack.lm.sampling_defaults)
    return {k: getattr(scfg, k) for k in sampling.FIELDS}


def _read_index(folder: Path) -> list[dict[str, Any]]:
    path = folder / INDEX
    if not path.is_file():
        return []
    lines = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise AssetError(f"'{path}' line {n} is corrupt ({e.msg}); delete that line to redo its prompts") from e
    return lines


def _open_folder(folder: Path, meta: dict[str, Any], resume: bool) -> list[dict[str, Any]]:
    """The index of finished batches; checks that a resumed folder was rolled out the same way."""
    ensure_dir(folder)
    sweep_temps(folder)  # what a kill in mid-write left (the named files are whole: each is written atomically)
    index = _read_index(folder)
    if index:
        old = json.loads((folder / META).read_text(encoding="utf-8")) if (folder / META).is_file() else {}
        if not resume:
            n = sum(len(b["prompts"]) for b in index)
            raise ConfigError(
                "resume",
                False,
                f"must be set to continue '{folder}', which already holds the "
                f"rollouts of {n} prompts (or choose another folder)",
            )
        diff = [k for k in _FINGERPRINT if old.get(k, meta.get(k)) != meta.get(k)]  # a key an older folder lacks
        if diff:
            raise ConfigError(
                "rollout_dir",
                str(folder),
                "holds rollouts made with other settings ("
                + ", ".join(f"{k}: {old.get(k)!r} there, {meta.get(k)!r} now" for k in diff)
                + "); use another folder",
            )
    else:
        write_text(folder / META, json.dumps(meta, indent=2) + "\n")
    return index


def _usable(stack: Stack, items: list[tuple[str, str]], cfg: RolloutConfig) -> tuple[list[tuple[str, str]], int]:
    """Drop prompts the model cannot take (empty, or too long for max_new_tokens more) and exact duplicates."""
    lm, seen, out, dropped = stack.lm, set(), [], 0
    for p, s in items:
        try:
            n = len(lm.encode_prompt(p))
        except ConfigError:
            n = lm.max_context
        if n + cfg.max_new_tokens > lm.max_context or p in seen:
            dropped += 1
            continue
        seen.add(p)
        out.append((p, s))
    return out, dropped


def describe_rollouts(stack: Stack, items: list[tuple[str, str]], cfg: RolloutConfig) -> dict[str, Any]:
    """What collection needs from the stack, computed where it is (here or on a worker): the usable prompts,
    how many were dropped, the folder's meta and the LM's dtype."""
    usable, dropped = _usable(stack, items, cfg)
    if not usable:
        raise ConfigError(
            "prompts",
            f"<{dropped} prompts>",
            f"holds no usable prompt (all empty, duplicated, or too long for {cfg.max_new_tokens} new tokens)",
        )
    dtype = str(stack.lm.dtype).replace("torch.", "")
    return {"items": usable, "dropped": dropped, "meta": _meta(stack, cfg), "lm_dtype": dtype}


def roll_out(stack: Stack, prompts: list[str], scfg: Any, rollouts: int, seed: int) -> tuple[list[list[Any]], float]:
    """One batch's rollouts (``rollouts`` x the batch's results) and the seconds they took: a job for any pool."""
    t = time.perf_counter()
    results = [search(stack, prompts, scfg, seed=_seed(seed, r)) for r in range(rollouts)]
    return results, time.perf_counter() - t


def collect_rollouts(
    stack: Stack | StackPool,
    prompts: Sequence[str] | Sequence[tuple[str, str]],
    out: str | Path,
    cfg: RolloutConfig = RolloutConfig(),
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Roll out ``cfg.rollouts`` answers per prompt into the folder ``out`` (see the module docstring);
    returns a summary. Prompts are strings or (prompt, source) pairs. ``stack`` may be a pool of stacks."""
    from tqdm.auto import tqdm

    items = [(p, "prompts") if isinstance(p, str) else (p[0], p[1]) for p in prompts]
    if not items:
        raise ConfigError("prompts", [], "must hold at least one prompt to roll out")
    pool = as_pool(stack)
    facts = pool.call(describe_rollouts, items, cfg)
    items, dropped, meta = facts["items"], facts["dropped"], facts["meta"]
    folder = Path(out).expanduser()
    index = _open_folder(folder, meta, resume)
    done = {p["key"] for b in index for p in b["prompts"]}
    todo = [(prompt_key(p), p, s) for p, s in items if prompt_key(p) not in done]
    scfg = replace(
        preset(
            "sample",
            block=cfg.block,
            max_new_tokens=cfg.max_new_tokens,
            budget=meta["budget"],
            temperature=cfg.temperature,
        ),
        record_hidden=True,
    )
    total = len(items)
    bar = tqdm(total=total, initial=total - len(todo), desc="rollouts", unit="prompt", disable=not progress)
    t0, tokens, new_rollouts = time.perf_counter(), 0, 0
    try:
        chunks = [todo[i : i + cfg.batch_prompts] for i in range(0, len(todo), cfg.batch_prompts)]
        jobs = [([p for _, p, _ in chunk], scfg, cfg.rollouts, cfg.seed) for chunk in chunks]
        for n, (results, seconds) in pool.map(roll_out, jobs, ordered=True):  # shards in batch order
            chunk = chunks[n]
            entry = _write_shard(folder, len(index), chunk, results, meta["budget"])
            entry["seconds"] = round(seconds, 2)
            index.append(entry)
            write_text(folder / INDEX, jsonl(index, ensure_ascii=True))
            tokens += sum(res.tokens_sampled for rs in results for res in rs)
            new_rollouts += entry["rollouts"]
            bar.update(len(chunk))
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(tok_s=f"{tokens / dt:.0f}", rollouts_s=f"{new_rollouts / dt:.2f}", **pool.status())
    finally:
        bar.close()
    n_prompts = sum(len(b["prompts"]) for b in index)
    return {
        "folder": str(folder),
        "prompts": n_prompts,
        "rollouts": sum(b["rollouts"] for b in index),
        "states": sum(b["states"] for b in index),
        "new_prompts": len(todo),
        "skipped_prompts": dropped,
        "seconds": round(time.perf_counter() - t0, 1),
        "seconds_all_batches": round(sum(b.get("seconds", 0.0) for b in index), 1),  # this and earlier runs
        "tokens_per_second": round(tokens / max(time.perf_counter() - t0, 1e-9), 1),
        "lm_dtype": facts["lm_dtype"],
    }


def _write_shard(
    folder: Path, n: int, chunk: list[tuple[str, str, str]], results: list[list[Any]], d0: float
) -> dict[str, Any]:
    """Write one batch's tensors and texts (each atomically); returns its index entry (not yet added)."""
    from safetensors.torch import save_file

    h, charge, step, rollout = [], [], [], []
    prompt, seed_idx, reward, final, steps, cost, texts = [], [], [], [], [], [], []
    for r, batch in enumerate(results):
        for j, res in enumerate(batch):
            hid = res.hidden_trajectory  # (S, H)
            if hid is None or hid.shape[0] == 0 or hid.shape[0] != len(res.budget_trajectory):
                raise AssetError(f"the engine returned no hidden trajectory for {chunk[j][1][:60]!r}")
            c = d0 - torch.tensor(res.budget_trajectory, dtype=torch.float64)  # (S,) cumulative charges
            k = len(reward)
            h.append(hid.float())
            charge.append(c.float())
            step.append(torch.arange(hid.shape[0]))
            rollout.append(torch.full((hid.shape[0],), k))
            prompt.append(j)
            seed_idx.append(r)
            reward.append(res.reward)
            final.append(float(c[-1]))
            steps.append(hid.shape[0])
            cost.append(res.cost)
            texts.append(
                {
                    "key": chunk[j][0],
                    "rollout": r,
                    "response": res.response,
                    "reward": res.reward,
                    "cost": res.cost,
                    "final_charge": float(c[-1]),
                    "finish_reason": res.finish_reason,
                    "new_tokens": res.new_tokens,
                }
            )
    tensors = {
        "h": torch.cat(h).contiguous(),
        "charge": torch.cat(charge),
        "step": torch.cat(step).long(),
        "rollout": torch.cat(rollout).long(),
        "prompt": torch.tensor(prompt, dtype=torch.long),
        "seed_index": torch.tensor(seed_idx, dtype=torch.long),
        "reward": torch.tensor(reward, dtype=torch.float32),
        "final_charge": torch.tensor(final, dtype=torch.float32),
        "steps": torch.tensor(steps, dtype=torch.long),
        "cost": torch.tensor(cost, dtype=torch.float32),
    }
    name = f"shard-{n:05d}"
    write_text(folder / f"{name}.jsonl", jsonl(texts))
    write_atomic(folder / f"{name}.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    return {
        "shard": f"{name}.safetensors",
        "texts": f"{name}.jsonl",
        "prompts": [{"key": k, "prompt": p, "source": s} for k, p, s in chunk],
        "rollouts": len(reward),
        "states": int(tensors["h"].shape[0]),
    }


# ---- loading -------------------------------------------------------------------------------------------------


def load_rollouts(folder: str | Path) -> RolloutData:
    """Everything the index lists, as one :class:`RolloutData` (shards missing from the index are ignored)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    if not (folder / META).is_file():
        raise AssetError(f"'{folder}' holds no rollouts ('{META}' is missing); collect them first")
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    index = _read_index(folder)
    parts: dict[str, list[torch.Tensor]] = {}
    prompts: list[str] = []
    sources: list[str] = []
    seen: set[str] = set()
    n_roll = 0
    for entry in index:
        path = folder / entry["shard"]
        try:
            t = load_file(str(path))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise AssetError(
                f"cannot read the rollout shard '{path}' ({e}); remove its line from "
                f"'{folder / INDEX}' and resume to redo its prompts"
            ) from e
        for p in entry["prompts"]:
            if p["key"] in seen:
                raise AssetError(f"'{folder / INDEX}' lists the prompt {p['prompt'][:60]!r} twice")
            seen.add(p["key"])
        base = len(prompts)
        prompts += [p["prompt"] for p in entry["prompts"]]
        sources += [p["source"] for p in entry["prompts"]]
        t["prompt"] = t["prompt"] + base
        t["rollout"] = t["rollout"] + n_roll
        n_roll += int(t["reward"].shape[0])
        for k, v in t.items():
            parts.setdefault(k, []).append(v)
    if not prompts:
        raise AssetError(f"'{folder}' holds no finished rollouts yet")
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return RolloutData(
        h=cat["h"].float(),
        charge=cat["charge"],
        step=cat["step"],
        rollout=cat["rollout"],
        prompt=cat["prompt"],
        reward=cat["reward"],
        final_charge=cat["final_charge"],
        steps=cat["steps"],
        prompts=prompts,
        sources=sources,
        meta=meta,
    )
