"""The Lightsail regions: the 15 the API reference names, plus any the installed SDK's model adds."""

from __future__ import annotations

from functools import cache

from inventory.errors import UsageError

# The 15 regions the Lightsail API reference names (docs/contract.md), in its order.
DOCUMENTED_REGIONS: tuple[str, ...] = (
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "ca-central-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "eu-north-1",
)


@cache
def model_regions() -> tuple[str, ...]:
    """Regions named by the installed botocore Lightsail model (the RegionName enum)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("lightsail")
    shape = model.shape_for("RegionName")
    return tuple(getattr(shape, "enum", None) or ())


@cache
def all_regions() -> tuple[str, ...]:
    """Every Lightsail region: the documented 15, then those the SDK model adds."""
    extra = tuple(r for r in model_regions() if r not in DOCUMENTED_REGIONS)
    return DOCUMENTED_REGIONS + extra


def parse_regions(
    value: str | list[str] | tuple[str, ...] | None, field: str = "--regions"
) -> tuple[str, ...]:
    """`None`/'all' -> every region; 'a,b' or a list -> those, validated, de-duplicated, in order."""
    if value is None:
        return all_regions()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    if items == ["all"]:
        return all_regions()
    known = set(all_regions())
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or item not in known:
            raise UsageError(
                f"{field}: unknown Lightsail region {item!r} "
                f"(known: {', '.join(all_regions())}; or 'all', or 'discover')"
            )
        if item not in out:
            out.append(item)
    if not out:
        raise UsageError(f"{field}: no region given")
    return tuple(out)
