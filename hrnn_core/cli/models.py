"""`hrnn models ...`: the model registry from the command line."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from hrnn_core.cli.checks import require_warehouse
from hrnn_core.cli.options import ConfigOpt, DataDirOpt, cli_config, guard

models_app = typer.Typer(help="The model registry: list, show, promote, roll back.", no_args_is_help=True)


@models_app.command("list")
@guard
def models_list(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every registered model, newest first, with its stage and headline metrics."""
    from hrnn_core import registry  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    with connect(cli_config(config, data_dir=data_dir), read_only=True) as con:
        entries = registry.entries(con)
    if as_json:
        typer.echo(json.dumps([e.to_dict() for e in entries]))
        return
    if not entries:
        typer.echo("no models registered yet (the nightly retrain registers them)")
        return
    typer.echo(f"{'tag':<40}{'kind':<12}{'stage':<11}{'ndcg@10':>9}{'recall@10':>11}  registered")
    for e in entries:
        typer.echo(
            f"{e.tag:<40}{e.kind:<12}{e.stage:<11}{e.metrics.get('ndcg@10', float('nan')):>9.4f}"
            f"{e.metrics.get('recall@10', float('nan')):>11.4f}  {e.registered_at[:19]}"
        )


@models_app.command("show")
@guard
def models_show(
    tag: Annotated[str, typer.Argument(help="Model tag, e.g. hrnn-meta:abc123.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """One model: stage, metrics, labels, metadata and its history (JSON)."""
    from hrnn_core import registry  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    cfg = cli_config(config, data_dir=data_dir)
    require_warehouse(cfg, f"no model is registered yet, so there is no {tag!r}")
    with connect(cfg, read_only=True) as con:
        typer.echo(json.dumps(registry.show(con, tag), indent=2, default=str))


@models_app.command("promote")
@guard
def models_promote(
    tag: Annotated[str, typer.Argument(help="Model tag to make champion.")],
    note: Annotated[Optional[str], typer.Option(help="Why (recorded).")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make TAG the champion by hand (recorded; the service picks it up on its next check)."""
    from hrnn_core import registry  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    cfg = cli_config(config, data_dir=data_dir)
    require_warehouse(cfg, f"no model is registered yet, so there is no {tag!r} to promote")
    with connect(cfg) as con:  # registry.promote checks that TAG is registered before it writes
        previous = registry.promote(con, tag, note or "manual promotion")
    typer.echo(f"champion: {tag} (was: {previous or 'none'})")


@models_app.command("rollback")
@guard
def models_rollback(
    note: Annotated[Optional[str], typer.Option(help="Why (recorded).")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Bring the previous champion back (recorded)."""
    from hrnn_core import registry  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    cfg = cli_config(config, data_dir=data_dir)
    require_warehouse(cfg, "no model is registered yet: there is no champion to roll back")
    with connect(cfg) as con:
        tag = registry.rollback(con, note)
    typer.echo(f"champion: {tag} (rolled back)")
