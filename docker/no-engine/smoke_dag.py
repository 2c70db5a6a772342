"""DAG for docker/no-engine/exercise.py: a warehouse writer in pool hrnn_warehouse, a task on queue gpu."""
import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def hrnn_cluster_smoke():
    @task(pool="hrnn_warehouse")
    def write_warehouse():
        import os
        from hrnn_core.config import load_config
        from hrnn_core.data.warehouse import connect, run_checks

        cfg = load_config()
        with connect(cfg) as con:  # runs sql/schema.sql from HRNN__PATHS__SQL_DIR
            failing = {k: len(v) for k, v in run_checks(con, cfg).items()}
            tables = sorted(r[0] for r in con.execute("select table_name from information_schema.tables").fetchall())
        return {"worker": os.environ.get("HRNN_SMOKE_WORKER"), "warehouse": str(cfg.paths.warehouse_path),
                "sql_dir": str(cfg.paths.sql_dir), "tables": tables, "failing_checks": failing}

    @task(queue="gpu")
    def on_gpu_queue():
        import os
        import torch

        return {"worker": os.environ.get("HRNN_SMOKE_WORKER"), "torch": torch.__version__,
                "cuda": torch.cuda.is_available(), "bentoml_home": os.environ.get("BENTOML_HOME")}

    write_warehouse() >> on_gpu_queue()


hrnn_cluster_smoke()
