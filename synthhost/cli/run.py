"""``synthhost run AGENT.yaml``: run an agent and print its result.

Exit status: 0 when the run succeeded, 1 when it failed (the error's code and message
on stderr), 2 on bad input (agent file, ``--input``, unknown provider).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from synthhost.errors import SynthhostError, UsageError
from synthhost.workspace import validate_workspace

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from synthhost.agent import AgentSpec
    from synthhost.call import StreamDelta
    from synthhost.host import Host
    from synthhost.trace import RunResult, StepResult


def _open_host() -> AbstractAsyncContextManager[Host]:
    """The host to run on (tests replace this)."""
    from synthhost.cli.context import open_host

    return open_host()


def _run_sync(fn: Any) -> Any:
    """Run ``fn`` with the CLI's signal handling (Ctrl-C/SIGTERM flush the run)."""
    from synthhost.cli.context import run_async

    return run_async(fn)


def parse_inputs(pairs: Sequence[str]) -> dict[str, str]:
    """``["topic=cats", "n=3"]`` → ``{"topic": "cats", "n": "3"}``; the last value of a
    repeated key wins."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--input: expected KEY=VALUE, got {pair!r}")
        values[key] = value
    return values


def format_step_line(index: int, total: int, step: StepResult, width: int) -> str:
    line = f"step {index}/{total} {step.name:<{width}}  {step.status:<5}  {step.model or ''}"
    if step.error_code:
        line += f"  {step.error_code}"
    return line.rstrip()


def format_step_lines(result: RunResult) -> list[str]:
    """One short line per step that ran, then a summary line."""
    width = max((len(s.name) for s in result.steps), default=0)
    total = len(result.steps)
    lines = [format_step_line(i, total, step, width) for i, step in enumerate(result.steps, 1)]
    lines.append(format_summary(result))
    return lines


def format_summary(result: RunResult) -> str:
    summary = f"run {result.run_id[:12]} {result.status} in {result.duration_ms:.1f} ms"
    if result.cost_usd is not None:
        summary += f", ${result.cost_usd}"
    return summary


def error_line(result: RunResult) -> str:
    message = " ".join((result.error_message or "run failed").split())
    return f"Error: {result.error_code or 'ERROR'}: {message}"


async def execute(
    spec: AgentSpec,
    inputs: Mapping[str, Any],
    workspace: str | None,
    on_step: Callable[[int, int, StepResult], None] | None = None,
    on_delta: Callable[[StreamDelta], None] | None = None,
) -> RunResult:
    """Open a host, check the agent's providers and tools against it, and run the agent."""
    from synthhost.agent import check_providers, check_tools

    async with _open_host() as host:
        check_providers(spec, host.registry.providers, spec.source)
        check_tools(spec, host, spec.source)
        return await host.run(spec, inputs=dict(inputs), workspace=workspace, on_step=on_step, on_delta=on_delta)


@click.command("run")
@click.argument("agent_file", metavar="AGENT.yaml", type=click.Path(dir_okay=False))
@click.option("-w", "--workspace", default=None, help="Workspace to run in (default: the agent's).")
@click.option(
    "-i",
    "--input",
    "input_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An input value; repeat for several.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
@click.option("--durable", is_flag=True,
              help="Queue the run for synthhost worker processes and print its id (the 'durable' extra).")
@click.option("--wait", "wait_done", is_flag=True, help="With --durable: follow the run until it ends.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A line per step on stderr (default: when stderr is a terminal).",
)
@click.option(
    "--stream/--no-stream",
    "stream_option",
    default=None,
    help="Print the answer as it is generated (default: when stdout is a terminal).",
)
@click.pass_context
def run_command(
    ctx: click.Context,
    agent_file: str,
    workspace: str | None,
    input_pairs: tuple[str, ...],
    as_json: bool,
    progress: bool | None,
    durable: bool,
    wait_done: bool,
    stream_option: bool | None,
) -> None:
    """Run an agent file's steps through the plugin chain and print the result.

    \b
    Exit status: 0 on success, 1 when the run failed, 2 on bad input.
    Example: synthhost run examples/hello.yaml --input name=Ada
    """
    from synthhost.agent import load_agent, resolve_inputs

    try:
        spec = load_agent(agent_file)
        inputs = resolve_inputs(spec, parse_inputs(input_pairs))
        if workspace is not None:
            validate_workspace(workspace, what="--workspace")
        if wait_done and not durable:
            raise UsageError("--wait: only with --durable (a run without it always waits)")
    except UsageError as exc:
        _fail_usage(exc)
    if durable:
        _durable(ctx, spec, inputs, workspace, wait_done, as_json)

    if progress is None:
        progress = _isatty(sys.stderr)
    width = max(len(step.name) for step in spec.steps)

    def show_step(index: int, total: int, step: StepResult) -> None:
        if progress and not as_json:  # live: each line as its step ends
            click.echo(format_step_line(index, total, step, width), err=True)

    # On a terminal the answer is printed as it streams; piped, it is printed once, whole.
    streamed: list[str] = []

    def show_delta(delta: StreamDelta) -> None:
        if delta.text:
            streamed.append(delta.text)
            click.echo(delta.text, nl=False)

    stream = not as_json and (_isatty(sys.stdout) if stream_option is None else stream_option)

    async def main() -> RunResult | SynthhostError:
        # Errors come back as values: raised inside the runner's task group they would
        # surface wrapped in an ExceptionGroup.
        try:
            return await execute(spec, inputs, workspace, show_step, show_delta if stream else None)
        except SynthhostError as exc:
            return exc

    outcome = _run_sync(main)
    if isinstance(outcome, UsageError):  # unknown provider, or the host refused an input
        _fail_usage(outcome)
    if isinstance(outcome, SynthhostError):  # the host could not run it at all
        click.echo(f"Error: {outcome.code}: {' '.join(outcome.message.split())}", err=True)
        ctx.exit(1)
    result: RunResult = outcome

    if as_json:
        click.echo(json.dumps(result.to_dict()))
    elif progress:
        click.echo(format_summary(result), err=True)
    if streamed:
        click.echo("")  # end the streamed line
    if result.ok:
        if not as_json and not streamed:
            click.echo(result.output or "")
        ctx.exit(0)
    click.echo(error_line(result), err=True)
    ctx.exit(1)


def _durable(ctx: click.Context, spec: AgentSpec, inputs: Mapping[str, Any], workspace: str | None,
             wait_done: bool, as_json: bool) -> NoReturn:
    """``--durable``: enqueue, print the run id; ``--wait``: then the run's result, with
    the exit status of an in-process run."""

    async def main() -> RunResult | str | SynthhostError:
        from synthhost.agent import check_providers

        try:
            async with _open_host() as host:
                check_providers(spec, host.registry.providers, spec.source)
                run_id = await host.enqueue(spec, inputs=dict(inputs), workspace=workspace)
                if not wait_done:
                    return run_id
                click.echo(run_id, err=True)
                return await host.wait_run(run_id)
        except SynthhostError as exc:
            return exc

    outcome = _run_sync(main)
    if isinstance(outcome, UsageError):
        _fail_usage(outcome)
    if isinstance(outcome, SynthhostError):
        click.echo(f"Error: {outcome.code}: {' '.join(outcome.message.split())}", err=True)
        ctx.exit(1)
    if isinstance(outcome, str):
        click.echo(json.dumps({"run_id": outcome, "status": "queued"}) if as_json else outcome)
        ctx.exit(0)
    result: RunResult = outcome
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    elif result.ok:
        click.echo(result.output or "")
    if not result.ok:
        click.echo(error_line(result), err=True)
    ctx.exit(0 if result.ok else 1)


def _fail_usage(exc: UsageError) -> NoReturn:
    # The root command group does the same; doing it here keeps the command usable on
    # its own (tests, embedding in another click app).
    click.echo(f"Error: {exc.message}", err=True)
    raise click.exceptions.Exit(2)


def _isatty(stream: Any) -> bool:
    with contextlib.suppress(Exception):
        return bool(stream.isatty())
    return False
