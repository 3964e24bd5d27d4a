#!/usr/bin/env bash
# Fetches Apache Kafka (KRaft) from Maven Central for the embedded broker of `memeguard dev up`, the demo and
# the tests: the artifacts of ops/kafka/pom.xml and their runtime dependencies into .cache/kafka/libs, then a
# class-data archive (.cache/kafka/kafka.jsa) that halves the broker's start. Idempotent: skips when the jars
# of the pom's Kafka version are there. Needs Java 17+ and Maven (installed with apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

POM=ops/kafka/pom.xml
HOME_DIR="${MEMEGUARD_KAFKA_HOME:-$PWD/.cache/kafka}"
LIBS="$HOME_DIR/libs"
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
STAMP="$HOME_DIR/.installed-$VERSION-$(sha256sum "$POM" | cut -c1-12)"

if [ -f "$STAMP" ] && [ -f "$LIBS/kafka_2.13-$VERSION.jar" ]; then
  echo "Apache Kafka $VERSION already in $LIBS"
  exit 0
fi

if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
fi

mkdir -p "$HOME_DIR"
rm -rf "$LIBS.tmp"
mvn -q -B -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp"
rm -rf "$LIBS" "$HOME_DIR/kafka.jsa" "$HOME_DIR"/.installed-*
mv "$LIBS.tmp" "$LIBS"

# Optional speed-up; the broker starts without it (a little slower) if this fails.
if [ -x .venv/bin/python ]; then
  .venv/bin/python -c "from consumer.devinfra.stack import build_kafka_class_archive as b; b()" \
    || echo "warning: no class-data archive for Kafka (the broker still starts, ~2x slower)" >&2
fi
touch "$STAMP"
echo "Apache Kafka $VERSION in $LIBS ($(ls "$LIBS" | wc -l) jars)"
