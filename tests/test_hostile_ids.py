"""Ids are unguessable: 128 random bits each, none derived from another (an HTTP API
must not hand out enumerable ids). Cost: benchmarks/ids.py."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from synthhost.agent import parse_agent
from synthhost.call import new_id


def test_ids_are_random_not_sequential() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    values = [int(i, 16) for i in ids]
    for a, b in itertools.pairwise(values):
        assert abs(a - b) > 1 << 64  # never "the previous one plus a little"
        assert bin(a ^ b).count("1") > 20  # both halves random: ~64 of 128 bits differ
    # No shared per-process prefix either: the high 64 bits vary too.
    assert len({v >> 64 for v in values}) == len(values)


@pytest.mark.anyio
async def test_a_runs_trace_and_span_ids_are_not_derived_from_its_run_id(make_host: Any) -> None:
    spec = parse_agent("name: ids\nmodel: echo/m\nsteps:\n  - name: a\n    prompt: x\n  - name: b\n    prompt: y\n",
                       "ids.yaml")
    async with make_host() as host:
        result = await host.run(spec, workspace="w")
    ids = [int(result.run_id, 16), int(result.trace_id, 16), *(int(s.span_id, 16) for s in result.steps if s.span_id)]
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            assert abs(a - b) > 1 << 64


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    import os

    new_id()  # the parent has a buffer of random hex
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, "".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        child = fh.read()
    os.waitpid(pid, 0)
    parent = "".join(new_id() for _ in range(8))
    child_ids = {child[i:i + 32] for i in range(0, len(child), 32)}
    assert len(child_ids) == 8 and not child_ids & {parent[i:i + 32] for i in range(0, len(parent), 32)}
