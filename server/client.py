"""What client commands share: the target, the key, and a channel to the server; and the
argparse types of ids."""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path

import grpc

from server.settings import DEFAULT_DATA_DIR, DEFAULT_LISTEN, SettingsError, key_file_path


def add_client_arguments(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """--target, --key-file and --ca-cert. `inherited`: on a subcommand of a command that
    takes them too, where they have no defaults of their own, so that options given before
    the subcommand are kept (argparse lets a subcommand's defaults replace them)."""
    target = os.environ.get("RATING_TARGET", DEFAULT_LISTEN)
    defaults: dict[str, str | None] = {
        "target": target,
        "key_file": None,
        "ca_cert": os.environ.get("RATING_CA_CERT"),
    }
    if inherited:
        defaults = dict.fromkeys(defaults, argparse.SUPPRESS)
    parser.add_argument(
        "--target",
        default=defaults["target"],
        # Escaped: argparse %-formats help (an IPv6 scope id holds a %).
        help=f"server address host:port (env RATING_TARGET; default {target.replace('%', '%%')})",
    )
    parser.add_argument(
        "--key-file",
        default=defaults["key_file"],
        help="file holding the API key (default: env RATING_API_KEY, else the key file "
        "the embedded default writes, var/api-key)",
    )
    parser.add_argument("--ca-cert", default=defaults["ca_cert"], help="CA certificate for TLS")


def api_key(args: argparse.Namespace) -> str:
    """--key-file, else RATING_API_KEY, else the embedded default's key file."""
    if args.key_file:
        return _checked_key(Path(args.key_file).read_text(), f"--key-file {args.key_file}")
    env_key = os.environ.get("RATING_API_KEY")
    if env_key:
        return _checked_key(env_key, "RATING_API_KEY")
    data_dir = Path(os.environ.get("RATING_DATA_DIR", DEFAULT_DATA_DIR))
    path = key_file_path(data_dir)
    if not path.exists():
        raise SystemExit(
            f"no API key: pass --key-file, set RATING_API_KEY, or start `rating serve` "
            f"on the embedded default, which writes {path}"
        )
    return _checked_key(path.read_text(), str(path))


def _checked_key(text: str, source: str) -> str:
    """The key without surrounding white space; refused, naming where it came from, unless
    it is one word of printable ASCII (it travels in a gRPC header, which takes nothing
    else: a file holding more than the key, such as the whole output of `create-tenant`,
    would otherwise fail inside gRPC)."""
    key = text.strip()
    if not key:
        raise SettingsError(f"{source}: holds no API key")
    if not all("!" <= c <= "~" for c in key):
        raise SettingsError(
            f"{source}: an API key is one word of printable ASCII; this holds "
            "white space or other characters (only the key belongs there)"
        )
    return key


def auth_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key(args)}"),)


def client_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    if args.ca_cert:
        credentials = grpc.ssl_channel_credentials(Path(args.ca_cert).read_bytes())
        return grpc.aio.secure_channel(args.target, credentials, options=options)
    return grpc.aio.insecure_channel(args.target, options=options)


def tenant_id(text: str) -> uuid.UUID:
    """An argparse type: a tenant id."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a tenant id (a UUID)") from None
