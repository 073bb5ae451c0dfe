#!/usr/bin/env bash
# Installs the machine packages the system runs on, when they are missing: PostgreSQL's server,
# redis-server, Java 17 and Maven (to fetch Apache Kafka from Maven Central), wrk (benchmarks), npm (to
# fetch the docs pages' scripts from the npm registry), Chromium and chromedriver (the browser test).
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v wrk >/dev/null || missing+=(wrk)
command -v npm >/dev/null || missing+=(npm)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing machine packages: ${missing[*]}"
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "please install: ${missing[*]} (Debian package names), then run again" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged services; the project runs its own, so leave theirs alone but off.
for svc in redis-server postgresql; do
  if command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then systemctl stop "$svc" || true; fi
done
