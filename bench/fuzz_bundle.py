"""Long fuzzing run of the bundle readers: the cases of tests/integration/test_fuzz_bundle.py,
for as many examples as asked, printing cases tried, outcomes by kind and crashes.

Each case is a real signed bundle mutated by hypothesis (tar header fields, PAX records,
member order, the manifest JSON re-signed by the trusted key, signature members, the end
of the archive, split parts) and run through verify, unpack, the host-side unpack, inspect
and join, checking the invariants of tests/fuzzkit.py. A crash is any other exception or a
broken invariant; the run stops at the first one and prints the shrunk case. Exit 1 then.

    .venv/bin/python bench/fuzz_bundle.py --cases 20000 --seed 1
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.fuzzkit import Base, check, mutate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000, help="examples to try")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (reproducible)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="airlock-fuzz-") as tmp:
        root = Path(tmp)
        base = Base.make(root / "base")
        kinds: dict[str, dict[str, int]] = {}
        counter = itertools.count()

        @seed(args.seed)
        @settings(
            max_examples=args.cases,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            kind, tar = mutate(data.draw, base)
            split = data.draw if data.draw(st.integers(0, 5)) == 0 else None
            work = root / f"case-{next(counter)}"
            try:
                outcome = check(base, tar, work, split=split)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            mutation = kind + ("+split" if split else "")
            base.stats[outcome] += 1
            row = kinds.setdefault(mutation.split("+")[0], {})
            row[outcome] = row.get(outcome, 0) + 1

        started = time.monotonic()
        crashed = False
        try:
            run()
        except Exception as e:  # the shrunk failing case is printed by hypothesis
            crashed = True
            traceback.print_exc()
            print(f"CRASH: {type(e).__name__}: {e}", file=sys.stderr)
        tried = next(counter)
        print(f"cases tried: {tried} in {time.monotonic() - started:.0f} s (seed {args.seed})")
        for outcome, n in base.stats.most_common():
            print(f"  {outcome:<22} {n:>7}")
        print("by first mutation:")
        for kind, row in sorted(kinds.items()):
            print(f"  {kind:<10} " + ", ".join(f"{k} {v}" for k, v in sorted(row.items())))
        print(f"crashes: {1 if crashed else 0}")
        return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
