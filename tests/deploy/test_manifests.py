"""deploy/kubernetes renders, validates against a pinned Kubernetes version, and keeps its promises.

No cluster: ``kubectl kustomize`` renders each overlay, ``kubernetes_validate`` checks every object against
the schemas of ``KUBERNETES_VERSION`` (strict: unknown fields fail), and the tests below read the objects.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import kubernetes_validate
import pytest
from support.manifests import (
    KUSTOMIZE_ROOT,
    OVERLAYS,
    Manifest,
    config_map_data,
    containers,
    named,
    render,
)

from policyopt.core.outbound import OutboundPolicy
from policyopt.core.settings import Settings

# The oldest Kubernetes the manifests support: native gRPC probes, policy/v1 PodDisruptionBudgets and the
# restricted Pod Security Standard are all GA there.
KUBERNETES_VERSION = "1.31.0"
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {overlay: render(KUSTOMIZE_ROOT / "overlays" / overlay) for overlay in OVERLAYS}


def test_the_top_level_kustomization_renders_the_cpu_shape(rendered: dict[str, list[Manifest]]) -> None:
    assert render(KUSTOMIZE_ROOT) == rendered["cpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_pinned_kubernetes_schemas(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    failures = []
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespaced_object_lands_in_the_policyopt_namespace(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    """Components an overlay adds come after base's namespace transformer; none may be left without it."""
    outside = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in rendered[overlay]
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != "policyopt"
    ]
    assert not outside, f"{overlay}: objects outside the policyopt namespace: {outside}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_non_root_without_privileges(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    for where, container, spec in containers(rendered[overlay]):
        pod = spec.get("securityContext", {})
        sc = container.get("securityContext")
        assert sc, f"{where} has no securityContext"
        assert sc.get("runAsNonRoot") or pod.get("runAsNonRoot"), f"{where} may run as root"
        assert (sc.get("runAsUser") or pod.get("runAsUser") or 0) != 0, f"{where} runs as uid 0"
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("privileged"), where
        assert sc.get("readOnlyRootFilesystem") is True, where
        seccomp = sc.get("seccompProfile") or pod.get("seccompProfile") or {}
        assert seccomp.get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, f"{where} mounts an API token it never uses"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits_and_a_pinned_image(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    for where, container, _ in containers(rendered[overlay]):
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(section, {})), f"{where} lacks {section}"
        image = container["image"]
        name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        assert name and tag and tag != "latest", f"{where} image {image!r} is not pinned to a version"


def test_gpus_are_requested_only_in_the_gpu_overlay(rendered: dict[str, list[Manifest]]) -> None:
    def gpu_users(overlay: str) -> set[str]:
        users = set()
        for where, container, _ in containers(rendered[overlay]):
            resources = container.get("resources", {})
            if GPU in resources.get("limits", {}) or GPU in resources.get("requests", {}):
                assert resources["limits"][GPU] == resources["requests"][GPU], where
                users.add(where.split("/")[1])
        return users

    assert gpu_users("cpu") == set()
    assert {"policyopt-trainer", "vllm"} <= gpu_users("gpu")


def test_the_gpu_trainer_runs_torchrun_with_one_process_per_gpu_on_cuda(
    rendered: dict[str, list[Manifest]],
) -> None:
    trainer = named(rendered["gpu"], "Deployment", "policyopt-trainer")["spec"]["template"]["spec"]
    container = trainer["containers"][0]
    args = container["args"]
    assert container["command"] == ["torchrun"]
    processes = args[args.index("--nproc-per-node") + 1]
    assert processes == container["resources"]["limits"][GPU]
    assert args[args.index("-m") + 1 :][:3] == ["policyopt.cli.main", "worker", "train"]
    assert {"name": "POLICYOPT_DEVICE", "value": "cuda"} in container["env"]
    assert config_map_data(rendered["cpu"])["POLICYOPT_DEVICE"] == "cpu"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_server_is_probed_over_grpc_health_and_scraped_for_metrics(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    server = named(rendered[overlay], "Deployment", "policyopt-server")["spec"]["template"]
    container = server["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    assert server["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert server["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    service = named(rendered[overlay], "Service", "policyopt-server")
    assert {p["port"] for p in service["spec"]["ports"]} == {50051, 8080}
    env = {e["name"]: e for e in container["env"]}
    key_ref = env["POLICYOPT_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert not key_ref.get("optional"), "without the Secret the server must not start with auth off"


def test_no_secret_value_is_shipped(rendered: dict[str, list[Manifest]]) -> None:
    for overlay in OVERLAYS:
        assert not [o for o in rendered[overlay] if o["kind"] == "Secret"], "Secrets are created out of band"
        assert "POLICYOPT_API_KEYS" not in config_map_data(rendered[overlay])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    objects = rendered[overlay]
    budgets = [o["spec"]["selector"]["matchLabels"] for o in objects if o["kind"] == "PodDisruptionBudget"]
    for obj in objects:
        if obj["kind"] == "Deployment":
            labels = obj["spec"]["template"]["metadata"]["labels"]
            covered = [b for b in budgets if b.items() <= labels.items()]
            assert covered, f"Deployment/{obj['metadata']['name']} has no PodDisruptionBudget"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_valkey_persists_its_append_only_file_on_a_volume(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    valkey = named(rendered[overlay], "StatefulSet", "valkey")["spec"]
    args = valkey["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--dir") + 1] == "/data"
    assert valkey["volumeClaimTemplates"][0]["metadata"]["name"] == "valkey-data"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_adapter_store_is_on_a_read_write_many_volume_the_trainer_and_server_share(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    objects = rendered[overlay]
    claim = named(objects, "PersistentVolumeClaim", "policyopt-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    store = config_map_data(objects)["POLICYOPT_ADAPTER_STORE"]
    for name in ("policyopt-trainer", "policyopt-server"):
        spec = named(objects, "Deployment", name)["spec"]["template"]["spec"]
        volumes = {
            v["name"]
            for v in spec["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == "policyopt-data"
        }
        mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] in volumes]
        assert any(Path(store).is_relative_to(m["mountPath"]) for m in mounts), name


def test_vllm_serves_runtime_lora_and_its_sidecar_pulls_adapters_into_a_shared_empty_dir(
    rendered: dict[str, list[Manifest]],
) -> None:
    spec = named(rendered["gpu"], "Deployment", "vllm")["spec"]["template"]["spec"]
    vllm, sync = spec["containers"]
    assert "--enable-lora" in vllm["args"]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    assert vllm["args"][vllm["args"].index("--logprobs-mode") + 1] == "processed_logprobs"
    pull_to = sync["args"][sync["args"].index("--pull-to") + 1]
    assert "serving-sync" in sync["args"] and "--address" in sync["args"]
    assert not [s for s in sync.get("envFrom", []) if "secretRef" in s], "--pull-to needs no Redis"
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    sync_mount = next(m for m in sync["volumeMounts"] if m["mountPath"] == pull_to)
    assert sync_mount["name"] in empty_dirs
    assert any(m["name"] == sync_mount["name"] and m["mountPath"] == pull_to for m in vllm["volumeMounts"])
    assert not [
        v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == "policyopt-data"
    ]


def _egress_blocks(policy: Manifest) -> list[tuple[str, set[int]]]:
    blocks = []
    for rule in policy["spec"].get("egress", []):
        ports = {p["port"] for p in rule.get("ports", [])}
        blocks += [(peer["ipBlock"]["cidr"], ports) for peer in rule.get("to", []) if "ipBlock" in peer]
    return blocks


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_let_rollout_workers_reach_only_the_allowlist(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    objects = rendered[overlay]
    deny = named(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny.get("ingress") and not deny.get("egress")

    rollout = named(objects, "NetworkPolicy", "policyopt-rollout-worker")
    assert rollout["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "rollout-worker"
    peers = [peer for rule in rollout["spec"]["egress"] for peer in rule["to"]]
    pod_peers = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in peers if "podSelector" in p
    }
    assert pod_peers == {"valkey", "vllm"}
    blocks = _egress_blocks(rollout)
    assert blocks, "rollout workers need egress to the reward endpoints' CIDRs"
    assert all(ipaddress.ip_network(cidr).prefixlen > 0 for cidr, _ in blocks), "no open-ended egress"

    # The ConfigMap's allowlist parses, and every CIDR it names is reachable on its port by some worker.
    allowlist = config_map_data(objects)["POLICYOPT_ENDPOINT_ALLOWLIST"]
    OutboundPolicy(tuple(allowlist.split(",")))
    reachable = blocks + _egress_blocks(named(objects, "NetworkPolicy", "policyopt-trainer"))
    for entry in allowlist.split(","):
        cidr, _, port = entry.rpartition(":")
        assert any(c == cidr and int(port) in ports for c, ports in reachable), entry


def test_the_settings_config_map_is_read_by_every_policyopt_container(
    rendered: dict[str, list[Manifest]],
) -> None:
    for where, container, _ in containers(rendered["gpu"]):
        if not container["image"].startswith("policyopt:"):
            continue
        refs = [s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s]
        assert refs and refs[0].startswith("policyopt-settings"), where
        Settings()  # the defaults the ConfigMap overrides exist


def test_the_external_redis_component_removes_valkey_and_opens_egress_to_redis(tmp_path: Path) -> None:
    overlay = tmp_path / "external-redis"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(KUSTOMIZE_ROOT / 'overlays' / 'gpu', overlay)}]\n"
        f"components: [{os.path.relpath(KUSTOMIZE_ROOT / 'components' / 'external-redis', overlay)}]\n"
    )
    objects = render(overlay)
    assert not [o for o in objects if o["metadata"]["name"] == "valkey"]
    for name in ("policyopt-server", "policyopt-rollout-worker", "policyopt-trainer"):
        ports = {p for _, ports in _egress_blocks(named(objects, "NetworkPolicy", name)) for p in ports}
        assert 6380 in ports, name
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
