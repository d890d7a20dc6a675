#!/bin/bash
# usage: samba-ad.sh DIR  -> prints PID (last line); stop with: kill PID
# A real Active Directory domain controller for the directory tests: Samba's
# AD DC (Debian packages samba-ad-dc, samba-ad-provision), realm CORP.TEST,
# LDAP only, on 127.0.0.1:389 (Samba cannot move its LDAP port, so one at a
# time). Needs root. Seeded with:
#   CN=svc-mmgate,OU=Service Accounts  password Svc-Passw0rd!   (the service bind)
#   CN=Frank Jones,OU=Staff  fjones / Frank-Passw0rd!  mail frank.jones@corp.test,
#     proxyAddresses SMTP:frank.jones@corp.test smtp:f.jones@corp.test X500:…
#   OU=Groups: Jira Users ⊃ Engineering ⊃ Backend ⊃ Frank Jones; Contractors (empty)
#   CN=Gone Person,OU=Staff  gone / Gone-Passw0rd!  disabled
set -euo pipefail
D=$1; B="DC=corp,DC=test"; ADMIN='Adm1n-Passw0rd!'
export PATH="$PATH:/usr/sbin"
rm -rf "$D"; mkdir -p "$D"
samba-tool domain provision --realm=CORP.TEST --domain=CORP --server-role=dc --dns-backend=NONE \
	--adminpass="$ADMIN" --targetdir="$D" --option="interfaces = lo" --option="bind interfaces only = yes" >"$D/provision.log" 2>&1
# Simple binds over plain LDAP, on loopback only.
sed -i 's/^\[global\]/[global]\n\tldap server require strong auth = no\n\tlog file = '"${D//\//\\/}"'\/samba.log/' "$D/etc/smb.conf"
samba -i -M single -s "$D/etc/smb.conf" --option="server services = ldap" >"$D/samba.out" 2>&1 &
PID=$!
# Samba holds 127.0.0.1:389: never leave it running when seeding fails.
trap 'kill $PID 2>/dev/null' ERR
for _ in $(seq 1 100); do
	if ldapsearch -x -H ldap://127.0.0.1 -b "" -s base supportedCapabilities >/dev/null 2>&1; then break; fi
	sleep 0.2
done
cat > "$D/seed.ldif" <<EOC
dn: OU=Staff,$B
objectClass: organizationalUnit

dn: OU=Groups,$B
objectClass: organizationalUnit

dn: OU=Service Accounts,$B
objectClass: organizationalUnit

dn: CN=Frank Jones,OU=Staff,$B
objectClass: user
sAMAccountName: fjones
displayName: Frank Jones
mail: frank.jones@corp.test
proxyAddresses: SMTP:frank.jones@corp.test
proxyAddresses: smtp:f.jones@corp.test
proxyAddresses: X500:/o=Corp/ou=Exchange/cn=Recipients/cn=fjones

dn: CN=Gone Person,OU=Staff,$B
objectClass: user
sAMAccountName: gone
mail: gone@corp.test

dn: CN=svc-mmgate,OU=Service Accounts,$B
objectClass: user
sAMAccountName: svc-mmgate

dn: CN=Backend,OU=Groups,$B
objectClass: group
member: CN=Frank Jones,OU=Staff,$B

dn: CN=Engineering,OU=Groups,$B
objectClass: group
member: CN=Backend,OU=Groups,$B

dn: CN=Jira Users,OU=Groups,$B
objectClass: group
member: CN=Engineering,OU=Groups,$B

dn: CN=Contractors,OU=Groups,$B
objectClass: group
EOC
ldapadd -x -H ldap://127.0.0.1 -D "CN=Administrator,CN=Users,$B" -w "$ADMIN" -f "$D/seed.ldif" >"$D/seed.log" 2>&1
for u in "svc-mmgate:Svc-Passw0rd!" "fjones:Frank-Passw0rd!" "gone:Gone-Passw0rd!"; do
	samba-tool user setpassword "${u%%:*}" --newpassword="${u#*:}" -s "$D/etc/smb.conf" >>"$D/seed.log" 2>&1
	samba-tool user enable "${u%%:*}" -s "$D/etc/smb.conf" >>"$D/seed.log" 2>&1
done
samba-tool user disable gone -s "$D/etc/smb.conf" >>"$D/seed.log" 2>&1
trap - ERR
echo "$PID"
