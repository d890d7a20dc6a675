#!/bin/bash
# usage: postfix-pipe.sh DIR LISTENPORT MMGATE SOCKET [DOMAIN] [PIPEUSER] -> prints master-launcher PID
# A throwaway postfix on 127.0.0.1:LISTENPORT that hands mail for DOMAIN (default
# corp.test) to `MMGATE deliver --socket SOCKET` through a master.cf pipe service
# run as PIPEUSER (default nobody), as an operator would set it up. Retries wait an
# hour unless flushed (postqueue -c DIR/etc -f). Log: DIR/maillog.
# stop: postfix -c DIR/etc stop
set -e; D=$1; P=${2:-10026}; BIN=$3; SOCK=$4; DOM=${5:-corp.test}; PU=${6:-nobody}
[ -n "$BIN" ] && [ -n "$SOCK" ] || { echo "usage: $0 DIR LISTENPORT MMGATE SOCKET [DOMAIN] [PIPEUSER]" >&2; exit 64; }
mkdir -p $D/etc $D/spool $D/data
cat > $D/etc/main.cf <<EOC
compatibility_level = 3.6
queue_directory = $D/spool
data_directory = $D/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mta.test
mydomain = test
myorigin = mta.test
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = $DOM
transport_maps = inline:{ $DOM=mmgate: }
maillog_file = /dev/stdout
alias_maps =
alias_database =
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
biff = no
queue_run_delay = 1h
minimal_backoff_time = 1h
maximal_backoff_time = 2h
EOC
sed -E "s/^smtp( +inet)/127.0.0.1:$P\1/; s/^([a-z0-9:.]+ +(unix|inet|fifo|pass|unix-dgram) +[-ny] +[-ny] +)y/\1n/" /etc/postfix/master.cf > $D/etc/master.cf
cat >> $D/etc/master.cf <<EOC
mmgate    unix  -       n       n       -       -       pipe
  flags= user=$PU null_sender=
  argv=$BIN deliver --socket $SOCK --sender \${sender} -- \${recipient}
EOC
chown postfix:postfix $D/data
postfix -c $D/etc set-permissions
postfix -c $D/etc check
postfix -c $D/etc start-fg >> $D/maillog 2>&1 &
echo $! > $D/pid
for i in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$P) 2>/dev/null && break; sleep 0.1; done
(echo > /dev/tcp/127.0.0.1/$P) 2>/dev/null || { echo "postfix does not listen on 127.0.0.1:$P:" >&2; cat $D/maillog >&2; exit 1; }
cat $D/pid
