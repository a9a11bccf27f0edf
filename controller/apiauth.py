"""Who may call the REST API: bearer tokens kept in files, checked in
constant time.

    tokens = load_tokens(api_token_file, api_read_token_file, state_dir)
    refusal = authorize(tokens, "DELETE", "Bearer abc...")   # None: allowed

A token file holds one token on its first line (a read-token file may hold
several, one a line, for several monitoring systems).  A file that is
missing, empty, or readable by every user of the machine is an AuthError
naming the file and the option, raised before anything listens.  With no
`api_token_file`, the controller makes one: a random token
(`secrets.token_urlsafe`) in STATE_DIR/api-token, mode 0600, kept across
restarts so operators' scripts keep working.

The write token may do everything; a read token only GET (and HEAD).
Missing or wrong token: 401; a write with a read token: 403.  The health
check (HEALTH_PATH) needs no token: load balancers and systemd probes
cannot carry one.

Not here: routing requests (controller.apps.rest_api), TLS (the same app,
with the [onvm] api_cert/api_key options).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import secrets

from contracts.secretfile import (MIN_TOKEN_CHARS, SecretFileError, bearer_token,
                                  read_tokens, token_in)

LOG = logging.getLogger(__name__)

TOKEN_NAME = "api-token"          # the generated token's file in the state dir
READ_METHODS = ("GET", "HEAD")


class AuthError(SecretFileError):
    """A token file cannot be used; the message names the file and option."""


@dataclasses.dataclass(frozen=True)
class Tokens:
    write: bytes
    read: tuple = ()
    source: str = ""                # where the write token is, for messages


def default_state_dir():
    """$ONVM_STATE_DIR, else systemd's $STATE_DIRECTORY (StateDirectory=onvm),
    else ~/.onvm."""
    return (os.environ.get("ONVM_STATE_DIR") or os.environ.get("STATE_DIRECTORY")
            or os.path.join(os.path.expanduser("~"), ".onvm"))


def read_token_file(path, option, several=False):
    """The token(s) of `path` (a list when `several`); AuthError when the
    file is missing, empty, too short or readable by others."""
    try:
        return read_tokens(path, option, MIN_TOKEN_CHARS, several)
    except SecretFileError as err:
        raise AuthError(str(err)) from None


def make_token_file(state_dir):
    """STATE_DIR/api-token with a new random token (0600, in a 0700 dir),
    or the one there from an earlier start; returns its path."""
    path = os.path.join(state_dir, TOKEN_NAME)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path                 # kept across restarts; checked by the reader
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path


def load_tokens(token_file=None, read_file=None, state_dir=None):
    """Tokens from the options, making the write token's file when none is
    named; logs where the write token is."""
    if token_file:
        path = token_file
    else:
        path = make_token_file(state_dir or default_state_dir())
        LOG.warning("REST API: no api_token_file given; the token is in %s "
                    "(send it as 'Authorization: Bearer TOKEN')", path)
    write = read_token_file(path, "api_token_file")
    read = read_token_file(read_file, "api_read_token_file",
                           several=True) if read_file else []
    if write in read:
        raise AuthError(f"{read_file}: api_read_token_file: holds the write "
                        f"token of {path}; a read token must differ")
    LOG.info("REST API: bearer token from %s%s", path,
             f", {len(read)} read-only token(s) from {read_file}" if read else "")
    return Tokens(write.encode(), tuple(t.encode() for t in read), path)


def authorize(tokens: Tokens, method, header):
    """None when a request with this Authorization `header` may be carried
    out, else (status, message) for the refusal."""
    token = bearer_token(header)
    if token is None:
        return 401, ("missing credentials: send 'Authorization: Bearer TOKEN' "
                     "(the token is in the controller's api_token_file)")
    is_write = token_in(token, (tokens.write,))
    is_read = token_in(token, tokens.read)
    if is_write:
        return None
    if is_read:
        if method.upper() in READ_METHODS:
            return None
        return 403, f"a read-only token may only {' and '.join(READ_METHODS)}, not {method}"
    return 401, "wrong token"
