"""TLS files checked before anything uses them, so a wrong one is an error
naming the file and the option it came from rather than a failed handshake
later: a certificate that is not PEM, has expired or is not yet valid, a
key that does not belong to its certificate, a CA file with no
certificate in it.

    check_pair(cert, key, "--ofp-cert", "--ofp-key")     # TLSFileError
    check_ca(ca, "--ofp-ca")

Dates are read with the `openssl` command (Debian's openssl package, which
`make deps` installs); the pairing and the CA with Python's ssl module.

Not here: making certificates (onvm.certs), using them (the store client,
controller.run's config).
"""
from __future__ import annotations

import ssl
import subprocess
import time


class TLSFileError(ValueError):
    """A TLS file cannot be used; the message names the file and option."""


def validity(cert):
    """(not before, not after) of a PEM certificate, as Unix times."""
    try:
        res = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-startdate",
                              "-enddate"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise TLSFileError(f"{cert}: cannot check the certificate: the openssl "
                           "command is missing (apt-get install openssl)") from None
    if res.returncode != 0:
        raise TLSFileError(f"{cert}: not a PEM certificate: "
                           f"{res.stderr.strip().splitlines()[0] if res.stderr else ''}")
    dates = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    return (ssl.cert_time_to_seconds(dates["notBefore"]),
            ssl.cert_time_to_seconds(dates["notAfter"]))


def check_pair(cert, key, cert_option, key_option, now=None):
    """A certificate valid now, and its key."""
    not_before, not_after = validity(cert)
    now = time.time() if now is None else now
    if now > not_after:
        raise TLSFileError(f"{cert}: {cert_option}: the certificate expired on "
                           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(not_after))}")
    if now < not_before:
        raise TLSFileError(f"{cert}: {cert_option}: the certificate is valid only from "
                           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(not_before))}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise TLSFileError(f"{key}: {key_option}: not the key of {cert} ({cert_option}): "
                           f"{err.reason or err}") from None


def check_ca(ca, option):
    """A file with at least one CA certificate."""
    try:
        ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError) as err:
        raise TLSFileError(f"{ca}: {option}: no CA certificate in it: "
                           f"{getattr(err, 'reason', None) or err}") from None
