"""Secrets kept in files (the REST API's bearer tokens, the agents'
metrics token, the etcd user's password): read only when the file is
private to its user, so a secret never sits on a command line or in a
file every user of the machine can read.

    lines = read_secret_file(path, "store password_file", "password file")
    tokens = read_tokens(path, "--metrics-token-file", MIN_TOKEN_CHARS, several=True)
    token = bearer_token(environ.get("HTTP_AUTHORIZATION"))   # bytes or None
    if token is not None and token_in(token, tokens): ...       # constant time

A file that is missing, unreadable, empty, or accessible to every user
(any "other" permission bit) is a SecretFileError naming the file, the
option it came from and the fix.

Not here: what a token or password is checked against (controller.apiauth,
host_agent.metrics, the etcd store client).
"""
from __future__ import annotations

import hmac
import os
import stat

MIN_TOKEN_CHARS = 16
SCHEME = "Bearer"


class SecretFileError(ValueError):
    """A secret file cannot be used; the message names the file and option."""


def read_secret_file(path, option, what="secret file"):
    """The lines of `path` (newlines removed); SecretFileError when the file
    is missing, unreadable, has no non-blank line or is open to others."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8", errors="strict") as f:
            lines = [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise SecretFileError(f"{path}: {option}: cannot read the {what}: "
                              f"{getattr(err, 'strerror', None) or err}") from None
    if info.st_mode & stat.S_IRWXO:
        raise SecretFileError(f"{path}: {option}: the {what} is readable by every user "
                              f"(mode {stat.S_IMODE(info.st_mode):04o}); "
                              f"run: chmod 600 {path}")
    if not any(line.strip() for line in lines):
        raise SecretFileError(f"{path}: {option}: the {what} is empty")
    return lines


def read_tokens(path, option, min_chars, several=False):
    """The bearer token(s) of a token file: one a line, `#` comments
    skipped, each one word of at least `min_chars` characters (a list when
    `several`, else the one token)."""
    lines = [line.strip() for line in read_secret_file(path, option, "token file")]
    tokens = [t for t in lines if t and not t.startswith("#")]
    if not tokens:
        raise SecretFileError(f"{path}: {option}: the token file is empty")
    for number, line in enumerate(lines, 1):
        if line and not line.startswith("#") and (len(line) < min_chars
                                                  or any(c.isspace() for c in line)):
            raise SecretFileError(f"{path}:{number}: {option}: a token is one word of "
                                  f"at least {min_chars} characters")
    if not several and len(tokens) > 1:
        raise SecretFileError(f"{path}: {option}: one token expected, found {len(tokens)}")
    return tokens if several else tokens[0]


def bearer_token(header):
    """The token of an `Authorization: Bearer TOKEN` header as bytes, None
    when the header is missing or of another scheme."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != SCHEME.lower() or not token.strip():
        return None
    return token.strip().encode()


def token_in(token, candidates):
    """Whether `token` (bytes) is one of `candidates` (str or bytes),
    in constant time in the token: every candidate is compared."""
    found = False
    for candidate in candidates:
        if isinstance(candidate, str):
            candidate = candidate.encode()
        found |= hmac.compare_digest(token, candidate)
    return found
