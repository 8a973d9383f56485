"""deploy/kubernetes/: the manifests are valid Kubernetes objects (kubernetes-validate, strict,
for the oldest Kubernetes they are written for and the newest the package knows), their
container args are real `collect` args (parsed by the CLI's own click command, so a renamed
flag fails here), they agree with the Dockerfile and with each other, and the sharded night
they describe ends as ONE run in the lake: two `--shards 2` pods, each with its own DuckDB
file and its JOB_COMPLETION_INDEX, both given the Job's name, write one run id (real
processes, the simulator over HTTP, one local lake read back with `query --lake`).

The run id of a Job's pods comes from the Job's name (`--run-id-from-job`,
`inventory.plan.runid.run_id_from_job`): its pure rules are unit-tested at the end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from helpers import inventory
from typer.testing import CliRunner

from inventory.cli import app
from inventory.errors import UsageError
from inventory.plan.config import load_plan
from inventory.plan.runid import SHARD_INDEX_ENV, resolve_run_id, run_id_from_job
from inventory.simulator import Fleet, Simulator
from inventory.storage.fingerprint import KEY_ENV

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests are for (timeZone, podFailurePolicy,
# backoffLimitPerIndex and the batch.kubernetes.io/job-name pod label are all there), and the
# newest whose schemas the installed kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
KINDS = {
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("batch/v1", "CronJob"),
}
JOB_NAME_LABEL = "metadata.labels['batch.kubernetes.io/job-name']"
MakeSimulator = Callable[..., Simulator]
WriteAccounts = Callable[..., Path]
runner = CliRunner()


def documents() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object under deploy/kubernetes/, by `<file>/<kind>/<name>`
    (kustomization.yaml is kustomize's, not an object of the cluster)."""
    found = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            found[f"{path.name}/{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def cronjob(file: str) -> dict[str, Any]:
    (doc,) = (d for key, d in documents().items() if key.startswith(f"{file}/CronJob/"))
    return doc


def pod_spec(cron: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def container(cron: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(cron)["containers"]
    return dict(only)


def collect_command() -> Any:
    """The click command behind `inventory collect` (typer carries its own click)."""
    return typer.main.get_command(app).commands["collect"]  # type: ignore[attr-defined]


def collect_params(args: list[str]) -> dict[str, Any]:
    """`inventory ARGS` parsed by collect's own click command, as the CLI would (without
    running it): unknown or renamed flags and bad values raise click's usage errors."""
    assert args[0] == "collect", args
    with collect_command().make_context("collect", list(args[1:])) as ctx:
        return dict(ctx.params)


def dockerfile_user() -> int:
    """The numeric UID of the Dockerfile's final USER (tests/test_dockerfile.py checks the
    rest of the Dockerfile)."""
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M)
    return int(users[-1].split(":")[0])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No run id, Job name or shard index of the caller's environment leaks into a parse."""
    for name in (*SHARD_INDEX_ENV, "INVENTORY_RUN_ID", "INVENTORY_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --------------------------------------------------------------------------- the manifests


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_a_valid_kubernetes_object(version: str) -> None:
    docs = documents()
    assert {(d["apiVersion"], d["kind"]) for d in docs.values()} == KINDS
    assert len(docs) == 5 and {p.name for p in DEPLOY.glob("*.yml")} == set()
    for key, doc in docs.items():
        assert kubernetes_validate.validate(doc, version, strict=True), key
    # strict: a field Kubernetes does not know is refused, not ignored
    typo = cronjob("cronjob.yaml")
    typo["spec"]["jobTemplate"]["spec"]["backofLimit"] = 2
    with pytest.raises(kubernetes_validate.ValidationError, match="backofLimit"):
        kubernetes_validate.validate(typo, version, strict=True)


def test_kustomization_applies_one_night_not_two() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    manifests = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert kustomization["namespace"] == "lightsail-inventory"
    # every manifest but the sharded CronJob, the alternative to cronjob.yaml
    assert set(kustomization["resources"]) == manifests - {"indexed-job.yaml"}
    assert len(kustomization["resources"]) == len(set(kustomization["resources"]))


@pytest.mark.parametrize("file", ["cronjob.yaml", "indexed-job.yaml"])
def test_the_args_are_real_collect_args(file: str, clean_env: pytest.MonkeyPatch) -> None:
    main = container(cronjob(file))
    assert "command" not in main  # the image's ENTRYPOINT ["inventory"] runs the args
    params = collect_params(main["args"])
    assert params["parquet_dir"].startswith("s3://")
    assert params["log_format"].value == "json" and params["run_id"] is None
    # a flag that is not collect's fails the same parse
    with pytest.raises(Exception, match="No such option: --run-id-from-jobs") as err:
        collect_params([*main["args"], "--run-id-from-jobs=x"])
    assert type(err.value).__name__ == "NoSuchOption"
    # the environment: the Job's name for --run-id-from-job, the key from a Secret
    env = {e["name"]: e["valueFrom"] for e in main["env"]}
    by_envvar = {p.envvar: p.name for p in collect_command().params if p.envvar}
    assert by_envvar["INVENTORY_JOB_NAME"] == "run_id_from_job"
    assert env["INVENTORY_JOB_NAME"] == {"fieldRef": {"fieldPath": JOB_NAME_LABEL}}
    assert set(env) == {"INVENTORY_JOB_NAME", KEY_ENV}
    assert env[KEY_ENV]["secretKeyRef"]["name"] == "lightsail-inventory"


@pytest.mark.parametrize("file", ["cronjob.yaml", "indexed-job.yaml"])
def test_the_pods_run_safely_as_the_images_user(file: str, clean_env: pytest.MonkeyPatch) -> None:
    cron = cronjob(file)
    docs = documents()
    assert len(cron["metadata"]["name"]) <= 52  # the CronJob controller appends 11 characters
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] > 0
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0
    assert job.get("backoffLimit", job.get("backoffLimitPerIndex", 0)) > 0
    exits = job["podFailurePolicy"]["rules"][0]["onExitCodes"]
    assert exits["values"] == [2, 3]  # usage error and partial: not retried
    pod, main = pod_spec(cron), container(cron)
    assert exits["containerName"] == main["name"] and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user() != 0
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]
    # the service account is the hub role, through IRSA
    account = docs[f"serviceaccount.yaml/ServiceAccount/{pod['serviceAccountName']}"]
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::[0-9]{12}:role/LightsailInventoryHub", role)
    # --db on an emptyDir (the only writable places are emptyDirs), --config from the ConfigMap
    params = collect_params(main["args"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {Path(m["mountPath"]): volumes[m["name"]] for m in main["volumeMounts"]}
    assert "emptyDir" in mounts[Path(params["db"]).parent]
    assert all("emptyDir" in v or "configMap" in v for v in mounts.values())
    config = Path(params["config"])
    config_map = mounts[config.parent]["configMap"]["name"]
    assert config.name in docs[f"configmap.yaml/ConfigMap/{config_map}"]["data"]


def test_the_sharded_night_is_the_single_one_in_n_indexed_pods(
    clean_env: pytest.MonkeyPatch,
) -> None:
    single, sharded = cronjob("cronjob.yaml"), cronjob("indexed-job.yaml")
    job = sharded["spec"]["jobTemplate"]["spec"]
    shards = collect_params(container(sharded)["args"])["shards"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == shards > 1
    assert collect_params(container(single)["args"])["shards"] is None
    # otherwise the same pod: only the --shards argument differs
    pods = [pod_spec(single), pod_spec(sharded)]
    sharded_args = pods[1]["containers"][0]["args"]
    pods[1]["containers"][0]["args"] = [a for a in sharded_args if not a.startswith("--shards")]
    assert pods[0] == pods[1]
    assert single["spec"]["schedule"] == sharded["spec"]["schedule"]


def test_the_configmaps_accounts_file_loads(tmp_path: Path) -> None:
    (config_map,) = (d for k, d in documents().items() if k.startswith("configmap.yaml/"))
    path = tmp_path / "accounts.toml"
    path.write_text(config_map["data"]["accounts.toml"], encoding="utf-8")
    plan = load_plan(path)
    assert [a.id for a in plan.accounts] == ["111111111111", "022222222222"]


# --------------------------------------------------------------------------- one night, sharded


def test_two_indexed_pods_write_one_run(
    tmp_path: Path,
    make_simulator: MakeSimulator,
    write_accounts: WriteAccounts,
    clean_env: pytest.MonkeyPatch,
) -> None:
    regions = ("us-east-1", "eu-west-2")
    fleet = Fleet(6, seed=3, regions=regions)
    make_simulator(fleet=fleet)
    config = write_accounts(tmp_path / "accounts.toml", fleet.account_ids, regions=regions)
    lake = tmp_path / "lake"
    # the manifest's args, with this machine's paths, and 2 shards (completions: 2)
    local = {"--config": str(config), "--parquet-dir": str(lake), "--shards": "2"}
    args = [
        f"{a.split('=')[0]}={local[a.split('=')[0]]}" if a.split("=")[0] in local else a
        for a in container(cronjob("indexed-job.yaml"))["args"]
    ]
    job_name = "lightsail-inventory-sharded-29930520"  # 2026-11-28T02:00Z, as the CronJob names it
    # the pod's root file system is read-only: nothing may be written to HOME
    home, data = tmp_path / "home-never-written", tmp_path / "data"
    data.mkdir()
    pod_env = {"INVENTORY_JOB_NAME": job_name, KEY_ENV: "k" * 40, "HOME": str(home)}
    expected = "20261128T020000Z-" + hashlib.sha256(job_name.encode()).hexdigest()[:6]

    def pod(index: int, db: str) -> dict[str, Any]:
        env = {**pod_env, "JOB_COMPLETION_INDEX": str(index)}
        done = inventory(*args, f"--db={data / db}", env=env, cwd=data)
        assert done.returncode == 0, done.stderr[-3000:]
        end: dict[str, Any] = json.loads(done.stdout)  # --log-format json: the run_end event
        return end

    ends = [pod(0, "pod-0.duckdb"), pod(1, "pod-1.duckdb")]
    assert [(e["event"], e["run_id"], e["status"]) for e in ends] == [
        ("run_end", expected, "complete")
    ] * 2
    # shard 1's pod is retried (a fresh emptyDir): it replaces its part, the run stays one
    pod(1, "pod-1-retry.duckdb")
    query = inventory(
        "query", "--lake", str(lake), "--format", "json",
        "select run_id, shard, shards, status, started_at from runs order by shard",
        env={}, cwd=tmp_path,
    )  # fmt: skip
    assert query.returncode == 0, query.stderr
    runs = json.loads(query.stdout)
    assert [(r["run_id"], r["shard"], r["shards"], r["status"]) for r in runs] == [
        (expected, 0, 2, "complete"),
        (expected, 1, 2, "complete"),
    ]
    assert {r["started_at"][:19] for r in runs} == {"2026-11-28T02:00:00"}
    parts = sorted(p.name for p in (lake / "runs" / "run_date=2026-11-28").iterdir())
    assert parts == [f"{expected}.shard-0.parquet", f"{expected}.shard-1.parquet"]
    # each pod wrote its --db (and its WAL, lock) on its emptyDir, nothing in HOME
    assert not home.exists()
    assert {p.name.split(".")[0] for p in data.iterdir()} == {"pod-0", "pod-1", "pod-1-retry"}


# --------------------------------------------------------------------------- the run id rules


def test_the_run_id_comes_from_the_cronjobs_job_name() -> None:
    name = "lightsail-inventory-29930520"
    minute = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC).timestamp() / 60
    assert minute == 29930520
    sha = hashlib.sha256(name.encode()).hexdigest()
    assert run_id_from_job(name) == f"20261128T020000Z-{sha[:6]}"
    # the whole name counts: another CronJob at the same minute is another run
    other = run_id_from_job("other-inventory-29930520")
    assert other.startswith("20261128T020000Z-") and other != run_id_from_job(name)
    assert resolve_run_id(None, name) == run_id_from_job(name)
    assert resolve_run_id("20261127T053650Z-3f9a1c", None) == "20261127T053650Z-3f9a1c"
    assert resolve_run_id(None, None) is None


@pytest.mark.parametrize(
    "name",
    [
        "lightsail-inventory",  # kubectl create job --from=cronjob/... without a minute
        "29930520",
        "-29930520",
        "manual-2",  # a minute of 1970: not a CronJob's
        "x-99999999999",  # past 2200, and too many digits
        "x-" + "9" * 5000,
        "lightsail-inventory-29930520\n",
    ],
)
def test_a_job_name_without_the_minutes_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError) as err:
        run_id_from_job(name)
    message = str(err.value)
    assert message.startswith(f"--run-id-from-job {name!r}: expected a Job name that ends in")
    assert "CRONJOB-$(( $(date +%s) / 60 ))" in message and "--run-id" in message
    assert "\n" not in message


def test_run_id_and_job_name_together_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--run-id 20261127T053650Z-3f9a1c and --run-id-from-job"):
        resolve_run_id("20261127T053650Z-3f9a1c", "lightsail-inventory-29930520")
    with pytest.raises(UsageError, match="--run-id 'tonight': expected"):
        resolve_run_id("tonight", None)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--run-id-from-job", "inventory-manual"], {},
         "--run-id-from-job 'inventory-manual': expected a Job name that ends in"),
        (["--run-id", "20261127T053650Z-3f9a1c"], {"INVENTORY_JOB_NAME": "x-29930520"},
         "--run-id 20261127T053650Z-3f9a1c and --run-id-from-job x-29930520: give one"),
        (["--shards", "2"], {"INVENTORY_JOB_NAME": "x-29930520"},
         "--shards 2: neither AWS_BATCH_JOB_ARRAY_INDEX nor JOB_COMPLETION_INDEX"),
    ],
)  # fmt: skip
def test_cli_usage_errors_name_the_flag(
    args: list[str],
    env: dict[str, str],
    message: str,
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    db = tmp_path / "x.duckdb"
    out = runner.invoke(app, ["collect", "--db", str(db), *args])
    assert out.exit_code == 2, out.output
    assert message in " ".join(out.output.split())
    assert "Traceback" not in out.output and not db.exists()
