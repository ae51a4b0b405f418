#!/bin/sh
# Installs the Debian packages the interop tests and benchmarks use, when missing.
set -eu
missing=""
command -v swaks >/dev/null 2>&1 || missing="$missing swaks"
command -v zstdcat >/dev/null 2>&1 || missing="$missing zstd"
{ command -v smtp-source >/dev/null 2>&1 || [ -x /usr/sbin/smtp-source ]; } || missing="$missing postfix"
{ command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ]; } || missing="$missing dnsmasq-base"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
# The log hook tests' brokers (each test starts its own node on free loopback ports).
{ command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; } || missing="$missing redis-server"
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing="$missing rabbitmq-server"
# The doc tests run the docs' jq and sqlite3 examples.
command -v jq >/dev/null 2>&1 || missing="$missing jq"
command -v sqlite3 >/dev/null 2>&1 || missing="$missing sqlite3"
# swaks --tls needs these Perl modules; swaks only recommends them, and recommends are off below.
perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 || missing="$missing libnet-ssleay-perl libio-socket-ssl-perl"
# DANE: a validating resolver (unbound) answering for zones signed with ldnsutils.
{ command -v unbound >/dev/null 2>&1 || [ -x /usr/sbin/unbound ]; } || missing="$missing unbound"
command -v ldns-signzone >/dev/null 2>&1 || missing="$missing ldnsutils"
# DKIM: Perl's Mail::DKIM verifies in the interop tests (CryptX for its Ed25519);
# OpenDKIM's milter signs for Postfix in the relay-2k-dkim benchmark.
perl -MMail::DKIM::Verifier -e1 >/dev/null 2>&1 || missing="$missing libmail-dkim-perl"
perl -MCrypt::PK::Ed25519 -e1 >/dev/null 2>&1 || missing="$missing libcryptx-perl"
{ command -v opendkim >/dev/null 2>&1 || [ -x /usr/sbin/opendkim ]; } || missing="$missing opendkim opendkim-tools"
# Egress through a proxy: HAProxy taking the PROXY v2 header (ha_proxy_server).
{ command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; } || missing="$missing haproxy"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != "0" ]; then
    echo "install-system-deps: need root to install:$missing (tests using them will be skipped)" >&2
    exit 0
fi
echo "install-system-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
