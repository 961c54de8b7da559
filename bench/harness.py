"""Public face of the benchmark harness: import what a case module needs from here.

Write a case module ``bench/cases_<topic>.py``::

    from __future__ import annotations

    from harness import Context, case


    @case("chunking.stream_sum", group="chunking", peer="bigarr",
          baseline="baseline.memmap_sum", limit={"cold": "machine.disk_read",
          "warm": "machine.mem_bw_1t"})
    def stream_sum(ctx: Context) -> dict[str, object]:
        \"\"\"Sum the .npy file in chunks with bigarr.\"\"\"
        import bigarr  # import the library inside the case

        with ctx.timer():
            total = ...  # the work being measured
        return {"checksum": total, "bytes_processed": ctx.nbytes}

``python bench/run.py`` imports every ``cases_*.py`` and runs each selected
case once per repeat and cache mode, each run in a fresh interpreter.
"""

from __future__ import annotations

from harness_cache import evict, prepare, residency, warm
from harness_cgroup import CgroupRun, MemoryCgroup, cgroup_unavailable, run_in_memory_cgroup
from harness_core import (
    CACHE_MODES,
    CHECKSUM_RTOL,
    CaseSpec,
    Context,
    case,
    format_size,
    parse_size,
    registered_cases,
)
from harness_data import expected_sum, pattern_block, register_dataset, write_pattern
from harness_machine import (
    cold_read_throughput,
    memory_bandwidth,
    sequential_read,
    threaded_sum,
)

__all__ = [
    "CACHE_MODES",
    "CHECKSUM_RTOL",
    "CaseSpec",
    "CgroupRun",
    "Context",
    "MemoryCgroup",
    "case",
    "cgroup_unavailable",
    "cold_read_throughput",
    "evict",
    "expected_sum",
    "format_size",
    "memory_bandwidth",
    "parse_size",
    "prepare",
    "register_dataset",
    "registered_cases",
    "residency",
    "run_in_memory_cgroup",
    "sequential_read",
    "threaded_sum",
    "warm",
    "pattern_block",
    "write_pattern",
]
