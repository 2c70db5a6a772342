"""Paper reproductions behind ``hrnn experiments <name>`` (one module per experiment).

Each module defines ``register(app)`` adding its typer command, and keeps its heavy imports
inside the command so ``hrnn --help`` stays fast. The numbers they print are the ones recorded
in ``docs/evaluation/<topic>.md``, each next to the command that produced it.
"""

EXPERIMENTS: tuple[str, ...] = ("ablation", "cold_start", "time_deltas", "rating", "trend")  # module names under hrnn_core.experiments, in --help order
