"""Paper reproductions behind ``hrnn-research <name>`` (one module per experiment).

Each module defines ``register(app)`` adding its typer command, and keeps its heavy imports
inside the command so ``hrnn-research --help`` stays fast. The numbers they print are the ones
recorded in ``docs/evaluation/<topic>.md``, each next to the command that produced it.
"""

EXPERIMENTS: tuple[str, ...] = ("ablation", "cold_start", "time_deltas", "rating", "trend", "warm_start", "exploration")  # module names under research.experiments, in --help order


def dataset_snapshot(cfg, dataset: str, path=None, snapshot=None):
    """Ingest ``dataset`` into its own warehouse (idempotent) and export a snapshot; its folder.

    ``snapshot``: an existing snapshot folder (a command's ``--snapshot``), returned as it is.
    """
    from pathlib import Path  # noqa: PLC0415

    if snapshot is not None:
        return Path(snapshot)
    from hrnn_core.data.datasets.load import ingest_dataset  # noqa: PLC0415
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    dcfg = ingest_dataset(cfg, dataset, path)
    with connect(dcfg) as con:
        return export_snapshot(con, dcfg).path


def write_report(output, report: dict) -> None:
    """``report`` as indented JSON at ``output`` (parents created), and say where."""
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    import typer  # noqa: PLC0415

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=float) + "\n")
    typer.echo(f"report: {output}")
