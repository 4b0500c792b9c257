"""Checks deploy/: the Helm chart (lint, render, Kubernetes schemas, what
its objects must say) and the Compose file (schema, what it must say).

Run by scripts/deploy-check, which makes the virtualenv this needs:

    deploy_check.py ROOT OUT

Writes each rendered gateway.toml (and its policy) under OUT/<case>/ for
crates/pg-proxy/tests/deploy.rs to load with `pg-proxy check`. Exit 0 when
everything holds, 1 with every failure listed otherwise.
"""

import os
import subprocess
import sys

import kubernetes_validate
import yaml
from helm_python import chart as helm

KUBERNETES = "1.30"  # the oldest Kubernetes version the chart is checked against
failures = []


def fail(case, message):
    failures.append(f"{case}: {message}")


def check(case, condition, message):
    if not condition:
        fail(case, message)


# Values of each case: what an install sets.
FULL = {
    "replicaCount": 3,
    "tls": {"secretName": "portcullis-tls"},
    "secrets": {
        "create": True,
        "upstreamPassword": "placeholder",
        "pseudonymKey": "placeholder-of-32-bytes-or-more-xxxxx",
        "auditKey": "-----BEGIN PRIVATE KEY-----\nchart test\n-----END PRIVATE KEY-----\n",
        "logPassword": "placeholder",
    },
    "upstream": {"caSecret": {"name": "db-ca", "key": "ca.crt"}},
    "audit": {"enabled": True, "durability": "every"},
    "admin": {"operators": ["platform"]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "networkPolicy": {
        "clients": {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "agent"}}},
        "admin": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        "egress": {"databaseCidr": "10.0.12.5/32"},
        "database": {"enabled": True},
        "agents": {"enabled": True},
    },
}
CASES = {
    "default": None,
    "full": FULL,
    "single": {"replicaCount": 1, "approvals": {"store": "memory"}, "networkPolicy": {"enabled": False}},
}
# Values the chart must refuse, and a word of the message it gives.
REFUSED = {
    "replicas-without-shared-approvals": ({"replicaCount": 2, "approvals": {"store": "memory"}}, "postgres"),
    "secret-without-password": ({"secrets": {"create": True}}, "upstreamPassword"),
    "a-misspelt-value": ({"replicas": 3}, "replicas"),
    "an-unknown-tls-mode": ({"upstream": {"tls": "verify_full"}}, "/upstream/tls"),
    "nowhere-to-reach-the-database": (
        {"networkPolicy": {"egress": {"databaseCidr": "", "databaseNamespaceSelector": None}}},
        "databaseCidr",
    ),
}


def documents(rendered):
    """Every object the chart rendered, with the template it came from."""
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield template, doc


def objects_of(docs, kind):
    return [d for _, d in docs if d.get("kind") == kind]


def check_chart(root, out):
    path = os.path.join(root, "deploy/helm/portcullis")
    for case, values in CASES.items():
        report = helm.lint(path, values, strict=True, kube_version=f"v{KUBERNETES}.0")
        for m in report.get("messages", []):
            # 1 is "info" (an icon is recommended); warnings and errors fail.
            if m.get("severity", 0) >= 2:
                fail(case, f"helm lint: {m.get('path')}: {m.get('error')}")
        for e in report.get("errors") or []:
            fail(case, f"helm lint: {e}")

        chart = helm.Chart.load(path)
        rendered = chart.render(values, name="gw", namespace="agents", is_install=True)
        docs = list(documents(rendered))
        for template, doc in docs:
            kind = doc.get("kind")
            if kind == "ServiceMonitor":
                check(case, doc.get("apiVersion") == "monitoring.coreos.com/v1", f"{template}: ServiceMonitor apiVersion")
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            except Exception as e:  # the library raises several kinds
                fail(case, f"{template}: {kind} {doc.get('metadata', {}).get('name')}: {e}")
        check_objects(case, docs, values or {})

        config = [d for d in objects_of(docs, "ConfigMap")]
        check(case, len(config) == 1, "one ConfigMap")
        if config:
            case_dir = os.path.join(out, case)
            os.makedirs(case_dir, exist_ok=True)
            for name in ("gateway.toml", "policy.toml"):
                with open(os.path.join(case_dir, name), "w") as f:
                    f.write(config[0]["data"][name])

    for case, (values, word) in REFUSED.items():
        try:
            helm.Chart.load(path).render(values, name="gw", namespace="agents", is_install=True)
            fail(case, "the chart rendered values it must refuse")
        except Exception as e:
            check(case, word in str(e), f"refused, but the message does not name {word!r}: {e}")


def check_objects(case, docs, values):
    deployments = objects_of(docs, "Deployment")
    check(case, len(deployments) == 1, "one Deployment")
    if not deployments:
        return
    d = deployments[0]
    replicas = values.get("replicaCount", 2)
    check(case, d["spec"]["replicas"] == replicas, f"replicas {d['spec']['replicas']} != {replicas}")
    pod = d["spec"]["template"]
    check(case, "checksum/config" in pod["metadata"].get("annotations", {}), "a checksum annotation rolls pods")
    spec = pod["spec"]
    check(case, spec["securityContext"].get("runAsNonRoot") is True, "runAsNonRoot")
    check(case, spec.get("automountServiceAccountToken") is False, "no service account token")
    (container,) = spec["containers"]
    sc = container["securityContext"]
    check(case, sc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    check(case, sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    check(case, sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities dropped")
    check(case, container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness on /healthz")
    check(case, container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz")
    scheme = "HTTPS" if values.get("tls", {}).get("secretName") else "HTTP"
    check(case, container["readinessProbe"]["httpGet"]["scheme"] == scheme, f"probes over {scheme}")
    check(case, "requests" in container.get("resources", {}), "resource requests")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    check(case, "/etc/portcullis/config" in mounts and "/etc/portcullis/secrets" in mounts, "config and secrets mounted")

    services = objects_of(docs, "Service")
    ports = sorted(p["name"] for s in services for p in s["spec"]["ports"])
    check(case, ports == ["admin", "postgresql"], f"a Service for each port: {ports}")
    check(case, len(objects_of(docs, "PodDisruptionBudget")) == 1, "a PodDisruptionBudget")

    selector = d["spec"]["selector"]["matchLabels"]
    policies = objects_of(docs, "NetworkPolicy")
    enabled = values.get("networkPolicy", {}).get("enabled", True)
    if not enabled:
        check(case, not policies, "no NetworkPolicy when disabled")
        return
    gateway = [p for p in policies if p["spec"]["podSelector"].get("matchLabels") == selector]
    check(case, len(gateway) == 1, "a NetworkPolicy for the gateway's pods")
    if gateway:
        g = gateway[0]["spec"]
        check(case, sorted(g["policyTypes"]) == ["Egress", "Ingress"], "the gateway's ingress and egress fenced")
        ports_out = {p["port"] for rule in g["egress"] for p in rule.get("ports", [])}
        check(case, ports_out <= {5432, 53, 443}, f"the gateway goes out to the database, DNS and HTTPS only: {ports_out}")
        db_rules = [r for r in g["egress"] if any(p["port"] == 5432 for p in r.get("ports", []))]
        check(case, all(r.get("to") for r in db_rules), "egress to the database names where it is")
    np = values.get("networkPolicy", {})
    if np.get("database", {}).get("enabled"):
        db = [p for p in policies if p["metadata"]["name"].endswith("-database")]
        check(case, len(db) == 1, "a NetworkPolicy in front of the database")
        if db:
            (rule,) = db[0]["spec"]["ingress"]
            (peer,) = rule["from"]
            check(case, peer["podSelector"]["matchLabels"] == selector, "the database admits the gateway's pods only")
            check(case, "namespaceSelector" in peer, "... of the gateway's namespace")
    if np.get("agents", {}).get("enabled"):
        agents = [p for p in policies if p["metadata"]["name"].endswith("-agents")]
        check(case, len(agents) == 1, "a NetworkPolicy for the agents' pods")
        if agents:
            ports_out = {p["port"] for rule in agents[0]["spec"]["egress"] for p in rule.get("ports", [])}
            check(case, 5432 not in ports_out, "agents get no egress to the database's port")


def check_compose(root):
    case = "compose"
    compose = os.path.join(root, "deploy/compose.yaml")
    venv_bin = os.path.dirname(sys.executable)
    checked = subprocess.run(
        [os.path.join(venv_bin, "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", compose],
        capture_output=True,
        text=True,
    )
    check(case, checked.returncode == 0, f"the Compose schema: {checked.stdout}{checked.stderr}")
    with open(compose) as f:
        spec = yaml.safe_load(f)
    services = spec["services"]
    gateways = [n for n in services if n.startswith("gateway-")]
    check(case, len(gateways) == 2, f"two gateway replicas: {gateways}")
    anchor = spec.get("x-gateway", {})
    for name in gateways:
        s = {**anchor, **services[name]}
        check(case, s.get("read_only") is True, f"{name}: read-only root filesystem")
        check(case, s.get("cap_drop") == ["ALL"], f"{name}: capabilities dropped")
        check(case, str(s.get("user", "")).split(":")[0] not in ("", "0", "root"), f"{name}: not root")
        for port in s.get("ports", []):
            check(case, str(port).startswith("127.0.0.1:"), f"{name}: {port} published on loopback only")
    db = services["postgres"]
    check(case, db.get("networks") == ["database"], "the database is on the internal network only")
    check(case, spec["networks"]["database"].get("internal") is True, "the database's network is internal")
    check(case, not db.get("ports"), "the database publishes no port")


def main():
    root, out = sys.argv[1], sys.argv[2]
    check_chart(root, out)
    check_compose(root)
    if failures:
        for f in failures:
            print(f"deploy-check: {f}", file=sys.stderr)
        sys.exit(1)
    print(f"deploy-check: chart ({len(CASES)} value sets, {len(REFUSED)} refused) and compose file: ok")


if __name__ == "__main__":
    main()
