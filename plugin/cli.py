"""The ``udrl`` command line: parse and validate, call plugin.jobs / the libraries, print.

Every error the project raises on purpose ends the command with one ``error: ...`` line on
stderr and exit status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer

from rewriters.errors import UdrlError

from .config import Settings, load_settings, with_overrides
from .errors import UDRL_ERRORS, exit_code

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="UDRL query rewriting for multimodal search.")
log = logging.getLogger("udrl")


def _show_version(value: bool) -> None:
    if value:
        from .logs import udrl_version

        typer.echo(f"udrl {udrl_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML settings file."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Folder for data, models and indexes."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Debug logging, third-party libraries' INFO lines too."),
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Print the udrl-search version and exit."),
) -> None:
    from .logs import configure_logging

    configure_logging(verbose)
    ctx.obj = load_settings(config, workspace=workspace)


def _settings(ctx: typer.Context, **dotted: Any) -> Settings:
    return with_overrides(ctx.obj, dotted)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
def distill(
    ctx: typer.Context,
    queries: Optional[Path] = typer.Option(
        None, help="Query log (query<TAB>clicked_id) or seed queries (query[<TAB>intent])."),
    builtin_queries: Optional[int] = typer.Option(None, help="Use N builtin-generated queries."),
    teacher: Optional[str] = typer.Option(None, help="auto | catalog | builtin | openai"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint URL."),
    model: Optional[str] = typer.Option(None, help="Teacher model name."),
    per_task: Optional[int] = typer.Option(None, help="Prompts per query and task."),
    concurrency: Optional[int] = typer.Option(None, help="Teacher requests in flight."),
    no_score: bool = typer.Option(False, "--no-score", help="Skip relevance relabelling."),
) -> None:
    """Distil (query, prompt) examples from a teacher into <workspace>/distilled.jsonl."""
    from .jobs import distill_job

    s = _settings(ctx, queries_file=queries, builtin_queries=builtin_queries,
                  **{"teacher.kind": teacher, "teacher.base_url": base_url,
                     "teacher.model": model, "teacher.prompts_per_task": per_task,
                     "teacher.concurrency": concurrency})
    _print_json(distill_job(s, progress=True, score=not no_score))


@app.command()
def train(
    ctx: typer.Context,
    base_model: Optional[str] = typer.Option(None, help="scratch | GPT-2 name | local dir."),
    preset: Optional[str] = typer.Option(None, help="Scratch architecture: tiny|small|gpt2."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps before UDRL rounds."),
    rounds: Optional[int] = typer.Option(None, help="UDRL explore/relabel/retrain rounds."),
    round_steps: Optional[int] = typer.Option(None, help="Optimiser steps per round."),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
) -> None:
    """Train the UDRL GPT-2 rewriter into <workspace>/rewriter."""
    from .jobs import train_job

    s = _settings(ctx, **{"train.base_model": base_model, "train.preset": preset,
                          "train.steps": steps, "train.rounds": rounds,
                          "train.round_steps": round_steps, "train.batch_size": batch_size,
                          "train.lr": lr})
    result = train_job(s, progress=True)
    for r in result.metrics["rounds"]:
        typer.echo(_round_line(r))
    typer.echo(f"model {result.version} saved to {result.model_dir} "
               f"(loss curve: {result.model_dir / 'loss_curve.png'})")
    if "onnx" in result.metrics:
        typer.echo(f"ONNX Runtime export for serving: {result.metrics['onnx']}")
    if "ctranslate2" in result.metrics:
        typer.echo(f"CTranslate2 export for serving: {result.metrics['ctranslate2']}")
    _echo_rewrite_fit(result.metrics.get("rewrite_fit"))


def _echo_rewrite_fit(fit: dict | None) -> None:
    if fit:
        n = fit["ndcg@10"]
        typer.echo(f"rewrite channel fitted on {fit['fitted_on']} held-out logged queries: "
                   f"weight {fit['rewrite']}, floor {fit['rewrite_floor']} (nDCG@10 "
                   f"{n['fitted']:.4f}; raw + dense alone {n['without_rewrite']:.4f})")


@app.command("fit-rewrite")
def fit_rewrite(ctx: typer.Context) -> None:
    """Fit the rewrite channel's fusion weight and floor on held-out logged queries (what
    `train` does last), for a model trained before, or after a new index."""
    from .offline.rewrite_fit import fit_rewrite_fusion

    fit = fit_rewrite_fusion(_settings(ctx), progress=True)
    if fit is None:
        raise UdrlError("nothing fitted: it needs the workspace's query log, a template index "
                        "and at least 20 held-out queries with clicks")
    _echo_rewrite_fit(fit)


@app.command()
def export(
    ctx: typer.Context,
    engine: str = typer.Option("all", help="all | onnx | ctranslate2"),
    quantization: str = typer.Option(
        "int8", help="int8 | float32 (both engines) | int4 (onnx only: fastest at batch 1) | "
                     "int8_float32 (ctranslate2 only)"),
) -> None:
    """Export the trained rewriter for the serving engines (`auto` serves the first current one:
    ONNX Runtime, then CTranslate2). With `--engine all`, an engine that has no such
    quantization is skipped."""
    from rewriters.engines import ENGINES, exporting_engines

    from .jobs import export_job

    exporting = exporting_engines()
    if engine not in ("all", *exporting):
        raise UdrlError(f"unknown engine {engine!r}; allowed: all, {', '.join(exporting)}")
    settings = _settings(ctx)
    names = exporting if engine == "all" else (engine,)
    if engine == "all":
        names = tuple(n for n in names if quantization in ENGINES[n].quantizations)
        if not names:
            raise UdrlError(f"no engine has quantization {quantization!r}; " + "; ".join(
                f"{ENGINES[n].label}: {', '.join(ENGINES[n].quantizations)}" for n in exporting))
    for name in names:
        typer.echo(f"{ENGINES[name].label} export: {export_job(settings, quantization, name)}")


def _round_line(r: dict[str, Any]) -> str:
    rel = " ".join(f"{k}:{v:.3f}" if v is not None else f"{k}:-"
                   for k, v in r["relevance_by_bucket"].items())
    return (f"round {r['round']}: examples {r['examples']}, length MSE {r['length_mse']:.2f}, "
            f"within±2 {100 * r['within_2']:.1f}%, relevance by bucket [{rel}], "
            f"distinct-2 {r['distinct_2']:.3f}")


@app.command()
def rewrite(
    ctx: typer.Context,
    query: str = typer.Argument(..., help="Search query to rewrite."),
    task: str = typer.Option("image", help="image | template"),
    length: Optional[int] = typer.Option(None, help="Target length in words (3-40)."),
    relevance: Optional[int] = typer.Option(None, help="Relevance bucket 0-4 (4 = best)."),
    n: int = typer.Option(1, "-n", help="Prompts to generate."),
    strict_length: Optional[bool] = typer.Option(None, "--strict-length/--free-length"),
    decoding: Optional[str] = typer.Option(
        None, help="sample | greedy | beam (default: as the service, pipeline.decoding)"),
    seed: Optional[int] = typer.Option(None),
    model_dir: Optional[Path] = typer.Option(None, "--model", help="Rewriter directory."),
    engine: Optional[str] = typer.Option(None, help="auto | onnx | ctranslate2 | torch"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Generate prompts for QUERY that obey a command, decoded as the service's first try
    (the model's output as is, with the prompt checks' verdict; no retries)."""
    from rewriters.commands import Command

    from .hook import load_engine
    from .query import Query

    s = _settings(ctx, **{"pipeline.engine": engine})
    g = s.generation
    default_len = g.image_length if task == "image" else g.template_length
    command = Command(task, length if length is not None else default_len,
                      relevance if relevance is not None else g.relevance)
    text = Query(query).text  # the service's check: one error line for an empty query
    how = decoding or g.decoding or s.pipeline.decoding
    if decoding is None and how == "greedy" and n > 1:
        how = "sample"  # as the service: greedy would give one prompt n times
    rw = load_engine(s, path=model_dir)
    outs = rw.rewrite_batch([(text, command)], n=n,
                            strict_length=g.strict_length if strict_length is None
                            else strict_length, decoding=how, temperature=g.temperature,
                            top_p=g.top_p, num_beams=max(g.num_beams, n),
                            **({} if seed is None else {"seed": seed}))[0]
    if as_json:
        _print_json([{"prompt": o.prompt, "words": o.words, "valid": o.valid,
                      "problems": list(o.problems)} for o in outs])
        return
    for o in outs:
        flag = "" if o.valid else f"  [invalid: {', '.join(o.problems)}]"
        typer.echo(f"[{o.words:2d} words] {o.prompt}{flag}")


@app.command("train-intent")
def train_intent(ctx: typer.Context) -> None:
    """Train the intent detector into <workspace>/intent and report held-out accuracy."""
    from .jobs import train_intent_job

    m = train_intent_job(_settings(ctx))
    h = m["heldout"]
    typer.echo(f"intent: held-out accuracy {h['accuracy']:.3f} on {h['count']} queries, "
               f"ECE {h['ece']:.3f}, {h['latency_us']:.1f} µs/query")


@app.command()
def intent(
    ctx: typer.Context,
    query: str = typer.Argument(..., help="Search query."),
    model_dir: Optional[Path] = typer.Option(None, "--model", help="Intent model directory."),
) -> None:
    """Classify QUERY's intent and show where it would be routed."""
    from rewriters.intent import load_intent_detector

    s = _settings(ctx)
    p = load_intent_detector(model_dir or s.intent_dir).predict(query)
    probs = ", ".join(f"{k} {v:.2f}" for k, v in p.probs.items())
    typer.echo(f"{p.intent} ({probs}) -> {' + '.join(p.routed)}")


@app.command("eval-rewriter")
def eval_rewriter(
    ctx: typer.Context,
    commands: int = typer.Option(300, help="Held-out commands to generate for."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default <workspace>/reports)."),
) -> None:
    """Measure length control, relevance per bucket, distinct-2 and intent accuracy."""
    from .jobs import eval_rewriter_job

    if commands < 10:
        raise UdrlError(f"commands {commands} is too few for a report; use 10 or more")
    report = eval_rewriter_job(_settings(ctx), commands, progress=True, out=out)
    typer.echo(f"model {report['version']} ({report['engine']}) on {report['commands']} "
               "held-out commands")
    typer.echo(f"{'mode':<14} {'len MSE':>8} {'±2 words':>9} {'exact':>6} {'distinct-2':>10}  "
               "mean relevance by requested bucket 0..4")
    for name, m in report["modes"].items():
        rel = " ".join("  -  " if v is None else f"{v:.3f}" for v in m["relevance_by_bucket"].values())
        typer.echo(f"{name:<14} {m['length_mse']:8.2f} {100 * m['within_2']:8.1f}% "
                   f"{100 * m['exact_length']:5.1f}% {m['distinct_2']:10.3f}  {rel}")
    slopes = [f"{name} {m['relevance_slope']['mean']:+.4f} [{m['relevance_slope']['low']:+.4f}, "
              f"{m['relevance_slope']['high']:+.4f}]" for name, m in report["modes"].items()
              if m.get("relevance_slope")]
    if slopes:
        typer.echo("relevance gained per bucket, paired within query and length (95% CI): "
                   + "; ".join(slopes))
    if report["intent"]:
        i = report["intent"]
        typer.echo(f"intent: held-out accuracy {i['accuracy']:.3f} on {i['count']} queries")
    typer.echo(f"report: {report['report']}  plot: {report['plot']}")


index_app = typer.Typer(no_args_is_help=True, help="Build and re-index catalogues.")
app.add_typer(index_app, name="index")
_FORCE_HELP = ("Publish even when the count falls below index.publish_min_count_ratio of the "
               "live version's or the reject rate is above index.publish_max_reject_rate.")


@index_app.command("images")
def index_images(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="Image folder or JSONL manifest."),
    shard: Optional[str] = typer.Option(None, help="Encode only shard i/n (merge later)."),
    clip_model: Optional[str] = typer.Option(None, help="open_clip architecture."),
    pretrained: Optional[str] = typer.Option(None, help="Tag, checkpoint path, or 'none'."),
    index_type: Optional[str] = typer.Option(None, help="auto | flat | hnsw | ivf"),
    rejects: Optional[Path] = typer.Option(None, help="Also write rejects here."),
    log: Optional[Path] = typer.Option(None, "--log", help="Query log: 'query<TAB>clicked_id' "
                                       "lines; each titled image is expanded with its clicks."),
    dense: Optional[bool] = typer.Option(None, "--dense/--no-dense",
                                         help="Build the text (MiniLM) channel over titles."),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
    backend: Optional[str] = typer.Option(None, help="faiss | elasticsearch (default "
                                          "index.image_backend)"),
    es_url: Optional[str] = typer.Option(None, help="Elasticsearch URL."),
    ray: bool = typer.Option(False, "--ray", help="Encode on a Ray instance started for "
                             "this run (a cluster: --ray-address)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Encode on this Ray "
                                              "cluster: 'auto' on a node, ray://head:10001."),
    ray_actors: Optional[int] = typer.Option(None, "--ray-actors", min=1,
                                             help="Ray encoder actors (default: one per GPU, "
                                                  "else per 8 CPUs)."),
) -> None:
    """Encode images with CLIP into a new index version and publish it atomically (a FAISS
    store version, or an Elasticsearch index behind the image alias)."""
    from .index_jobs import index_images_job

    s = _settings(ctx, **{"index.clip_model": clip_model, "index.clip_pretrained": pretrained,
                          "index.image_index_type": index_type, "index.dense": dense,
                          "index.image_backend": backend, "index.es_url": es_url})
    _print_json(index_images_job(s, source, shard=shard, rejects=rejects, log=log,
                                 force=force, ray=ray_address or ("local" if ray else None),
                                 ray_actors=ray_actors))


@index_app.command("merge")
def index_merge(ctx: typer.Context,
                force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
                backend: Optional[str] = typer.Option(None, help="faiss | elasticsearch"),
                es_url: Optional[str] = typer.Option(None, help="Elasticsearch URL.")) -> None:
    """Merge the image shards built with --shard into one published index."""
    from .index_jobs import merge_images_job

    s = _settings(ctx, **{"index.image_backend": backend, "index.es_url": es_url})
    _print_json(merge_images_job(s, force=force))


@index_app.command("templates")
def index_templates(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="Template catalogue (.jsonl or .csv)."),
    backend: Optional[str] = typer.Option(None, help="tantivy | elasticsearch"),
    es_url: Optional[str] = typer.Option(None, help="Elasticsearch URL."),
    rejects: Optional[Path] = typer.Option(None, help="Rejects file."),
    log: Optional[Path] = typer.Option(None, "--log", help="Query log: 'query<TAB>clicked_id' "
                                       "lines; each template is expanded with its clicks."),
    dense: Optional[bool] = typer.Option(None, "--dense/--no-dense",
                                         help="Build the dense (MiniLM) channel."),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
) -> None:
    """Build a new template index version and switch to it atomically (alias swap on ES)."""
    from .index_jobs import index_templates_job

    s = _settings(ctx, **{"index.template_backend": backend, "index.es_url": es_url,
                          "index.dense": dense})
    _print_json(index_templates_job(s, source, rejects=rejects, log=log, force=force))


@index_app.command("rollback")
def index_rollback(
    ctx: typer.Context,
    which: str = typer.Argument(..., help="templates | images"),
    to: Optional[str] = typer.Option(None, "--to", help="Version (or Elasticsearch index) to "
                                     "make live; default: the one live before the live one."),
    backend: Optional[str] = typer.Option(None, help="templates: tantivy | elasticsearch; "
                                          "images: faiss | elasticsearch"),
    es_url: Optional[str] = typer.Option(None, help="Elasticsearch URL."),
) -> None:
    """Make an earlier index version live again (atomic pointer swap or alias move)."""
    from .index_jobs import rollback_job

    if which not in ("templates", "images"):
        raise UdrlError(f"unknown index {which!r}; allowed: templates, images")
    kind = "index.image_backend" if which == "images" else "index.template_backend"
    s = _settings(ctx, **{kind: backend, "index.es_url": es_url})
    _print_json(rollback_job(s, which, to))


from . import cli_serving  # noqa: E402  (commands that need `app`)

cli_serving.register(app)


def _usage_errors() -> tuple[type[BaseException], ...]:
    # typer >= 0.20 vendors click as typer._click; older typer uses click itself.
    errs: list[type[BaseException]] = [click.ClickException]
    if hasattr(typer, "TyperException"):
        errs.append(typer.TyperException)
    return tuple(errs)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: returns the exit status."""
    try:
        app(args=argv, standalone_mode=False, prog_name="udrl")
    except (click.exceptions.Exit, typer.Exit) as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return 130
    except UDRL_ERRORS as e:  # either package's: one line, the status from plugin.errors
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    except _usage_errors() as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            return 2  # help was already printed
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
