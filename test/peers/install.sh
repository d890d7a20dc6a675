#!/usr/bin/env bash
# install.sh — install the Debian packages the tests and benchmarks use, if missing.
# Idempotent and quiet when everything is there. Needs root (or sudo) for apt-get.
set -euo pipefail
need=()
command -v swaks        >/dev/null || need+=(swaks)
command -v smtp-source  >/dev/null || [ -x /usr/sbin/smtp-source ] || need+=(postfix)
command -v jq           >/dev/null || need+=(jq)
command -v curl         >/dev/null || need+=(curl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# the intake tests: dovecot (IMAP, dovecot-lda) and GitLab's mail_room, whose postback needs faraday
[ -x /usr/lib/dovecot/imap ] || need+=(dovecot-imapd)
command -v mail_room    >/dev/null || need+=(ruby-mail-room)
ruby -e 'require "faraday"' 2>/dev/null || need+=(ruby-faraday)
# the directory tests: OpenLDAP's server and its command-line tools
[ -x /usr/sbin/slapd ] || need+=(slapd)
command -v ldapsearch   >/dev/null || need+=(ldap-utils)
# a real Active Directory domain controller for the AD path: Samba's
[ -x /usr/sbin/samba ] && [ -d /usr/share/samba/setup/ad-schema ] || need+=(samba-ad-dc samba-ad-provision)
# the sign-in page's screenshots: Debian's headless Chromium
command -v chromium     >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# swaks needs these for STARTTLS
perl -MNet::SSLeay -e1 2>/dev/null || need+=(libnet-ssleay-perl)
perl -MIO::Socket::SSL -e1 2>/dev/null || need+=(libio-socket-ssl-perl)
if [ ${#need[@]} -gt 0 ]; then
	SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
	echo "installing: ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	# postfix asks questions on install; answer them up front.
	echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections 2>/dev/null || true
	# slapd's own instance is not used (the tests start theirs): leave it unconfigured.
	echo "slapd slapd/no_configuration boolean true" | $SUDO debconf-set-selections 2>/dev/null || true
	$SUDO apt-get update -qq >&2
	$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# An S3-compatible server for the spool's S3 tests and the replica bench
# (versitygw, Apache-2.0), built from the Go module proxy into ~/go/bin.
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"
if ! command -v versitygw >/dev/null; then
	echo "installing versitygw (go install, a few minutes the first time)" >&2
	GOFLAGS=-mod=mod go install github.com/versity/versitygw/cmd/versitygw@v1.8.0 >&2
fi
