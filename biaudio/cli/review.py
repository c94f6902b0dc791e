"""`biaudio review` (the QA web page) and `biaudio qa summary|apply` (decisions -> manifest).

Heavy imports (pyarrow, duckdb, the server) happen inside the commands so `biaudio --help` stays fast.
Exit codes: 0 success, 1 a failure (no manifest, unsupported schema, no QA database), 2 bad options.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _fail(msg: str, as_json: bool, code: int = 1) -> None:
    if as_json:
        typer.echo(json.dumps({"ok": False, "error": msg}))
    else:
        typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def review(
    out: Path = typer.Argument(
        ..., help="Build output folder holding manifest.parquet (decisions go to OUT/qa.sqlite)."
    ),
    pass_: int = typer.Option(1, "--pass", help="Review pass number (1 = first look, 2+ = audit passes)."),
    reviewer: str = typer.Option(
        None, "--reviewer", help="Reviewer name stored with every decision (default: login name)."
    ),
    sample: int = typer.Option(
        None, "--sample", help="Review a reproducible random sample of K clips (audit pass)."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed for --sample; the same seed and manifest give the same clips."
    ),
    where: str = typer.Option(
        None,
        "--where",
        help="SQL predicate over manifest columns, evaluated with duckdb, e.g. "
        '"lr_difference < 0.05 or speech_ratio > 0.3".',
    ),
    reasons: str = typer.Option(
        None,
        "--reasons",
        help="Comma-separated reject reasons (digits 1-9 pick them; 'other' + note is always added). "
        "Default: wrong sound, voice-over/music, static, bad direction, visual artefact, other.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port (0 = any free port)."),
    allow_remote: bool = typer.Option(
        False,
        "--allow-remote",
        help="Allow a non-loopback --host (anyone who can reach it and has the token can review).",
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Log every HTTP request to stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print the URL and selection as one JSON line."),
) -> None:
    """Serve the QA review page for OUT's manifest and print its URL (with the session token).

    Keys on the page: A accept, R reject then 1-9 reason, F flag, S skip, U undo, J/K next/previous,
    Space/P replay. Every decision is committed to OUT/qa.sqlite before the page moves on; reopening
    the page (or restarting the server with the same --pass/--reviewer) resumes at the next clip this
    reviewer has not decided. Stop with Ctrl-C.
    """
    from biaudio.errors import BiaudioError
    from biaudio.review.server import ReviewConfig, make_reasons, make_server

    try:
        cfg = ReviewConfig(
            out_dir=out,
            pass_=pass_,
            sample=sample,
            seed=seed,
            where=where,
            host=host,
            port=port,
            allow_remote=allow_remote,
            quiet=not verbose,
            reasons=make_reasons(reasons.split(",") if reasons else None),
        )
        if reviewer is not None:
            cfg.reviewer = reviewer
        srv = make_server(cfg)
    except BiaudioError as exc:
        _fail(str(exc), as_json, 2 if exc.reason in _BAD_OPTION_REASONS else 1)
        return
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc}", as_json)
        return
    _announce(srv, cfg, out, as_json)
    _serve(srv)


_BAD_OPTION_REASONS = ("remote_bind_refused", "bad_where", "bad_sample", "bad_pass", "bad_reviewer",
                       "too_many_reasons", "duplicate_reason")
"""Reasons of ``make_server``'s errors that are bad options (exit 2), not a bad folder (exit 1)."""


def _announce(srv, cfg, out: Path, as_json: bool) -> None:
    """The URL with its token, and what is being reviewed (one JSON line with ``--json``)."""
    app = srv.app
    info = {
        "ok": True,
        "url": srv.url,
        "token": app.token,
        "pass": cfg.pass_,
        "reviewer": cfg.reviewer,
        "clips": len(app.clips),
        "db": str(app.db.path),
    }
    if as_json:
        typer.echo(json.dumps(info), nl=True)
    else:
        typer.echo(
            f"Reviewing {len(app.clips)} clip(s) of {out} · pass {cfg.pass_} · reviewer {cfg.reviewer}"
        )
        typer.echo(f"Decisions: {app.db.path}")
        typer.echo(f"Open: {srv.url}")
        typer.echo("Use headphones (binaural audio). Ctrl-C stops the server; decisions are already saved.")


def _serve(srv) -> None:
    """Serve until Ctrl-C (every decision is already committed; nothing to save on the way out)."""
    import sys

    sys.stdout.flush()
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


def summary(
    out: Path = typer.Argument(..., help="Build output folder holding qa.sqlite."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Counts per pass (decisions, reject reasons, reviewers) and agreement between every pair of passes.

    Agreement is Cohen's kappa over the clips both passes decided, with categories accept / reject /
    flag (skips are not decisions; reject reasons are not compared). A pass's decision on a clip is
    its newest one not undone. kappa = (p_o - p_e) / (1 - p_e); undefined (null) when p_e = 1.
    """
    from biaudio.errors import BiaudioError
    from biaudio.review import qa

    try:
        res = qa.summary(out)
    except (BiaudioError, FileNotFoundError) as exc:
        _fail(str(exc), as_json)
        return
    if as_json:
        typer.echo(json.dumps(res))
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"QA passes ({res['db']})")
    for col in (
        "pass",
        "reviewers",
        "decided",
        "accept",
        "reject",
        "flag",
        "skip",
        "reject reasons",
        "undone",
    ):
        t.add_column(col)
    for p in res["passes"]:
        d = p["decisions"]
        t.add_row(
            str(p["pass"]),
            ", ".join(p["reviewers"]),
            str(p["clips_decided"]),
            *(str(d.get(k, 0)) for k in ("accept", "reject", "flag", "skip")),
            ", ".join(f"{k} {v}" for k, v in sorted(p["reject_reasons"].items())) or "-",
            str(p["undone"]),
        )
    con.print(t)
    if res["agreement"]:
        a = Table(title="Agreement between passes (Cohen's kappa; accept / reject / flag)")
        for col in ("passes", "clips both decided", "observed", "chance", "kappa"):
            a.add_column(col)
        for k in res["agreement"]:
            a.add_row(
                f"{k['pass_a']} vs {k['pass_b']}",
                str(k["n"]),
                _num(k["observed"]),
                _num(k["expected"]),
                _num(k["kappa"]),
            )
        con.print(a)
    else:
        con.print("No two passes to compare yet.")


def apply_cmd(
    out: Path = typer.Argument(..., help="Build output folder holding manifest.parquet and qa.sqlite."),
    policy: str = typer.Option(
        "last-pass-wins", "--policy", help="last-pass-wins | any-reject-rejects | majority (see above)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Write a new manifest version with qa_status / qa_reason from the QA decisions.

    The current manifest.parquet is kept as OUT/manifest_versions/manifest.v<N>.parquet, then the new
    one replaces it atomically (temporary file + rename).
    """
    from biaudio.errors import BiaudioError
    from biaudio.review import qa

    if policy not in qa.POLICIES:
        _fail(f"unknown policy {policy!r}; choose one of {', '.join(qa.POLICIES)}", as_json, 2)
        return
    try:
        res = qa.apply(out, policy)
    except (BiaudioError, FileNotFoundError) as exc:
        _fail(str(exc), as_json)
        return
    if as_json:
        typer.echo(json.dumps({"ok": True, **res}))
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(res["counts"].items()))
    typer.echo(f"Wrote {res['manifest']} ({policy}): {counts}")
    typer.echo(f"Previous version kept as {res['previous_version']}")
    if res["decisions_for_unknown_clips"]:
        typer.echo(
            f"warning: decisions for {len(res['decisions_for_unknown_clips'])} clip(s) not in the manifest were ignored"
        )


def register(app: typer.Typer, qa_app: typer.Typer) -> None:
    from biaudio.review.qa import POLICY_HELP

    app.command("review")(review)
    qa_app.command("summary")(summary)
    import inspect

    qa_app.command("apply", help=inspect.cleandoc(apply_cmd.__doc__ or "") + "\n\n" + POLICY_HELP)(apply_cmd)
