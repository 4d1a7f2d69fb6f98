"""The container: Dockerfile, .dockerignore, compose.yaml and deploy/, linted; the image's layout and compose's
start-up run here without a container daemon; the image itself is built and run only where docker or podman
answers."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "cas-container-test-admin-key-0123456789"
PORT = 5000
TEST_MARKER = "# Tests and lint"


# -- reading the files -----------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def arguments(keyword: str) -> list[str]:
    return [rest for key, rest in dockerfile() if key == keyword]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(word, str) for word in value), text
    return value


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def runtime_requirements() -> list[str]:
    """What the image installs: requirements.txt above the tests' section (as the Dockerfile's sed cuts it)."""
    text = (ROOT / "requirements.txt").read_text()
    assert TEST_MARKER in text, "the Dockerfile cuts requirements.txt at this line"
    lines = text.split(TEST_MARKER)[0].splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def requirement_name(line: str) -> str:
    return re.split(r"[\[=<>~!;\s]", line, maxsplit=1)[0].lower().replace("_", "-")


HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(\d+)/api/health")
SECRET_WORDS = re.compile(r"key|secret|token|password|passwd", re.IGNORECASE)


# -- the Dockerfile --------------------------------------------------------------------------------


def test_base_image_is_pinned_python_311_slim_and_no_image_is_latest():
    froms = arguments("FROM")
    assert froms and froms[-1].split()[0] == "python:3.11-slim"
    for image in froms + [service.get("image", "") for service in compose()["services"].values()]:
        name = image.split()[0] if image else ""
        if name:
            assert ":" in name.rsplit("/", 1)[-1], f"{name}: no tag"
            assert not name.endswith(":latest"), f"{name}: latest"


def test_the_server_runs_as_a_non_root_user():
    instructions = dockerfile()
    users = [rest for key, rest in instructions if key == "USER"]
    assert users, "no USER"
    last = users[-1].split(":")[0]
    assert last not in ("root", "0")
    assert any(key == "RUN" and "useradd" in rest and last in rest.split() for key, rest in instructions)
    # the user is set before the command that runs the server
    position = {key: i for i, (key, _rest) in enumerate(instructions)}
    user_at = max(i for i, (key, _rest) in enumerate(instructions) if key == "USER")
    assert user_at < position["ENTRYPOINT"] and user_at < position["CMD"]


def test_healthcheck_asks_api_health_with_python_and_the_port_is_the_exposed_one():
    checks = arguments("HEALTHCHECK")
    assert len(checks) == 1
    options, command = checks[0].split(" CMD ", 1)
    assert "--interval" in options and "--timeout" in options
    words = exec_form(command)
    assert words[:2] == ["python3", "-c"] and "urllib.request" in words[2]
    assert "curl" not in checks[0] and "wget" not in checks[0]
    assert [int(port) for port in HEALTH_URL.findall(words[2])] == [PORT]

    exposed = [int(word.split("/")[0]) for rest in arguments("EXPOSE") for word in rest.split()]
    assert exposed == [PORT]
    command = exec_form(arguments("ENTRYPOINT")[-1]) + exec_form(arguments("CMD")[-1])
    assert command[:2] == ["python3", "/app/main.py"]
    assert command[command.index("--port") + 1] == str(PORT)
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_settings_and_data_are_on_the_data_volume():
    assert exec_form(arguments("VOLUME")[-1]) == ["/data"]
    assert arguments("WORKDIR")[-1] == "/data"  # main.py's default settings.json is /data/settings.json
    assert "--settings" not in arguments("CMD")[-1]


def test_no_secret_is_baked_into_the_image():
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"\b(cas|sk)-[A-Za-z0-9_-]{8,}", text)
    for key, rest in dockerfile():
        if key in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) + rest.split()[:1]:
                assert not SECRET_WORDS.search(name), f"{key} {name}: a secret has no place in the image"
        if key in ("COPY", "ADD"):
            sources = rest.split()[:-1]
            for source in sources:
                assert not re.search(r"settings\.json$|users\.json|\.db$|\.env$|\.pem$", source), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in ("settings.json", "users.json", "*.db", ".git", "tests", ".env", "*.lock"):
        assert pattern in ignored, f".dockerignore should keep out {pattern}"


def test_the_image_installs_the_runtime_requirements_only():
    run = " ".join(arguments("RUN"))
    assert f"/^{TEST_MARKER}/,$d" in run and "pip install -r /tmp/runtime.txt" in run
    runtime = {requirement_name(line) for line in runtime_requirements()}
    for needed in ("flask", "gunicorn", "gevent", "sqlalchemy", "psycopg", "filelock"):
        assert needed in runtime
    for test_only in ("pytest", "playwright", "ruff", "openai", "langchain-openai", "psutil", "pyyaml"):
        assert test_only not in runtime
    assert all("==" in line for line in runtime_requirements()), "every runtime requirement is pinned"


def test_the_runtime_requirements_cover_every_import_of_the_app():
    """Every third-party module app/, main.py and deploy/ import comes with a runtime requirement (or one of
    its dependencies): the image without the test packages still runs."""
    runtime = {requirement_name(line) for line in runtime_requirements()}
    covered = set(runtime)
    for name in list(runtime):  # and what those depend on
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        covered |= {requirement_name(line) for line in requires if "extra ==" not in line}
    distributions = importlib.metadata.packages_distributions()
    sources = [ROOT / "main.py", *ROOT.glob("app/**/*.py"), *ROOT.glob("deploy/*.py")]
    missing = {}
    for path in sources:
        for top in re.findall(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", path.read_text(), re.MULTILINE):
            if top in sys.stdlib_module_names or top in ("app", "__future__"):
                continue
            names = {requirement_name(d) for d in distributions.get(top, [])}
            if names and not names & covered:
                missing.setdefault(top, str(path.relative_to(ROOT)))
    assert not missing, f"imported but not in requirements.txt's runtime part: {missing}"


# -- compose.yaml and deploy/ ----------------------------------------------------------------------


def test_compose_services_postgres_two_instances_and_a_proxy():
    services = compose()["services"]
    assert {"postgres", "init", "app1", "app2", "proxy"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    apps = [services["app1"], services["app2"]]
    assert apps[0] == apps[1], "the two instances are the same but for their names"
    for app in apps:
        assert app["build"] == "." and app["volumes"] == ["settings:/data"]
        assert app["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
        test = app["healthcheck"]["test"]
        assert test[0] == "CMD" and [int(port) for port in HEALTH_URL.findall(" ".join(test))] == [PORT]
    assert services["init"]["volumes"] == ["settings:/data"]  # the settings it writes are the instances'
    assert set(compose()["volumes"]) >= {"settings", "pgdata"}


def test_compose_database_is_the_postgres_service_and_the_app_secret_is_shared():
    services = compose()["services"]
    init = services["init"]
    url = init["environment"]["DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
    assert ":" not in url.split("://", 1)[1].split("@", 1)[0], "the password stays out of the URL (PGPASSWORD)"
    assert init["environment"]["APP_SECRET"].startswith("${APP_SECRET:?"), "one secret, required, for every instance"
    script = " ".join(init["command"])
    assert "deploy/init_settings.py /data/settings.json" in script and "main.py db upgrade" in script
    for app in (services["app1"], services["app2"]):
        assert "APP_SECRET" not in app.get("environment", {})  # both read it from the one settings file
        assert app["environment"]["PGPASSWORD"] == init["environment"]["PGPASSWORD"]
    # no secret is written into compose.yaml itself: each comes from the environment
    for service in services.values():
        for name, value in (service.get("environment") or {}).items():
            if SECRET_WORDS.search(name):
                assert str(value).startswith("${"), f"{name} must come from the environment"


def test_proxy_config_sends_to_both_instances_and_streams():
    services = compose()["services"]
    proxy = services["proxy"]
    mounts = [volume.split(":") for volume in proxy["volumes"]]
    config_files = [ROOT / source for source, *_rest in mounts if source.startswith("./deploy/")]
    assert config_files and all(path.is_file() for path in config_files)
    config = config_files[0].read_text()
    assert "server app1:5000" in config and "server app2:5000" in config
    assert "proxy_buffering off" in config and "X-Forwarded-Proto" in config and "X-Forwarded-For" in config
    listen = re.search(r"listen\s+(\d+)", config).group(1)
    assert proxy["ports"][0].endswith(f":{listen}")
    for name in ("app1", "app2"):
        assert proxy["depends_on"][name]["condition"] == "service_healthy"


# -- the image's layout and compose's start-up, without a container daemon ---------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ADMIN_API_KEY" and not k.lower().endswith("_proxy")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def image_tree(target: Path) -> Path:
    """Copy what the Dockerfile's COPY lines copy into target/app, as the image holds it."""
    app = target / "app"
    app.mkdir(parents=True)
    for rest in arguments("COPY"):
        *sources, destination = rest.split()
        for source in sources:
            path = ROOT / source
            into = app / path.name if destination in (".", "./") else app / destination.removeprefix("./")
            if path.is_dir():
                shutil.copytree(path, into, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(path, into)
    return app


class Instance:
    def __init__(self, program: Path, cwd: Path, logs: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logs / f"instance-{self.port}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        command = [sys.executable, str(program), *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.popen = subprocess.Popen(
            command, cwd=cwd, env=env or environment(), stdout=self.log, stderr=subprocess.STDOUT
        )
        self.http = requests.Session()
        self.http.trust_env = False

    def ready(self) -> Instance:
        deadline = time.monotonic() + 30
        while True:
            if self.popen.poll() is not None:
                pytest.fail(f"exited with {self.popen.returncode}:\n{self.log_path.read_text()}")
            try:
                if self.http.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        self.http.close()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.log.close()


def test_the_image_layout_runs_from_the_data_folder(tmp_path):
    """The files the Dockerfile copies, run as its ENTRYPOINT runs them (working folder /data, no --settings):
    first start writes settings, users and the database there, the HEALTHCHECK command passes, and the CLI
    finds the same settings."""
    app = image_tree(tmp_path / "image")
    assert not (app / "tests").exists() and (app / "deploy" / "init_settings.py").is_file()
    data = tmp_path / "data"
    data.mkdir()
    instance = Instance(app / "main.py", data, tmp_path, env=environment(ADMIN_API_KEY=ADMIN))
    try:
        instance.ready()
        assert {"settings.json", "users.json", "conversations.db"} <= {p.name for p in data.iterdir()}
        assert stat.S_IMODE((data / "settings.json").stat().st_mode) == 0o600
        options, command = arguments("HEALTHCHECK")[0].split(" CMD ", 1)
        check = [word.replace(f":{PORT}/", f":{instance.port}/") for word in exec_form(command)]
        assert subprocess.run(check, timeout=30).returncode == 0
        me = instance.http.get(instance.url + "/api/me", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert me.status_code == 200 and me.json()["role"] == "admin"  # ADMIN_API_KEY chose the first admin's key
        cli = subprocess.run(
            [sys.executable, str(app / "main.py"), "users", "list", "--json"],
            cwd=data, env=environment(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert [u["user_id"] for u in json.loads(cli.stdout)["users"]] == ["admin"]
    finally:
        instance.stop()


def run_init(app: Path, data: Path, env: dict) -> None:
    """compose.yaml's init command, with /app and /data where they are here."""
    script = compose()["services"]["init"]["command"][0]
    script = script.replace("/app/", f"{app}/").replace("/data/", f"{data}/").replace("python3 ", f"{sys.executable} ")
    proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_compose_start_up_two_instances_share_settings_sessions_and_postgres(tmp_path, pg_url):
    """What `docker compose up` does, with processes: init writes the settings on the shared folder with
    APP_SECRET and the PostgreSQL URL, upgrades the schema, creates the admin; then two instances run on that
    folder, and a session cookie made by one is good on the other."""
    app = image_tree(tmp_path / "image")
    data = tmp_path / "data"
    data.mkdir()
    secret = "compose-test-secret-0123456789abcdef"
    env = environment(APP_SECRET=secret, DATABASE_URL=pg_url, ADMIN_API_KEY=ADMIN)
    run_init(app, data, env)
    settings = json.loads((data / "settings.json").read_text())
    assert settings["app_secret"] == secret and settings["database_url"] == pg_url
    assert settings["trusted_proxies"] == 1 and settings["host"] == "0.0.0.0"
    assert stat.S_IMODE((data / "settings.json").stat().st_mode) == 0o600
    run_init(app, data, environment(APP_SECRET="another", DATABASE_URL=pg_url))  # a restart leaves it as it is
    assert json.loads((data / "settings.json").read_text()) == settings

    instances = [Instance(app / "main.py", data, tmp_path, env=environment()) for _ in range(2)]
    try:
        for instance in instances:
            instance.ready()
        first, second = instances
        login = first.http.get(first.url + "/login", timeout=10)
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', login.text).group(1)
        done = first.http.post(
            first.url + "/login", data={"api_key": ADMIN, "csrf_token": token}, timeout=10, allow_redirects=False
        )
        assert done.status_code in (302, 303), done.text
        cookies = first.http.cookies.get_dict()
        page = second.http.get(second.url + "/chat", cookies=cookies, timeout=10, allow_redirects=False)
        assert page.status_code == 200, "the second instance took the first one's session"
        # users made through one are seen by the other; the pool's health is shared through PostgreSQL
        made = first.http.post(
            first.url + "/api/users", headers={"Authorization": f"Bearer {ADMIN}"}, json={"username": "x"}, timeout=10
        ).json()
        seen = second.http.get(second.url + "/api/me", headers={"Authorization": f"Bearer {made['api_key']}"})
        assert seen.status_code == 200
        chat = second.http.post(
            second.url + "/api/chat", headers={"Authorization": f"Bearer {made['api_key']}"}, json={"prompt": "hi"}
        )
        assert chat.status_code == 200, chat.text
        accounts = first.http.get(first.url + "/api/accounts", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert accounts["accounts"][0]["requests"] >= 1  # counted by the second, read by the first
    finally:
        for instance in instances:
            instance.stop()


# -- building and running the image, where a container engine answers --------------------------------


def container_engine() -> tuple[str | None, str]:
    """(engine, "") if docker or podman can build here; else (None, why not)."""
    reasons = []
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path is None:
            reasons.append(f"{name} is not installed")
            continue
        probe = subprocess.run([path, "info"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return path, ""
        last = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or ["no answer"]
        reasons.append(f"{name} is installed but does not answer `{name} info` ({last[0]})")
    return None, "; ".join(reasons)


def test_build_and_run_the_image(tmp_path):
    engine, why = container_engine()
    if engine is None:
        pytest.skip(f"cannot build the image here: {why}; the Dockerfile is linted above instead")
    tag = f"chatgpt-api-server:test-{os.getpid()}"
    build = subprocess.run([engine, "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    name = f"cas-test-{os.getpid()}"
    port = free_port()
    run = [engine, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:{PORT}", "-e", f"ADMIN_API_KEY={ADMIN}", tag]
    try:
        assert subprocess.run(run, capture_output=True, text=True, timeout=120).returncode == 0
        user = subprocess.run([engine, "exec", name, "id", "-u"], capture_output=True, text=True, timeout=60)
        assert user.stdout.strip() not in ("", "0")
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + 60
        while True:
            try:
                if session.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the container never answered /api/health"
            time.sleep(0.5)
        me = session.get(f"http://127.0.0.1:{port}/api/me", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert me.status_code == 200
        cli = subprocess.run(
            [engine, "exec", name, "python3", "/app/main.py", "users", "list", "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0 and json.loads(cli.stdout)["total"] == 1
        inspect = subprocess.run(
            [engine, "inspect", "--format", "{{json .State.Health}}", name], capture_output=True, text=True
        )
        assert inspect.returncode == 0
    finally:
        subprocess.run([engine, "rm", "-f", "-v", name], capture_output=True, timeout=120)
        subprocess.run([engine, "rmi", "-f", tag], capture_output=True, timeout=120)


def test_shlex_splits_the_init_command_as_sh_would():
    """compose.yaml's init command is one sh -c script of three commands joined by &&."""
    script = compose()["services"]["init"]["command"][0]
    words = shlex.split(script)
    assert words.count("&&") == 2 and words[0] == "python3"
