"""`rf-triton bench` and `rf-triton tune`: measure the serving path, and choose its batching configuration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import fail, first_line
from ..export.errors import ExportError
from ..repository import CONFIG_FILENAME, read_config
from ..serve.runtime_repository import RepositoryError
from ..serve.server import ServerStartError
from ..serve.triton_binary import TritonNotAvailable
from . import bench as bench_module
from . import cache_bench, configs, loadgen
from . import tune as tune_module

app = typer.Typer()
console = Console()
FAILURES = (ExportError, RepositoryError, ServerStartError, TritonNotAvailable, OSError, RuntimeError)


def check_inputs(repository: Path, model: str, positive: dict[str, float], non_negative: dict[str, float]) -> None:
    """Refuse what would fail mid-run, before any server starts: one error line each."""
    model_dir = repository / model
    if not model_dir.is_dir():
        raise fail(f"model {model!r} not found in {repository} (give the repository with --repository, "
                   "the model with --model)")
    for options, smallest, wanted in ((positive, 0, "positive"), (non_negative, -1, "0 or more")):
        for option, value in options.items():
            if value <= smallest:
                raise fail(f"--{option.replace('_', '-')} must be {wanted}, not {value:g}")
    if not bench_module.versions(model_dir):
        raise fail(f"model {model!r} in {repository} has no version folder (1/, 2/, ...): export one first")
    try:
        configs.matrix_input(read_config(model_dir / CONFIG_FILENAME))
    except (ExportError, RepositoryError, OSError, ValueError) as exc:
        raise fail(first_line(exc)) from None


def check_output_folder(out: Path) -> None:
    """--out must be a folder that exists or can be made: known before the run, not after it."""
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file; give a folder (bench.md, bench.png and bench.json go in it)")
    existing = next(p for p in (out, *out.parents) if p.exists())  # '.' or '/' at worst
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise fail(f"--out {out}: {existing} is not a folder this user can write in")


@app.command("bench")
def bench(
    repository: Annotated[Path, typer.Option(help="Canonical model repository (only read).")] = Path("model_repository"),
    model: Annotated[str, typer.Option(help="Model to benchmark.")] = "random_forest",
    out: Annotated[Path, typer.Option(help="Folder for bench.md (table), bench.png (plot) and bench.json.")] = Path("benchmarks/results"),
    concurrency: Annotated[Optional[list[int]], typer.Option(
        help="Concurrencies for 1-row requests; repeat for several (default: 1 4 16 64).")] = None,
    large_rows: Annotated[int, typer.Option(help="Rows per large request (0 skips them).")] = 4096,
    large_concurrency: Annotated[Optional[list[int]], typer.Option(
        help="Concurrencies for large requests; repeat for several (default: 1 2).")] = None,
    duration_s: Annotated[float, typer.Option(help="Measured seconds per point (wrk rounds to whole seconds).")] = 3.0,
    warmup_s: Annotated[float, typer.Option(help="Warm-up seconds before each point.")] = 1.0,
    inprocess_s: Annotated[float, typer.Option(help="Seconds per in-process ORT/sklearn point.")] = 1.0,
    wrk: Annotated[bool, typer.Option(help="Use wrk for HTTP when installed (else tritonclient.http.aio).")] = True,
    two_instance_sweep: Annotated[bool, typer.Option(
        help="Also run the 1-row sweep on the 2-instance variant (its large requests always run).")] = True,
    sweep: Annotated[bool, typer.Option(
        help="Run the in-process limits and the serving sweep (bench.md, bench.png, bench.json).")] = True,
    cache_workload: Annotated[bool, typer.Option(
        help="Run the repeated-rows workload with and without Triton's response cache (cache.md, cache.json).")] = True,
) -> None:
    """Side by side in one run: in-process ONNX Runtime and sklearn, then the embedded Triton over HTTP
    and gRPC, batching on and off, small and large requests; writes a Markdown table and a PNG plot."""
    check_inputs(repository, model, positive={"concurrency": min(concurrency or [1]),
                                              "large_concurrency": min(large_concurrency or [1]),
                                              "duration_s": duration_s, "inprocess_s": inprocess_s},
                 non_negative={"large_rows": large_rows, "warmup_s": warmup_s})
    check_output_folder(out)
    options = bench_module.BenchOptions(
        repository=repository, model=model, out=out, concurrencies=tuple(concurrency or (1, 4, 16, 64)),
        large_rows=large_rows, large_concurrencies=tuple(large_concurrency or (1, 2)), duration_s=duration_s,
        warmup_s=warmup_s, inprocess_s=inprocess_s, use_wrk=wrk,
        two_instance_sweep=two_instance_sweep)
    if wrk and loadgen.wrk_path() is None:
        console.print("[yellow]wrk not installed:[/] HTTP load comes from tritonclient.http.aio "
                      "(slower; apt-get install wrk for capacity figures)")
    if not sweep and not cache_workload:
        raise fail("--no-sweep and --no-cache-workload leave nothing to measure")
    try:
        if sweep:
            report = bench_module.run_bench(options, log=typer.echo)
        if cache_workload:
            typer.echo("response cache: repeated rows and new rows, cache off and on")
            cached = cache_bench.run_cache_bench(cache_bench.CacheOptions(
                repository=repository, model=model, duration_s=duration_s, warmup_s=warmup_s),
                bench_module.machine_description(), log=typer.echo)
    except FAILURES as exc:
        raise fail(str(exc)) from None
    if sweep:
        paths = bench_module.write_report(report, out)
        typer.echo(bench_module.markdown(report))
        typer.echo(f"wrote {paths['table']}, {paths['plot']}, {paths['json']}")
    if cache_workload:
        paths = cache_bench.write_cache_report(cached, out)
        typer.echo(cache_bench.cache_markdown(cached))
        typer.echo(f"wrote {paths['table']}, {paths['json']}")


@app.command("tune")
def tune(
    repository: Annotated[Path, typer.Option(help="Canonical model repository; only --apply writes to it.")] = Path("model_repository"),
    model: Annotated[str, typer.Option(help="Model to tune.")] = "random_forest",
    concurrency: Annotated[int, typer.Option(help="Requests kept in flight while measuring.")] = 64,
    p99_budget_ms: Annotated[float, typer.Option(help="Largest p99 latency (ms) a configuration may have.")] = 10.0,
    queue_delay_us: Annotated[Optional[list[int]], typer.Option(
        help="Max queue delays (µs) to try; repeat for several (default: 0 100 500 2000).")] = None,
    instances: Annotated[Optional[list[int]], typer.Option(
        help="Instance counts to try; repeat for several (default: 1 2 4).")] = None,
    intra_op_threads: Annotated[Optional[list[int]], typer.Option(
        help="ONNX Runtime intra-op threads per instance to try, 0 = all cores; repeat for several "
             "(default: keep the config's).")] = None,
    preferred_batch_size: Annotated[Optional[list[int]], typer.Option(
        help="Also try each candidate with this single preferred batch size; repeat for several.")] = None,
    protocol: Annotated[str, typer.Option(help="http (wrk when installed) or grpc (grpc.aio).")] = "http",
    rows_per_request: Annotated[int, typer.Option(help="Rows in each request.")] = 1,
    duration_s: Annotated[float, typer.Option(help="Measured seconds per configuration.")] = 3.0,
    warmup_s: Annotated[float, typer.Option(help="Warm-up seconds per configuration.")] = 1.0,
    budget_s: Annotated[float, typer.Option(help="Stop starting new configurations after this many seconds.")] = 300.0,
    apply: Annotated[bool, typer.Option(help="Write the best configuration into the canonical config.pbtxt.")] = False,
) -> None:
    """Sweep max queue delay × instance count (× intra-op threads × preferred batch size) on the embedded
    server, restarting it per configuration, and pick the highest throughput whose p99 stays within
    --p99-budget-ms."""
    if protocol not in ("http", "grpc"):
        raise fail(f"--protocol must be http or grpc, not {protocol!r}")
    check_inputs(repository, model, positive={
        "concurrency": concurrency, "p99_budget_ms": p99_budget_ms, "instances": min(instances or [1]),
        "preferred_batch_size": min(preferred_batch_size or [1]), "rows_per_request": rows_per_request,
        "duration_s": duration_s, "budget_s": budget_s},
        non_negative={"queue_delay_us": min(queue_delay_us or [0]), "warmup_s": warmup_s,
                      "intra_op_threads": min(intra_op_threads or [0])})
    options = tune_module.TuneOptions(
        repository=repository, model=model, concurrency=concurrency, p99_budget_ms=p99_budget_ms,
        queue_delays_us=tuple(queue_delay_us or (0, 100, 500, 2000)), instances=tuple(instances or (1, 2, 4)),
        preferred=((),) + tuple((size,) for size in preferred_batch_size or ()),
        intra_op_threads=tuple(dict.fromkeys(intra_op_threads)) if intra_op_threads else (None,), protocol=protocol,
        rows_per_request=rows_per_request, duration_s=duration_s, warmup_s=warmup_s, budget_s=budget_s)
    typer.echo(f"tuning {model} at concurrency {concurrency} over {protocol}, p99 budget {p99_budget_ms:g} ms")
    try:
        results, skipped = tune_module.sweep(options, log=typer.echo)
    except FAILURES as exc:
        raise fail(str(exc)) from None
    chosen = tune_module.best(results, p99_budget_ms)
    table = Table(title=f"rf-triton tune: concurrency {concurrency}, {rows_per_request} row(s)/request, {protocol}")
    for column in ("delay µs", "inst", "threads", "pref", "infer/sec", "p50 ms", "p99 ms", "batch", "errors", "fits"):
        table.add_column(column, justify="right")
    for r in results:
        c = r.candidate
        figures = ([r.error, "", "", "", ""] if r.error else
                   [f"{r.throughput:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.avg_batch:.1f}", str(r.errors)])
        mark = "best" if r is chosen else ("yes" if r.within(p99_budget_ms) else "no")
        threads = "config" if c.intra_op_threads is None else str(c.intra_op_threads or "all")
        table.add_row(str(c.max_queue_delay_us), str(c.instances), threads, str(list(c.preferred_batch_sizes) or "-"), *figures, mark)
    console.print(table)
    if skipped:
        console.print(f"[yellow]{skipped} configuration(s) skipped: --budget-s {budget_s:g} reached[/]")
    if chosen is None:
        raise fail(f"no configuration kept p99 within {p99_budget_ms:g} ms without failures")
    typer.echo(f"best: {chosen.candidate.label()} — {chosen.throughput:,.0f} req/s, p99 {chosen.p99_ms:.2f} ms")
    if apply:
        try:
            path = tune_module.apply(repository, model, chosen.candidate)
        except FAILURES as exc:
            raise fail(str(exc)) from None
        typer.echo(f"wrote {path}")
