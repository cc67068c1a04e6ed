"""A SASL_SSL listener with SCRAM-SHA-512 users and ACLs for the local Apache Kafka.

`enable_sasl_ssl(cluster)` changes a `KafkaCluster` before it starts:
- a private CA and a broker certificate for 127.0.0.1/localhost, made with `openssl` in the
  cluster's data folder (`tls/ca.pem` is what clients trust);
- one extra listener, `SASL_SSL`, that accepts SCRAM-SHA-512 only;
- the StandardAuthorizer with `allow.everyone.if.no.acl.found=false`: on the SASL listener a
  principal can do only what an ACL grants it;
- super users: `User:ANONYMOUS` (the PLAINTEXT and CONTROLLER listeners, which stay bound to
  127.0.0.1 for the operator and the brokers themselves) and the SCRAM admin user;
- SCRAM users written into the metadata log at format time (`kafka-storage format
  --add-scram`), so they exist before the first client connects. More users can be added
  later with `SecuredCluster.add_user` (Kafka's ConfigCommand, over the PLAINTEXT listener).

Passwords go into `tls/../credentials.properties` (mode 0600), never to stdout or a log.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from streams.brokers.kafka_local import KafkaCluster, KafkaStartError, install
from streams.brokers.tansu import free_port

MECHANISM = "SCRAM-SHA-512"
LISTENER = "SASL_SSL"
ADMIN_USER = "admin"
QLANE_USER = "qlane"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def new_password() -> str:
    return secrets.token_urlsafe(18)


def _openssl(*arguments: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        raise KafkaStartError("`openssl` is needed to make the TLS certificates of --sasl")
    result = subprocess.run([openssl, *arguments], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise KafkaStartError(f"openssl {arguments[0]} failed: {result.stderr[-1500:]}")


def make_certificates(folder: Path, keystore_password: str) -> dict[str, Path]:
    """A CA and a broker key pair signed by it (SAN 127.0.0.1, localhost), as PEM + PKCS12."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-subj", "/CN=qlane local CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)
    (folder / "broker.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "broker.key", "-out", "broker.csr", cwd=folder)
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "30", "-extfile", "broker.ext", "-out", "broker.pem",
             cwd=folder)
    _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key",
             "-certfile", "ca.pem", "-name", "broker", "-out", "broker.p12",
             "-passout", f"pass:{keystore_password}", cwd=folder)
    for name in ("ca.key", "broker.key", "broker.p12"):
        os.chmod(folder / name, 0o600)
    return {"ca": folder / "ca.pem", "keystore": folder / "broker.p12"}


@dataclass
class SecuredCluster:
    """What `enable_sasl_ssl` set up; valid once the cluster has started."""

    cluster: KafkaCluster
    sasl_port: int
    tls_dir: Path
    users: dict[str, str] = field(default_factory=dict)  # name -> password
    admin_user: str = ADMIN_USER

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def credentials_file(self) -> Path:
        return self.tls_dir.parent / "credentials.properties"

    @property
    def sasl_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.sasl_port + index}"
                        for index in range(self.cluster.nodes_count))

    def client_settings(self, user: str, password: str | None = None) -> dict:
        """`Settings` fields (QLANE_* without the prefix) that connect as `user`."""
        return {
            "broker": self.sasl_bootstrap,
            "security_protocol": LISTENER,
            "ssl_cafile": str(self.ca_file),
            "sasl_mechanism": MECHANISM,
            "sasl_username": user,
            "sasl_password": self.users[user] if password is None else password,
        }

    def write_credentials(self) -> None:
        self.credentials_file.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{name}={password}\n" for name, password in self.users.items()]
        fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("# SCRAM-SHA-512 users of this local cluster: name=password\n")
            out.writelines(lines)

    def add_user(self, name: str, password: str | None = None) -> str:
        """Create (or change) a SCRAM-SHA-512 user on the running cluster; its password."""
        password = password or new_password()
        result = subprocess.run(
            [*self._tool("kafka.admin.ConfigCommand"), "--bootstrap-server",
             self.cluster.bootstrap, "--alter", "--entity-type", "users", "--entity-name", name,
             "--add-config", f"{MECHANISM}=[iterations=8192,password={password}]"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise KafkaStartError(f"creating SCRAM user {name} failed: "
                                  f"{(result.stdout + result.stderr)[-1500:]}")
        self.users[name] = password
        self.write_credentials()
        return password

    def _tool(self, main_class: str) -> list[str]:
        from streams.brokers.kafka_local import java_binary

        libs = install(self.cluster.version)
        quiet = self.tls_dir.parent / "tools-log4j2.properties"
        quiet.write_text("rootLogger.level=ERROR\nrootLogger.appenderRef.o.ref=O\n"
                         "appender.o.type=Console\nappender.o.name=O\n"
                         "appender.o.target=SYSTEM_ERR\nappender.o.layout.type=PatternLayout\n"
                         "appender.o.layout.pattern=%p %m%n\n")
        return [java_binary(), "-Xmx256m", "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={quiet}", "-cp", f"{libs}/*", main_class]

    def describe(self) -> str:
        users = ", ".join(sorted(self.users))
        return "\n".join([
            f"SASL_SSL bootstrap servers: {self.sasl_bootstrap} "
            f"(SCRAM-SHA-512, TLS with the CA in {self.ca_file})",
            f"SCRAM users: {users}; admin user: {self.admin_user} (a super user); passwords in "
            f"{self.credentials_file} (mode 0600)",
            "the PLAINTEXT listener above is for the local operator only (super user "
            "ANONYMOUS); clients use the SASL_SSL one, where only ACLs grant access",
            "a qlane worker on it: QLANE_SECURITY_PROTOCOL=SASL_SSL "
            f"QLANE_SASL_MECHANISM={MECHANISM} QLANE_SSL_CAFILE={self.ca_file} "
            f"QLANE_SASL_USERNAME={QLANE_USER} QLANE_SASL_PASSWORD=<from the file> "
            f"qlane worker --broker {self.sasl_bootstrap}",
            "grant its ACLs (README 'Security'): qlane tenant grant-worker --principal "
            f"User:{QLANE_USER} --broker {self.cluster.bootstrap}",
            f"more users: java -cp '{install(self.cluster.version)}/*' "
            "kafka.admin.ConfigCommand --bootstrap-server "
            f"{self.cluster.bootstrap} --alter --entity-type users --entity-name NAME "
            f"--add-config '{MECHANISM}=[password=SECRET]'; tenants: qlane tenant add NAME "
            "--principal User:NAME",
        ])


def enable_sasl_ssl(cluster: KafkaCluster, users: dict[str, str] | None = None,
                    sasl_port: int = 0) -> SecuredCluster:
    """Add the SASL_SSL listener, TLS, SCRAM users and the authorizer to `cluster` (not yet
    started). `users` (name -> password) defaults to `admin` and `qlane` with new passwords."""
    if cluster.data_dir is None:
        cluster.data_dir = Path(tempfile.mkdtemp(prefix="qlane-kafka-"))
        cluster._owned_dir = True
    users = dict(users) if users else {ADMIN_USER: new_password(), QLANE_USER: new_password()}
    users.setdefault(ADMIN_USER, new_password())
    tls_dir = Path(cluster.data_dir) / "tls"
    keystore_password = new_password()
    files = make_certificates(tls_dir, keystore_password)
    if not sasl_port:
        sasl_port = free_port()
        # One port per node, consecutive: check the ones after the first are free too.
        for _ in range(20):
            if all(_port_free(sasl_port + i) for i in range(cluster.nodes_count)):
                break
            sasl_port = free_port()
    listener = LISTENER.lower()
    cluster.extra_listeners = {**cluster.extra_listeners, LISTENER: (sasl_port, LISTENER)}
    cluster.extra_properties = {
        **cluster.extra_properties,
        "sasl.enabled.mechanisms": MECHANISM,
        f"listener.name.{listener}.sasl.enabled.mechanisms": MECHANISM,
        f"listener.name.{listener}.{MECHANISM.lower()}.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        f"listener.name.{listener}.ssl.keystore.type": "PKCS12",
        f"listener.name.{listener}.ssl.keystore.location": str(files["keystore"]),
        f"listener.name.{listener}.ssl.keystore.password": keystore_password,
        f"listener.name.{listener}.ssl.key.password": keystore_password,
        "authorizer.class.name": AUTHORIZER,
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:ANONYMOUS;User:{ADMIN_USER}",
    }
    scram = []
    for name, password in users.items():
        scram += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
    cluster.format_extra_args = (*cluster.format_extra_args, *scram)
    secured = SecuredCluster(cluster=cluster, sasl_port=sasl_port, tls_dir=tls_dir, users=users)
    secured.write_credentials()
    return secured


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
