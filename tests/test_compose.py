"""docker-compose.yml, proven without a Docker engine.

1. The file validates against the compose specification (check-jsonschema's vendored schema).
2. Every service runs natively, as compose would run it in the image the Dockerfile builds:
   `${VAR:-default}` interpolation as compose does it, the image's ENV / WORKDIR / ENTRYPOINT / CMD
   with the service's `environment`, `entrypoint` and `command` over them, temporary folders in
   place of named volumes and bind mounts (container paths in arguments and environment mapped to
   them), in `depends_on` order with its conditions: train (profile) -> indexer (exit 0) -> api
   (gunicorn), then the api's own healthcheck command, a query, and a second indexer run that the
   running api picks up (hot reload); and the dask profile: scheduler (healthy) -> worker + indexer
   on the cluster (service names and the scheduler port mapped to 127.0.0.1 and a free port).
Not emulated: the non-root user (tests run as whoever runs them), network isolation, and
`:ro` is checked by comparing the inventory before and after instead of being enforced.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    """A command from this virtualenv, else from PATH."""
    own = VENV_BIN / name
    return str(own) if own.exists() else shutil.which(name)


# --- compose semantics ---------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt} (defaults are interpolated too)."""

    def sub(m: re.Match) -> str:
        escaped, name, op, arg, bare = m.groups()
        if escaped:
            return "$"
        if bare:
            return env.get(bare, "")
        value = env.get(name)
        if op is None:
            return value or ""
        arg = interpolate(arg or "", env)
        unset_or_empty = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if unset_or_empty else value
        if op.endswith("?"):
            if unset_or_empty:
                raise ValueError(f"required variable {name} is missing: {arg}")
            return value
        return "" if unset_or_empty else arg  # +

    return _VAR.sub(sub, value)


def interpolate_tree(node, env: dict[str, str]):  # noqa: ANN001, ANN201
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def load_compose(env: dict[str, str]) -> dict:
    return interpolate_tree(yaml.safe_load(COMPOSE_FILE.read_text()), env)


def as_list(command) -> list[str] | None:  # noqa: ANN001
    """A compose command/entrypoint (string: shell-split, as compose does) as argv."""
    if command is None:
        return None
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def as_env(environment) -> dict[str, str]:  # noqa: ANN001
    if environment is None:
        return {}
    if isinstance(environment, list):
        return dict(e.split("=", 1) if "=" in e else (e, os.environ.get(e, "")) for e in environment)
    return {k: "" if v is None else str(v) for k, v in environment.items()}


def enabled_services(compose: dict, profiles: set[str]) -> list[str]:
    return [
        n
        for n, s in compose["services"].items()
        if not set(s.get("profiles", [])) or set(s["profiles"]) & profiles
    ]


def start_order(compose: dict, enabled: list[str]) -> list[str]:
    """Services in dependency order (depends_on on a disabled service must be `required: false`)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {path + (name,)}"
        if name in order:
            return
        deps = compose["services"][name].get("depends_on", {})
        for dep, spec in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            if dep not in enabled:
                assert spec.get("required", True) is False, f"{name} needs {dep}, which is not enabled"
                continue
            visit(dep, path + (name,))
        order.append(name)

    for name in enabled:
        visit(name, ())
    return order


@dataclass
class Image:
    """What the final stage of the Dockerfile sets for a container."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] | None = None
    volumes: list[str] = field(default_factory=list)


def parse_dockerfile(path: Path = DOCKERFILE) -> Image:
    """ENV, WORKDIR, ENTRYPOINT, CMD, HEALTHCHECK and VOLUME of the last stage (exec forms)."""
    import json

    text = re.sub(r"\\\n", " ", path.read_text())
    image = Image()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            image = Image()  # a new stage; only the last one is the image
        elif word == "ENV":
            for key, value in (kv.split("=", 1) for kv in shlex.split(rest)):
                known = dict(image.env)
                image.env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m, known=known: known.get(m[1], ""), value)
        elif word == "WORKDIR":
            image.workdir = rest.strip()
        elif word in ("CMD", "ENTRYPOINT"):
            argv = json.loads(rest)
            if word == "ENTRYPOINT":
                image.entrypoint, image.cmd = argv, []  # an ENTRYPOINT resets an inherited CMD
            else:
                image.cmd = argv
        elif word == "HEALTHCHECK":
            image.healthcheck = json.loads(rest[rest.index("CMD") + 3 :].strip())
        elif word == "VOLUME":
            image.volumes = json.loads(rest)
    image.env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return image


class Containers:
    """Runs compose services as local processes, with folders standing in for volumes."""

    def __init__(self, compose: dict, image: Image, root: Path, ports: dict[int, int] | None = None):
        self.compose, self.image, self.root = compose, image, root
        self.ports = ports or {}  # container port -> free local port (the compose network's stand-in)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.healthy: set[str] = set()

    def volume_dir(self, name: str) -> Path:
        assert name in (self.compose.get("volumes") or {}), f"undeclared named volume {name!r}"
        path = self.root / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mounts(self, service: str) -> dict[str, Path]:
        """Container path -> host folder for one service (volumes, bind mounts, then the rest)."""
        spec = self.compose["services"][service]
        found: dict[str, Path] = {}
        for volume in spec.get("volumes", []):
            source, target, *_mode = (
                volume.split(":") if isinstance(volume, str) else (volume["source"], volume["target"])
            )
            if source.startswith((".", "/")):
                host = (COMPOSE_FILE.parent / source).resolve()
                assert host.is_dir(), f"{service}: bind mount source {host} does not exist"
            else:
                host = self.volume_dir(source)
            found[target] = host
        for anon in self.image.volumes:  # image VOLUMEs the service does not mount: anonymous volumes
            found.setdefault(anon, self.root / "anonymous" / service / anon.strip("/").replace("/", "_"))
        # the rest of the container's filesystem: its own scratch folder; the image's virtualenv: ours
        found.setdefault(self.image.workdir, self.root / "fs" / service / self.image.workdir.strip("/"))
        found["/opt/venv"] = VENV_BIN.parent
        for host in found.values():
            host.mkdir(parents=True, exist_ok=True)
        return found

    def map_value(self, value: str, mounts: dict[str, Path]) -> str:
        """A container's string as seen here: mounted paths -> folders, `service:port` -> 127.0.0.1:free port."""
        for target in sorted(mounts, key=len, reverse=True):
            value = re.sub(rf"(?<![\w/.]){re.escape(target)}(?=/|:|$|\s|')", str(mounts[target]), value)
        for name in self.compose["services"]:  # service names resolve on the compose network
            value = re.sub(rf"(?<![\w.-]){re.escape(name)}(?=:\d)", "127.0.0.1", value)
        for inside, outside in self.ports.items():
            value = re.sub(rf"(?<![\d.]){inside}(?!\d)", str(outside), value)
        return value

    def environment(self, service: str) -> dict[str, str]:
        mounts = self.mounts(service)
        env = {**self.image.env, **as_env(self.compose["services"][service].get("environment"))}
        env = {k: self.map_value(v, mounts) for k, v in env.items()}
        env.setdefault("HOME", str(mounts[self.image.workdir]))
        env["TMPDIR"] = str(self.root / "tmp")
        (self.root / "tmp").mkdir(exist_ok=True)
        return env

    def argv(self, service: str) -> list[str]:
        """ENTRYPOINT + CMD with compose's overrides (an `entrypoint` drops the image's CMD)."""
        spec = self.compose["services"][service]
        entrypoint = as_list(spec.get("entrypoint"))
        command = as_list(spec.get("command"))
        if entrypoint is not None:
            argv = entrypoint + (command or [])
        else:
            argv = self.image.entrypoint + (command if command is not None else self.image.cmd)
        assert argv, f"{service} has nothing to run"
        mounts = self.mounts(service)
        return [self.map_value(a, mounts) for a in argv]

    def popen(self, service: str, argv: list[str], log_name: str) -> subprocess.Popen:
        env = self.environment(service)
        exe = shutil.which(argv[0], path=env["PATH"])
        assert exe, f"{service}: {argv[0]!r} is not on the image's PATH ({env['PATH']})"
        log = self.root / "logs" / f"{log_name}.log"
        log.parent.mkdir(exist_ok=True)
        self.logs[log_name] = log
        with open(log, "ab") as out:
            return subprocess.Popen(
                [exe, *argv[1:]],
                cwd=self.mounts(service)[self.image.workdir],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def run(self, service: str, timeout: float = 240) -> int:
        """Run a one-shot service to completion; its exit code."""
        proc = self.popen(service, self.argv(service), service)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise

    def start(self, service: str) -> None:
        self.procs[service] = self.popen(service, self.argv(service), service)

    def healthcheck(self, service: str) -> int:
        """Run the service's healthcheck test once (compose's, else the image's); its exit code."""
        spec = self.compose["services"][service].get("healthcheck") or {}
        assert not spec.get("disable"), f"{service} has its healthcheck disabled"
        test = spec.get("test") or ["CMD", *self.image.healthcheck]
        test = ["CMD-SHELL", test] if isinstance(test, str) else list(test)
        argv = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
        mounts = self.mounts(service)
        proc = self.popen(service, [self.map_value(a, mounts) for a in argv], f"{service}-healthcheck")
        return proc.wait(timeout=30)

    def wait_healthy(self, service: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs[service]
            assert proc.poll() is None, f"{service} exited ({proc.returncode}):\n{self.tail(service)}"
            if self.healthcheck(service) == 0:
                return
            assert time.monotonic() < deadline, f"{service} never became healthy:\n{self.tail(service)}"
            time.sleep(1)

    def up(self, services: list[str], timeout: float = 240) -> None:
        """Start `services` as `docker compose up` does: each as soon as its `depends_on` conditions
        hold (started / healthy / completed successfully); returns once all have started."""
        deadline = time.monotonic() + timeout
        waiting = list(services)
        while waiting:
            for name in list(waiting):
                if self._ready_to_start(name, services):
                    self.start(name)
                    waiting.remove(name)
            assert time.monotonic() < deadline, f"never started: {waiting}"
            if waiting:
                time.sleep(0.5)

    def _ready_to_start(self, name: str, services: list[str]) -> bool:
        deps = self.compose["services"][name].get("depends_on", {})
        for dep, spec in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            if dep not in services:
                continue
            proc = self.procs.get(dep)
            if proc is None:
                return False
            condition = spec.get("condition", "service_started")
            if condition == "service_completed_successfully":
                if proc.poll() is None:
                    return False
                assert proc.returncode == 0, (
                    f"{dep} exited {proc.returncode}, {name} cannot start:\n{self.tail(dep)}"
                )
            elif condition == "service_healthy" and dep not in self.healthy:
                assert proc.poll() is None, f"{dep} exited ({proc.returncode}):\n{self.tail(dep)}"
                if self.healthcheck(dep) != 0:
                    return False
                self.healthy.add(dep)
        return True

    def tail(self, name: str, n: int = 40) -> str:
        log = self.logs.get(name)
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log and log.exists() else ""

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- tests ---------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec():
    exe = tool("check-jsonschema")
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    result = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A:-x}", "1"),
        ("${EMPTY:-x}", "x"),
        ("${EMPTY-x}", ""),
        ("${UNSET-x}", "x"),
        ("${UNSET:-/a/${A}}", "/a/1"),
        ("$$HOME ${A}$A", "$HOME 11"),
        ("${A:+yes}${UNSET:+no}", "yes"),
        ("${UNSET}", ""),
    ],
)
def test_interpolation_like_compose(text, expected):
    assert interpolate(text, {"A": "1", "EMPTY": ""}) == expected


def test_interpolation_required_variable():
    with pytest.raises(ValueError, match="NEED"):
        interpolate("${NEED:?set it}", {})


def test_every_service_is_complete_with_defaults_only():
    """With no environment at all, every service resolves to a runnable command and known volumes."""
    compose = load_compose({})
    image = parse_dockerfile()
    assert compose["services"]["api"].get("command") is None  # the api runs the image's CMD
    assert image.cmd[0] == "gunicorn" and image.healthcheck is not None
    enabled = enabled_services(compose, {"train", "dask"})
    assert set(enabled) == set(compose["services"])
    order = start_order(compose, enabled)
    assert order.index("train") < order.index("indexer") < order.index("api")
    assert order.index("dask-scheduler") < order.index("indexer")
    assert start_order(compose, enabled_services(compose, set())) == ["indexer", "api"]
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in compose["volumes"], f"{name}: {volume}"
    api = compose["services"]["api"]
    assert api["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["ports"] == ["8000:8000"] and api["environment"]["IMGREC_BIND"] == "0.0.0.0:8000"
    assert "models:/data/models" in compose["services"]["train"]["volumes"]
    assert any(v.endswith(":/data/inventory:ro") for v in compose["services"]["indexer"]["volumes"])


@pytest.fixture
def inventory(tmp_path) -> Path:
    from imgrec.synthetic import make_catalog

    inventory, _ = make_catalog(tmp_path / "catalog", per_class=6, queries_per_class=0, size=64)
    return inventory


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
    }


def test_services_run_natively_in_dependency_order(inventory, tmp_path):
    requests = pytest.importorskip("requests", reason="requests is needed to query the api")
    for name in ("imgrec", "gunicorn"):
        if tool(name) is None:
            pytest.skip(f"`{name}` is not installed in this environment (pip install -e .)")
    try:
        import search_api.gunicorn_conf  # noqa: F401
        from search_api import create_app  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the search API is not available yet: {e}")

    port = free_port()
    env = {  # what a user's .env would hold; everything else keeps its default
        "IMGREC_INVENTORY_DIR": str(inventory),
        "IMGREC_PORT": str(port),
        "IMGREC_HTTP_PORT": str(port),
        "IMGREC_TRAIN_MODEL": "conv-ae",
        "IMGREC_TRAIN_EPOCHS": "1",
        "IMGREC_API_WORKERS": "2",
        "IMGREC_RELOAD_INTERVAL": "0.5",
    }
    compose = load_compose(env)
    containers = Containers(compose, parse_dockerfile(), tmp_path / "docker")
    order = start_order(compose, enabled_services(compose, {"train"}))
    assert order == ["train", "indexer", "api"]
    before = _tree(inventory)
    try:
        containers.up(order)  # train, then the indexer once train exited 0, then the api likewise
        containers.wait_healthy("api")
        assert containers.procs["train"].returncode == 0 and containers.procs["indexer"].returncode == 0
        assert _tree(inventory) == before, "a service wrote into the read-only inventory"
        assert (containers.volume_dir("models") / "default" / "config.json").is_file()
        assert containers.healthcheck("api") == 0

        published = compose["services"]["api"]["ports"][0].split(":")
        base = f"http://127.0.0.1:{published[-1]}"
        ready = requests.get(f"{base}/readyz", timeout=10).json()
        first_gen = ready["index"]["generation"]
        query = inventory / "mugs" / "mugs-001.jpg"
        with open(query, "rb") as f:
            r = requests.post(f"{base}/v1/search", params={"k": 3}, files={"image": f}, timeout=60)
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert hits and hits[0]["label"] == "mugs" and hits[0]["score"] > 0.99  # itself, cosine

        # later: the inventory grows, the indexer service runs again, the running api picks it up
        shutil.copy(query, inventory / "mugs" / "mugs-extra.jpg")
        assert containers.run("indexer") == 0, containers.tail("indexer")
        deadline = time.monotonic() + 30
        while True:
            gens = {
                requests.get(f"{base}/readyz", timeout=10).json()["index"]["generation"] for _ in range(4)
            }
            if gens and first_gen not in gens:
                break
            assert time.monotonic() < deadline, f"the api still serves generation {first_gen}"
            time.sleep(0.5)
        assert containers.procs["api"].poll() is None  # not restarted
    finally:
        containers.stop_all()
    assert containers.procs["api"].returncode in (0, -signal.SIGTERM), containers.tail("api")


def test_env_example_lists_every_setting_with_its_default():
    """.env.example names exactly the variables docker-compose.yml reads, with the same defaults."""
    example = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    text = "\n".join(ln for ln in COMPOSE_FILE.read_text().splitlines() if not ln.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used == set(example), (
        f"only in compose: {used - set(example)}; only in .env.example: {set(example) - used}"
    )
    assert load_compose(example) == load_compose({})


def test_dask_profile_runs_natively(inventory, tmp_path):
    """scheduler -> (healthy) -> worker + indexer with IMGREC_DASK: the embedding runs on the worker."""
    pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    for name in ("imgrec", "dask"):
        if tool(name) is None:
            pytest.skip(f"`{name}` is not installed in this environment")
    from distributed import Client

    from encoder.train import TrainConfig, train
    from indexer import open_snapshot

    env = {
        "IMGREC_INVENTORY_DIR": str(inventory),
        "IMGREC_DASK": "tcp://dask-scheduler:8786",
        "IMGREC_DASK_WORKERS": "1",
    }
    compose = load_compose(env)
    port = free_port()
    containers = Containers(compose, parse_dockerfile(), tmp_path / "docker", ports={8786: port})
    # a pre-trained tiny model in the models volume, where the train service would have left it
    cfg = TrainConfig(arch="conv-ae", image_size=16, filters=(8, 4, 4), epochs=1, batch_size=16, patience=1)
    train(inventory / "mugs", containers.volume_dir("models") / "default", cfg)
    order = [s for s in start_order(compose, enabled_services(compose, {"dask"})) if s != "api"]
    assert set(order) == {"dask-scheduler", "dask-worker", "indexer"}
    try:
        containers.up(order)
        assert containers.procs["indexer"].wait(timeout=240) == 0, containers.tail("indexer")
        with Client(f"tcp://127.0.0.1:{port}", timeout=30) as client:
            prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        assert "embed_partition" in prefixes, "the indexer did not use the Dask workers"
    finally:
        containers.stop_all()
    snap = open_snapshot(containers.volume_dir("index"))
    try:
        assert snap.generation.item_count == 36
    finally:
        snap.close()
