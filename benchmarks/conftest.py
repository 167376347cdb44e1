"""Print, after the pytest-benchmark tables, each benchmark's median as a ratio of the baselines in its group.

Every benchmark records ``extra_info["impl"]``; ratios are against the implementations named in
``RATIO_BASELINES`` measured in the same run and the same group (same N, G, ...), never against stored numbers.
"""

from __future__ import annotations

RATIO_BASELINES = ("bincount_floor", "sum_floor", "plain_step", "import_torch")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    by_group: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        impl = bench.extra_info.get("impl")
        if impl is not None and bench.stats is not None:
            by_group.setdefault(bench.group or "", {})[impl] = bench.stats.median
    write = terminalreporter.write_line
    write("")
    write("median time and ratios to same-run baselines (x = times the baseline's median)")
    for group, times in sorted(by_group.items()):
        bases = [b for b in RATIO_BASELINES if b in times]
        write(f"[{group}]")
        for impl, t in sorted(times.items(), key=lambda kv: kv[1]):
            ratios = "  ".join(f"{t / times[b]:7.2f}x {b}" for b in bases)
            write(f"  {impl:<24} {t * 1e3:10.3f} ms  {ratios}")
