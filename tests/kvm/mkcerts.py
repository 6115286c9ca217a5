#!/usr/bin/env python3
"""mkcerts.py DIR - test credentials for the migration channel's mutual TLS.

Makes two CAs (A and B) and, each in DIR/NAME/ (ca.pem, cert.pem, key.pem),
as godwit's --tls-dir wants them:
  src        CN/SAN src.godwit.test, signed by A; ca.pem: A
  dst        CN/SAN dst.godwit.test, signed by A; ca.pem: A
  wrongname  CN/SAN other.godwit.test, signed by A; ca.pem: A
  otherca    CN/SAN src.godwit.test, signed by B; ca.pem: A and B (it trusts
             the destination, the destination does not trust it)
  expired    CN/SAN src.godwit.test, signed by A, expired a year ago; ca.pem: A
  cnonly     CN src.godwit.test and no SAN, signed by A; ca.pem: A
`mkcerts.py DIR HOST...` makes instead DIR/HOST/ for each HOST (CN/SAN HOST,
signed by A; ca.pem: A): a fleet's hosts (godwitd --tls-dir).
Keys are ECDSA P-256; certificates carry both serverAuth and clientAuth (a
host is a TLS server when it receives a VM, a client when it sends one).
"""
import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


def key():
    return ec.generate_private_key(ec.SECP256R1())


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "godwit test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ca(cn):
    k = key()
    c = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
         .public_key(k.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - datetime.timedelta(days=1))
         .not_valid_after(NOW + datetime.timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                      content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False,
                                      encipher_only=False, decipher_only=False), critical=True)
         .sign(k, hashes.SHA256()))
    return k, c


def leaf(issuer, cn, san=True, expired=False):
    ik, ic = issuer
    k = key()
    if expired:
        nb, na = NOW - datetime.timedelta(days=730), NOW - datetime.timedelta(days=365)
    else:
        nb, na = NOW - datetime.timedelta(days=1), NOW + datetime.timedelta(days=365)
    b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ic.subject)
         .public_key(k.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(nb).not_valid_after(na)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                               ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return k, b.sign(ik, hashes.SHA256())


def pem(c):
    return c.public_bytes(serialization.Encoding.PEM)


def write(d, cas, kc):
    os.makedirs(d, exist_ok=True)
    k, c = kc
    with open(os.path.join(d, "ca.pem"), "wb") as f:
        f.write(b"".join(pem(x[1]) for x in cas))
    with open(os.path.join(d, "cert.pem"), "wb") as f:
        f.write(pem(c))
    fd = os.open(os.path.join(d, "key.pem"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))


def main():
    out = sys.argv[1]
    a, b = ca("godwit test CA A"), ca("godwit test CA B")
    if len(sys.argv) > 2:
        for host in sys.argv[2:]:
            write(os.path.join(out, host), [a], leaf(a, host))
        return
    write(os.path.join(out, "src"), [a], leaf(a, "src.godwit.test"))
    write(os.path.join(out, "dst"), [a], leaf(a, "dst.godwit.test"))
    write(os.path.join(out, "wrongname"), [a], leaf(a, "other.godwit.test"))
    write(os.path.join(out, "otherca"), [a, b], leaf(b, "src.godwit.test"))
    write(os.path.join(out, "expired"), [a], leaf(a, "src.godwit.test", expired=True))
    write(os.path.join(out, "cnonly"), [a], leaf(a, "src.godwit.test", san=False))


if __name__ == "__main__":
    main()
