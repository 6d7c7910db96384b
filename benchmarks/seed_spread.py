"""Every learning test's thresholds against the spread of its values over many seeds.

Runs ``pytest -m learning`` once per seed with ``$DREAMLAB_TEST_SEED`` set and
``$DREAMLAB_SPREAD_FILE`` pointing at a per-seed file: the ``check`` fixture (tests/conftest.py)
then records every value instead of failing. Each seed's records land in ``OUT/seed_S.jsonl``
(written whole, then renamed), so a killed sweep resumes with the seeds it has not finished.

    .venv/bin/python benchmarks/seed_spread.py --seeds 12 --jobs 2 --out /tmp/seed-spread
    .venv/bin/python benchmarks/seed_spread.py --seeds 20 --dream-precision bfloat16 \
        --out /tmp/seed-spread-bf16 tests/test_catch_learning.py

prints, per check, the bound and the min / median / max over the seeds, and how many seeds
failed it: a threshold is sound when the worst seed clears it with room to spare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from dreamlab.progress import tqdm

ROOT = Path(__file__).resolve().parent.parent


def run_seed(seed: int, out: Path, extra: list[str], precision: str | None = None) -> float:
    """Run the learning tests on ``seed`` into ``out/seed_S.jsonl``; return seconds taken.
    ``precision`` sets the precision of the dreams the learning tests train C in
    (``$DREAMLAB_TEST_DREAM_PRECISION``)."""
    final = out / f"seed_{seed}.jsonl"
    partial = out / f".seed_{seed}.jsonl.partial"
    partial.unlink(missing_ok=True)
    env = {**os.environ, "DREAMLAB_TEST_SEED": str(seed), "DREAMLAB_SPREAD_FILE": str(partial)}
    if precision is not None:
        env["DREAMLAB_TEST_DREAM_PRECISION"] = precision
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "learning", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + extra, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:  # check() never fails in this mode: this is a crash
        sys.exit(f"seed {seed}: pytest exited {proc.returncode}\n{proc.stdout[-4000:]}")
    os.replace(partial, final)
    return seconds


def table(out: Path) -> str:
    """Markdown table of every check over the seeds recorded in ``out``."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    bounds: dict[tuple[str, str], tuple[str, float]] = {}
    seeds: set[int] = set()
    for path in sorted(out.glob("seed_*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            key = (r["test"].split("::", 1)[1], r["name"])
            values[key].append(r["value"])
            bounds[key] = (r["op"], r["bound"])
            seeds.add(r["seed"])
    rows = [
        f"{len(seeds)} seeds ({min(seeds)}-{max(seeds)})" if seeds else "no seeds",
        "",
        "| test | check | bound | min | median | max | seeds failing |",
        "|---|---|---|---|---|---|---|",
    ]
    for (test, name), vals in sorted(values.items()):
        op, bound = bounds[(test, name)]
        v = np.array(vals)
        fails = int(
            (~{">": v > bound, ">=": v >= bound, "<": v < bound, "<=": v <= bound}[op]).sum()
        )
        rows.append(
            f"| `{test}` | {name} | {op} {bound:g} | {v.min():.4g} | {np.median(v):.4g} | "
            f"{v.max():.4g} | {fails}/{len(v)} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--first", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dreamlab-seed-spread"))
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (default 1)")
    parser.add_argument(
        "--dream-precision",
        choices=("float32", "bfloat16"),
        default=None,
        help="precision of the dreams C trains in (default: the tests' own, float32)",
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. a file)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [
        s
        for s in range(args.first, args.first + args.seeds)
        if not (args.out / f"seed_{s}.jsonl").exists()
    ]
    t0 = time.perf_counter()
    # each pytest runs on one torch thread (tests/conftest.py): one seed per core
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(todo), desc="seeds") as bar:
        futures = {
            pool.submit(run_seed, s, args.out, args.pytest_args, args.dream_precision): s
            for s in todo
        }
        for future in as_completed(futures):
            bar.write(f"seed {futures[future]}: {future.result():.0f} s")
            bar.update(1)
    print(f"{len(todo)} seeds run in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    print(table(args.out))


if __name__ == "__main__":
    main()
