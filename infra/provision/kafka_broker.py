"""Apache Kafka for development and tests: jars from Maven Central, one KRaft node on loopback.

infra.provision.services drives this module; it only knows how to fetch, configure, format and probe a broker.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

POM = Path(__file__).with_name("kafka") / "pom.xml"
MARKER = ".complete"


def kafka_version() -> str:
    """The pinned Kafka version: `kafka.version` in infra/provision/kafka/pom.xml, the single place it is written."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if found is None:
        raise RuntimeError(f"{POM} has no <kafka.version> property")
    return found.group(1).strip()


def kafka_jars(cache_dir: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Return the directory holding the broker's jars, downloading them with Maven the first time.

    The cache is `<cache_dir>/kafka-<version>/jars`, cache_dir defaulting to $PIPELINE_CACHE_DIR or
    ~/.cache/pipeline-gateway. Maven writes into a temporary directory that is renamed into place only
    once complete, so an interrupted download is never taken for a finished one.
    """
    root = cache_dir or Path(os.environ.get("PIPELINE_CACHE_DIR") or Path.home() / ".cache" / "pipeline-gateway")
    home = root / f"kafka-{kafka_version()}"
    jars = home / "jars"
    if (jars / MARKER).is_file():
        return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (`mvn`) is needed to fetch Apache Kafka: install the Debian package `maven`")
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="jars.partial-", dir=home))
    log(f"downloading Apache Kafka {kafka_version()} jars from Maven Central (once) into {jars} ...")
    command = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={staging}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}):\n{_tail(done.stdout + done.stderr)}")
    (staging / MARKER).write_text(kafka_version() + "\n")
    if jars.exists() and not (jars / MARKER).is_file():
        shutil.rmtree(jars)  # left by a run older than the marker scheme, or by hand: not trusted
    try:
        staging.rename(jars)
    except OSError:
        # Another process finished the same download first; its copy is as good as ours.
        shutil.rmtree(staging, ignore_errors=True)
        if not (jars / MARKER).is_file():
            raise
    log(f"Apache Kafka jars ready in {jars}")
    return jars


def write_config(home: Path, logs: Path, port: int, controller_port: int) -> Path:
    """Write server.properties (one node, broker and controller) and log4j.properties; return the former."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "log.dirs": str(home / "logs"),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "false",
        "min.insync.replicas": "1",
        # Internal topics default to replication factor 3, which one node can never satisfy: consumer
        # groups and transactions would wait forever for their coordinators.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        # 50 partitions each (the default) only slows the first group join / first transaction here.
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.num.partitions": "10",
        "group.initial.rebalance.delay.ms": "0",
        # Sized for a development machine of a few cores: fewer threads, fewer context switches.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.enable": "true",
        # The cleaner's default 128 MiB dedupe buffer is a sixth of the heap we give the JVM.
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
    }
    home.mkdir(parents=True, exist_ok=True)
    server = home / "server.properties"
    server.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    (home / "log4j.properties").write_text(
        "log4j.rootLogger=INFO, file\n"
        "log4j.appender.file=org.apache.log4j.RollingFileAppender\n"
        f"log4j.appender.file.File={logs / 'kafka.log'}\n"
        "log4j.appender.file.MaxFileSize=50MB\n"
        "log4j.appender.file.MaxBackupIndex=2\n"
        "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka.request.logger=WARN\n"
    )
    return server


def java_command(jars: Path, home: Path, main_class: str, *args: str, heap: bool = False) -> list[str]:
    """`java` running main_class from the jars, logging through home/log4j.properties."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            "Java 17 is needed to run Apache Kafka: install the Debian package `openjdk-17-jre-headless`"
        )
    memory = ["-Xms256m", "-Xmx768m"] if heap else []
    logging = f"-Dlog4j.configuration=file:{home / 'log4j.properties'}"
    return [java, *memory, "-Djava.awt.headless=true", logging, "-cp", f"{jars}/*", main_class, *args]


def format_storage(jars: Path, home: Path, log: Callable[[str], None]) -> None:
    """Format the KRaft log directory once; a formatted one (meta.properties) keeps its data."""
    if (home / "logs" / "meta.properties").is_file():
        return
    cluster_id = _kafka_uuid()
    log(f"kafka: formatting storage in {home / 'logs'} (cluster id {cluster_id})")
    command = java_command(jars, home, "kafka.tools.StorageTool", "format", "-t", cluster_id)
    done = subprocess.run(
        [*command, "-c", str(home / "server.properties")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"formatting Kafka storage failed ({done.returncode}):\n{_tail(done.stdout + done.stderr)}")


def broker_ready(bootstrap: str) -> bool:
    """True once the broker answers a metadata request and lists itself as an (unfenced) broker."""

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            return bool((await admin.describe_cluster()).get("brokers"))
        except Exception:
            return False
        finally:
            await admin.close()

    # A plain connect first: until the broker listens, aiokafka would log an error on every attempt.
    host, _, port = bootstrap.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    # A fresh loop in a worker thread, so this works whether or not the caller is inside an event loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


def _kafka_uuid() -> str:
    # Kafka's Uuid.toString: url-safe base64 of 16 bytes without padding; it never hands out one
    # starting with "-" (it would read as a command-line option), so neither do we.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
