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
