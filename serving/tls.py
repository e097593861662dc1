"""HTTPS on the proxy's port when config.json's apis say "https" (ModelArts' container API protocol).

- The certificate and key come from TLS_CERT and TLS_KEY (PEM files, e.g. mounted with the model package). They
  are checked at start-up, before Triton starts: readable, a key that matches the certificate, and a certificate
  valid now. Any failure stops the start with the reason.
- Without them, a self-signed pair (EC P-256, for localhost and 127.0.0.1, valid 30 days) is made at each start
  into a private folder, and one log line says so. The platform's gateway is the client of this port.
- gunicorn serves TLS itself (certfile, keyfile), with TLS 1.2 as the minimum and only forward-secret AEAD ciphers
  (TLS 1.3's own suites, and ECDHE with AES-GCM or ChaCha20-Poly1305 for TLS 1.2).

    python -m serving.tls CONFIG_JSON FOLDER   (run.sh) prints nothing for http; for https a log line, the
                                               certificate's path and the key's, one per line; exit 1 with the
                                               reason when they cannot be served
"""
import datetime
import os
import ssl
import sys

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
SELF_SIGNED_DAYS = 30


class TLSError(Exception):
    pass


def check(certfile, keyfile, now=None):
    """Refuse (TLSError) a pair that cannot be served: unreadable, not matching, or a certificate not valid now."""
    for what, path in (("certificate", certfile), ("key", keyfile)):
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise TLSError(f"TLS {what} {path} cannot be read")
    try:
        server_context(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise TLSError(f"TLS certificate {certfile} and key {keyfile} cannot be used together: {exc}") from None
    from cryptography import x509
    with open(certfile, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc <= now:
        raise TLSError(f"TLS certificate {certfile} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_before_utc > now:
        raise TLSError(f"TLS certificate {certfile} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                       "UTC")
    return cert


def self_signed(folder, days=SELF_SIGNED_DAYS):
    """A new key and self-signed certificate for localhost in `folder` (made private): (certfile, keyfile)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(certfile, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return certfile, keyfile


def server_context(certfile, keyfile):
    """The TLS settings of the port: TLS 1.2 or later, forward-secret AEAD ciphers only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(certfile, keyfile)
    return context


def prepare(protocol, certfile, keyfile, folder):
    """(log line, certfile, keyfile) for an https port, None for http; TLSError when it cannot be served."""
    if protocol != "https":
        return None
    if bool(certfile) != bool(keyfile):
        raise TLSError("TLS_CERT and TLS_KEY go together: give both (PEM files), or neither for a self-signed pair")
    if certfile:
        cert = check(certfile, keyfile)
        return (f"HTTPS on the port (config.json's apis say https): certificate {certfile}, valid until "
                f"{cert.not_valid_after_utc:%Y-%m-%d} UTC; TLS 1.2 or later", certfile, keyfile)
    certfile, keyfile = self_signed(folder)
    return (f"HTTPS on the port (config.json's apis say https) with a self-signed certificate made for this run in "
            f"{folder} (no TLS_CERT and TLS_KEY given); TLS 1.2 or later", certfile, keyfile)


def main(argv):
    from .errors import ConfigError
    from .modelarts import load
    try:
        found = prepare(load(argv[1]).protocol, os.environ.get("TLS_CERT", ""), os.environ.get("TLS_KEY", ""),
                        argv[2])
    except (ConfigError, TLSError) as exc:
        print(exc)
        return 1
    if found:
        print("\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
