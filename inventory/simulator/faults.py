"""What can go wrong, on purpose: latency and fault injection for the simulator.

Region-scoped sets hold `(account_id, region)` pairs where `account_id` may be `'*'` (every
account, the hub included). Random faults (throttle, 5xx, drop) apply to Lightsail calls
only, drawn from `random.Random(seed)`; latency applies to every request. A `Faults` can be
changed while the simulator runs (the server reads it on every request).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

Pair = tuple[str, str]


@dataclass
class Faults:
    latency_ms: float = 0.0  # mean added latency per request (±10% jitter)
    throttle_rate: float = 0.0  # Lightsail: 400 ThrottlingException
    error_5xx_rate: float = 0.0  # Lightsail: 500 ServiceException or 503 ServiceUnavailable
    drop_rate: float = 0.0  # Lightsail: connection closed without an answer
    denied_accounts: set[str] = field(default_factory=set)  # AssumeRole: 403 AccessDenied
    denied_regions: set[Pair] = field(default_factory=set)  # 400 AccessDeniedException
    unenabled_regions: set[Pair] = field(default_factory=set)  # 400 UnrecognizedClientException
    hang_regions: set[Pair] = field(default_factory=set)  # accepted, never answered
    # Lightsail regions whose every connection is closed unanswered (an endpoint that cannot
    # be reached), whoever calls: the region is read from the signature's credential scope
    unreachable_regions: set[str] = field(default_factory=set)
    malformed: set[Pair] = field(default_factory=set)  # answered with an unexpected shape
    # An answer of `huge_bytes` (valid JSON), streamed chunked, or with its Content-Length
    # when `huge_with_length`, for the operations in `huge_operations`: Lightsail's (the pair
    # is the caller's account and region) or AssumeRole (the role's account, and the region
    # STS is signed for)
    huge_answers: set[Pair] = field(default_factory=set)
    huge_operations: frozenset[str] = frozenset({"GetContainerServices"})
    huge_bytes: int = 50 * 1024 * 1024
    huge_with_length: bool = False
    # Lightsail: a 400 error whose message is `huge_error_bytes` long
    huge_errors: set[Pair] = field(default_factory=set)
    huge_error_bytes: int = 5 * 1024 * 1024
    denied_message: str | None = None  # AccessDeniedException's message (None: AWS's)
    # 307 to `redirect_to` + the request's path: Lightsail calls of these pairs, and every
    # STS call when `redirect_sts`
    redirect_regions: set[Pair] = field(default_factory=set)
    redirect_sts: bool = False
    redirect_to: str = ""
    # GetContainerServices answers (200) for these pairs (Fleet.future_services and friends):
    unknown_members: set[Pair] = field(default_factory=set)  # members AWS may add tomorrow
    bad_leaves: set[Pair] = field(default_factory=set)  # leaves of the wrong type
    no_services_member: set[Pair] = field(default_factory=set)  # `{}`: no containerServices
    services_not_list: set[Pair] = field(default_factory=set)  # containerServices an object
    # Lightsail operation -> chance of a 400 ThrottlingException for each of its calls, on
    # top of `throttle_rate` (e.g. throttling only the --usage calls)
    operation_throttle: dict[str, float] = field(default_factory=dict)
    # Lightsail operations refused (400 AccessDeniedException) to every caller: a reader
    # role without that permission
    denied_operations: set[str] = field(default_factory=set)
    # (account_id, region, service name): per-service calls (--deep, --usage) answer
    # NotFoundException, as for a service deleted after GetContainerServices listed it
    vanished: set[tuple[str, str, str]] = field(default_factory=set)
    credential_ttl_s: float = 3600.0  # AssumeRole credentials live at most this long
    external_id: str | None = None  # AssumeRole without this ExternalId: AccessDenied
    hang_max_s: float = 600.0  # a hung request is closed unanswered after this long
    seed: int = 0
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"faults:{self.seed}")

    @staticmethod
    def _has(pairs: set[Pair], account_id: str, region: str) -> bool:
        return bool(pairs) and ((account_id, region) in pairs or ("*", region) in pairs)

    def is_denied_region(self, account_id: str, region: str) -> bool:
        return self._has(self.denied_regions, account_id, region)

    def is_unenabled_region(self, account_id: str, region: str) -> bool:
        return self._has(self.unenabled_regions, account_id, region)

    def is_hang(self, account_id: str, region: str) -> bool:
        return self._has(self.hang_regions, account_id, region)

    def is_malformed(self, account_id: str, region: str) -> bool:
        return self._has(self.malformed, account_id, region)

    def is_redirected(self, account_id: str, region: str) -> bool:
        return self._has(self.redirect_regions, account_id, region)

    def has_huge_error(self, account_id: str, region: str) -> bool:
        return self._has(self.huge_errors, account_id, region)

    def is_huge(self, account_id: str, region: str, op: str) -> bool:
        return op in self.huge_operations and self._has(self.huge_answers, account_id, region)

    def answer_variant(self, account_id: str, region: str) -> str | None:
        """Which altered GetContainerServices answer this pair gets, if any."""
        for name in (
            "malformed",
            "unknown_members",
            "bad_leaves",
            "no_services_member",
            "services_not_list",
        ):
            if self._has(getattr(self, name), account_id, region):
                return name
        return None

    def throttles(self, op: str) -> bool:
        """Whether this call of `op` is throttled by `operation_throttle`."""
        rate = self.operation_throttle.get(op, 0.0)
        return rate > 0 and self.rng.random() < rate

    def latency_s(self) -> float:
        if self.latency_ms <= 0:
            return 0.0
        return self.latency_ms * self.rng.uniform(0.9, 1.1) / 1000.0

    def draw(self) -> str | None:
        """One Lightsail call's random fault: 'drop', '5xx', 'throttle' or None."""
        if not (self.drop_rate or self.error_5xx_rate or self.throttle_rate):
            return None
        r = self.rng.random()
        if r < self.drop_rate:
            return "drop"
        r -= self.drop_rate
        if r < self.error_5xx_rate:
            return "5xx"
        r -= self.error_5xx_rate
        if r < self.throttle_rate:
            return "throttle"
        return None
