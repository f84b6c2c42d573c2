"""The counts issue 15 asks for, from the tests that measure them, in one run:

- the attack corpus (tests/test_attack_corpus.py): inputs tried, clean one-line errors, files
  changed (hashes of every file before and after each input);
- the signal trials (tests/test_signals.py): SIGKILL, SIGTERM and SIGHUP at random moments of a
  generation, finished completions made and lost;
- memory per served tab (benchmarks/serve_memory.py), unless --no-serve.

    .venv/bin/python benchmarks/robustness_counts.py [--signal-trials 10] [--model default]
        [--no-serve]

Prints a Markdown table; exits non-zero when a count is not what the issue requires (a test
failed, a file changed, a completion was lost).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = re.compile(r"attack corpus: (\d+) inputs tried, (\d+) clean errors, (\d+) files changed")
SIGNALS = re.compile(r"SIG(\w+): (\d+) trials, (\d+) finished completions, (\d+) lost")


def run_tests(signal_trials: int) -> tuple[str, int]:
    command = [sys.executable, "-m", "pytest", "-q", "-rP", "-p", "no:cacheprovider",
               "tests/test_attack_corpus.py",
               "tests/test_signals.py::test_many_signals_at_random_moments"]
    env = {**os.environ, "TEXTGEN_SIGNAL_TRIALS": str(signal_trials),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    return done.stdout + done.stderr, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal-trials", type=int, default=10, help="per signal")
    parser.add_argument("--model", default="default", help="the served model, for memory")
    parser.add_argument("--no-serve", action="store_true", help="skip the memory per tab")
    args = parser.parse_args()

    output, status = run_tests(args.signal_trials)
    rows = ["| count | value |", "|---|---|"]
    ok = status == 0
    corpus = CORPUS.search(output)
    if corpus is None:
        print(output[-3000:], file=sys.stderr)
        return 1
    tried, clean, changed = map(int, corpus.groups())
    rows += [f"| attack inputs tried | {tried} |", f"| clean one-line errors | {clean} |",
             f"| files changed | {changed} |"]
    ok &= clean == tried and changed == 0
    made = lost = 0
    for name, trials, finished, gone in SIGNALS.findall(output):
        rows.append(f"| SIG{name}: trials, finished completions, lost | {trials}, {finished}, "
                    f"{gone} |")
        made, lost = made + int(finished), lost + int(gone)
    rows.append(f"| finished completions lost to signals | {lost} of {made} |")
    ok &= lost == 0
    if not args.no_serve:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from serve_memory import measure

        for tabs in (1, 4):
            run = asyncio.run(measure(args.model, tabs, False, [], 900.0))
            pss = sum(t["pss_mb"] for t in run["tabs"]) / tabs
            rows.append(f"| memory per served tab, {tabs} tab(s) on the shared engine "
                        f"(PSS) | {pss:.0f} MB (engine {run['engine']['pss_mb']:.0f} MB) |")
    print("\n".join(rows))
    if not ok:
        print(output[-3000:], file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
