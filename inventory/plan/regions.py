"""The Lightsail regions: where Lightsail has an endpoint, from the installed botocore's data.

The API's `RegionName` enum (the service model) names more regions than Lightsail serves:
us-west-1 is in the enum, but botocore's endpoint data (endpoints.json, published by AWS)
gives Lightsail no endpoint there, and a call to it can only fail. So the default region
set is `get_available_regions("lightsail")`, and a region that only the enum names is
refused as a usage error that says so.
"""

from __future__ import annotations

from functools import cache

from inventory.errors import UsageError

# The order regions are listed in (docs/contract.md); a region the endpoint data adds
# later comes after these, in name order. Only the endpoint data decides which regions exist.
DISPLAY_ORDER: tuple[str, ...] = (
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ca-central-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-northeast-1",
    "ap-northeast-2",
)


@cache
def model_regions() -> tuple[str, ...]:
    """Regions named by the installed botocore Lightsail model (the RegionName enum)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("lightsail")
    shape = model.shape_for("RegionName")
    return tuple(getattr(shape, "enum", None) or ())


@cache
def endpoint_regions() -> frozenset[str]:
    """Regions where Lightsail has an endpoint, per the installed botocore's endpoint data."""
    import botocore.session

    return frozenset(botocore.session.get_session().get_available_regions("lightsail"))


@cache
def all_regions() -> tuple[str, ...]:
    """Every Lightsail region (one with an endpoint), in DISPLAY_ORDER, then new ones."""
    have = endpoint_regions()
    known = tuple(r for r in DISPLAY_ORDER if r in have)
    return known + tuple(sorted(have - set(known)))


def region_problem(name: object) -> str | None:
    """Why `name` cannot be collected (None: it can): not a region Lightsail knows, or one
    the API names but where Lightsail has no endpoint."""
    if isinstance(name, str) and name in endpoint_regions():
        return None
    if isinstance(name, str) and name in model_regions():
        return (
            f"Lightsail has no endpoint in {name} (the API's region list names it, but "
            f"AWS serves Lightsail only in: {', '.join(all_regions())})"
        )
    return f"unknown Lightsail region (known: {', '.join(all_regions())})"


def parse_regions(
    value: str | list[str] | tuple[str, ...] | None, field: str = "--regions"
) -> tuple[str, ...]:
    """`None`/'all' -> every region; 'a,b' or a list -> those, validated, de-duplicated, in order."""
    if value is None:
        return all_regions()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    if items == ["all"]:
        return all_regions()
    out: list[str] = []
    for item in items:
        problem = region_problem(item)
        if problem is not None:
            raise UsageError(f"{field} {item!r}: {problem}; or 'all', or 'discover'")
        if item not in out:
            out.append(item)
    if not out:
        raise UsageError(f"{field}: no region given")
    return tuple(out)
