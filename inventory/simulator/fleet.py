"""A deterministic, seeded synthetic fleet: the ground truth the simulator serves.

`Fleet(accounts, seed)` invents `accounts` member accounts plus one *hub* account (the base
identity's own account, `fleet.hub_account_id`, never in `fleet.account_ids`), their
Lightsail container services per region, in wire shape (camelCase keys as in botocore's
Lightsail model, timestamps as epoch seconds floats), and an Organizations tree.

Coverage: the first member account (`fleet.showcase_account_id`) always holds 16 services
spread over three regions whose attributes cycle through every service state, power,
deployment state, image kind and absent-versus-empty field, so even a tiny fleet exercises
every case. The other accounts are random: most account × region pairs empty, a few with
many services (at most `MAX_PER_REGION`).

Services are generated lazily per account and cached, so a 10,000-account fleet costs
nothing until asked. `fleet.evolve(seed)` returns the next generation with known changes
(`fleet.changes`), for diff tests.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from inventory.plan.regions import all_regions

HUB_ACCOUNT_ID = "123456789012"
MAX_PER_REGION = 20
EPOCH_BASE = 1_700_000_000.0  # 2023-11-14; every timestamp is before EPOCH_NOW
EPOCH_NOW = 1_764_000_000.0  # 2025-11-24: "now" for the fleet (deterministic)

STATES = ("PENDING", "READY", "RUNNING", "UPDATING", "DELETING", "DISABLED", "DEPLOYING")
POWERS = ("nano", "micro", "small", "medium", "large", "xlarge")
DEPLOYMENT_STATES = ("ACTIVATING", "ACTIVE", "INACTIVE", "FAILED")
PROTOCOLS = ("HTTP", "HTTPS", "TCP", "UDP")
STATE_DETAIL = {
    "PENDING": ("CREATING_SYSTEM_RESOURCES", "CREATING_NETWORK_INFRASTRUCTURE"),
    "DEPLOYING": ("CREATING_DEPLOYMENT", "EVALUATING_HEALTH_CHECK", "ACTIVATING_DEPLOYMENT"),
    "UPDATING": ("PROVISIONING_CERTIFICATE", "PROVISIONING_SERVICE"),
    "RUNNING": ("CERTIFICATE_LIMIT_EXCEEDED", "UNKNOWN_ERROR"),
}
DEFAULT_HEALTH_CHECK = {
    "healthyThreshold": 2,
    "unhealthyThreshold": 2,
    "timeoutSeconds": 2,
    "intervalSeconds": 5,
    "path": "/",
    "successCodes": "200-499",
}
_WORDS = (
    "api", "web", "worker", "billing", "auth", "search", "cart", "media", "ingest", "report",
    "gateway", "notify", "admin", "shop", "blog", "metrics", "chat", "queue", "cache", "cron",
)  # fmt: skip
_TEAMS = ("platform", "payments", "growth", "data", "mobile", "infra", "sales", "support")
_REGISTRY_IMAGES = (
    "nginx:latest",
    "public.ecr.aws/bitnami/redis:7.2",
    "redis",
    "httpd:2.4-alpine",
    "public.ecr.aws/nginx/nginx:1.27",
    "ghcr.io/acme/worker@sha256:",
    "docker.io/library/postgres:16",
    "python",
)
_ENV_NAMES = (
    "DATABASE_URL", "API_KEY", "SECRET_KEY", "REDIS_URL", "SENTRY_DSN", "STRIPE_KEY",
    "JWT_SECRET", "SMTP_PASSWORD", "AWS_SECRET", "LOG_LEVEL_TOKEN",
)  # fmt: skip
# What Fleet.future_services adds at each level of a service: members the installed botocore
# model does not know (as AWS might add tomorrow).
FUTURE_MEMBERS: dict[str, dict[str, Any]] = {
    "service": {"futureTier": "premium", "futureLimits": {"cpu": 2, "memoryMb": 4096}},
    "location": {"localZone": "lz-1"},
    "stateDetail": {"futureReason": "maintenance"},
    "privateRegistryAccess": {"futureMirror": True},
    "ecrImagePullerRole": {"futureRoleName": "puller"},
    "deployment": {"futureStrategy": "BLUE_GREEN"},
    "publicEndpoint": {"futureProtocol": "HTTP2"},
    "healthCheck": {"grpcServiceName": "health.v1"},
    "container": {"cpu": 256, "futureSidecar": {"image": "envoy:1.31", "environment": {}}},
}
# GetContainerServicePowers: AWS's container powers, name -> (vCPUs, RAM in GB, USD per node
# and month). One price per power in every region, as AWS's pricing page and the bundled list
# (sql/lightsail_container_prices.csv) give them; a test can change a region's (power_prices).
POWER_SPECS: dict[str, tuple[float, float, float]] = {
    "nano": (0.25, 0.5, 7.0),
    "micro": (0.25, 1.0, 10.0),
    "small": (0.5, 2.0, 25.0),
    "medium": (1.0, 4.0, 50.0),
    "large": (2.0, 8.0, 100.0),
    "xlarge": (4.0, 16.0, 200.0),
}
# GetContainerServiceMetricData: each service has a usage profile (Fleet.usage_profile); its
# CPU and memory utilization (Percent, across all its nodes) is a deterministic function of
# time with one sample every USAGE_SAMPLE_S seconds ("All container service metric data is
# available in 5-minute (300 seconds) granularity", the API reference).
USAGE_PROFILES = ("idle", "steady", "bursty", "over_provisioned", "no_datapoints")
DISABLED_PROFILE = "disabled"  # a DISABLED service runs nothing: no datapoints either
USAGE_SAMPLE_S = 300
METRICS = ("CPUUtilization", "MemoryUtilization")
MAX_DATAPOINTS = 1440  # per call (the simulator's bound; CloudWatch's GetMetricStatistics')
STATISTICS = ("Minimum", "Maximum", "Sum", "Average", "SampleCount")
# profile -> metric -> (base %, daily swing %, spike chance per sample, spike %)
_USAGE_SHAPES: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "idle": {"CPUUtilization": (0.4, 0.2, 0.0, 0.0), "MemoryUtilization": (6.0, 0.5, 0.0, 0.0)},
    "steady": {
        "CPUUtilization": (45.0, 8.0, 0.0, 0.0),
        "MemoryUtilization": (58.0, 4.0, 0.0, 0.0),
    },
    "bursty": {
        "CPUUtilization": (12.0, 5.0, 0.04, 85.0),
        "MemoryUtilization": (35.0, 5.0, 0.04, 40.0),
    },
    "over_provisioned": {
        "CPUUtilization": (4.0, 2.0, 0.0, 0.0),
        "MemoryUtilization": (11.0, 2.0, 0.0, 0.0),
    },
}
_REGION_CONTINENT = {"us": "NA", "ca": "NA", "eu": "EU", "ap": "AP", "sa": "SA", "me": "ME"}


def _random_epoch_seconds(
    rng: random.Random, lo: float = EPOCH_BASE, hi: float = EPOCH_NOW
) -> float:
    """An epoch-seconds timestamp with millisecond precision, like the API sends."""
    return round(rng.uniform(lo, hi), 3)


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _secret(rng: random.Random) -> str:
    """An environment value: 24 hex digits (what tests scan written bytes for)."""
    return f"{rng.getrandbits(96):024x}"


def _sub_rng(*parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


def _hash_int(*parts: object) -> int:
    """A stable 32-bit number of `parts` (Python's hash() of a str changes per process)."""
    return int(hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:8], 16)


def _statistic(stat: str, values: list[float]) -> float:
    """One MetricStatistic of a bucket's samples."""
    if stat == "Minimum":
        return min(values)
    if stat == "Maximum":
        return max(values)
    if stat == "Sum":
        return sum(values)
    if stat == "SampleCount":
        return float(len(values))
    return sum(values) / len(values)  # Average


@dataclass(frozen=True, slots=True)
class Change:
    """One known difference between a generation and the one before it.

    kind: service_added | service_removed | state | power | scale | tags | domains |
    deployment_version | deployment_state | image | ports | env_added | env_removed |
    env_value. `field` is a dotted path into the service (e.g. `currentDeployment.version`,
    `currentDeployment.containers.app.image`); `old`/`new` are the wire values.
    """

    kind: str
    account_id: str
    region: str
    service_name: str
    field: str | None = None
    old: Any = None
    new: Any = None


@dataclass(frozen=True, slots=True)
class OrgUnit:
    id: str
    name: str
    parent_id: str


@dataclass(frozen=True, slots=True)
class OrgAccount:
    """An account as Organizations describes it (ListAccounts)."""

    id: str
    name: str
    email: str
    status: str  # ACTIVE | SUSPENDED
    joined_method: str  # CREATED | INVITED
    joined_timestamp: float
    parent_id: str  # the root or an OU

    def wire(self, org_id: str, management_id: str) -> dict[str, Any]:
        return {
            "Id": self.id,
            "Arn": f"arn:aws:organizations::{management_id}:account/{org_id}/{self.id}",
            "Email": self.email,
            "Name": self.name,
            "Status": self.status,
            "State": self.status,
            "JoinedMethod": self.joined_method,
            "JoinedTimestamp": self.joined_timestamp,
        }


class Fleet:
    """A seeded synthetic fleet of accounts, their container services and their organization.

    `account_ids`: the member accounts (12-digit strings, about one in eight starting with
    '0'). `hub_account_id`: the base identity's own account (GetCallerIdentity without an
    assumed role, and the organization's management account); it has services too but is
    NOT in `account_ids`. `all_account_ids` is hub + members.

    Organizations: `org_accounts` (hub as management account, members mostly ACTIVE, about
    one in 17 SUSPENDED: see `active_account_ids`), `root_id`, `org_units` (nested OUs).
    The simulator still lets a role be assumed in a SUSPENDED account; deny it with
    `Faults.denied_accounts` when a test needs that.
    """

    def __init__(
        self,
        accounts: int,
        seed: int = 0,
        regions: Sequence[str] | None = None,
        services_per_account: float = 1.5,
        hub_account_id: str = HUB_ACCOUNT_ID,
    ) -> None:
        if accounts < 0:
            raise ValueError("accounts must be >= 0")
        self.seed = seed
        self.regions: tuple[str, ...] = tuple(regions) if regions is not None else all_regions()
        if not self.regions:
            raise ValueError("a fleet needs at least one region")
        self.services_per_account = services_per_account
        self.hub_account_id = hub_account_id
        self.generation = 0
        # GetContainerServicePowers' price of (region, power name) instead of POWER_SPECS'
        self.power_prices: dict[tuple[str, str], float] = {}
        self.changes: list[Change] = []
        self._parent: Fleet | None = None
        rng = random.Random(f"fleet:{seed}")
        ids: list[str] = []
        seen = {hub_account_id}
        while len(ids) < accounts:
            if len(ids) % 8 == 3:
                acct = "0" + str(rng.randrange(10**10, 10**11)).zfill(11)
            else:
                acct = str(rng.randrange(10**11, 10**12))
            if acct not in seen:
                seen.add(acct)
                ids.append(acct)
        self.account_ids: tuple[str, ...] = tuple(ids)
        self._index = {a: i for i, a in enumerate(ids)}
        self._cache: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._mean = _solve_mean(services_per_account)
        self._build_org(rng)

    # ----------------------------------------------------------------- accounts
    @property
    def showcase_account_id(self) -> str | None:
        """The member account whose 16 services cover every variant (None: no members)."""
        return self.account_ids[0] if self.account_ids else None

    @property
    def all_account_ids(self) -> tuple[str, ...]:
        return (self.hub_account_id, *self.account_ids)

    def has_account(self, account_id: str) -> bool:
        return account_id == self.hub_account_id or account_id in self._index

    @property
    def active_account_ids(self) -> tuple[str, ...]:
        """Member accounts whose Organizations status is ACTIVE."""
        return tuple(a for a in self.account_ids if self.org_accounts[a].status == "ACTIVE")

    # ----------------------------------------------------------------- services
    def services(self, account_id: str, region: str) -> list[dict[str, Any]]:
        """The ground truth: exactly the `containerServices` list GetContainerServices returns.

        Returns the cached list itself: do not mutate it (deep-copy first).
        """
        return self._account(account_id).get(region, [])

    def regions_of(self, account_id: str) -> dict[str, int]:
        """{region: service count} for the regions where `account_id` has services."""
        return {r: len(s) for r, s in self._account(account_id).items() if s}

    def iter_services(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(account_id, region, service) for every service of the fleet, hub first."""
        for acct in self.all_account_ids:
            for region, svcs in self._account(acct).items():
                for svc in svcs:
                    yield acct, region, svc

    def service_count(self) -> int:
        return sum(1 for _ in self.iter_services())

    def secrets(self) -> set[str]:
        """Every environment value anywhere in the fleet (current and next deployments)."""
        out: set[str] = set()
        for _, _, svc in self.iter_services():
            for slot in ("currentDeployment", "nextDeployment"):
                for c in (svc.get(slot) or {}).get("containers", {}).values():
                    out.update(v for v in (c.get("environment") or {}).values() if v)
        for acct, region, svc in list(self.iter_services()):
            for d in self.deployments(acct, region, svc["containerServiceName"])["deployments"]:
                for c in d.get("containers", {}).values():
                    out.update(v for v in (c.get("environment") or {}).values() if v)
        return out

    def malformed_services(self, account_id: str, region: str) -> list[dict[str, Any]]:
        """What a `Faults.malformed` pair serves: the true list (or one invented service when
        the pair has none) where the first service has `scale` as a string ("3"), `state`
        an unknown value ("EXPLODING") and a current deployment whose first container has
        no `image`."""
        services = copy.deepcopy(self.services(account_id, region))
        if not services:
            rng = _sub_rng(self.seed, "malformed", account_id, region)
            services = [make_service(rng, account_id, region, 2, set())]
        svc = services[0]
        svc["scale"] = str(svc.get("scale", 1))
        svc["state"] = "EXPLODING"
        dep = svc.get("currentDeployment")
        if dep and dep.get("containers"):
            next(iter(dep["containers"].values())).pop("image", None)
        else:
            svc["currentDeployment"] = {
                "version": 1,
                "state": "ACTIVE",
                "containers": {"app": {"command": [], "ports": {"80": "HTTP"}}},
                "createdAt": svc["createdAt"],
            }
        return services

    def answer(self, variant: str, account_id: str, region: str) -> dict[str, Any]:
        """The altered GetContainerServices answer a `Faults` answer variant serves
        (`Faults.answer_variant`): deterministic, so a test can ask for the same again."""
        if variant == "malformed":
            return {"containerServices": self.malformed_services(account_id, region)}
        if variant == "unknown_members":
            return {"containerServices": self.future_services(account_id, region)}
        if variant == "bad_leaves":
            return {"containerServices": self.bad_leaf_services(account_id, region)}
        if variant == "no_services_member":
            return {}
        if variant == "services_not_list":
            return {"containerServices": {"items": self.services(account_id, region)}}
        raise ValueError(f"unknown answer variant {variant!r}")

    def _some_services(self, account_id: str, region: str, tag: str) -> list[dict[str, Any]]:
        """A copy of the true list, or one invented service when the pair has none."""
        services = copy.deepcopy(self.services(account_id, region))
        if not services:
            rng = _sub_rng(self.seed, tag, account_id, region)
            services = [make_service(rng, account_id, region, 3, set())]  # RUNNING, deployed
        return services

    def future_services(self, account_id: str, region: str) -> list[dict[str, Any]]:
        """The services of the pair as an API of tomorrow might send them: every service,
        and each of its structures that is present, carries the members of `FUTURE_MEMBERS`,
        which the installed botocore model does not know. The containers' `futureSidecar`
        holds an `environment` map with a secret value (`future_secret`)."""
        services = self._some_services(account_id, region, "future")
        secret = self.future_secret(account_id, region)
        for svc in services:
            svc.update(copy.deepcopy(FUTURE_MEMBERS["service"]))
            parts = [(svc.get("location"), "location"), (svc.get("stateDetail"), "stateDetail")]
            registry = svc.get("privateRegistryAccess")
            if registry:
                parts += [
                    (registry, "privateRegistryAccess"),
                    (registry.get("ecrImagePullerRole"), "ecrImagePullerRole"),
                ]
            for slot in ("currentDeployment", "nextDeployment"):
                dep = svc.get(slot)
                if not dep:
                    continue
                endpoint = dep.get("publicEndpoint")
                parts += [(dep, "deployment"), (endpoint, "publicEndpoint")]
                if endpoint:
                    parts.append((endpoint.get("healthCheck"), "healthCheck"))
                for c in dep.get("containers", {}).values():
                    c.update(copy.deepcopy(FUTURE_MEMBERS["container"]))
                    c["futureSidecar"]["environment"] = {"SIDECAR_TOKEN": secret}
            for obj, level in parts:
                if isinstance(obj, dict):
                    obj.update(copy.deepcopy(FUTURE_MEMBERS[level]))
        return services

    def future_secret(self, account_id: str, region: str) -> str:
        """The environment value inside `future_services`' unknown members."""
        return _secret(_sub_rng(self.seed, "future-secret", account_id, region))

    def bad_leaf_services(self, account_id: str, region: str) -> list[dict[str, Any]]:
        """The services of the pair with leaves of the wrong type (identities intact): in
        every container, ports protocols that are a list, an object and a number, and a
        command that is a string (the first container) or holds non-strings (the others); in
        every service, a tag that is not an object. Each service keeps a current deployment."""
        services = self._some_services(account_id, region, "bad-leaves")
        for k, svc in enumerate(services):
            svc["tags"] = ["team=core", *(svc.get("tags") or []), 7]
            dep = svc.get("currentDeployment")
            if not dep or not dep.get("containers"):
                svc["currentDeployment"] = dep = {
                    "version": 1,
                    "state": "ACTIVE",
                    "containers": {"app": {"image": "nginx:1.27"}},
                    "createdAt": svc["createdAt"],
                }
            for i, c in enumerate(dep["containers"].values()):
                c["ports"] = {"80": ["HTTP"], "443": {"protocol": "HTTPS"}, "53": 17}
                c["command"] = "exec ./serve --port 80" if i == 0 else ["serve", 8080, None]
            if k % 2:
                svc["scale"] = {"nodes": 2}
        return services

    def find_service(self, account_id: str, region: str, name: str) -> dict[str, Any] | None:
        for svc in self.services(account_id, region):
            if svc["containerServiceName"] == name:
                return svc
        return None

    def deployments(self, account_id: str, region: str, service_name: str) -> dict[str, Any]:
        """GetContainerServiceDeployments' answer: next, current and up to 3 past versions.

        Raises KeyError when the service does not exist.
        """
        svc = self.find_service(account_id, region, service_name)
        if svc is None:
            raise KeyError(service_name)
        out: list[dict[str, Any]] = []
        nxt, cur = svc.get("nextDeployment"), svc.get("currentDeployment")
        if nxt:
            out.append(nxt)
        if cur:
            out.append(cur)
            rng = _sub_rng(self.seed, "history", account_id, region, service_name, cur["version"])
            created = cur["createdAt"]
            for version in range(cur["version"] - 1, max(0, cur["version"] - 4), -1):
                created = round(created - rng.uniform(3600, 30 * 86400), 3)
                past = copy.deepcopy(cur)
                past["version"] = version
                past["state"] = "FAILED" if rng.random() < 0.2 else "INACTIVE"
                past["createdAt"] = created
                for c in past["containers"].values():
                    img = c.get("image")
                    if isinstance(img, str) and img.startswith(":") and img[-1].isdigit():
                        head, _, n = img.rpartition(".")
                        c["image"] = f"{head}.{max(1, int(n) - (cur['version'] - version))}"
                    if c.get("environment"):
                        c["environment"] = {k: _secret(rng) for k in c["environment"]}
                out.append(past)
        return {"deployments": out}

    def images(self, account_id: str, region: str, service_name: str) -> dict[str, Any]:
        """GetContainerImages' answer: the Lightsail-registered images of the service.

        Raises KeyError when the service does not exist.
        """
        svc = self.find_service(account_id, region, service_name)
        if svc is None:
            raise KeyError(service_name)
        seen: dict[str, None] = {}
        for d in self.deployments(account_id, region, service_name)["deployments"]:
            for c in d.get("containers", {}).values():
                img = c.get("image")
                if isinstance(img, str) and img.startswith(":"):
                    seen[img] = None
        rng = _sub_rng(self.seed, "images", account_id, region, service_name)
        out = []
        created = svc["createdAt"]
        for img in sorted(seen, reverse=True):
            digest = hashlib.sha256(f"{self.seed}:{account_id}:{region}:{img}".encode()).hexdigest()
            created = round(created + rng.uniform(60, 86400), 3)
            out.append({"image": img, "digest": f"sha256:{digest}", "createdAt": created})
        return {"containerImages": out}

    # ----------------------------------------------------------------- usage
    def powers(self, region: str) -> dict[str, Any]:
        """GetContainerServicePowers' answer in `region`: the six powers of POWER_SPECS, all
        active, at `power_prices[(region, name)]` where a test set one."""
        return {
            "powers": [
                {
                    "powerId": f"{name}-1",
                    "price": self.power_prices.get((region, name), price),
                    "cpuCount": cpu,
                    "ramSizeInGb": ram,
                    "name": name,
                    "isActive": True,
                }
                for name, (cpu, ram, price) in POWER_SPECS.items()
            ]
        }

    def usage_profile(self, account_id: str, region: str, service_name: str) -> str:
        """One of USAGE_PROFILES, or DISABLED_PROFILE for a DISABLED service. The showcase
        account's services cycle through the profiles (every one in a tiny fleet); the others
        get theirs from a hash. Raises KeyError when the service does not exist."""
        svc = self.find_service(account_id, region, service_name)
        if svc is None:
            raise KeyError(service_name)
        if svc.get("state") == "DISABLED":
            return DISABLED_PROFILE
        if account_id == self.showcase_account_id:
            names = [
                s["containerServiceName"]
                for r in self.regions
                for s in self.services(account_id, r)
                if s.get("state") != "DISABLED"
            ]
            i = names.index(service_name)
        else:
            i = _hash_int(self.seed, "usage", account_id, region, service_name)
        return USAGE_PROFILES[i % len(USAGE_PROFILES)]

    def utilization(
        self, account_id: str, region: str, service_name: str, metric: str, start: float, end: float
    ) -> list[tuple[float, float]]:
        """The ground truth: (epoch seconds, percent) samples of `metric`, one every
        USAGE_SAMPLE_S seconds in [start, end); none for 'no_datapoints' and disabled."""
        shape = _USAGE_SHAPES.get(self.usage_profile(account_id, region, service_name))
        if shape is None:
            return []
        base, swing, chance, spike = shape[metric]
        salt = _hash_int(self.seed, account_id, region, service_name, metric)
        out = []
        t = math.ceil(start / USAGE_SAMPLE_S) * USAGE_SAMPLE_S
        while t < end:
            v = base + swing * math.sin(2 * math.pi * ((t + salt) % 86400) / 86400)
            if chance and (t // USAGE_SAMPLE_S * 2654435761 + salt) % 1000003 < chance * 1000003:
                v += spike
            out.append((float(t), round(min(100.0, max(0.0, v)), 3)))
            t += USAGE_SAMPLE_S
        return out

    def metric_data(
        self,
        account_id: str,
        region: str,
        service_name: str,
        metric: str,
        start: float,
        end: float,
        period: int,
        statistics: Sequence[str],
    ) -> list[dict[str, Any]]:
        """GetContainerServiceMetricData's `metricData`: the samples of [start, end) in
        buckets of `period` seconds counted from `start` (a bucket without samples has no
        datapoint), each with the `statistics` asked and unit Percent, oldest first."""
        buckets: dict[int, list[float]] = {}
        for t, v in self.utilization(account_id, region, service_name, metric, start, end):
            buckets.setdefault(int((t - start) // period), []).append(v)
        out = []
        for b, values in sorted(buckets.items()):
            point: dict[str, Any] = {"timestamp": start + b * period, "unit": "Percent"}
            for stat in statistics:
                point[stat[0].lower() + stat[1:]] = _statistic(stat, values)
            out.append(point)
        return out

    def region_wire(self) -> list[dict[str, Any]]:
        """GetRegions' `regions` list (without availability zones)."""
        return [
            {
                "continentCode": _REGION_CONTINENT.get(r.split("-")[0], "NA"),
                "description": f"This region is recommended to serve users in {r}",
                "displayName": r,
                "name": r,
            }
            for r in self.regions
        ]

    def truth(self) -> dict[str, Any]:
        """A JSON-able summary: accounts and per account × region service counts."""
        return {
            "seed": self.seed,
            "generation": self.generation,
            "hub_account_id": self.hub_account_id,
            "account_ids": list(self.account_ids),
            "regions": list(self.regions),
            "services": {a: self.regions_of(a) for a in self.all_account_ids},
            "total_services": self.service_count(),
        }

    # ------------------------------------------------------------------ evolve
    def evolve(self, seed: int | None = None) -> Fleet:
        """The next generation: same accounts, with known changes listed in `.changes`.

        Every change kind of `Change` happens at least once when the fleet has enough
        services (the showcase account alone is enough). Eager: it walks every account.
        """
        child = copy.copy(self)
        child._parent = self
        child.generation = self.generation + 1
        child._cache = {}
        child.changes = []
        rng = random.Random(f"evolve:{self.seed}:{child.generation}:{seed}")
        _evolve_into(self, child, rng)
        return child

    def changes_since(self, previous: Fleet) -> list[Change]:
        """The known changes from `previous` (an ancestor generation) to this one."""
        chain: list[Fleet] = []
        node: Fleet | None = self
        while node is not None and node is not previous:
            chain.append(node)
            node = node._parent
        if node is None:
            raise ValueError("previous is not an ancestor of this fleet")
        return [c for f in reversed(chain) for c in f.changes]

    # -------------------------------------------------------------- generation
    def _account(self, account_id: str) -> dict[str, list[dict[str, Any]]]:
        got = self._cache.get(account_id)
        if got is None:
            if self._parent is not None:
                # evolve() fills every account eagerly; unknown accounts have nothing.
                got = {}
            elif account_id == self.hub_account_id:
                got = self._generate(account_id, showcase=False, hub=True)
            elif account_id in self._index:
                got = self._generate(account_id, showcase=self._index[account_id] == 0)
            else:
                got = {}
            self._cache[account_id] = got
        return got

    def _generate(
        self, account_id: str, showcase: bool = False, hub: bool = False
    ) -> dict[str, list[dict[str, Any]]]:
        rng = _sub_rng(self.seed, "account", account_id)
        regions = list(self.regions)
        if showcase:
            r0 = regions[0]
            r1 = regions[min(5, len(regions) - 1)]
            r2 = regions[min(14, len(regions) - 1)]
            placement = [r0] * 10 + [r1] * 4 + [r2] * 2
        else:
            if hub:
                n = 6
            elif rng.random() < 0.01:
                n = rng.randint(10, 40)  # a big account
            else:
                n = int(rng.expovariate(1.0 / self._mean)) if self._mean > 0 else 0
            order = regions[:]
            rng.shuffle(order)
            weights = [0.45**i for i in range(len(order))]
            placement = []
            counts: dict[str, int] = {}
            for _ in range(n):
                region = rng.choices(order, weights)[0]
                if counts.get(region, 0) >= MAX_PER_REGION:
                    free = [r for r in order if counts.get(r, 0) < MAX_PER_REGION]
                    if not free:
                        break
                    region = free[0]
                counts[region] = counts.get(region, 0) + 1
                placement.append(region)
        out: dict[str, list[dict[str, Any]]] = {}
        names: set[str] = set()
        offset = 0 if showcase else rng.randrange(1000)
        for k, region in enumerate(placement):
            svc = make_service(rng, account_id, region, k + offset, names)
            out.setdefault(region, []).append(svc)
        for svcs in out.values():
            svcs.sort(key=lambda s: s["containerServiceName"])
        return out

    def _build_org(self, rng: random.Random) -> None:
        suffix = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(4))
        self.org_id = "o-" + "".join(rng.choice("abcdefghij0123456789") for _ in range(10))
        self.root_id = f"r-{suffix}"
        tree = [
            ("Production", None),
            ("Development", None),
            ("Sandbox", None),
            ("Web", "Production"),
            ("Data", "Production"),
            ("Team-A", "Development"),
            ("Legacy", "Web"),
        ]
        by_name: dict[str, OrgUnit] = {}
        for name, parent in tree:
            ou_id = f"ou-{suffix}-" + "".join(
                rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8)
            )
            parent_id = self.root_id if parent is None else by_name[parent].id
            by_name[name] = OrgUnit(ou_id, name, parent_id)
        self.org_units: dict[str, OrgUnit] = {ou.id: ou for ou in by_name.values()}
        parents = [self.root_id, *self.org_units]
        self.org_accounts: dict[str, OrgAccount] = {
            self.hub_account_id: OrgAccount(
                self.hub_account_id, "management", "aws-management@example.com", "ACTIVE",
                "CREATED", round(EPOCH_BASE - 86400 * 400, 3), self.root_id,
            )
        }  # fmt: skip
        for i, acct in enumerate(self.account_ids):
            team = rng.choice(_TEAMS)
            env = rng.choice(("prod", "staging", "dev", "sandbox"))
            status = "SUSPENDED" if (i % 17 == 4 or rng.random() < 0.02) else "ACTIVE"
            self.org_accounts[acct] = OrgAccount(
                id=acct,
                name=f"{team}-{env}-{i}",
                email=f"aws+{team}-{env}-{i}@example.com",
                status=status,
                joined_method="CREATED" if rng.random() < 0.8 else "INVITED",
                joined_timestamp=_random_epoch_seconds(rng, EPOCH_BASE - 86400 * 365, EPOCH_BASE),
                parent_id=parents[i % len(parents)] if i < len(parents) else rng.choice(parents),
            )

    def children_ous(self, parent_id: str) -> list[OrgUnit]:
        return [ou for ou in self.org_units.values() if ou.parent_id == parent_id]

    def accounts_under(self, parent_id: str, recursive: bool = True) -> list[str]:
        """Account ids directly under `parent_id` (root or OU), or anywhere below it."""
        parents = {parent_id}
        if recursive:
            frontier = [parent_id]
            while frontier:
                kids = [ou.id for p in frontier for ou in self.children_ous(p)]
                parents.update(kids)
                frontier = kids
        return [a.id for a in self.org_accounts.values() if a.parent_id in parents]


def _solve_mean(target: float) -> float:
    """The exponential mean m such that 1% big accounts (25 on average) and 99% with
    floor(Exp(m)) services average `target` services per account."""
    import math

    rest = (target - 0.01 * 25) / 0.99
    if rest <= 0:
        return 0.0
    # E[floor(Exp(m))] = 1 / (e^(1/m) - 1)  =>  m = 1 / ln(1 + 1/rest)
    return 1.0 / math.log(1.0 + 1.0 / rest)


# --------------------------------------------------------------------- services
def _image(rng: random.Random, name: str, kind: int) -> str:
    if kind % 3 == 0:
        label = rng.choice(("app", "web", "worker", name.split("-")[0]))
        return f":{name}.{label}.{rng.randint(1, 12)}"
    img = _REGISTRY_IMAGES[(kind + rng.randrange(len(_REGISTRY_IMAGES))) % len(_REGISTRY_IMAGES)]
    if img.endswith("@sha256:"):
        img += _hex(rng, 64)
    return img


def _container(rng: random.Random, name: str, k: int, c: int) -> dict[str, Any]:
    out: dict[str, Any] = {"image": _image(rng, name, k + c)}
    v = (k + c) % 4
    if v == 0:
        out["command"] = []
    elif v == 1:
        out["command"] = ["sh", "-c", f"exec ./{name} --port 8080"]
    elif v == 2:
        out["command"] = ["gunicorn", "app:wsgi", "--workers", str(rng.randint(1, 8))]
    # v == 3: command left out
    e = (k + 2 * c) % 3
    if e == 1:
        out["environment"] = {}
    elif e == 2:
        names = rng.sample(_ENV_NAMES, rng.randint(1, 4))
        out["environment"] = {n: _secret(rng) for n in names}
    p = (k + c) % 5
    if p == 1:
        out["ports"] = {}
    elif p != 0:
        ports = {"80": "HTTP", "443": "HTTPS", "5432": "TCP", "53": "UDP", "8080": "HTTP"}
        keys = rng.sample(sorted(ports), rng.randint(1, 3))
        if p == 4:
            keys = ["80", "53"]
        out["ports"] = {pk: ports[pk] for pk in keys}
    return out


def _deployment(
    rng: random.Random, name: str, k: int, version: int, state: str, created: float
) -> dict[str, Any]:
    n_containers = 1 + (k % 3 == 2) + (k % 7 == 6)
    cnames = ["app", "sidecar", "proxy"][:n_containers]
    containers = {cn: _container(rng, name, k, i) for i, cn in enumerate(cnames)}
    dep: dict[str, Any] = {"version": version, "state": state, "containers": containers}
    if k % 5 != 4:
        port_owner = next((cn for cn in cnames if containers[cn].get("ports")), None)
        if port_owner is not None:
            port = int(next(iter(containers[port_owner]["ports"])))
            hc = (
                dict(DEFAULT_HEALTH_CHECK)
                if k % 2 == 0
                else {
                    "healthyThreshold": rng.randint(2, 10),
                    "unhealthyThreshold": rng.randint(2, 10),
                    "timeoutSeconds": rng.randint(2, 60),
                    "intervalSeconds": rng.randint(5, 300),
                    "path": rng.choice(("/health", "/healthz", "/status", "/")),
                    "successCodes": rng.choice(("200", "200-299", "200,301")),
                }
            )
            dep["publicEndpoint"] = {
                "containerName": port_owner,
                "containerPort": port,
                "healthCheck": hc,
            }
    dep["createdAt"] = created
    return dep


def make_service(
    rng: random.Random, account_id: str, region: str, k: int, names: set[str]
) -> dict[str, Any]:
    """One container service in wire shape. `k` drives the variant cycles (coverage)."""
    while True:
        name = f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}"
        if k % 4 == 1:
            name += f"-{rng.randint(1, 99)}"
        if name not in names:
            names.add(name)
            break
    state = STATES[k % len(STATES)]
    power = POWERS[(k + k // 6) % len(POWERS)]
    created = _random_epoch_seconds(rng)
    svc: dict[str, Any] = {
        "containerServiceName": name,
        "arn": f"arn:aws:lightsail:{region}:{account_id}:ContainerService/{_uuid(rng)}",
        "createdAt": created,
        "location": {"availabilityZone": "all", "regionName": region},
        "resourceType": "ContainerService",
    }
    t = (k // 7 + k) % 3
    if t == 1:
        svc["tags"] = []
    elif t == 2:
        tags: list[dict[str, str]] = [
            {"key": "team", "value": rng.choice(_TEAMS)},
            {"key": "env", "value": rng.choice(("prod", "staging", "dev"))},
        ][: rng.randint(1, 2)]
        if k % 5 == 2:
            tags.append({"key": "cost-center"})  # a tag without value
        if k % 5 == 3:
            tags.append({"key": "owner", "value": ""})
        svc["tags"] = tags
    svc["power"] = power
    svc["powerId"] = f"{power}-1"
    svc["state"] = state
    details = STATE_DETAIL.get(state)
    if details and (state != "RUNNING" or k % 3 == 0):
        code = details[k % len(details)]
        svc["stateDetail"] = {"code": code, "message": f"{code.replace('_', ' ').lower()}"}
    svc["scale"] = 1 + (k * 7) % 20 if k % 3 else 1
    # current: ACTIVE (INACTIVE when disabled, now and then FAILED); next: ACTIVATING while
    # deploying, FAILED on some running services.
    dep_state = "INACTIVE" if state == "DISABLED" else "FAILED" if k % 11 == 10 else "ACTIVE"
    version = 1 + k % 9
    if state not in ("PENDING", "READY"):
        cur_created = _random_epoch_seconds(rng, created, EPOCH_NOW)
        svc["currentDeployment"] = _deployment(rng, name, k, version, dep_state, cur_created)
        if state == "DEPLOYING" or (state == "RUNNING" and k % 4 == 2):
            nxt_state = "ACTIVATING" if state == "DEPLOYING" else "FAILED"
            svc["nextDeployment"] = _deployment(
                rng,
                name,
                k + 1,
                version + 1,
                nxt_state,
                _random_epoch_seconds(rng, cur_created, EPOCH_NOW),
            )
    elif state == "PENDING" and k % 2 == 0:
        svc["nextDeployment"] = _deployment(
            rng, name, k, 1, "ACTIVATING", _random_epoch_seconds(rng, created)
        )
    svc["isDisabled"] = state == "DISABLED"
    if state != "PENDING":
        svc["principalArn"] = (
            f"arn:aws:iam::{rng.randrange(10**11, 10**12)}:role/amazon/lightsail/"
            f"{region}/containers/{name}/{_hex(rng, 26)}"
        )
    svc["privateDomainName"] = f"{name}.service.local"
    d = (k // 3 + k) % 3
    if d == 1:
        svc["publicDomainNames"] = {}
    elif d == 2:
        svc["publicDomainNames"] = {
            f"{name}-cert": [f"{name}.example.com", f"www.{name}.example.com"][: 1 + k % 2]
        }
    if state != "PENDING":
        svc["url"] = f"https://{name}.{_hex(rng, 12)}.{region}.cs.amazonlightsail.com/"
    if k % 4 != 3:
        active = k % 2 == 0
        role = {"isActive": active, "principalArn": ""}
        if active:
            role["principalArn"] = (
                f"arn:aws:iam::{account_id}:role/amazon/lightsail/{region}/containers/"
                f"{name}/{_hex(rng, 26)}"
            )
        svc["privateRegistryAccess"] = {"ecrImagePullerRole": role}
    return svc


# ----------------------------------------------------------------------- evolve
_MUTATIONS = (
    "state",
    "power",
    "scale",
    "tags",
    "domains",
    "deployment_version",
    "deployment_state",
    "image",
    "ports",
    "env_added",
    "env_removed",
    "env_value",
    "service_removed",
)


def _evolve_into(parent: Fleet, child: Fleet, rng: random.Random) -> None:
    regions_of: dict[str, dict[str, list[dict[str, Any]]]] = {}
    names_of: dict[str, set[str]] = {}
    pool: list[tuple[str, str, dict[str, Any]]] = []
    for acct in parent.all_account_ids:
        regions = copy.deepcopy(parent._account(acct))
        regions_of[acct] = regions
        names_of[acct] = {s["containerServiceName"] for v in regions.values() for s in v}
        pool.extend((acct, region, svc) for region in sorted(regions) for svc in regions[region])
    rng.shuffle(pool)
    touched: set[int] = set()
    removed: set[int] = set()

    def apply(i: int, kind: str) -> bool:
        acct, region, svc = pool[i]
        if kind == "service_removed":
            removed.add(id(svc))
            name = svc["containerServiceName"]
            child.changes.append(Change(kind, acct, region, name, None, svc, None))
            return True
        change = _mutate(rng, acct, region, svc, kind)
        if change is not None:
            child.changes.append(change)
        return change is not None

    # Every kind at least once (when some service allows it), then ~1 in 4 services more.
    for kind in _MUTATIONS:
        for i in range(len(pool)):
            if i not in touched and apply(i, kind):
                touched.add(i)
                break
    for i in range(len(pool)):
        if i not in touched and rng.random() < 0.25:
            touched.add(i)
            apply(i, rng.choice(_MUTATIONS))
    for acct in parent.all_account_ids:
        regions = regions_of[acct]
        for region in regions:
            regions[region] = [s for s in regions[region] if id(s) not in removed]
        if rng.random() < 0.15 or acct in (parent.hub_account_id, parent.showcase_account_id):
            region = rng.choice(parent.regions)
            svc = make_service(rng, acct, region, rng.randrange(1000), names_of[acct])
            regions.setdefault(region, []).append(svc)
            regions[region].sort(key=lambda s: s["containerServiceName"])
            child.changes.append(
                Change("service_added", acct, region, svc["containerServiceName"], None, None, svc)
            )
        child._cache[acct] = {r: v for r, v in regions.items() if v}


def _mutate(
    rng: random.Random, acct: str, region: str, svc: dict[str, Any], kind: str
) -> Change | None:
    name = svc["containerServiceName"]

    def change(field: str, old: Any, new: Any) -> Change:
        return Change(kind, acct, region, name, field, old, new)

    dep = svc.get("currentDeployment")
    if kind == "state":
        old = svc["state"]
        new = "RUNNING" if old != "RUNNING" else "UPDATING"
        svc["state"] = new
        svc["isDisabled"] = False
        svc.pop("stateDetail", None)
        return change("state", old, new)
    if kind == "power":
        old = svc["power"]
        new = POWERS[(POWERS.index(old) + 1) % len(POWERS)]
        svc["power"], svc["powerId"] = new, f"{new}-1"
        return change("power", old, new)
    if kind == "scale":
        old = svc["scale"]
        new = old % 20 + 1
        svc["scale"] = new
        return change("scale", old, new)
    if kind == "tags":
        old_tags = copy.deepcopy(svc.get("tags"))
        tags = list(svc.get("tags") or [])
        tags = [t for t in tags if t.get("key") != "release"]
        tags.append({"key": "release", "value": f"r{rng.randint(100, 999)}"})
        svc["tags"] = tags
        return change("tags", old_tags, copy.deepcopy(tags))
    if kind == "domains":
        old_d = copy.deepcopy(svc.get("publicDomainNames"))
        svc["publicDomainNames"] = {f"{name}-cert2": [f"{name}.example.org"]}
        return change("publicDomainNames", old_d, copy.deepcopy(svc["publicDomainNames"]))
    if dep is None:
        return None
    if kind == "deployment_version":
        old_v = dep["version"]
        dep["version"] = old_v + 1
        dep["state"] = "ACTIVE"
        dep["createdAt"] = round(EPOCH_NOW + rng.uniform(60, 86400), 3)
        return change("currentDeployment.version", old_v, old_v + 1)
    if kind == "deployment_state":
        old_s = dep["state"]
        new_s = "FAILED" if old_s != "FAILED" else "ACTIVE"
        dep["state"] = new_s
        return change("currentDeployment.state", old_s, new_s)
    cname, container = next(iter(dep["containers"].items()))
    base = f"currentDeployment.containers.{cname}"
    if kind == "image":
        old_i = container.get("image")
        new_i = "nginx:1.27" if old_i != "nginx:1.27" else "nginx:1.28"
        container["image"] = new_i
        return change(f"{base}.image", old_i, new_i)
    if kind == "ports":
        old_p = copy.deepcopy(container.get("ports"))
        ports = dict(container.get("ports") or {})
        ports["9090"] = "TCP" if ports.get("9090") != "TCP" else "UDP"
        container["ports"] = ports
        return change(f"{base}.ports", old_p, dict(ports))
    env = container.get("environment") or {}
    if kind == "env_added":
        new_name = f"FEATURE_FLAG_{rng.randint(100, 999)}"
        container["environment"] = {**env, new_name: _secret(rng)}
        return change(f"{base}.environment.{new_name}", None, container["environment"][new_name])
    if not env:
        return None
    victim = sorted(env)[0]
    if kind == "env_removed":
        old_v2 = env.pop(victim)
        return change(f"{base}.environment.{victim}", old_v2, None)
    if kind == "env_value":
        old_v3 = env[victim]
        env[victim] = _secret(rng)
        return change(f"{base}.environment.{victim}", old_v3, env[victim])
    raise ValueError(kind)
