"""The bundled AWS stand-in: STS, Lightsail and Organizations over real HTTP on 127.0.0.1.

    from inventory.simulator import Faults, Fleet, Simulator

    with Simulator(Fleet(100, seed=1), Faults(latency_ms=50)) as sim:
        os.environ.update(sim.env())   # then any botocore / aioboto3 client talks to it

`fleet.py` invents the accounts and their services (the ground truth), `faults.py` says what
goes wrong on purpose, `server.py` speaks the wire protocols, `__main__` runs it as a process.
"""

from inventory.simulator.faults import Faults
from inventory.simulator.fleet import HUB_ACCOUNT_ID, Change, Fleet
from inventory.simulator.server import (
    BASE_ACCESS_KEY,
    BASE_SECRET_KEY,
    UNSET_ENV,
    IssuedCredential,
    Simulator,
)

__all__ = [
    "BASE_ACCESS_KEY",
    "BASE_SECRET_KEY",
    "HUB_ACCOUNT_ID",
    "UNSET_ENV",
    "Change",
    "Faults",
    "Fleet",
    "IssuedCredential",
    "Simulator",
]
