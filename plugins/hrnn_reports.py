"""Airflow plugin: the retrain's HTML reports in the Airflow UI.

The api-server serves every retrain run's page (``hrnn_core.retrain.find_report``) under ``/hrnn/reports/``:
``/hrnn/reports/`` lists the runs, newest first; ``/hrnn/reports/<snapshot id or model tag>`` is one page. The
``report`` task of ``hrnn_retrain`` links its run's page ("HTML report" among the task's extra links, see
``dags/hrnn_retrain.py``), and the UI's navigation gets an "HRNN reports" entry. The pages are files the retrain
wrote (aggregate metrics, no events). Airflow does not authenticate a plugin's app (it is mounted apart from the
core API's dependencies), so this one asks itself: every route needs a logged-in user (the UI's session cookie or a
bearer token) allowed to read the ``hrnn_retrain`` DAG, through the auth manager the api-server runs; anonymous
callers get 401, others 403. Loaded from ``AIRFLOW__CORE__PLUGINS_FOLDER`` (this folder: ``hrnn airflow``, ``hrnn demo``
and ``docker/`` set it).
"""

from __future__ import annotations

import html

from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

PREFIX = "/hrnn/reports"
# the reports are the retrain DAG's output: whoever may read that DAG may read them
app = FastAPI(title="hrnn retrain reports", dependencies=[Depends(requires_access_dag("GET", param_dag_id="hrnn_retrain"))])


def _cfg():
    from hrnn_core.config import load_config  # noqa: PLC0415 - the config is read per request (HRNN_DATA_DIR)

    return load_config()


@app.get("/", response_class=HTMLResponse)
def index() -> str:
    """Every retrain run that wrote a page, newest first."""
    from hrnn_core.retrain import report_pages  # noqa: PLC0415

    rows = "".join(f'<li><a href="{PREFIX}/{html.escape(p.parent.name)}">{html.escape(p.parent.name)}</a></li>'
                   for p in report_pages(_cfg())) or "<li>no retrain has written a report yet</li>"
    return f"<!doctype html><title>hrnn retrain reports</title><h1>Retrain reports</h1><ul>{rows}</ul>"


@app.get("/{run}")
def page(run: str) -> FileResponse:
    """One run's page: ``run`` is its snapshot id (or a unique prefix) or the tag of a model it registered."""
    from hrnn_core.errors import HrnnError  # noqa: PLC0415
    from hrnn_core.retrain import find_report  # noqa: PLC0415

    try:
        return FileResponse(find_report(_cfg(), run), media_type="text/html")
    except HrnnError as e:
        raise HTTPException(status_code=404, detail=str(e)) from None


class HrnnReportsPlugin(AirflowPlugin):
    name = "hrnn_reports"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "hrnn retrain reports"}]
    external_views = [{"name": "HRNN reports", "href": f"{PREFIX}/", "destination": "nav"}]
