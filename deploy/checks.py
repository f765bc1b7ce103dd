"""The deployment checks behind deploy/check, run in its tool venv.

usage: python deploy/checks.py REPO_ROOT COMPOSE_BIN

Every check prints one line `ok|FAIL  <what>`; the exit status is the number
of failures (capped at 100). Negative checks (fixtures under
deploy/testdata/) pass when the tool REJECTS the bad input, so each tool is
shown able to fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(sys.argv[1]).resolve()
COMPOSE = sys.argv[2]
CHART = ROOT / "helm" / "tasklab"
TESTDATA = ROOT / "deploy" / "testdata"
# The chart's floor (Chart.yaml kubeVersion) and the newest release whose
# schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
SERVICES = ["gateway", "tasks", "projects", "queues", "artifacts", "metrics"]

failures: list[str] = []
passed = 0


def report(ok: bool, what: str, detail: str = "") -> None:
    global passed
    print(f"{'ok  ' if ok else 'FAIL'}  {what}")
    passed += ok
    if not ok:
        failures.append(what)
        if detail:
            print("      " + detail.strip().replace("\n", "\n      ")[:3000])


# ------------------------------------------------------------ settings keys
def settings_keys() -> set[tuple[str, ...]]:
    """Every leaf path of tasklab's Settings, read from shared/config/src/lib.rs."""
    text = (ROOT / "shared/config/src/lib.rs").read_text()
    structs: dict[str, list[tuple[str, str]]] = {}
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
        fields = re.findall(r"^\s*pub (\w+): ([^,]+),", m.group(2), re.M)
        structs[m.group(1)] = fields
    leaves: set[tuple[str, ...]] = set()

    def walk(struct: str, prefix: tuple[str, ...]) -> None:
        for name, ty in structs[struct]:
            inner = re.sub(r"^Option<(.*)>$", r"\1", ty.strip())
            if inner in structs:
                walk(inner, prefix + (name,))
            else:
                leaves.add(prefix + (name,))

    walk("Settings", ())
    return leaves


SETTINGS = settings_keys()
ENV_ALIASES = {"ACCESS_KEY", "SECRET_KEY", "CONFIG"}


def bad_env_names(names: set[str]) -> list[str]:
    """TASKLAB_* names that are no setting (tasklab refuses to start on them)."""
    bad = []
    for name in sorted(names):
        if not name.startswith("TASKLAB_"):
            continue
        rest = name[len("TASKLAB_"):]
        if rest in ENV_ALIASES:
            continue
        if tuple(p.lower() for p in rest.split("__")) not in SETTINGS:
            bad.append(name)
    return bad


def env_names_in_manifests(docs: list[dict]) -> set[str]:
    names: set[str] = set()
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"].endswith("-config"):
            names.update(doc.get("data", {}))
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec") or (spec if doc.get("kind") == "Pod" else {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            names.update(e["name"] for e in c.get("env", []))
    return names


# ------------------------------------------------------------ chart
def load_docs(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__source", path)
                docs.append(doc)
    return docs


def kube_validate(docs: list[dict], version: str) -> list[str]:
    errors = []
    for doc in docs:
        body = {k: v for k, v in doc.items() if k != "__source"}
        try:
            kubernetes_validate.validate(body, version, strict=True)
        except Exception as e:  # ValidationError, SchemaNotFoundError, ...
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            errors.append(f"{name} ({doc.get('__source')}): {str(e).splitlines()[0]}")
    return errors


def structure_errors(docs: list[dict], values: dict) -> list[str]:
    """What the chart promises, checked on the rendered objects."""
    errs = []
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    kinds = {d["kind"] for d in docs}
    for kind in ["ServiceAccount", "ConfigMap", "Deployment", "Service", "Job"]:
        if kind not in kinds and not (kind == "ServiceAccount" and not values["serviceAccount"]["create"]):
            errs.append(f"no {kind} rendered")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    comps = sorted(d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments)
    if comps != sorted(SERVICES):
        errs.append(f"Deployments for {comps}, expected {sorted(SERVICES)}")
    for d in deployments:
        svc = d["metadata"]["labels"]["app.kubernetes.io/component"]
        cfg = values["services"][svc]
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        if c.get("args") != ["serve", "--service", svc]:
            errs.append(f"{svc}: args {c.get('args')}")
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
            if "grpc" not in c.get(probe, {}):
                errs.append(f"{svc}: {probe} is not a gRPC probe")
        res = c.get("resources", {})
        if not res.get("requests") or not res.get("limits"):
            errs.append(f"{svc}: resources without requests and limits")
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            errs.append(f"{svc}: pod may run as root")
        if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
            errs.append(f"{svc}: writable root file system")
        name = d["metadata"]["name"]
        if ("Service", name) not in by:
            errs.append(f"{svc}: no Service")
        if cfg["autoscaling"]["enabled"] and ("HorizontalPodAutoscaler", name) not in by:
            errs.append(f"{svc}: no HorizontalPodAutoscaler")
        if cfg["pdb"]["enabled"] and ("PodDisruptionBudget", name) not in by:
            errs.append(f"{svc}: no PodDisruptionBudget")
        if values["networkPolicy"]["enabled"]:
            np = by.get(("NetworkPolicy", name))
            if np is None:
                errs.append(f"{svc}: no NetworkPolicy")
            elif svc != "gateway":
                sources = [p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                           for rule in np["spec"]["ingress"] for p in rule.get("from", [])]
                allowed = {"gateway", *values["networkPolicy"]["allowedPeers"].get(svc, [])}
                if not sources or not set(s for s in sources if s) <= allowed:
                    errs.append(f"{svc}: NetworkPolicy admits {sources}, expected only {sorted(allowed)}")
    job = next((d for d in docs if d["kind"] == "Job"), None)
    if values["migrations"]["enabled"]:
        if job is None:
            errs.append("no migrations Job")
        else:
            hooks = job["metadata"].get("annotations", {}).get("helm.sh/hook", "")
            if "pre-upgrade" not in hooks and "pre-upgrade" in values["migrations"]["hooks"]:
                errs.append(f"migrations Job hook is {hooks!r}")
            args = [c["args"] for c in job["spec"]["template"]["spec"]["containers"]]
            if sorted(a[-1] for a in args) != sorted(SERVICES[1:]):
                errs.append(f"migrations Job containers {args}")
    if values["ingress"]["enabled"]:
        ingresses = {d["metadata"]["name"].rsplit("-", 1)[-1] for d in docs if d["kind"] == "Ingress"}
        want = {k for k in ["api", "files", "grpc"] if values["ingress"][k]["enabled"]}
        if ingresses != want:
            errs.append(f"Ingresses {sorted(ingresses)}, expected {sorted(want)}")
    return errs


def check_chart() -> None:
    chart = helm_python.Chart.load(str(CHART))
    schema = json.loads((CHART / "values.schema.json").read_text())
    cases = {"defaults": {}}
    for f in sorted((CHART / "ci").glob("*.yaml")):
        cases[f"ci/{f.name}"] = yaml.safe_load(f.read_text()) or {}

    for label, overrides in cases.items():
        try:
            merged = chart.merge_values(overrides)
            chart.validate_schema(overrides)
            jsonschema.validate(merged, schema, cls=jsonschema.Draft7Validator)
            report(True, f"chart values valid (helm + jsonschema): {label}")
        except Exception as e:
            report(False, f"chart values valid: {label}", str(e))
            continue
        for kv in KUBE_VERSIONS:
            lint = helm_python.lint(str(CHART), overrides, strict=True, kube_version=f"v{kv}")
            problems = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2]
            problems += lint.get("errors") or []
            report(not problems, f"helm lint --strict (k8s {kv}): {label}", json.dumps(problems, indent=1))
        for mode in ["install", "upgrade"]:
            try:
                rendered = chart.render(overrides, name="tasklab", namespace="ml",
                                        is_install=mode == "install", is_upgrade=mode == "upgrade")
            except Exception as e:
                report(False, f"chart renders ({mode}): {label}", str(e))
                continue
            docs = load_docs(rendered)
            report(bool(docs), f"chart renders ({mode}, {len(docs)} objects): {label}")
            if mode == "upgrade":
                continue
            for kv in KUBE_VERSIONS:
                errs = kube_validate(docs, kv)
                report(not errs, f"manifests valid against Kubernetes {kv} schemas (strict): {label}",
                       "\n".join(errs))
            errs = structure_errors(docs, merged)
            report(not errs, f"chart structure (services, probes, HPA, PDB, NetworkPolicy, Job): {label}",
                   "\n".join(errs))
            bad = bad_env_names(env_names_in_manifests(docs))
            report(not bad, f"every TASKLAB_* variable is a setting: {label}", ", ".join(bad))

    # Negative: bad values must be refused by helm (schema) and by jsonschema.
    for f in sorted((TESTDATA / "bad-values").glob("*.yaml")):
        overrides = yaml.safe_load(f.read_text())
        merged = chart.merge_values(overrides)
        helm_refused = jsonschema_refused = False
        try:
            chart.render(overrides, name="tasklab", namespace="ml", is_install=True)
        except helm_python.errors.HelmValuesError:
            helm_refused = True
        except Exception:
            pass
        try:
            jsonschema.validate(merged, schema, cls=jsonschema.Draft7Validator)
        except jsonschema.ValidationError:
            jsonschema_refused = True
        report(helm_refused and jsonschema_refused,
               f"bad values refused by values.schema.json (helm: {helm_refused}, jsonschema: {jsonschema_refused}): {f.name}")

    # Negative: broken manifests must be refused by the Kubernetes schemas.
    for f in sorted((TESTDATA / "bad-manifests").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        errs = kube_validate(docs, KUBE_VERSIONS[-1])
        report(len(errs) == len(docs), f"broken manifest refused by kubernetes-validate: {f.name}",
               f"{len(docs) - len(errs)} of {len(docs)} objects passed")


# ------------------------------------------------------------ compose
def compose_config(path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    env.pop("COMPOSE_FILE", None)
    return subprocess.run([COMPOSE, "-f", str(path), "config", "--format", "json"],
                          capture_output=True, text=True, env=env)


def check_compose() -> None:
    res = compose_config(ROOT / "deploy" / "compose.yaml")
    report(res.returncode == 0, "compose.yaml valid (docker compose config)", res.stderr)
    if res.returncode == 0:
        cfg = json.loads(res.stdout)
        svcs = cfg["services"]
        errs = []
        for svc in SERVICES:
            s = svcs.get(svc)
            if s is None:
                errs.append(f"no {svc} container")
                continue
            if s.get("command") != ["serve", "--service", svc]:
                errs.append(f"{svc}: command {s.get('command')}")
            if "tasklab" not in " ".join(s.get("healthcheck", {}).get("test", [])):
                errs.append(f"{svc}: no gRPC health check")
        for need in ["postgres", "redis", "otel-collector", "jaeger"]:
            if need not in svcs:
                errs.append(f"no {need}")
        published = {p.get("target") for p in svcs.get("gateway", {}).get("ports", [])}
        if published != {8008, 8081}:
            errs.append(f"gateway publishes {published}")
        for svc, s in svcs.items():
            if svc not in ("gateway", "jaeger") and s.get("ports"):
                errs.append(f"{svc} publishes ports")
        gw_deps = set(svcs.get("gateway", {}).get("depends_on", {}))
        if not set(SERVICES[1:]) <= gw_deps:
            errs.append(f"gateway starts without waiting for {set(SERVICES[1:]) - gw_deps}")
        report(not errs, "compose stack shape (one container per service, health, start order, ports)",
               "\n".join(errs))
        names = {k for s in svcs.values() for k in (s.get("environment") or {})}
        bad = bad_env_names(names)
        report(not bad, "every TASKLAB_* variable in compose.yaml is a setting", ", ".join(bad))
    for f in sorted((TESTDATA / "bad-compose").glob("*.yaml")):
        res = compose_config(f)
        report(res.returncode != 0, f"broken compose file refused: {f.name}",
               "docker compose config accepted it")


# ------------------------------------------------------------ Dockerfile
def hadolint(path: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "hadolint"
    return subprocess.run([str(exe), "--no-color", str(path)], capture_output=True, text=True)


def check_dockerfile() -> None:
    dockerfile = ROOT / "deploy" / "Dockerfile"
    res = hadolint(dockerfile)
    report(res.returncode == 0, "Dockerfile passes hadolint", res.stdout + res.stderr)
    res = hadolint(TESTDATA / "bad.Dockerfile")
    report(res.returncode != 0 and "DL" in res.stdout, "bad Dockerfile refused by hadolint",
           "hadolint accepted it")

    text = dockerfile.read_text()
    toolchain = re.search(r'channel\s*=\s*"([^"]+)"', (ROOT / "rust-toolchain.toml").read_text()).group(1)
    m = re.search(r"^ARG RUST_VERSION=(\S+)", text, re.M)
    report(bool(m) and m.group(1) == toolchain,
           f"Dockerfile RUST_VERSION matches rust-toolchain.toml ({toolchain})",
           f"Dockerfile has {m.group(1) if m else 'no RUST_VERSION'}")
    env_names = set(re.findall(r"\b(TASKLAB_[A-Z0-9_]+)=", text))
    bad = bad_env_names(env_names)
    report(bool(env_names) and not bad, "every TASKLAB_* variable in the Dockerfile is a setting", ", ".join(bad))
    for needed in ["USER ", "HEALTHCHECK ", "ENTRYPOINT ", "COPY --from=planner /skeleton/"]:
        report(needed in text, f"Dockerfile has {needed.strip()}")
    report(not re.search(r"^USER\s+(root|0)\b", text, re.M), "Dockerfile runtime user is not root")

    # The dependency layer: the skeleton must hold every build target cargo
    # expects, or `cargo build` on it fails inside the image build.
    cargo = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
                           cwd=ROOT, capture_output=True, text=True) if _has("cargo") else None
    if cargo is None:
        print("skip  skeleton covers every cargo target (no cargo on this machine)")
        return
    if cargo.returncode != 0:
        report(False, "cargo metadata", cargo.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        sk = Path(tmp) / "skeleton"
        res = subprocess.run(["sh", str(ROOT / "deploy" / "skeleton.sh"), str(ROOT), str(sk)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            report(False, "deploy/skeleton.sh runs", res.stderr)
            return
        missing = []
        meta = json.loads(cargo.stdout)
        for pkg in meta["packages"]:
            for target in pkg["targets"]:
                if set(target["kind"]) & {"test"}:
                    continue  # integration tests are not built by `cargo build --bin`
                rel = Path(target["src_path"]).resolve().relative_to(ROOT)
                if not (sk / rel).is_file():
                    missing.append(str(rel))
        manifests = [str(Path(p["manifest_path"]).resolve().relative_to(ROOT)) for p in meta["packages"]]
        missing += [m for m in manifests if not (sk / m).is_file()]
        if not (sk / "Cargo.lock").is_file():
            missing.append("Cargo.lock")
        report(not missing, f"deploy/skeleton.sh covers every manifest and build target ({len(manifests)} packages)",
               "missing: " + ", ".join(missing))


def _has(cmd: str) -> bool:
    from shutil import which
    return which(cmd) is not None


# ------------------------------------------------------------ env-key check proves it can fail
def check_env_negative() -> None:
    bad = bad_env_names({"TASKLAB_SERVICES__TASK__ENDPOINT", "TASKLAB_LOG_FORMAT", "TASKLAB_ACCESS_KEY"})
    report(bad == ["TASKLAB_LOG_FORMAT", "TASKLAB_SERVICES__TASK__ENDPOINT"],
           "misspelt TASKLAB_* variables refused by the settings check", f"flagged {bad}")
    report(("services", "tasks", "database_url") in SETTINGS and ("redis_url",) in SETTINGS,
           f"settings keys read from shared/config ({len(SETTINGS)} leaves)")


def main() -> int:
    check_env_negative()
    check_chart()
    check_compose()
    check_dockerfile()
    print()
    for what in failures:
        print(f"failed: {what}")
    print(f"deploy: {passed} passed, {len(failures)} failed")
    return min(len(failures), 100)


if __name__ == "__main__":
    sys.exit(main())
