"""Values of params.yaml that name a place: a store location (a local folder, file:// or
s3://bucket/prefix) and an S3 endpoint URL. Checked when params.yaml is loaded (the schema,
squeeze.config.sections) and again where a store is opened (squeeze.registry.store), so a typo
such as `s3:/bucket` or an endpoint without its scheme is refused naming the value, and never a
credential written into it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def hide_userinfo(value: str) -> str:
    """``value`` with anything before an ``@`` in its authority replaced by ``***``: a value
    that failed to parse as a URL is echoed in messages without a password it may hold."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/@]*@", r"\1***@", value)


# -- locations ------------------------------------------------------------------------------

# "scheme:" at the start of a value: it is meant as a URL (one letter is a Windows drive, C:\x)
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens, starting and ending alnum.
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_location(value: str) -> str:
    """Return ``value`` if :func:`open_store` can open it as written, else raise ValueError.

    Valid: a local path (relative or absolute), ``file:///absolute/path``, and
    ``s3://bucket[/prefix]`` with a valid bucket name. Anything that starts like a URL
    (``scheme:``) but is not one of those is refused, so a typo such as ``s3:/bucket/registry``
    (one slash) is never taken as a local folder named ``s3:``. A local folder whose name
    really has a colon is written ``./name:x``. For the params schema (``promote.registry``)
    as well as for open_store and open_registry.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a location: give a local folder or s3://bucket/prefix")
    match = SCHEME.match(value)
    if match is None:
        return value
    shown = hide_userinfo(value)
    parts = urlsplit(value)
    scheme = match.group(1).lower()
    if scheme == "s3":
        if not value[3:].startswith("//") or not parts.netloc:
            fixed = "s3://" + value[3:].lstrip("/")
            raise ValueError(
                f"{shown!r} is not a valid S3 URL: write s3://BUCKET/PREFIX, two slashes after "
                f"'s3:' (did you mean {hide_userinfo(fixed)!r}?)"
            )
        if not BUCKET.match(parts.netloc):
            raise ValueError(
                f"{shown!r}: {parts.netloc!r} is not a valid S3 bucket name (3-63 lowercase "
                "letters, digits, '.' and '-'); write s3://BUCKET/PREFIX"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"{shown!r}: an S3 location has no '?' or '#' part")
        return value
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(
                f"{shown!r} is not a valid file URL: write file:///ABSOLUTE/PATH (three slashes) "
                "or just the path"
            )
        return value
    raise ValueError(
        f"{shown!r} is an unsupported store URL ({scheme}:): a store is a local folder or "
        "s3://BUCKET/PREFIX (write ./NAME for a folder whose name has a ':')"
    )


def check_endpoint(value: str | None) -> str | None:
    """Return ``value`` if it is a usable S3 endpoint URL (``http(s)://host[:port][/path]``) or
    None (AWS's default endpoint), else raise ValueError saying how to write it.

    ``127.0.0.1:9000`` (no scheme) would otherwise reach botocore as an invalid endpoint and end
    in a traceback. For the params schema (every ``endpoint_url``) as well as for S3Store.
    """
    if value is None:
        return None
    shown = hide_userinfo(value) if isinstance(value, str) else repr(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"endpoint_url {shown!r} is empty: use null for AWS, or http://HOST:PORT")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or "://" not in value:
        example = f"http://{shown}" if "://" not in value else "http://HOST:PORT"
        raise ValueError(
            f"endpoint_url {shown!r} is not an http(s) URL: write it with its scheme, "
            f"e.g. {example!r} (https:// for TLS)"
        )
    try:
        _ = parts.port  # raises ValueError when the port is not a number in range
    except ValueError:
        raise ValueError(
            f"endpoint_url {shown!r} has an invalid port: use http://HOST:PORT"
        ) from None
    if not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            f"endpoint_url {shown!r} is not a valid endpoint: use http://HOST:PORT, no '?' or '#'"
        )
    return value


# -- S3 -------------------------------------------------------------------------------------

# S3 error codes that mean "your credentials or permissions are wrong".
